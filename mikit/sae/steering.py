"""Steer a model with an SAE latent: add the latent's decoder direction to the residual stream while it generates.

    steered = generate_steered(model, sae, latent=42, value=20.0, prompt="I went to the")

Adding `value · W_dec[latent]` is what the SAE's reconstruction would contain if the latent fired at
`value`, so `value` is on the latent's own scale: its top activations (see the dashboard) are a natural
unit, and several times that is typical for visible steering. Generation is greedy by default, so
steering is the only difference from an unsteered run (`mikit.viz.steering_table` shows the two side
by side). This is additive steering: the added vector is the same whatever the latent already reads.
"""

from __future__ import annotations

from typing import Callable

import torch
from jaxtyping import Float
from torch import Tensor
from transformer_lens import HookedTransformer

from mikit.sae.architectures import SAE


def steering_hook(direction: Float[Tensor, "d_model"], value: float) -> Callable[[Tensor, object], Tensor]:
    """A forward hook that adds `value · direction` at every position (also the new ones while generating)."""

    def hook(activation: Tensor, hook) -> Tensor:
        return activation + value * direction.to(activation.dtype)

    return hook


def generate_steered(
    model: HookedTransformer, sae: SAE, latent: int, value: float, prompt: str, max_new_tokens: int = 30,
    hook_name: str | None = None, **generate_kwargs,
) -> str:
    """Generate from `prompt` with `value · W_dec[latent]` added at the SAE's hook; value 0 means no steering."""
    if not 0 <= latent < sae.d_sae:
        raise ValueError(f"latent must be in [0, {sae.d_sae}), not {latent}.")
    hook_name = hook_name or sae.metadata.get("hook_name")
    if hook_name not in model.hook_dict:
        raise ValueError(f"the SAE's hook {hook_name!r} is not a hook point of this model; pass hook_name=.")
    generate_kwargs = {"do_sample": False, "verbose": False, **generate_kwargs}
    hooks = [(hook_name, steering_hook(sae.W_dec[latent].detach(), value))] if value else []
    with torch.no_grad(), model.hooks(fwd_hooks=hooks):
        return model.generate(prompt, max_new_tokens=max_new_tokens, **generate_kwargs)
