"""How good an SAE is: sparsity (L0, dead and dense latents), reconstruction (FVU) and CE loss recovered.

All take tensors of any leading shape and treat every vector along the last dimension as one token.
They return plain floats: numbers to print and compare, not losses to differentiate.
"""

from __future__ import annotations

import math

from jaxtyping import Float, Int
from torch import Tensor


def l0(latents: Float[Tensor, "*batch d_sae"]) -> float:
    """Mean number of nonzero latents per token."""
    if latents.ndim == 0 or latents.numel() == 0:
        raise ValueError(f"latents must hold at least one token of shape (..., d_sae); got shape {tuple(latents.shape)}.")
    return (latents != 0).sum(dim=-1).float().mean().item()


def fvu(x: Float[Tensor, "*batch d_in"], x_hat: Float[Tensor, "*batch d_in"]) -> float:
    """Fraction of variance unexplained: Σ‖x − x̂‖² / Σ‖x − mean(x)‖², the mean taken over tokens."""
    if x.shape != x_hat.shape:
        raise ValueError(f"x and x_hat must have the same shape; got {tuple(x.shape)} and {tuple(x_hat.shape)}.")
    if x.ndim == 0:
        raise ValueError("x must have a last dimension of features.")
    tokens = x.reshape(-1, x.shape[-1]).double()
    residual = (tokens - x_hat.reshape(-1, x.shape[-1]).double()).pow(2).sum()
    # Relative to predicting the mean activation: FVU = 1 is "no better than a constant".
    total = (tokens - tokens.mean(dim=0)).pow(2).sum()
    if total == 0:
        raise ValueError("x has zero variance across tokens, so the fraction of variance unexplained is undefined.")
    return (residual / total).item()


def explained_variance(x: Float[Tensor, "*batch d_in"], x_hat: Float[Tensor, "*batch d_in"]) -> float:
    """Fraction of variance explained, 1 − FVU."""
    return 1.0 - fvu(x, x_hat)


def fire_counts(latents: Float[Tensor, "*batch d_sae"]) -> Int[Tensor, "d_sae"]:
    """How many tokens each latent is nonzero on."""
    if latents.ndim == 0:
        raise ValueError("latents must have a last dimension of size d_sae.")
    return (latents.reshape(-1, latents.shape[-1]) != 0).sum(dim=0)


def dead_fraction(fire_counts: Int[Tensor, "d_sae"]) -> float:
    """Fraction of latents that never fired over an evaluation set (count 0)."""
    if fire_counts.ndim != 1 or fire_counts.numel() == 0:
        raise ValueError(f"fire_counts must be a non-empty 1-d tensor with one count per latent; got shape {tuple(fire_counts.shape)}.")
    return (fire_counts == 0).float().mean().item()


def dense_fraction(fire_frequency: Float[Tensor, "d_sae"], threshold: float = 0.1) -> float:
    """Fraction of latents firing on more than `threshold` of tokens (too often to be a specific feature).

    Args:
        fire_frequency: per latent, the fraction of evaluation tokens it fired on (fire_counts / n_tokens).
        threshold: the frequency above which a latent counts as dense; 0.1 is a common choice.
    """
    if fire_frequency.ndim != 1 or fire_frequency.numel() == 0:
        raise ValueError(f"fire_frequency must be a non-empty 1-d tensor with one frequency per latent; got shape {tuple(fire_frequency.shape)}.")
    if not 0 <= threshold <= 1:
        raise ValueError(f"threshold is a firing frequency and must be in [0, 1]; got {threshold}.")
    if bool(((fire_frequency < 0) | (fire_frequency > 1)).any()):
        raise ValueError("fire_frequency must hold frequencies in [0, 1]; divide fire counts by the number of tokens.")
    return (fire_frequency > threshold).float().mean().item()


def ce_loss_recovered(ce_clean: float, ce_sae: float, ce_zero_ablation: float) -> float:
    """Share of the loss gap closed by the SAE: (CE_zero_abl − CE_sae) / (CE_zero_abl − CE_clean).

    1 means splicing the SAE in costs nothing; 0 means it is as bad as zeroing the activation.
    """
    ce_clean, ce_sae, ce_zero_ablation = (float(v) for v in (ce_clean, ce_sae, ce_zero_ablation))
    if not all(math.isfinite(v) for v in (ce_clean, ce_sae, ce_zero_ablation)):
        raise ValueError(f"CE losses must be finite numbers; got clean={ce_clean}, sae={ce_sae}, zero_ablation={ce_zero_ablation}.")
    if ce_zero_ablation == ce_clean:
        raise ValueError(f"CE with zero ablation equals the clean CE ({ce_clean}), so there is no loss gap for the SAE to recover.")
    return (ce_zero_ablation - ce_sae) / (ce_zero_ablation - ce_clean)


__all__ = ["ce_loss_recovered", "dead_fraction", "dense_fraction", "explained_variance", "fire_counts", "fvu", "l0"]
