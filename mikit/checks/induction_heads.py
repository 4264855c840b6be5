"""Checks for notebook 01 (induction heads): each compares a student function with `mikit.induction`."""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor
from transformer_lens import HookedTransformer

from mikit import core
from mikit import induction as ref
from mikit.checks import (
    CheckFailed, Exercise, call_student, expect_close, expect_number, expect_tensor, hidden, offline_model, passed,
    reject_known_mistakes, reveal, seeded, size,
)
from mikit.session import TOY_LM


def _random_patterns(batch: int, heads: int, pos: int, seed: int) -> Tensor:
    """Causal attention patterns with random rows, so each diagonal holds different values."""
    q = torch.randn(batch, pos, heads, 8, generator=seeded(seed))
    k = torch.randn(batch, pos, heads, 8, generator=seeded(seed + 1))
    return ref.attention_pattern(q * 3, k)


def count_correct_predictions(fn: Callable, model: HookedTransformer) -> None:
    """Exercise 1: number of tokens the model predicts exactly."""
    __tracebackhide__ = True
    texts = ["The cat sat on the mat. The cat sat on the mat.", "one two three four five six seven eight"]
    if hidden():  # other texts: random words, repeated so that an induction-capable model gets some right
        words = ["".join(chr(97 + int(c)) for c in torch.randint(0, 26, (4,), generator=seeded(i))) for i in range(6)]
        texts = [" ".join(words[:3] * 2), " ".join(words[2:] * 2)]
    for text in texts:
        got = expect_number(call_student(fn, "count_correct_predictions", model, text), "count_correct_predictions")
        want = ref.count_correct_predictions(model, text)
        if got != want:
            n = model.to_tokens(text).shape[1]
            raise CheckFailed(
                f"`count_correct_predictions` gave {got:g}" + reveal(f" on {text!r}, expected {want}")
                + "; compare the logits at position p with the token at p + 1 ("
                + reveal(f"{n - 1} predictions for {n} tokens", "n - 1 predictions for n tokens") + " including BOS)"
            )
    passed("count_correct_predictions")


def attention_pattern(fn: Callable) -> None:
    """Exercise 2: causal softmax attention from q and k."""
    __tracebackhide__ = True
    batch, pos, heads, d_head = size(2), size(7), size(3), size(16, 8)
    q = torch.randn(batch, pos, heads, d_head, generator=seeded(1))
    k = torch.randn(batch, pos, heads, d_head, generator=seeded(2))
    name = "attention_pattern"
    got = expect_tensor(call_student(fn, name, q, k), name, (batch, heads, pos, pos), "batch head q_pos k_pos")
    want = ref.attention_pattern(q, k)
    rows = got.sum(-1)
    if not torch.allclose(rows, torch.ones_like(rows), atol=1e-4):
        raise CheckFailed(
            f"each row of the pattern (one query) must sum to 1 over the key dimension; yours sum to "
            f"{rows.min():.2f}–{rows.max():.2f}: apply softmax over the last dimension"
        )
    if got.triu(diagonal=1).abs().max() > 1e-6:
        raise CheckFailed(
            "your pattern puts attention on future tokens (above the diagonal): mask scores with k_pos > q_pos "
            "to -inf before the softmax"
        )
    expect_close(got, want, name, hint="scale the scores by 1/sqrt(d_head) before masking and softmax")
    passed(name)


def _window_score(pattern: Tensor, offset: int, n_queries: int, shift: int) -> Tensor:
    """Mean attention `offset` keys back over `n_queries` queries ending `shift` positions before the last."""
    diag = pattern.diagonal(offset=-offset, dim1=-2, dim2=-1)
    end = diag.shape[-1] - shift
    return diag[..., end - n_queries : end].mean(dim=(0, -1))


def _detector(fn: Callable, name: str, offset: Callable[[int], int], queries: str, needs_seq_len: bool) -> None:
    """A head-type score: mean attention `offset(seq_len)` keys back over the queries described by `queries`."""
    __tracebackhide__ = True
    seq_len, heads = size(6), size(4)
    pattern = _random_patterns(batch=size(3), heads=heads, pos=2 * seq_len + 1, seed=7)
    args = (pattern, seq_len) if needs_seq_len else (pattern,)
    got = expect_tensor(call_student(fn, name, *args), name, (heads,), "head")
    want = getattr(ref, name)(*args)
    for wrong_offset in range(0, 2 * seq_len):
        if torch.allclose(got, ref._diagonal_score(pattern, wrong_offset, pattern.shape[-1] - wrong_offset), atol=1e-5):
            if not torch.allclose(got, want, atol=1e-5):
                raise CheckFailed(
                    f"`{name}` measures attention to the key {wrong_offset} positions back over all queries; "
                    "check which key offset and which query positions this head type needs"
                )
    right = offset(seq_len)
    n_queries = pattern.shape[-1] - 1 if not needs_seq_len else seq_len
    n_diagonal = pattern.shape[-1] - right
    shifted = [(n, shift) for n, shift in ((n_queries, 1), (n_queries + 1, 0), (n_queries - 1, 0), (n_queries - 1, 1))
               if 1 <= n and n + shift <= n_diagonal]
    if any(torch.allclose(got, _window_score(pattern, right, n, shift), atol=1e-5) for n, shift in shifted):
        if not torch.allclose(got, want, atol=1e-5):
            raise CheckFailed(
                f"`{name}` has the right key offset ({right} back) but its query window is off by one position: "
                f"average over {queries}"
            )
    expect_close(got, want, name, atol=1e-5, hint="average over the batch and over query positions only")
    passed(name)


def previous_token_scores(fn: Callable) -> None:
    """Exercise 3, first detector: attention to the previous position."""
    _detector(fn, "previous_token_scores", lambda seq_len: 1, "every query but the first (it has no previous token)",
              needs_seq_len=False)


def duplicate_token_scores(fn: Callable) -> None:
    """Exercise 3, second detector: attention from the second copy to the same token's first copy."""
    _detector(fn, "duplicate_token_scores", lambda seq_len: seq_len,
              "the queries of the second copy only, the last seq_len positions", needs_seq_len=True)


def induction_scores(fn: Callable) -> None:
    """Exercise 3, third detector: attention to the token after the earlier copy."""
    _detector(fn, "induction_scores", lambda seq_len: seq_len - 1,
              "the queries of the second copy only, the last seq_len positions", needs_seq_len=True)


def head_detectors(previous: Callable, duplicate: Callable, induction: Callable) -> None:
    """Exercise 3: the three detectors, each checked on its own (the first that fails stops the check)."""
    __tracebackhide__ = True
    previous_token_scores(previous)
    duplicate_token_scores(duplicate)
    induction_scores(induction)


def per_token_loss(fn: Callable) -> None:
    """Exercise 4: next-token cross-entropy at each position."""
    __tracebackhide__ = True
    batch, pos, vocab = size(2), size(9), size(11)
    logits = torch.randn(batch, pos, vocab, generator=seeded(3)) * 2
    tokens = torch.randint(0, vocab, (batch, pos), generator=seeded(4))
    name = "per_token_loss"
    got = expect_tensor(call_student(fn, name, logits, tokens), name, (batch, pos - 1), "batch pos-1")
    if (got < 0).any():
        raise CheckFailed("a cross-entropy loss is never negative; yours is: return minus the log-probability")
    expect_close(
        got, ref.per_token_loss(logits, tokens), name,
        hint="the logits at position p predict the token at p + 1; use log_softmax over the vocabulary",
    )
    passed(name)


def logit_attribution(fn: Callable) -> None:
    """Exercise 5: direct logit attribution of components to the next token."""
    __tracebackhide__ = True
    comp, batch, pos, d_model, vocab = size(5), size(2), size(6), size(8), size(13)
    components = torch.randn(comp, batch, pos, d_model, generator=seeded(5))
    W_U = torch.randn(d_model, vocab, generator=seeded(6))
    tokens = torch.randint(0, vocab, (batch, pos), generator=seeded(7))
    name = "logit_attribution"
    got = expect_tensor(
        call_student(fn, name, components, W_U, tokens), name, (comp, batch, pos - 1), "comp batch pos-1"
    )
    expect_close(
        got, ref.logit_attribution(components, W_U, tokens), name,
        hint="the component at position p is attributed to the unembedding direction of token p + 1",
    )
    passed(name)


def ablate_head(fn: Callable) -> None:
    """Exercise 6: zero and (per-position) mean ablation hook on hook_z."""
    __tracebackhide__ = True
    heads = size(4)
    z = torch.randn(size(3), size(5), heads, size(6), generator=seeded(8)) + 1.0
    z += torch.arange(z.shape[1])[None, :, None, None]  # positions differ on average, as in a real model
    head = heads - 2
    name = "ablate_head"
    for mode in ("zero", "mean"):
        original, edited = z.clone(), z.clone()
        got = call_student(fn, name, edited, None, head, mode)
        if got is None:  # a hook may edit its input in place and return nothing, as TransformerLens allows
            got = edited
        got = expect_tensor(got, name, z.shape, "batch pos head d_head")
        want = core.ablate_head(original.clone(), None, head, mode)
        others = [h for h in range(heads) if h != head]
        if not torch.allclose(got[:, :, others], original[:, :, others]):
            raise CheckFailed(f"`ablate_head` (mode={mode!r}) changed heads other than the one asked for")
        if mode == "mean":
            over_positions = original.clone()
            over_positions[:, :, head] = original[:, :, head].mean(dim=(0, 1))
            reject_known_mistakes(got, [(over_positions, (
                "`ablate_head` (mode='mean') averages over positions as well: take the mean over the batch only, "
                "so each position keeps its own average (averaging over positions also removes positional signal)"
            ))], want)
        expect_close(
            got, want, f"{name}(mode={mode!r})",
            hint="zero ablation sets the head's output to 0 at every position" if mode == "zero" else
            "mean ablation replaces the head's output at each position by its mean over the batch (keep pos and d_head)",
        )
    passed(name, "zero and per-position mean ablation")


def ov_copying_score(fn: Callable, model: HookedTransformer) -> None:
    """Exercise 7: fraction of tokens the full OV circuit copies."""
    __tracebackhide__ = True
    name = "ov_copying_score"
    for layer in range(model.cfg.n_layers):
        for head in range(model.cfg.n_heads):
            args = (model.W_E, model.W_V[layer, head], model.W_O[layer, head], model.W_U)
            got = expect_number(call_student(fn, name, *args), name)
            want = ref.ov_copying_score(*args)
            if abs(got - want) > 1e-6:
                raise CheckFailed(
                    f"`ov_copying_score` gave {got:.3f} for head {layer}.{head}" + reveal(f", expected {want:.3f}")
                    + "; the full OV "
                    "circuit is W_E W_V W_O W_U (rows: source token), and a token is copied when its own column "
                    "is the largest in its row"
                )
    passed(name, f"all {model.cfg.n_layers * model.cfg.n_heads} heads")


def composition_score(fn: Callable) -> None:
    """Exercise 8: composition score between two matrices."""
    __tracebackhide__ = True
    name = "composition_score"
    d_model, d_head = size(12), size(7)
    W_A = torch.randn(d_model, d_head, generator=seeded(9))
    W_B = torch.randn(d_head, d_model, generator=seeded(10))
    W_B[:, :6] *= 5  # uneven singular values, so spectral and Frobenius norms disagree
    got = expect_number(call_student(fn, name, W_A, W_B), name)
    want = ref.composition_score(W_A, W_B)
    if abs(got - want) > 1e-4:
        raise CheckFailed(
            f"`composition_score` gave {got:.4f}" + reveal(f", expected {want:.4f}") + ": divide the Frobenius norm of W_A @ W_B by "
            "the product of the Frobenius norms of W_A and W_B"
        )
    passed(name)


def _bos_share(pattern: Tensor) -> Tensor:
    """The check's detector: each head's mean attention to BOS, a score that tells layers apart."""
    return pattern[..., 0].mean(dim=(0, -1))


def _expect_one_pattern_per_layer(seen: list[Tensor], name: str, n_layers: int) -> None:
    if not seen:
        raise CheckFailed(f"`{name}` never called the detector it was given: apply `detector` to each layer's pattern")
    if any(p.shape[-1] != p.shape[-2] or not torch.allclose(p.sum(-1), torch.ones(()), atol=1e-4) or p.min() < 0
           for p in seen):
        raise CheckFailed(f"`{name}` gave the detector something that is not an attention pattern (rows of "
                          "probabilities summing to 1): read `blocks.L.attn.hook_pattern`, not the scores before the softmax")
    if len(seen) != n_layers:
        raise CheckFailed(f"`{name}` called the detector {len(seen)} times for a {n_layers}-layer model: once per layer")


def scan_heads(fn: Callable, model: HookedTransformer) -> None:
    """Exercise 9: one forward pass, a detector applied to every layer's pattern, a (layer, head) table."""
    __tracebackhide__ = True
    name = "scan_heads"
    cfg = model.cfg
    seed = int(torch.randint(2**31 - 1, (1,), generator=seeded(12)))
    tokens = ref.repeated_tokens(model, seq_len=size(8), batch=size(2), seed=seed)
    _, cache = model.run_with_cache(tokens, names_filter=lambda hook: hook.endswith("hook_pattern"))
    patterns = [cache["pattern", layer] for layer in range(cfg.n_layers)]
    want = torch.stack([_bos_share(p) for p in patterns])
    seen: list[Tensor] = []  # what the student's function hands the detector (in the notebook's kernel)

    def recording(pattern: Tensor) -> Tensor:
        seen.append(pattern.detach())
        return _bos_share(pattern)

    # The grader's student function runs in another kernel: it gets a detector it can import, not this closure.
    detector = _bos_share if hidden() else recording
    got = expect_tensor(call_student(fn, name, model, tokens, detector), name, (cfg.n_layers, cfg.n_heads), "layer head")
    if not hidden():
        _expect_one_pattern_per_layer(seen, name, cfg.n_layers)
    reject_known_mistakes(got, [(want.flip(0), "your layers are in reverse order: row L is layer L")], want)
    expect_close(got, want, name, atol=1e-5, hint="row L holds detector(pattern of layer L), one number per head")
    passed(name)


def _toy() -> tuple:
    return (offline_model(TOY_LM),)


EXERCISES = {
    "count_correct_predictions": Exercise(
        count_correct_predictions, ("count_correct_predictions",), _toy, (ref.count_correct_predictions,)
    ),
    "attention_pattern": Exercise(attention_pattern, ("attention_pattern",), forbidden=(ref.attention_pattern,)),
    "head_detectors": Exercise(
        head_detectors, ("previous_token_scores", "duplicate_token_scores", "induction_scores"),
        forbidden=(ref.previous_token_scores, ref.duplicate_token_scores, ref.induction_scores, ref._diagonal_score),
    ),
    "per_token_loss": Exercise(per_token_loss, ("per_token_loss",), forbidden=(ref.per_token_loss,)),
    "logit_attribution": Exercise(logit_attribution, ("logit_attribution",), forbidden=(ref.logit_attribution,)),
    "ablate_head": Exercise(ablate_head, ("ablate_head",), forbidden=(core.ablate_head,)),
    "ov_copying_score": Exercise(ov_copying_score, ("ov_copying_score",), _toy, (ref.ov_copying_score,)),
    "composition_score": Exercise(composition_score, ("composition_score",), forbidden=(ref.composition_score,)),
    "scan_heads": Exercise(scan_heads, ("scan_heads",), _toy, (ref.pattern_scores,)),
}
