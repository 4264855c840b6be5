"""Induction heads (notebook 01): the reference implementations the checks compare against.

Attention-head detectors, per-token loss, direct logit attribution, head ablation and
circuit scores, written for TransformerLens models and caches. Sequences of repeated
random tokens have the layout `[BOS, r_1 … r_n, r_1 … r_n]`, so a token in the second
copy at position `n + 1 + i` has its earlier copy at `1 + i`.
"""

from __future__ import annotations

from typing import Callable

import torch
from jaxtyping import Float, Int
from torch import Tensor
from transformer_lens import HookedTransformer
from transformer_lens.hook_points import HookPoint
from transformer_lens.utilities import get_act_name


def count_correct_predictions(model: HookedTransformer, text: str) -> int:
    """How many tokens of `text` the model predicts exactly (argmax) from the tokens before them."""
    tokens = model.to_tokens(text)
    logits = model(tokens)
    return int((logits[0, :-1].argmax(-1) == tokens[0, 1:]).sum())


def attention_pattern(
    q: Float[Tensor, "batch q_pos head d_head"], k: Float[Tensor, "batch k_pos head d_head"]
) -> Float[Tensor, "batch head q_pos k_pos"]:
    """Causal softmax attention probabilities from queries and keys (no attention to the future)."""
    scores = torch.einsum("bqhd,bkhd->bhqk", q, k) / q.shape[-1] ** 0.5
    future = torch.triu(torch.ones(scores.shape[-2:], dtype=torch.bool, device=q.device), diagonal=1)
    return scores.masked_fill(future, float("-inf")).softmax(dim=-1)


def _diagonal_score(pattern: Float[Tensor, "batch head q k"], offset: int, n_queries: int) -> Float[Tensor, "head"]:
    """Mean attention from each of the last `n_queries` queries to the key `offset` tokens back."""
    diag = pattern.diagonal(offset=-offset, dim1=-2, dim2=-1)  # (batch, head, q_pos - offset)
    return diag[..., -n_queries:].mean(dim=(0, -1))


def previous_token_scores(pattern: Float[Tensor, "batch head q k"]) -> Float[Tensor, "head"]:
    """Mean attention from every position after the first to the position just before it."""
    return _diagonal_score(pattern, offset=1, n_queries=pattern.shape[-1] - 1)


def duplicate_token_scores(pattern: Float[Tensor, "batch head q k"], seq_len: int) -> Float[Tensor, "head"]:
    """On repeated random tokens: mean attention from the second copy to the same token's first copy."""
    return _diagonal_score(pattern, offset=seq_len, n_queries=seq_len)


def induction_scores(pattern: Float[Tensor, "batch head q k"], seq_len: int) -> Float[Tensor, "head"]:
    """On repeated random tokens: mean attention to the token *after* the earlier copy of the current one."""
    return _diagonal_score(pattern, offset=seq_len - 1, n_queries=seq_len)


def random_token_range(model: HookedTransformer) -> tuple[int, int]:
    """Token ids to draw random sequences from: no special tokens; ordinary words in big vocabularies."""
    tok = model.tokenizer
    low, high = (1000, 20_000) if model.cfg.d_vocab > 20_000 else (1, model.cfg.d_vocab)
    # Above every special id inside the range (SmolLM2's sit at the start; GPT-2's one, 50256, is past it).
    specials = [i for i in (tok.all_special_ids if tok is not None else []) if i < high]
    return max([low, *(1 + i for i in specials)]), high


def repeated_tokens(model: HookedTransformer, seq_len: int, batch: int, seed: int = 0) -> Int[Tensor, "batch pos"]:
    """`[BOS, r, r]` for `batch` random sequences `r` of `seq_len` tokens (pos = 2 * seq_len + 1)."""
    low, high = random_token_range(model)
    gen = torch.Generator().manual_seed(seed)
    half = torch.randint(low, high, (batch, seq_len), generator=gen)
    bos = torch.full((batch, 1), model.tokenizer.bos_token_id)
    return torch.cat([bos, half, half], dim=1).to(model.cfg.device)


def per_token_loss(logits: Float[Tensor, "batch pos vocab"], tokens: Int[Tensor, "batch pos"]) -> Float[Tensor, "batch pos_minus_1"]:
    """Cross-entropy of each next token: position p's logits predict token p + 1."""
    log_probs = logits[:, :-1].log_softmax(dim=-1)
    return -log_probs.gather(-1, tokens[:, 1:, None])[..., 0]


def pattern_scores(
    model: HookedTransformer,
    tokens: Int[Tensor, "batch pos"],
    score_fn: Callable[[Tensor], Tensor],
) -> Float[Tensor, "layer head"]:
    """Apply a detector (pattern → per-head score) to every layer, caching only the patterns."""
    _, cache = model.run_with_cache(tokens, names_filter=lambda name: name.endswith("hook_pattern"))
    return torch.stack([score_fn(cache["pattern", layer]) for layer in range(model.cfg.n_layers)])


def logit_attribution(
    components: Float[Tensor, "comp batch pos d_model"],
    W_U: Float[Tensor, "d_model vocab"],
    tokens: Int[Tensor, "batch pos"],
) -> Float[Tensor, "comp batch pos_minus_1"]:
    """Each component's direct contribution to the logit of the *next* token, at every position."""
    next_dirs = W_U[:, tokens[:, 1:]]  # (d_model, batch, pos-1)
    return torch.einsum("cbpd,dbp->cbp", components[:, :, :-1], next_dirs)


def ablate_head(
    z: Float[Tensor, "batch pos head d_head"], hook: HookPoint, head: int, mode: str = "zero"
) -> Float[Tensor, "batch pos head d_head"]:
    """Hook on `hook_z`: replace one head's output by zero, or by its mean over batch and positions."""
    z = z.clone()
    if mode == "zero":
        z[:, :, head] = 0.0
    elif mode == "mean":
        z[:, :, head] = z[:, :, head].mean(dim=(0, 1))
    else:
        raise ValueError(f"mode must be 'zero' or 'mean', not {mode!r}.")
    return z


@torch.inference_mode()
def ablation_loss_increase(
    model: HookedTransformer,
    tokens: Int[Tensor, "batch pos"],
    seq_len: int,
    heads: list[tuple[int, int]] | None = None,
    mode: str = "zero",
    hook_fn: Callable = ablate_head,
) -> dict[tuple[int, int], float]:
    """Increase in mean loss on the repeated half when each head (layer, head) is ablated alone."""
    def repeat_loss(logits: Tensor) -> float:
        return per_token_loss(logits, tokens)[:, -seq_len:].mean().item()

    base = repeat_loss(model(tokens))
    if heads is None:
        heads = [(layer, head) for layer in range(model.cfg.n_layers) for head in range(model.cfg.n_heads)]
    increase = {}
    for layer, head in heads:
        hook = (get_act_name("z", layer), lambda z, hook, h=head: hook_fn(z, hook, h, mode))
        increase[(layer, head)] = repeat_loss(model.run_with_hooks(tokens, fwd_hooks=[hook])) - base
    return increase


def ov_copying_score(
    W_E: Float[Tensor, "vocab d_model"],
    W_V: Float[Tensor, "d_model d_head"],
    W_O: Float[Tensor, "d_head d_model"],
    W_U: Float[Tensor, "d_model vocab"],
) -> float:
    """Fraction of tokens whose own logit is the largest when the head attends to them (full OV circuit)."""
    full_ov = W_E @ W_V @ W_O @ W_U  # (source token, output logit)
    return (full_ov.argmax(dim=-1) == torch.arange(W_E.shape[0], device=W_E.device)).float().mean().item()


def composition_score(W_A: Float[Tensor, "d_in d_mid"], W_B: Float[Tensor, "d_mid d_out"]) -> float:
    """‖W_A W_B‖_F / (‖W_A‖_F ‖W_B‖_F): how much W_B reads from the subspace W_A writes to."""
    return (torch.linalg.matrix_norm(W_A @ W_B) / (torch.linalg.matrix_norm(W_A) * torch.linalg.matrix_norm(W_B))).item()


def top_heads(scores: Float[Tensor, "layer head"], k: int) -> list[tuple[int, int]]:
    """The `k` (layer, head) pairs with the largest scores, largest first."""
    flat = scores.flatten().topk(k).indices
    n_heads = scores.shape[1]
    return [(int(i) // n_heads, int(i) % n_heads) for i in flat]
