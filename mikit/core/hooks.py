"""Heads, hook names and head ablation, shared by every technique module."""

from __future__ import annotations

from typing import Any, Literal

import torch
from jaxtyping import Float, Int
from torch import Tensor
from transformer_lens.hook_points import HookPoint

Head = tuple[int, int]
"""A head as (layer, head index)."""

Ablation = Literal["zero", "mean", "resample"]
ABLATIONS: tuple[str, ...] = ("zero", "mean", "resample")


def hook_layer(hook_name: str) -> int:
    """The layer of a per-layer hook name, e.g. 3 for `blocks.3.attn.hook_z`."""
    parts = hook_name.split(".")
    if len(parts) < 2 or parts[0] != "blocks" or not parts[1].isdigit():
        raise ValueError(f"{hook_name!r} is not a per-layer hook name like 'blocks.3.attn.hook_z'.")
    return int(parts[1])


def module_at(root: Any, hook_name: str) -> Any:
    """The submodule at a dotted hook name, e.g. `blocks.3.attn.hook_z`, of a model or its nnsight wrapper."""
    for part in hook_name.split("."):
        root = root[int(part)] if part.isdigit() else getattr(root, part)
    return root


def ablate_head(
    z: Float[Tensor, "batch pos head d_head"],
    hook: HookPoint | None,
    head: int,
    method: Ablation = "zero",
    *,
    reference_z: Float[Tensor, "ref_batch pos head d_head"] | None = None,
    perm: Int[Tensor, "batch"] | None = None,
) -> Float[Tensor, "batch pos head d_head"]:
    """A `hook_z` hook that removes what one head says about each prompt; edits `z` in place and returns it.

    "zero": the head's output is 0 (a value it may never take);
    "mean": its mean over the reference prompts, separately at each position (its typical output there,
    with no prompt-specific information; the positional signal stays);
    "resample": prompt `i` gets its output on reference prompt `perm[i]` (a real output, for another input).
    The reference prompts default to the batch itself, and `perm` to the next prompt, `(i + 1) % batch`.
    """
    if method not in ABLATIONS:
        raise ValueError(f"method must be one of {ABLATIONS}, not {method!r}.")
    reference = z if reference_z is None else reference_z
    if method == "zero":
        z[:, :, head] = 0
    elif method == "mean":
        z[:, :, head] = reference[:, :, head].mean(0)
    else:
        if perm is None:
            if len(reference) < 2:
                raise ValueError("resample ablation needs at least two reference prompts to take outputs from.")
            perm = (torch.arange(len(z)) + 1) % len(reference)
        z[:, :, head] = reference[perm.to(reference.device), :, head]
    return z
