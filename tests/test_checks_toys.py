"""Every notebook-07 check passes a correct solution and rejects plausible wrong implementations.

The reference implementations are the solution notebook's own functions (read with mikit.dev.mutants). Each
exercise's test runs as the notebook runs the check (`variant` 0) and as the grader does (`variant` 1-3); the
hidden tests also run through the wire (`mikit.hidden`), with the reference, the correct alternatives of
tests/alternatives/toys.py, and functions that only replay the visible check's answers.
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import math  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
from alternatives import solution_functions  # noqa: E402  (tests/alternatives/)
from alternatives import toys as alternatives  # noqa: E402
from verdicts import accepts, grader_tests, rejects  # noqa: E402  (tests/verdicts.py)

import mikit  # noqa: E402
from mikit.checks import CheckFailed  # noqa: E402
from mikit.checks import toys as checks  # noqa: E402
from mikit.toys import max_of_k as mok  # noqa: E402
from mikit.toys import modular_addition as ma  # noqa: E402
from mikit.toys import superposition as sp  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


SOLUTION = solution_functions("07_toy_models")


def test_the_solutions_are_the_notebook_functions():
    assert set(SOLUTION) == {name for exercise in checks.EXERCISES.values() for name in exercise.students}


# --- superposition ---------------------------------------------------------------------------------------------
def test_importance_loss(capsys, variant):
    accepts(checks.importance_loss, SOLUTION["importance_loss"], capsys)
    rejects(checks.importance_loss, lambda out, x, imp: (imp * (x - out) ** 2).mean(), "averaged over instances")
    rejects(checks.importance_loss, lambda out, x, imp: ((x - out) ** 2).mean(dim=(0, 2)).sum(), "importance")
    rejects(checks.importance_loss, lambda out, x, imp: ((imp * (x - out)) ** 2).mean(dim=(0, 2)).sum(),
            "squared the importance")
    rejects(checks.importance_loss, lambda out, x, imp: (imp * (x - out) ** 2).sum(2).mean(0).sum(),
            "average over the features")
    rejects(checks.importance_loss, lambda out, x, imp: (imp * (out - x).abs()).mean(dim=(0, 2)).sum(), "square")
    rejects(checks.importance_loss, lambda out, x, imp: (imp * (x - out) ** 2).mean(dim=(0, 2)).sum().tolist,
            "single number")


def test_train_toy_trains_with_the_loss_it_is_given():
    calls = []

    def loss_fn(out, x, importance):
        calls.append(out.shape)
        return sp.importance_loss(out, x, importance)

    toy = sp.SuperpositionToy(5, 2, sparsity=[0.0, 0.9])
    before = toy.W.detach().clone()
    sp.train_toy(toy, steps=3, batch_size=8, loss_fn=loss_fn)
    assert calls == [torch.Size([8, 2, 5])] * 3 and not torch.equal(toy.W.detach(), before)


def test_dimensionality(capsys, variant):
    ref = SOLUTION["dimensionality"]
    accepts(checks.dimensionality, ref, capsys)

    def unguarded(W):
        norms = W.norm(dim=1)
        return norms**2 / (torch.einsum("ihf,ihg->ifg", W / norms[:, None], W) ** 2).sum(-1)

    rejects(checks.dimensionality, unguarded, "NaN")
    rejects(checks.dimensionality, lambda W: (W**2).sum(1) / (torch.einsum("ihf,ihg->ifg", W, W) ** 2).sum(-1)
            .clamp_min(1e-12), "normalise W_i")

    def unsquared(W):
        unit = W / W.norm(dim=1, keepdim=True).clamp_min(1e-12)
        return (W**2).sum(1) / torch.einsum("ihf,ihg->ifg", unit, W).abs().sum(-1).clamp_min(1e-12)

    rejects(checks.dimensionality, unsquared, "square each overlap")
    rejects(checks.dimensionality, lambda W: ref(W).sqrt() * W.norm(dim=1) ** 0, "differs from the reference")
    rejects(checks.dimensionality, lambda W: ref(W).T, "shape")


# --- Max-of-K --------------------------------------------------------------------------------------------------
def _qk(model, *, scale=True, biases=True, query_pos=-1, positions=True):
    attn = model.blocks[0].attn
    W_E, W_pos = model.W_E.detach().double(), model.W_pos.detach().double()
    W_pos = W_pos if positions else torch.zeros_like(W_pos)
    b_Q, b_K = (attn.b_Q[0].detach().double(), attn.b_K[0].detach().double()) if biases else (0, 0)
    keys = (W_E[:, None] + W_pos[None]) @ attn.W_K[0].detach().double() + b_K
    if query_pos is None:
        queries = (W_E[:, None] + W_pos[None]) @ attn.W_Q[0].detach().double() + b_Q
        scores = torch.einsum("qph,kph->qkp", queries, keys)
    else:
        scores = torch.einsum("qh,kph->qkp", (W_E + W_pos[query_pos]) @ attn.W_Q[0].detach().double() + b_Q, keys)
    return scores / (attn.attn_scale if scale else 1)


def test_qk_table(capsys, variant):
    accepts(checks.qk_table, SOLUTION["qk_table"], capsys)
    rejects(checks.qk_table, lambda model: _qk(model).transpose(0, 1), "transposed")
    rejects(checks.qk_table, lambda model: _qk(model, scale=False), "attention scale")
    rejects(checks.qk_table, lambda model: _qk(model, biases=False), "biases")
    rejects(checks.qk_table, lambda model: _qk(model, query_pos=None), "query always sits at the last position")
    rejects(checks.qk_table, lambda model: _qk(model, positions=False), "positional embeddings")
    rejects(checks.qk_table, lambda model: _qk(model, query_pos=0), "differs from the reference")
    rejects(checks.qk_table, lambda model: _qk(model)[..., :-1], "shape")


def test_the_qk_check_model_has_positions_and_biases_that_matter():
    model = checks._max_of_k_model(12, 4, 16, 3)
    reference = mok.circuits(model).scores
    for mistake in (dict(scale=False), dict(biases=False), dict(query_pos=None), dict(positions=False)):
        assert (_qk(model, **mistake) - reference).abs().max() > 0.1, mistake


def test_attention_lower_bound(capsys, variant):
    accepts(checks.attention_lower_bound, SOLUTION["attention_lower_bound"], capsys)

    def naive(score_max, other_scores):
        return score_max.exp() / (score_max.exp() + other_scores.exp().sum(-1))

    rejects(checks.attention_lower_bound, naive, "NaN or inf")
    rejects(checks.attention_lower_bound, lambda s, o: 1 / (o - s[..., None]).exp().sum(-1), "denominator")
    rejects(checks.attention_lower_bound, lambda s, o: 1 / (1 + (o - s[..., None]).exp().mean(-1)), "sum over")
    rejects(checks.attention_lower_bound,
            lambda s, o: 1 / (1 + o.shape[-1] * (o.max(-1).values - s).exp()), "its own score bound")
    rejects(checks.attention_lower_bound, lambda s, o: 1 / (1 + (s[..., None] - o).exp().sum(-1)), "signs")
    rejects(checks.attention_lower_bound, lambda s, o: 1 / (1 + (o - s[..., None]).exp()), "shape")


def test_worst_case_margin(capsys, variant):
    accepts(checks.worst_case_margin, SOLUTION["worst_case_margin"], capsys)

    def at_the_bound(attention, direct_gap, gap_max, gap_rest):
        a = attention[..., None]
        return torch.where(gap_rest.isinf(), direct_gap + gap_max, direct_gap + a * gap_max + (1 - a) * gap_rest)

    def with_nan(attention, direct_gap, gap_max, gap_rest):
        a = attention[..., None]
        return direct_gap + torch.minimum(a * gap_max + (1 - a) * gap_rest, gap_max)

    rejects(checks.worst_case_margin, at_the_bound, "only bounded from below")
    rejects(checks.worst_case_margin, with_nan, "NaN")
    rejects(checks.worst_case_margin, lambda a, d, gm, gr: d + gm, "mix in gap_rest")
    rejects(checks.worst_case_margin, lambda a, d, gm, gr: d + torch.minimum(gm, gr), "use the attention bound")
    rejects(checks.worst_case_margin,
            lambda a, d, gm, gr: SOLUTION["worst_case_margin"](a, torch.zeros_like(d), gm, gr), "direct_gap")
    rejects(checks.worst_case_margin, lambda a, d, gm, gr: SOLUTION["worst_case_margin"](a, d, gm, gr).amin(-1),
            "shape")


def test_certified_fraction(capsys, variant):
    ref = SOLUTION["certified_fraction"]
    accepts(checks.certified_fraction, ref, capsys)

    def every_query_full(proven, k):
        m = torch.arange(proven.shape[0], dtype=torch.float64)[:, None]
        return float((((m + 1) ** (k - 1)).expand_as(proven) * proven.tril()).sum() / proven.shape[0] ** k)

    rejects(checks.certified_fraction, every_query_full, "too many inputs per group")
    rejects(checks.certified_fraction, lambda proven, k: ref(proven, k) * proven.shape[0], "divide by all")
    rejects(checks.certified_fraction, lambda proven, k: ref(proven, k) * proven.shape[0] ** k, "share of all inputs")
    def above_the_diagonal_too(proven, k):
        m = torch.arange(proven.shape[0], dtype=torch.float64)[:, None]
        t = torch.arange(proven.shape[0])[None, :]
        sizes = torch.where(t == m, (m + 1) ** (k - 1), (m + 1) ** (k - 1) - m ** (k - 1))
        return float((sizes * proven).sum() / proven.shape[0] ** k)

    rejects(checks.certified_fraction, above_the_diagonal_too, "t ≤ m")
    rejects(checks.certified_fraction, lambda proven, k: ref(proven.T, k), "differs from the reference")
    rejects(checks.certified_fraction, lambda proven, k: min(1.0, ref(proven, k) + 1e-3), "differs")


def test_the_quadratic_bound_is_the_certified_fraction_of_its_groups():
    # The notebook's claim: the library's quadratic proof is the share of inputs in its proven (m, t) groups.
    model = mok.train_max_of_k(6, 3, d_model=16, steps=300, progress=False)
    groups = torch.zeros(6, 6, dtype=torch.bool)
    for m in range(6):
        groups[m, : m + 1] = mok._certify_max(mok.circuits(model), m, torch.tensor([m - 1]))[0][:, 0]
    assert SOLUTION["certified_fraction"](groups, 3) == pytest.approx(mok.quadratic_proof(model).accuracy, abs=1e-12)


# --- grokking --------------------------------------------------------------------------------------------------
def test_fourier_basis(capsys, variant):
    ref = SOLUTION["fourier_basis"]
    accepts(checks.fourier_basis, ref, capsys)
    rejects(checks.fourier_basis, lambda p: ref(p) * ref(p).new_tensor([p**0.5] + [(p / 2) ** 0.5] * (p - 1))[:, None],
            "unit vector")

    def swapped(p):
        basis = ref(p).clone()
        basis[1::2], basis[2::2] = ref(p)[2::2], ref(p)[1::2]
        return basis

    def grouped(p):
        return torch.cat([ref(p)[:1], ref(p)[1::2], ref(p)[2::2]])

    def radians(p):
        x = torch.arange(p, dtype=torch.float64)
        rows = [torch.ones(p, dtype=torch.float64)]
        for w in range(1, (p - 1) // 2 + 1):
            rows += [torch.cos(w * x), torch.sin(w * x)]
        basis = torch.stack(rows)
        return basis / basis.norm(dim=1, keepdim=True)

    rejects(checks.fourier_basis, swapped, "the cosine of frequency w")
    rejects(checks.fourier_basis, grouped, "interleave")
    rejects(checks.fourier_basis, radians, "full turns")
    rejects(checks.fourier_basis, lambda p: ref(p)[1:], "shape")


def test_frequency_norms(capsys, variant):
    ref = SOLUTION["frequency_norms"]
    basis = SOLUTION["fourier_basis"]
    ref.__globals__.setdefault("fourier_basis", basis)  # the notebook's frequency_norms calls its fourier_basis
    accepts(checks.frequency_norms, ref, capsys)

    def coefficients(W_E):
        return basis(W_E.shape[0]) @ W_E.double()

    rejects(checks.frequency_norms, lambda W_E: coefficients(W_E)[1::2].norm(dim=1), "include the sine")
    rejects(checks.frequency_norms,
            lambda W_E: coefficients(W_E)[1::2].norm(dim=1) + coefficients(W_E)[2::2].norm(dim=1), "not their sum")
    rejects(checks.frequency_norms, lambda W_E: ref(W_E) ** 2, "not its square")
    rejects(checks.frequency_norms, lambda W_E: coefficients(W_E).norm(dim=1)[1 : 1 + (W_E.shape[0] - 1) // 2],
            "interleave")
    rejects(checks.frequency_norms, lambda W_E: coefficients(W_E).norm(dim=1), "shape")


def test_frequency_part(capsys, variant):
    ref = SOLUTION["frequency_part"]
    accepts(checks.frequency_part, ref, capsys)

    def project(logits, directions):
        part = torch.zeros_like(logits)
        for d in directions:
            part += torch.einsum("abc,ab->c", logits, d)[None, None] * d[..., None]
        return part

    def grid(p):
        return (torch.arange(p)[:, None] + torch.arange(p)[None, :]).double()

    def cos_only(logits, freqs):
        p = logits.shape[0]
        waves = [torch.cos(2 * math.pi * w * grid(p) / p) for w in freqs]
        return project(logits, [d / d.norm() for d in waves])

    def unnormalised(logits, freqs):
        p = logits.shape[0]
        return project(logits, [f(2 * math.pi * w * grid(p) / p) for w in freqs for f in (torch.cos, torch.sin)])

    def products(logits, freqs):
        p = logits.shape[0]
        a, b = torch.arange(p)[:, None].double(), torch.arange(p)[None, :].double()
        waves = [torch.cos(2 * math.pi * w * a / p) * torch.cos(2 * math.pi * w * b / p) for w in freqs]
        return project(logits, [d / d.norm() for d in waves])

    rejects(checks.frequency_part, cos_only, "keep the sine")
    rejects(checks.frequency_part, unnormalised, "normalise each direction")
    rejects(checks.frequency_part, products, "functions of a \\+ b")
    rejects(checks.frequency_part, lambda logits, freqs: logits - ref(logits, freqs), "rest of the logits")
    rejects(checks.frequency_part, lambda logits, freqs: ref(logits, freqs[:1]), "differs from the reference")


def test_the_frequency_part_gives_the_recorded_restricted_loss():
    final = mikit.load_model("modular-addition", device="cpu")
    freqs = ma.key_frequencies(final)
    tokens, labels = ma.modular_addition_data()
    train, _ = ma.train_test_split()
    with torch.no_grad():
        logits = ma.final_logits(final, tokens).double().reshape(ma.P, ma.P, ma.P)
    part = SOLUTION["frequency_part"](logits, freqs)
    restricted = ma.loss_from_logits(part.flatten(0, 1)[train], labels[train]).item()
    assert restricted == pytest.approx(ma.restricted_loss(final, freqs), rel=1e-9)


# --- the grader ------------------------------------------------------------------------------------------------
globals().update(grader_tests(checks, SOLUTION, alternatives))  # wire, and the tests of the wire and the alternatives


def test_calling_the_reference_scores_zero(wire):
    cases = {
        "importance_loss": sp.importance_loss,
        "dimensionality": sp.dimensionality,
        "qk_table": lambda model: mok.circuits(model).scores,
        "attention_lower_bound": mok.attention_lower_bound,
        "worst_case_margin": mok.worst_case_margin,
        "fourier_basis": ma.fourier_basis,
        "frequency_part": ma._frequency_part,
    }
    for gid, cheat in cases.items():
        with pytest.raises(CheckFailed, match=r"calls the reference `mikit\.toys"):
            wire(gid, cheat)
