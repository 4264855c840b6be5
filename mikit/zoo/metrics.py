"""Measurements the zoo records for each model: induction and previous-token heads, repeat loss.

They are the notebook-01 techniques of `mikit.induction` applied to a whole model, so the
numbers in a model's config.json are the ones students reproduce in the notebook.
"""

from __future__ import annotations

import torch
from jaxtyping import Float, Int
from torch import Tensor
from transformer_lens import HookedTransformer

from mikit import induction


@torch.inference_mode()
def induction_scores(model: HookedTransformer, seq_len: int = 50, batch: int = 16, seed: int = 0) -> Float[Tensor, "layer head"]:
    """Per head: mean attention from the second copy of `[BOS, r, r]` to the token after the earlier copy."""
    tokens = induction.repeated_tokens(model, seq_len, batch, seed)
    return induction.pattern_scores(model, tokens, lambda p: induction.induction_scores(p, seq_len)).cpu()


@torch.inference_mode()
def previous_token_scores(model: HookedTransformer, tokens: Int[Tensor, "batch pos"]) -> Float[Tensor, "layer head"]:
    """Per head: mean attention from every position after the first to the position just before it."""
    return induction.pattern_scores(model, tokens.to(model.cfg.device), induction.previous_token_scores).cpu()


@torch.inference_mode()
def repeated_sequence_losses(model: HookedTransformer, seq_len: int = 50, batch: int = 16, seed: int = 0) -> tuple[float, float]:
    """Mean next-token loss on the first and on the second copy of `[BOS, r, r]`."""
    tokens = induction.repeated_tokens(model, seq_len, batch, seed)
    loss = induction.per_token_loss(model(tokens), tokens)  # (batch, 2 * seq_len)
    return loss[:, :seq_len].mean().item(), loss[:, seq_len:].mean().item()


@torch.inference_mode()
def text_loss(model: HookedTransformer, tokens: Int[Tensor, "batch pos"]) -> float:
    """Mean next-token loss on `tokens`."""
    return model(tokens.to(model.cfg.device), return_type="loss").item()


def _best_head(scores: Float[Tensor, "layer head"]) -> tuple[str, float]:
    """The highest-scoring head as `"L{layer}H{head}"`, with its score."""
    (layer, head), = induction.top_heads(scores, 1)
    return f"L{layer}H{head}", round(scores[layer, head].item(), 4)


def summarize(model: HookedTransformer, text_tokens: Int[Tensor, "batch pos"], seq_len: int = 50, batch: int = 16) -> dict:
    """The headline numbers for a zoo model: best induction head, best layer-0 previous-token head, losses."""
    induction_head, induction_score = _best_head(induction_scores(model, seq_len, batch))
    prev_head, prev = _best_head(previous_token_scores(model, text_tokens)[:1])
    first, second = repeated_sequence_losses(model, seq_len, batch)
    return {
        "induction_score": induction_score,
        "induction_head": induction_head,
        "prev_token_score": prev,
        "prev_token_head": prev_head,
        "repeat_loss_first_half": round(first, 4),
        "repeat_loss_second_half": round(second, 4),
        "text_loss": round(text_loss(model, text_tokens), 4),
        "eval_seq_len": seq_len,
        "eval_batch": batch,
    }
