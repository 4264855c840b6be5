"""Evaluate an SAE inside its model: reconstruction, sparsity, and the loss when it replaces the activation.

    report = evaluate(model, sae, "blocks.15.hook_resid_pre", rows)
    report["ce_loss_recovered"], report["explained_variance"], report["l0"], report["dead_fraction"]

CE loss recovered splices the SAE into the forward pass: the hooked activation is replaced by its
reconstruction at every position but the first (BOS, which the SAE was not trained on), and the
model's next-token loss is compared with the clean run's and with zero ablation of that activation:
(CE_zero_abl − CE_sae) / (CE_zero_abl − CE_clean). Zero ablation can be far worse than any sensible
baseline (on SmolLM2's layer 15 it is worse than a uniform guess), which inflates that ratio, so the
report also gives the increase in loss in nats, ce_delta = CE_sae − CE_clean (ΔCE, as Gao et al. 2024
and SAEBench report it).
"""

from __future__ import annotations

from typing import Callable

import torch
from jaxtyping import Int
from torch import Tensor
from transformer_lens import HookedTransformer

from mikit.sae import metrics
from mikit.sae.architectures import SAE


def splice_hook(sae: SAE) -> Callable[[Tensor, object], Tensor]:
    """A hook that replaces an activation by the SAE's reconstruction (every position but the first)."""

    def hook(activation: Tensor, hook) -> Tensor:
        activation[:, 1:] = sae(activation[:, 1:]).to(activation.dtype)
        return activation

    return hook


def _zero_hook(activation: Tensor, hook) -> Tensor:
    activation[:, 1:] = 0
    return activation


@torch.no_grad()
def evaluate(
    model: HookedTransformer, sae: SAE, hook_name: str, rows: Int[Tensor, "batch pos"], *, batch_size: int = 16,
    dense_threshold: float = 0.1,
) -> dict[str, float]:
    """L0, explained variance, dead and dense latent fractions, CE losses (clean, SAE, zero) over `rows`,
    CE loss recovered and ΔCE (`ce_delta`, in nats)."""
    if hook_name not in model.hook_dict:
        raise ValueError(f"{hook_name!r} is not a hook point of this model.")
    sae.eval()
    totals = {"ce_clean": 0.0, "ce_sae": 0.0, "ce_zero_ablation": 0.0}
    counts = torch.zeros(sae.d_sae, dtype=torch.long)
    l0_sum, residual, n_tokens = 0.0, 0.0, 0
    # Variance about the mean, streamed: Σ‖x‖² − n‖mean‖², accumulated in float64.
    x_sum, x_square_sum = torch.zeros(sae.d_in, dtype=torch.float64), 0.0
    for start in range(0, rows.shape[0], batch_size):
        tokens = rows[start : start + batch_size]
        clean_loss, cache = model.run_with_cache(tokens, return_type="loss", names_filter=hook_name)
        x = cache[hook_name][:, 1:].flatten(0, 1).float()
        latents = sae.encode(x)
        residual += (sae.decode(latents) - x).pow(2).sum().item()
        counts += metrics.fire_counts(latents)
        l0_sum += (latents != 0).sum().item()
        n_tokens += x.shape[0]
        x_sum += x.double().sum(0)
        x_square_sum += x.double().pow(2).sum().item()
        weight = tokens.shape[0]
        totals["ce_clean"] += clean_loss.item() * weight
        totals["ce_sae"] += model.run_with_hooks(tokens, return_type="loss", fwd_hooks=[(hook_name, splice_hook(sae))]).item() * weight
        totals["ce_zero_ablation"] += model.run_with_hooks(tokens, return_type="loss", fwd_hooks=[(hook_name, _zero_hook)]).item() * weight
    ce = {key: value / rows.shape[0] for key, value in totals.items()}
    variance = x_square_sum - (x_sum.pow(2).sum() / n_tokens).item()
    return {
        "l0": l0_sum / n_tokens,
        "explained_variance": 1 - residual / variance,
        "dead_fraction": metrics.dead_fraction(counts),
        "dense_fraction": metrics.dense_fraction(counts.float() / n_tokens, dense_threshold),
        **ce,
        "ce_loss_recovered": metrics.ce_loss_recovered(ce["ce_clean"], ce["ce_sae"], ce["ce_zero_ablation"]),
        "ce_delta": ce["ce_sae"] - ce["ce_clean"],
        "n_tokens": float(n_tokens),
    }
