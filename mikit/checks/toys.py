"""Checks for notebook 07 (toy models): each compares a student function with `mikit.toys` on small random inputs.

The inputs are built here (random weights, a random max-of-K transformer with nonzero biases and positions), so
each check takes well under a second; the notebook then runs the student's functions on the trained toys. Under
the grader (`hidden_variant`) the inputs have other values and sizes.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Callable

import torch
from torch import Tensor
from transformer_lens import HookedTransformer

from mikit.checks import (
    CheckFailed, Exercise, call_student, expect_close, expect_number, expect_tensor, passed, reject_known_mistakes,
    reveal, seeded, size,
)
from mikit.hidden import recipe
from mikit.toys import max_of_k as mok
from mikit.toys import modular_addition as ma
from mikit.toys import superposition as sp
from mikit.zoo import build_from_config


def _as_number(value, name: str) -> Tensor:
    return torch.tensor(expect_number(value, name), dtype=torch.float64)


# --- exercise 1 --------------------------------------------------------------------------------------------
def importance_loss(fn: Callable) -> None:
    """Exercise 1: the importance-weighted reconstruction loss, summed over instances."""
    __tracebackhide__ = True
    name = "importance_loss"
    generator = seeded(1)
    batch, instances, features = size(16), size(3), size(5)
    x = sp.generate_features(batch, features, torch.tensor([0.0, 0.5, 0.9] + [0.7] * (instances - 3)),
                             generator=generator)
    out = torch.rand(batch, instances, features, generator=generator)
    importance = 0.3 + torch.rand(instances, features, generator=generator)
    got = _as_number(call_student(fn, name, out.clone(), x.clone(), importance.clone()), name)
    want = sp.importance_loss(out, x, importance).double()
    per_instance = (importance * (x - out) ** 2).mean(dim=(0, 2))
    reject_known_mistakes(got, [
        (per_instance.mean().double(), "you averaged over instances: each instance is its own model, so sum their "
                                       "losses (the mean would shrink every instance's learning rate)"),
        (((x - out) ** 2).mean(dim=(0, 2)).sum().double(), "weight each feature's squared error by its importance"),
        (((importance * (x - out)) ** 2).mean(dim=(0, 2)).sum().double(),
         "you squared the importance too: multiply the *squared* error by the importance"),
        ((importance * (x - out) ** 2).sum(dim=2).mean(dim=0).sum().double(),
         "average over the features as well as the batch, as the paper's loss does"),
        ((importance * (x - out).abs()).mean(dim=(0, 2)).sum().double(), "square the error, (x − x')²"),
    ], want)
    expect_close(got, want, name, hint="Σ over instances of the mean over batch and features of I · (x − x')²")
    passed(name, reveal(f"{got.item():.5f}"))


# --- exercise 2 --------------------------------------------------------------------------------------------
def dimensionality(fn: Callable) -> None:
    """Exercise 2: Elhage's feature dimensionality D_i = ||W_i||² / Σ_j (Ŵ_i · W_j)², 0 for a zero column."""
    __tracebackhide__ = True
    name = "dimensionality"
    generator = seeded(2)
    instances, hidden, features = size(3), size(2), size(5)
    W = torch.randn(instances, hidden, features, generator=generator)
    W[0, :, 1] = 0.0  # a feature the instance does not represent
    W[-1, :, 2] = -W[-1, :, 0]  # an antipodal pair
    got = expect_tensor(call_student(fn, name, W.clone()), name, (instances, features), "instance feature")
    want = sp.dimensionality(W)
    if torch.isnan(got).any():
        raise CheckFailed(f"`{name}` returned NaN for a feature whose column of W is zero: that feature is not "
                          "represented, so its dimensionality is 0 (guard the division, e.g. clamp the norm)")
    overlaps = torch.einsum("ihf,ihg->ifg", W, W)
    norms2 = (W**2).sum(1)
    unit = W / W.norm(dim=1, keepdim=True).clamp_min(1e-12)
    cos = torch.einsum("ihf,ihg->ifg", unit, W)
    reject_known_mistakes(got, [
        (norms2 / (overlaps**2).sum(-1).clamp_min(1e-12),
         "normalise W_i in the denominator: Σ_j (Ŵ_i · W_j)², with Ŵ_i = W_i / ||W_i||"),
        (norms2 / cos.abs().sum(-1).clamp_min(1e-12), "square each overlap: Σ_j (Ŵ_i · W_j)²"),
        (norms2 / ((cos**2).sum(-1) - norms2).clamp_min(1e-12),
         "keep j = i in the denominator's sum: a feature alone in its dimension then gets 1"),
        (W.norm(dim=1) / (cos**2).sum(-1).clamp_min(1e-12), "the numerator is the squared norm ||W_i||²"),
    ], want)
    expect_close(got, want, name, hint="D_i = ||W_i||² / Σ_j (Ŵ_i · W_j)², over the feature columns of each instance")
    passed(name)


# --- exercises 3-6: Max-of-K -------------------------------------------------------------------------------
@recipe
@lru_cache(maxsize=8)
def _max_of_k_model(d_vocab: int, k: int, d_model: int, seed: int) -> HookedTransformer:
    """A random max-of-K model whose positions and biases all matter (TransformerLens starts biases at 0)."""
    torch.manual_seed(seed)
    model = build_from_config(mok.max_of_k_config(d_vocab, k, d_model))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in (model.W_pos, model.blocks[0].attn.b_Q, model.blocks[0].attn.b_K, model.blocks[0].attn.b_V,
                      model.blocks[0].attn.b_O, model.b_U):
            param.copy_(0.5 * torch.randn(param.shape, generator=generator))
    return model.eval()


def _scale_free_scores(model: HookedTransformer, query_pos: int | None = -1, biases: bool = True) -> Tensor:
    """The QK table without the 1/sqrt(d_head) scale (and with a chosen query position or biases), for mistakes."""
    attn = model.blocks[0].attn
    W_Q, W_K = attn.W_Q[0].detach().double(), attn.W_K[0].detach().double()
    b_Q, b_K = (attn.b_Q[0].detach().double(), attn.b_K[0].detach().double()) if biases else (0.0, 0.0)
    tokens_at = model.W_E.detach().double()[:, None] + model.W_pos.detach().double()[None]
    keys = tokens_at @ W_K + b_K
    if query_pos is None:  # the query at the key's own position
        return torch.einsum("qph,kph->qkp", tokens_at @ W_Q + b_Q, keys)
    return torch.einsum("qh,kph->qkp", tokens_at[:, query_pos] @ W_Q + b_Q, keys)


def qk_table(fn: Callable) -> None:
    """Exercise 3: the QK circuit with positions folded in: scores[q_token, k_token, k_pos], scaled."""
    __tracebackhide__ = True
    name = "qk_table"
    d_vocab, k, d_model = size(12), size(4), size(16, 8)
    model = _max_of_k_model(d_vocab, k, d_model, int(seeded(3).initial_seed() % 2**31))
    got = expect_tensor(call_student(fn, name, model), name, (d_vocab, d_vocab, k), "q_token k_token k_pos")
    want = mok.circuits(model).scores
    scale = float(model.blocks[0].attn.attn_scale)
    attn = model.blocks[0].attn
    no_positions = (model.W_E.detach().double() @ attn.W_Q[0].detach().double() + attn.b_Q[0].detach().double()) @ (
        model.W_E.detach().double() @ attn.W_K[0].detach().double() + attn.b_K[0].detach().double()).T / scale
    reject_known_mistakes(got.double(), [
        (want.transpose(0, 1), "your table is transposed: the first index is the query token, the second the key's"),
        (_scale_free_scores(model), "divide the scores by the attention scale, sqrt(d_head), as the model does"),
        (_scale_free_scores(model, biases=False) / scale, "add the biases b_Q and b_K to the queries and keys"),
        (_scale_free_scores(model, query_pos=None) / scale,
         "the query always sits at the last position: add W_pos[-1] to the query token, not the key's position"),
        (no_positions[..., None].expand_as(want), "add the positional embeddings: a key token at position p is "
                                                  "W_E[token] + W_pos[p], and the query's position is the last"),
    ], want, atol=1e-4)
    expect_close(got.double(), want, name, atol=1e-3, rtol=1e-3,
                 hint="query = (W_E + W_pos[-1]) W_Q + b_Q; keys[token, p] = (W_E[token] + W_pos[p]) W_K + b_K; "
                      "scores = query · key / attn_scale")
    passed(name)


def attention_lower_bound(fn: Callable) -> None:
    """Exercise 4: the least softmax weight on the largest token, from score bounds: 1 / (1 + Σ exp(other − max))."""
    __tracebackhide__ = True
    name = "attention_lower_bound"
    generator = seeded(4)
    groups, keys = size(6), size(3)
    score_max = 4 * torch.randn(groups, generator=generator, dtype=torch.float64)
    others = score_max[:, None] + 3 * torch.randn(groups, keys, generator=generator, dtype=torch.float64)
    others[1, 0] = -math.inf  # an absent key
    score_max[2], others[2] = 800.0, 795.0 + torch.arange(keys, dtype=torch.float64)  # exp(800) overflows
    got = expect_tensor(call_student(fn, name, score_max.clone(), others.clone()), name, (groups,), "group")
    want = mok.attention_lower_bound(score_max, others)
    if torch.isnan(got).any() or torch.isinf(got).any():
        raise CheckFailed(f"`{name}` returned NaN or inf where the scores are large (exp(800) is inf even in float64): "
                          "write the weight with differences of scores, 1 / (1 + Σ_j exp(other_j − score_max))")
    ratios = (others - score_max[:, None]).exp()
    reject_known_mistakes(got.double(), [
        (1 / ratios.sum(-1), "the copy of the largest token is in the softmax's denominator too: "
                             "1 / (1 + Σ_j exp(other_j − score_max))"),
        (1 / (1 + ratios.mean(-1)), "sum over the other keys: each one takes its own share of the attention"),
        (1 / (1 + keys * ratios.max(-1).values), "each other key counts with its own score bound; the largest one "
                                                 "for all of them is a looser bound than the exercise asks for"),
        (1 / (1 + (score_max[:, None] - others).exp().sum(-1)), "the signs are swapped: exp(other − score_max)"),
    ], want)
    expect_close(got.double(), want, name, hint="1 / (1 + Σ_j exp(other_scores[..., j] − score_max))")
    passed(name)


def worst_case_margin(fn: Callable) -> None:
    """Exercise 5: the least logit gap over a group, with the attention on the copies anywhere in [attention, 1]."""
    __tracebackhide__ = True
    name = "worst_case_margin"
    generator = seeded(5)
    groups, outputs = size(6), size(5)
    attention = torch.rand(groups, generator=generator, dtype=torch.float64)
    attention[0] = 1.0  # no other key: all the attention is on the copies
    direct = torch.randn(groups, outputs, generator=generator, dtype=torch.float64)
    gap_max = 2 + torch.randn(groups, outputs, generator=generator, dtype=torch.float64)
    gap_rest = torch.randn(groups, outputs, generator=generator, dtype=torch.float64)
    gap_rest[1] = gap_max[1] + 1  # the other keys favour the largest token more than its copies do
    gap_rest[0] = math.inf
    args = (attention, direct, gap_max, gap_rest)
    got = expect_tensor(call_student(fn, name, *(a.clone() for a in args)), name, (groups, outputs),
                        "group d_vocab_out")
    want = mok.worst_case_margin(*args)
    if torch.isnan(got).any():
        raise CheckFailed(f"`{name}` returned NaN where gap_rest is inf (there is no other key, and attention is 1): "
                          "0 · inf is NaN, so use gap_max alone there (torch.where)")
    a = attention[:, None]
    at_attention = direct + a * gap_max + (1 - a) * gap_rest.nan_to_num(posinf=0.0)
    at_attention[0] = (direct + gap_max)[0]
    reject_known_mistakes(got.double(), [
        (at_attention, "the attention on the copies is only bounded from below: it can be anything from `attention` "
                       "to 1, and where the other keys favour the largest token more than its copies do (gap_rest > "
                       "gap_max) the worst case is at 1; take the smaller of the two ends"),
        (direct + gap_max, "the other keys take up to 1 − attention of the weight: mix in gap_rest"),
        (direct + torch.minimum(gap_max, gap_rest), "use the attention bound: with at least `attention` on the copies "
                                                    "the worst average is attention·gap_max + (1 − attention)·gap_rest"),
        (want - direct, "add the direct path's gap, direct_gap"),
    ], want)
    expect_close(got.double(), want, name, hint="direct_gap + min(a·gap_max + (1 − a)·gap_rest, gap_max), "
                                                "with gap_max alone where gap_rest is inf")
    passed(name)


def _group_sizes(d_vocab: int, k: int) -> Tensor:
    """inputs[m, t]: how many of the d_vocab**k inputs have largest token m and last (query) token t."""
    sizes = torch.zeros(d_vocab, d_vocab, dtype=torch.float64)
    for m in range(d_vocab):
        sizes[m, : m + 1] = mok._inputs_per_group(m, k - 1, torch.tensor([m - 1]))[:, 0].double()
    return sizes


def certified_fraction(fn: Callable) -> None:
    """Exercise 6: a proof's bound from its proven groups: the share of all inputs whose (max, query) group is proven."""
    __tracebackhide__ = True
    name = "certified_fraction"
    generator = seeded(6)
    for d_vocab, k in ((size(5), size(3)), (size(7), 2), (4, size(4))):
        proven = torch.rand(d_vocab, d_vocab, generator=generator) < 0.6
        got = _as_number(call_student(fn, name, proven.clone(), k), name)
        sizes = _group_sizes(d_vocab, k)
        want = (sizes * proven).sum() / d_vocab**k
        m = torch.arange(d_vocab, dtype=torch.float64)[:, None]
        t = torch.arange(d_vocab)[None, :]
        every_query = ((m + 1) ** (k - 1)).expand(d_vocab, d_vocab) * (t <= m)
        unmasked = torch.where(t == m, (m + 1) ** (k - 1), (m + 1) ** (k - 1) - m ** (k - 1))  # t > m too
        shape = reveal(f" (d_vocab {d_vocab}, k {k})")
        reject_known_mistakes(got, [
            ((every_query * proven).sum() / d_vocab**k, f"too many inputs per group{shape}: when the query token t is "
             "below m, one of the other k − 1 tokens must be m, so the group holds (m + 1)^(k−1) − m^(k−1) inputs"),
            ((sizes * proven).sum() / d_vocab ** (k - 1), f"divide by all d_vocab^k inputs{shape}"),
            ((sizes * proven).sum(), f"return the share of all inputs, not their number{shape}"),
            ((unmasked * proven).sum() / d_vocab**k, f"count only the groups with t ≤ m{shape}: no input has its "
             "last token above its largest"),
        ], want, atol=1e-9)
        expect_close(got, want, name, atol=1e-9, rtol=1e-9,
                     hint="the group (m, t) holds (m + 1)^(k−1) inputs if t = m, else (m + 1)^(k−1) − m^(k−1); "
                          "add up the proven groups' sizes and divide by d_vocab^k")
    every = _as_number(call_student(fn, name, torch.ones(5, 5, dtype=torch.bool), 3), name)
    if abs(every.item() - 1) > 1e-9:
        raise CheckFailed(f"`{name}` gave {every.item():.6g} with every group proven: that must be 1, every input")
    passed(name)


# --- exercises 7-9: grokking -------------------------------------------------------------------------------
def fourier_basis(fn: Callable) -> None:
    """Exercise 7: the real Fourier basis on 0..p-1: constant, then cos w, sin w for w = 1..(p-1)/2, unit rows."""
    __tracebackhide__ = True
    name = "fourier_basis"
    for p in (size(5, 2), size(7, 2), 13):
        got = expect_tensor(call_student(fn, name, p), name, (p, p), "p p")
        want = ma.fourier_basis(p)
        x = torch.arange(p, dtype=torch.float64)
        w = torch.arange(1, (p - 1) // 2 + 1, dtype=torch.float64)[:, None]
        cos, sin = torch.cos(2 * math.pi * w * x / p), torch.sin(2 * math.pi * w * x / p)
        raw = torch.cat([torch.ones(1, p, dtype=torch.float64), torch.stack([cos, sin], 1).flatten(0, 1)])
        swapped = torch.cat([raw[:1], torch.stack([sin, cos], 1).flatten(0, 1)])
        grouped = torch.cat([raw[:1], cos, sin])
        unit = lambda rows: rows / rows.norm(dim=1, keepdim=True)  # noqa: E731
        reject_known_mistakes(got.double(), [
            (raw, "normalise each row to a unit vector" + reveal(f" (p = {p})")
             + ": the constant row is 1/√p, the others √(2/p)·cos/sin"),
            (unit(swapped), "row 2w − 1 is the cosine of frequency w and row 2w the sine; yours are the other way"),
            (unit(grouped), "interleave the rows: constant, cos 1, sin 1, cos 2, sin 2, … (not all cosines first)"),
            (unit(torch.cat([raw[:1], torch.stack([torch.cos(w * x), torch.sin(w * x)], 1).flatten(0, 1)])),
             "the frequency w means w full turns over 0..p−1: cos(2π·w·x / p)"),
        ], want.double())
        expect_close(got.double(), want.double(), name, atol=1e-5,
                     hint="rows: 1, cos(2πx/p), sin(2πx/p), cos(4πx/p), sin(4πx/p), …, each divided by its norm")
    passed(name)


def _frequency_norms(W_E: Tensor) -> Tensor:
    coefficients = ma.fourier_basis(W_E.shape[0]).double() @ W_E.double()
    return (coefficients[1::2].norm(dim=1) ** 2 + coefficients[2::2].norm(dim=1) ** 2).sqrt()


def frequency_norms(fn: Callable) -> None:
    """Exercise 8: the embedding's norm in each frequency's (cos, sin) plane: ((p - 1) / 2,) for frequencies 1.."""
    __tracebackhide__ = True
    name = "frequency_norms"
    generator = seeded(8)
    p, d_model = size(11, 2), size(6)
    W_E = torch.randn(p, d_model, generator=generator)
    W_E += 3 * torch.outer(torch.cos(2 * math.pi * 2 * torch.arange(p) / p), torch.randn(d_model, generator=generator))
    got = expect_tensor(call_student(fn, name, W_E.clone()), name, ((p - 1) // 2,), "frequency")
    want = _frequency_norms(W_E)
    coefficients = ma.fourier_basis(p).double() @ W_E.double()
    reject_known_mistakes(got.double(), [
        (coefficients[1::2].norm(dim=1), "include the sine: frequency w's plane holds both cos w and sin w"),
        (coefficients[1::2].norm(dim=1) + coefficients[2::2].norm(dim=1),
         "combine cos and sin as a norm in the plane: √(‖cos part‖² + ‖sin part‖²), not their sum"),
        (want**2, "return the norm, not its square"),
        ((ma.fourier_basis(p).double() @ W_E.double()).norm(dim=1)[1 : 1 + (p - 1) // 2],
         "the basis rows interleave cos and sin: frequency w is rows 2w − 1 and 2w"),
    ], want)
    expect_close(got.double(), want, name, hint="coefficients = fourier_basis(p) @ W_E; frequency w: rows 2w − 1 "
                                                "and 2w; their joint norm")
    passed(name)


def frequency_part(fn: Callable) -> None:
    """Exercise 9: the logits' projection onto cos and sin of w(a + b) for the key frequencies."""
    __tracebackhide__ = True
    name = "frequency_part"
    generator = seeded(9)
    p = size(7, 2)
    freqs = [2, 1] if p < 9 else [3, 1]
    logits = torch.randn(p, p, p, generator=generator, dtype=torch.float64)
    got = expect_tensor(call_student(fn, name, logits.clone(), list(freqs)), name, (p, p, p),
                        "operand_a operand_b d_vocab_out")
    want = ma._frequency_part(logits, freqs)
    a = torch.arange(p, dtype=torch.float64)[:, None]
    b = torch.arange(p, dtype=torch.float64)[None, :]

    def project(directions) -> Tensor:
        part = torch.zeros_like(logits)
        for d in directions:
            part += torch.einsum("abc,ab->c", logits, d) * d[..., None]
        return part

    unit = lambda d: d / d.norm()  # noqa: E731
    angle = lambda w: 2 * math.pi * w * (a + b) / p  # noqa: E731
    reject_known_mistakes(got.double(), [
        (project([unit(torch.cos(angle(w))) for w in freqs]),
         "keep the sine direction too: cos(w(a + b)) and sin(w(a + b)) for each key frequency"),
        (project([torch.cos(angle(w)) for w in freqs] + [torch.sin(angle(w)) for w in freqs]),
         "normalise each direction over the p² pairs before projecting onto it"),
        (project([unit(torch.cos(2 * math.pi * w * a / p) * torch.cos(2 * math.pi * w * b / p)) for w in freqs]),
         "project onto functions of a + b, cos(2πw(a + b)/p), not products of functions of a and b"),
        (logits - want, "that is the rest of the logits: return the key frequencies' part itself"),
    ], want)
    expect_close(got.double(), want, name, hint="for each w and each of cos, sin of 2πw(a + b)/p as a unit (p, p) "
                                                "direction d: add ⟨logits[..., c], d⟩ · d for every output c")
    passed(name)


EXERCISES = {
    "importance_loss": Exercise(importance_loss, ("importance_loss",), forbidden=(sp.importance_loss,)),
    "dimensionality": Exercise(dimensionality, ("dimensionality",), forbidden=(sp.dimensionality,)),
    "qk_table": Exercise(qk_table, ("qk_table",), forbidden=(mok.circuits,)),
    "attention_lower_bound": Exercise(attention_lower_bound, ("attention_lower_bound",),
                                      forbidden=(mok.attention_lower_bound,)),
    "worst_case_margin": Exercise(worst_case_margin, ("worst_case_margin",), forbidden=(mok.worst_case_margin,)),
    "certified_fraction": Exercise(certified_fraction, ("certified_fraction",), forbidden=(mok._inputs_per_group,)),
    "fourier_basis": Exercise(fourier_basis, ("fourier_basis",), forbidden=(ma.fourier_basis,)),
    "frequency_norms": Exercise(frequency_norms, ("frequency_norms",),
                                forbidden=(ma.embedding_fourier_norms, ma.key_frequencies)),
    "frequency_part": Exercise(frequency_part, ("frequency_part",),
                               forbidden=(ma._frequency_part, ma.restricted_loss, ma.excluded_loss)),
}
