"""Metrics shared by the techniques: per-token loss, the logit difference and its normalised form."""

from __future__ import annotations

import torch
from jaxtyping import Float, Int
from torch import Tensor


def per_token_loss(logits: Float[Tensor, "batch pos d_vocab"], tokens: Int[Tensor, "batch pos"]) -> Float[Tensor, "batch pos_minus_1"]:
    """Cross-entropy of each next token: position p's logits predict token p + 1."""
    log_probs = logits[:, :-1].log_softmax(dim=-1)
    return -log_probs.gather(-1, tokens[:, 1:, None])[..., 0]


def logit_diff(
    logits: Float[Tensor, "batch pos d_vocab"], positions: Int[Tensor, "batch"],
    correct: Int[Tensor, "batch"], wrong: Int[Tensor, "batch"],
) -> Float[Tensor, "batch"]:
    """Each prompt's logit of its `correct` token minus that of its `wrong` one, at its own position."""
    batch = torch.arange(len(logits), device=logits.device)
    at = logits[batch, positions.to(logits.device)]
    return at[batch, correct.to(logits.device)] - at[batch, wrong.to(logits.device)]


def normalised_metric(value: Tensor | float, clean: float, corrupted: float) -> Tensor | float:
    """0 where `value` equals the corrupted run's metric, 1 where it equals the clean run's."""
    if clean == corrupted:
        raise ValueError("the clean and corrupted metrics are equal, so there is nothing to normalise against.")
    return (value - corrupted) / (clean - corrupted)
