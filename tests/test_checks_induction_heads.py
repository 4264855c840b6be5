"""Every notebook-01 check passes the reference and rejects plausible wrong implementations."""

import contextlib
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch

from mikit import core
from mikit import induction as ref
from mikit.checks import CheckFailed
from mikit.checks import induction_heads as checks


@pytest.fixture(scope="module")
def toy():
    import mikit

    return mikit.load_model("attn-only-2l", device="cpu")


def rejects(check, fn, *args, match=None):
    with pytest.raises(CheckFailed, match=match):
        check(fn, *args)


# --- exercise 1 -------------------------------------------------------------------------
def test_count_correct_predictions(toy, capsys):
    checks.count_correct_predictions(ref.count_correct_predictions, toy)
    assert "✓" in capsys.readouterr().out

    def no_shift(model, text):
        tokens = model.to_tokens(text)
        return int((model(tokens)[0].argmax(-1) == tokens[0]).sum())

    def shifted_backwards(model, text):
        tokens = model.to_tokens(text)
        return int((model(tokens)[0, 1:].argmax(-1) == tokens[0, :-1]).sum())

    def fraction(model, text):
        tokens = model.to_tokens(text)
        return (model(tokens)[0, :-1].argmax(-1) == tokens[0, 1:]).float().mean()

    for wrong in (no_shift, shifted_backwards, fraction):
        rejects(checks.count_correct_predictions, wrong, toy, match="position p")


# --- exercise 2 -------------------------------------------------------------------------
def _scores(q, k):
    return torch.einsum("bqhd,bkhd->bhqk", q, k)


def _mask(s):
    return s.masked_fill(torch.ones(s.shape[-2:]).triu(1).bool(), float("-inf"))


def test_attention_pattern():
    checks.attention_pattern(ref.attention_pattern)
    d = lambda q: q.shape[-1] ** 0.5  # noqa: E731
    rejects(checks.attention_pattern, lambda q, k: (_scores(q, k) / d(q)).softmax(-1), match="future")
    rejects(checks.attention_pattern, lambda q, k: _mask(_scores(q, k) / d(q)).softmax(-2), match="sum to 1")
    rejects(checks.attention_pattern, lambda q, k: _mask(_scores(q, k)).softmax(-1), match="sqrt")
    rejects(checks.attention_pattern, lambda q, k: _mask(_scores(q, k) / q.shape[-1]).softmax(-1), match="sqrt")
    rejects(checks.attention_pattern, lambda q, k: _scores(q, k), match="sum to 1")


# --- exercise 3 ----------------------------------------------------------------------------
def diag_mean(offset, last=None):
    def score(pattern, *seq_len):
        diag = pattern.diagonal(-offset(*seq_len) if callable(offset) else -offset, dim1=-2, dim2=-1)
        if last is not None:
            diag = diag[..., -last(*seq_len):]
        return diag.mean((0, -1))

    return score


def test_previous_token_scores():
    checks.previous_token_scores(ref.previous_token_scores)
    wrongs = [
        diag_mean(0),  # attention to the current token
        lambda p: p.diagonal(-1, dim1=-2, dim2=-1).sum((0, -1)),  # sum instead of mean
        lambda p: p.diagonal(-1, dim1=-2, dim2=-1).mean(0).mean(0),  # averaged over heads
        lambda p: p[:, :, 1:, 0].mean((0, 2)),  # attention to BOS
    ]
    for wrong in wrongs:
        rejects(checks.previous_token_scores, wrong)


def test_duplicate_token_scores():
    checks.duplicate_token_scores(ref.duplicate_token_scores)
    for wrong in (
        diag_mean(lambda n: n - 1, last=lambda n: n),  # induction offset
        diag_mean(lambda n: n + 1),  # one too far back
        diag_mean(lambda n: n),  # right offset, but also the query at the end of the first copy
    ):
        rejects(checks.duplicate_token_scores, wrong)


def test_induction_scores():
    checks.induction_scores(ref.induction_scores)
    for wrong in (
        diag_mean(lambda n: n, last=lambda n: n),  # duplicate-token offset
        diag_mean(lambda n: n - 1),  # includes queries from the first copy
        diag_mean(lambda n: n - 2, last=lambda n: n),  # off by one the other way
    ):
        rejects(checks.induction_scores, wrong)


def test_a_query_window_off_by_one_is_named():
    def window(offset, n_queries, shift):  # n_queries queries ending `shift` before the last
        def score(pattern, *seq_len):
            diag = pattern.diagonal(-offset(*seq_len), dim1=-2, dim2=-1)
            end = diag.shape[-1] - shift
            return diag[..., end - n_queries(pattern, *seq_len) : end].mean((0, -1))

        return score

    cases = [
        (checks.induction_scores, window(lambda n: n - 1, lambda p, n: n, 1)),  # one query too early
        (checks.induction_scores, window(lambda n: n - 1, lambda p, n: n - 1, 0)),  # the first query left out
        (checks.duplicate_token_scores, window(lambda n: n, lambda p, n: n - 1, 0)),
        (checks.previous_token_scores, window(lambda: 1, lambda p: p.shape[-1] - 2, 0)),
    ]
    for variant in (0, 2):
        with hidden_variant(variant) if variant else contextlib.nullcontext():
            for check, wrong in cases:
                rejects(check, wrong, match="right key offset .* query window is off by one")


# --- exercise 4 -------------------------------------------------------------------------
def test_per_token_loss():
    checks.per_token_loss(ref.per_token_loss)
    wrongs = [
        lambda lg, t: -lg.log_softmax(-1)[:, 1:].gather(-1, t[:, 1:, None])[..., 0],  # no shift
        lambda lg, t: lg[:, :-1].log_softmax(-1).gather(-1, t[:, 1:, None])[..., 0],  # sign
        lambda lg, t: -lg[:, :-1].softmax(-1).gather(-1, t[:, 1:, None])[..., 0],  # probability, not log
        lambda lg, t: -lg[:, :-1].log_softmax(1).gather(-1, t[:, 1:, None])[..., 0],  # softmax over positions
    ]
    for wrong in wrongs:
        rejects(checks.per_token_loss, wrong)


# --- exercise 5 -------------------------------------------------------------------------
def test_logit_attribution():
    checks.logit_attribution(ref.logit_attribution)
    wrongs = [
        lambda c, W_U, t: torch.einsum("cbpd,dbp->cbp", c[:, :, :-1], W_U[:, t[:, :-1]]),  # current token
        lambda c, W_U, t: torch.einsum("cbpd,dbp->cbp", c[:, :, 1:], W_U[:, t[:, 1:]]),  # wrong positions
        lambda c, W_U, t: torch.einsum("cbpd,dv->cbp", c[:, :, :-1], W_U) / W_U.shape[1],  # mean logit
    ]
    for wrong in wrongs:
        rejects(checks.logit_attribution, wrong)


# --- exercise 6 -------------------------------------------------------------------------
def test_ablate_head():
    checks.ablate_head(lambda z, hook, head, mode: core.ablate_head(z, hook, head, mode))

    def all_heads(z, hook, head, mode):
        return torch.zeros_like(z) if mode == "zero" else z.mean(0, keepdim=True).expand_as(z)

    def mean_over_positions_too(z, hook, head, mode):
        z = z.clone()
        z[:, :, head] = 0.0 if mode == "zero" else z[:, :, head].mean((0, 1))
        return z

    def mean_over_positions_only(z, hook, head, mode):
        z = z.clone()
        z[:, :, head] = 0.0 if mode == "zero" else z[:, :, head].mean(1, keepdim=True)
        return z

    def mean_over_d_head(z, hook, head, mode):
        z = z.clone()
        z[:, :, head] = 0.0 if mode == "zero" else z[:, :, head].mean(-1, keepdim=True)
        return z

    def zero_only(z, hook, head, mode):
        z = z.clone()
        z[:, :, head] = 0.0
        return z

    for wrong in (all_heads, mean_over_positions_only, mean_over_d_head, zero_only):
        rejects(checks.ablate_head, wrong)
    rejects(checks.ablate_head, mean_over_positions_too, match="averages over positions as well")


# --- exercise 7 -------------------------------------------------------------------------
def test_ov_copying_score(toy):
    checks.ov_copying_score(ref.ov_copying_score, toy)
    arange = lambda W_E: torch.arange(W_E.shape[0])  # noqa: E731
    wrongs = [
        lambda W_E, W_V, W_O, W_U: ((W_E @ W_V @ W_O @ W_U).argmax(0) == arange(W_E)).float().mean(),
        lambda W_E, W_V, W_O, W_U: (W_E @ W_V @ W_O @ W_U).diag().mean(),
        lambda W_E, W_V, W_O, W_U: ((W_E @ W_V @ W_O @ W_U).topk(5).indices == arange(W_E)[:, None])
        .any(-1).float().mean(),
    ]
    for wrong in wrongs:
        rejects(checks.ov_copying_score, wrong, toy)


# --- exercise 8 -------------------------------------------------------------------------
def test_composition_score():
    checks.composition_score(ref.composition_score)
    fro = torch.linalg.matrix_norm
    spec = lambda M: torch.linalg.matrix_norm(M, ord=2)  # noqa: E731
    wrongs = [
        lambda A, B: spec(A @ B) / (spec(A) * spec(B)),
        lambda A, B: fro(A @ B),
        lambda A, B: fro(B @ A) / (fro(A) * fro(B)),
    ]
    for wrong in wrongs:
        rejects(checks.composition_score, wrong)


# --- exercise 3: the three detectors in one check -----------------------------------------
def test_head_detectors_names_the_function_that_fails(capsys):
    checks.head_detectors(ref.previous_token_scores, ref.duplicate_token_scores, ref.induction_scores)
    assert capsys.readouterr().out.count("✓") == 3
    rejects(checks.head_detectors, ref.previous_token_scores, ref.induction_scores, ref.induction_scores,
            match="^`duplicate_token_scores`")
    rejects(checks.head_detectors, ref.previous_token_scores, ref.duplicate_token_scores, ref.duplicate_token_scores,
            match="^`induction_scores`")


# --- exercise 9 -------------------------------------------------------------------------
def _hooked_scan(hook_suffix):
    def scan(model, tokens, detector):
        table = torch.zeros(model.cfg.n_layers, model.cfg.n_heads)

        def score(activation, hook):
            table[hook.layer()] = detector(activation)

        model.run_with_hooks(tokens, return_type=None, fwd_hooks=[(lambda name: name.endswith(hook_suffix), score)])
        return table

    return scan


def test_scan_heads(toy):
    checks.scan_heads(ref.pattern_scores, toy)
    checks.scan_heads(_hooked_scan("hook_pattern"), toy)

    def one_layer(model, tokens, detector):  # every row scored on layer 0's pattern
        pattern = model.run_with_cache(tokens)[1]["pattern", 0]
        return torch.stack([detector(pattern) for _ in range(model.cfg.n_layers)])

    cases = [
        (_hooked_scan("hook_attn_scores"), "not an attention pattern"),  # the scores before the softmax
        (lambda m, t, d: ref.pattern_scores(m, t, d).flip(0), "reverse order"),
        (lambda m, t, d: ref.pattern_scores(m, t, d).T, "shape"),  # (head, layer)
        (lambda m, t, d: ref.pattern_scores(m, t, ref.previous_token_scores), "never called the detector"),
        (lambda m, t, d: ref.pattern_scores(m, t, d)[:1].expand(m.cfg.n_layers, -1), "row L holds"),
        (one_layer, "row L holds"),
        (lambda m, t, d: torch.stack([d(m.run_with_cache(t)[1]["pattern", 1])] * m.cfg.n_layers), "1 times"),
    ]
    for wrong, match in cases:
        rejects(checks.scan_heads, wrong, toy, match=match)
        with hidden_variant(3):  # the grader's detector is imported in the kernel: only the table is judged
            rejects(checks.scan_heads, wrong, toy)


# --- input handling ---------------------------------------------------------------------
def test_stub_and_wrong_types_get_one_sentence():
    def stub(*args):
        raise NotImplementedError()

    rejects(checks.attention_pattern, stub, match="still raises NotImplementedError")
    rejects(checks.attention_pattern, "not a function", match="should be a function")
    rejects(checks.per_token_loss, lambda lg, t: lg.tolist(), match="should return a torch.Tensor")
    rejects(checks.per_token_loss, lambda lg, t: lg, match="should return shape")
    rejects(checks.composition_score, lambda A, B: [1.0], match="single number")


# --- correct alternatives ---------------------------------------------------------------
from mikit.checks import hidden_variant  # noqa: E402
from alternatives import assert_two_each, check_hidden_variants, listed  # noqa: E402  (tests/alternatives/)
from alternatives import induction_heads as alternatives  # noqa: E402

ALTERNATIVES = listed(alternatives)


STUDENTS = {student: gid for gid, exercise in checks.EXERCISES.items() for student in exercise.students}
REFERENCE = {"previous_token_scores": ref.previous_token_scores, "duplicate_token_scores": ref.duplicate_token_scores,
             "induction_scores": ref.induction_scores}


def test_every_exercise_has_two_alternatives():
    assert_two_each(alternatives, STUDENTS)


@pytest.mark.parametrize("name", ALTERNATIVES)
def test_alternative_passes_visible_and_hidden_checks(name, toy, capsys):
    function = name.split("__")[0]
    exercise = checks.EXERCISES[STUDENTS[function]]
    functions = [getattr(alternatives, name) if student == function else REFERENCE[student] for student in exercise.students]
    exercise.check(*functions, *((toy,) if STUDENTS[function] in ("count_correct_predictions", "ov_copying_score",
                                                                   "scan_heads") else ()))
    check_hidden_variants(exercise, functions, context=True)
    assert capsys.readouterr().out.count(f"✓ {function}:") == 4


def test_ablate_head_accepts_an_in_place_hook_that_returns_none():
    def in_place_but_wrong_head(z, hook, head, mode):
        z[:, :, head - 1] = 0.0

    checks.ablate_head(alternatives.ablate_head__in_place_returns_none)
    rejects(checks.ablate_head, lambda z, hook, head, mode: None)  # neither edits nor returns
    rejects(checks.ablate_head, in_place_but_wrong_head)
