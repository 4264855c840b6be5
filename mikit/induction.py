"""Induction heads (notebook 01): the reference implementations the checks compare against.

Attention-head detectors, direct logit attribution, ablation sweeps and circuit scores, written
for TransformerLens models and caches (per-token loss and head ablation come from `mikit.core`),
and the same detectors applied to a whole model, as the zoo records them for each of its models. Sequences of repeated
random tokens have the layout `[BOS, r_1 … r_n, r_1 … r_n]`, so a token in the second
copy at position `n + 1 + i` has its earlier copy at `1 + i`.
"""

from __future__ import annotations

from typing import Callable

import torch
from jaxtyping import Float, Int
from torch import Tensor
from transformer_lens import HookedTransformer
from transformer_lens.utilities import get_act_name

from mikit.core import Ablation, Head, ablate_head, per_token_loss


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


def _diagonal_score(pattern: Float[Tensor, "batch head q_pos k_pos"], offset: int, n_queries: int) -> Float[Tensor, "head"]:
    """Mean attention from each of the last `n_queries` queries to the key `offset` tokens back."""
    diag = pattern.diagonal(offset=-offset, dim1=-2, dim2=-1)  # (batch, head, q_pos - offset)
    return diag[..., -n_queries:].mean(dim=(0, -1))


def previous_token_scores(pattern: Float[Tensor, "batch head q_pos k_pos"]) -> Float[Tensor, "head"]:
    """Mean attention from every position after the first to the position just before it."""
    return _diagonal_score(pattern, offset=1, n_queries=pattern.shape[-1] - 1)


def duplicate_token_scores(pattern: Float[Tensor, "batch head q_pos k_pos"], seq_len: int) -> Float[Tensor, "head"]:
    """On repeated random tokens: mean attention from the second copy to the same token's first copy."""
    return _diagonal_score(pattern, offset=seq_len, n_queries=seq_len)


def induction_scores(pattern: Float[Tensor, "batch head q_pos k_pos"], seq_len: int) -> Float[Tensor, "head"]:
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


def pattern_scores(
    model: HookedTransformer,
    tokens: Int[Tensor, "batch pos"],
    score_fn: Callable[[Tensor], Tensor],
) -> Float[Tensor, "layer head"]:
    """Apply a detector (pattern → per-head score) to every layer, caching only the patterns."""
    _, cache = model.run_with_cache(tokens, names_filter=lambda name: name.endswith("hook_pattern"))
    return torch.stack([score_fn(cache["pattern", layer]) for layer in range(model.cfg.n_layers)])


def logit_attribution(
    components: Float[Tensor, "component batch pos d_model"],
    W_U: Float[Tensor, "d_model d_vocab"],
    tokens: Int[Tensor, "batch pos"],
) -> Float[Tensor, "component batch pos_minus_1"]:
    """Each component's direct contribution to the logit of the *next* token, at every position."""
    next_dirs = W_U[:, tokens[:, 1:]]  # (d_model, batch, pos-1)
    return torch.einsum("cbpd,dbp->cbp", components[:, :, :-1], next_dirs)


@torch.inference_mode()
def ablation_loss_increase(
    model: HookedTransformer,
    tokens: Int[Tensor, "batch pos"],
    seq_len: int,
    heads: list[Head] | None = None,
    *,
    method: Ablation = "zero",
    hook_fn: Callable = ablate_head,
) -> dict[Head, float]:
    """Increase in mean loss on the repeated half when each head (layer, head) is ablated alone.

    `hook_fn(z, hook, head, method)` ablates one head of `hook_z` (default: `mikit.core.ablate_head`).
    """
    def repeat_loss(logits: Tensor) -> float:
        return per_token_loss(logits, tokens)[:, -seq_len:].mean().item()

    base = repeat_loss(model(tokens))
    if heads is None:
        heads = [(layer, head) for layer in range(model.cfg.n_layers) for head in range(model.cfg.n_heads)]
    increase = {}
    for layer, head in heads:
        hook = (get_act_name("z", layer), lambda z, hook, h=head: hook_fn(z, hook, h, method))
        increase[(layer, head)] = repeat_loss(model.run_with_hooks(tokens, fwd_hooks=[hook])) - base
    return increase


def ov_copying_score(
    W_E: Float[Tensor, "d_vocab d_model"],
    W_V: Float[Tensor, "d_model d_head"],
    W_O: Float[Tensor, "d_head d_model"],
    W_U: Float[Tensor, "d_model d_vocab"],
) -> float:
    """Fraction of tokens whose own logit is the largest when the head attends to them (full OV circuit)."""
    full_ov = W_E @ W_V @ W_O @ W_U  # (source token, output logit)
    return (full_ov.argmax(dim=-1) == torch.arange(W_E.shape[0], device=W_E.device)).float().mean().item()


def composition_score(W_A: Float[Tensor, "d_in d_mid"], W_B: Float[Tensor, "d_mid d_out"]) -> float:
    """‖W_A W_B‖_F / (‖W_A‖_F ‖W_B‖_F): how much W_B reads from the subspace W_A writes to."""
    return (torch.linalg.matrix_norm(W_A @ W_B) / (torch.linalg.matrix_norm(W_A) * torch.linalg.matrix_norm(W_B))).item()


def top_heads(scores: Float[Tensor, "layer head"], k: int) -> list[Head]:
    """The `k` (layer, head) pairs with the largest scores, largest first."""
    flat = scores.flatten().topk(k).indices
    n_heads = scores.shape[1]
    return [(int(i) // n_heads, int(i) % n_heads) for i in flat]


# ---- whole-model measurements (the numbers a zoo model's config.json records) ---------------------


@torch.inference_mode()
def model_induction_scores(model: HookedTransformer, *, seq_len: int = 50, batch: int = 16, seed: int = 0) -> Float[Tensor, "layer head"]:
    """Per head of `model`: mean attention from the second copy of `[BOS, r, r]` to the token after the earlier copy."""
    tokens = repeated_tokens(model, seq_len, batch, seed)
    return pattern_scores(model, tokens, lambda p: induction_scores(p, seq_len)).cpu()


@torch.inference_mode()
def model_previous_token_scores(model: HookedTransformer, tokens: Int[Tensor, "batch pos"]) -> Float[Tensor, "layer head"]:
    """Per head of `model`: mean attention from every position after the first to the position just before it."""
    return pattern_scores(model, tokens.to(model.cfg.device), previous_token_scores).cpu()


@torch.inference_mode()
def repeated_sequence_losses(model: HookedTransformer, *, seq_len: int = 50, batch: int = 16, seed: int = 0) -> tuple[float, float]:
    """Mean next-token loss on the first and on the second copy of `[BOS, r, r]`."""
    tokens = repeated_tokens(model, seq_len, batch, seed)
    loss = per_token_loss(model(tokens), tokens)  # (batch, 2 * seq_len)
    return loss[:, :seq_len].mean().item(), loss[:, seq_len:].mean().item()


def _best_head(scores: Float[Tensor, "layer head"]) -> tuple[str, float]:
    """The highest-scoring head as `"L{layer}H{head}"`, with its score."""
    (layer, head), = top_heads(scores, 1)
    return f"L{layer}H{head}", round(scores[layer, head].item(), 4)


@torch.inference_mode()
def summarize_model(model: HookedTransformer, text_tokens: Int[Tensor, "batch pos"], *, seq_len: int = 50, batch: int = 16) -> dict:
    """The headline numbers of a model: best induction head, best layer-0 previous-token head, losses."""
    induction_head, induction_score = _best_head(model_induction_scores(model, seq_len=seq_len, batch=batch))
    prev_head, prev = _best_head(model_previous_token_scores(model, text_tokens)[:1])
    first, second = repeated_sequence_losses(model, seq_len=seq_len, batch=batch)
    text_loss = model(text_tokens.to(model.cfg.device), return_type="loss").item()
    return {
        "induction_score": induction_score,
        "induction_head": induction_head,
        "prev_token_score": prev,
        "prev_token_head": prev_head,
        "repeat_loss_first_half": round(first, 4),
        "repeat_loss_second_half": round(second, 4),
        "text_loss": round(text_loss, 4),
        "eval_seq_len": seq_len,
        "eval_batch": batch,
    }
