"""A causal test for cross-attention maps: remove what one caption word sends, and see what the image loses.

    hooks = value_ablation_hooks(model, tokens)                     # tokens[i]: the word to silence in prompt i
    with model.hooks(fwd_hooks=hooks):
        ablated = sample(model, captions)                           # same noise as the unablated run
    inside, outside = region_change(drawn, ablated, regions)        # mean |Δpixel| per prompt, in and out

An attention map says where image patches *look*; it does not say that what they read there matters
(Jain & Wallace 2019, "Attention is not Explanation"). Cross-attention's output at a patch is the
attention-weighted sum of the words' **value** vectors, so zeroing one word's values in every layer
(`blocks.{layer}.cross_attn.hook_v`) deletes exactly what that word contributes and nothing else: keys
and queries are untouched, so the first layer attends exactly as before, and later layers (and later
sampling steps) attend differently only because the image itself changed. If the word causes what is
drawn inside its DAAM map, the image changes there and little elsewhere.
"""

from __future__ import annotations

from typing import Callable

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor


def value_ablation_hooks(
    model, tokens: Int[Tensor, "batch"], *, layers: list[int] | None = None, replace_with: int | None = None,
) -> list[tuple[str, Callable]]:
    """Forward hooks on `blocks.{layer}.cross_attn.hook_v` that silence token `tokens[i]` of batch row `i`.

    Only the first `len(tokens)` rows are changed: under classifier-free guidance `sample` runs
    [conditional; unconditional] rows, and the unconditional half must stay as it is. The word's value
    vectors become zero, or with `replace_with` those of another token of the same row (0 is <bos>,
    whose value is the same for every caption when the caption encoder is causal).
    """
    tokens = torch.as_tensor(tokens)
    n_words = model.cfg.caption_length
    if tokens.ndim != 1 or tokens.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"tokens must be one integer token index per prompt, not a {tokens.dtype} tensor of shape {tuple(tokens.shape)}.")
    if ((tokens < 0) | (tokens >= n_words)).any():
        raise ValueError(f"token indices must lie in 0..{n_words - 1} (the caption positions); got {tokens.tolist()}.")
    if replace_with is not None and not 0 <= replace_with < n_words:
        raise ValueError(f"replace_with must be a caption position in 0..{n_words - 1}, not {replace_with}.")
    layers = list(range(model.cfg.n_layers)) if layers is None else list(layers)
    bad = [layer for layer in layers if not 0 <= layer < model.cfg.n_layers]
    if bad:
        raise ValueError(f"layers {bad} do not exist: the model has {model.cfg.n_layers} layers (0 to {model.cfg.n_layers - 1}).")

    def ablate(value: Float[Tensor, "batch word head d_head"], hook) -> Tensor:
        if value.shape[0] < len(tokens):
            raise ValueError(f"the batch has {value.shape[0]} rows but {len(tokens)} tokens were given, one per prompt.")
        rows, columns = torch.arange(len(tokens), device=value.device), tokens.to(value.device)
        value = value.clone()  # out of place, so a gradient through the hook stays correct
        value[rows, columns] = 0.0 if replace_with is None else value[rows, replace_with]
        return value

    return [(f"blocks.{layer}.cross_attn.hook_v", ablate) for layer in layers]


def region_change(
    before: Float[Tensor, "batch 3 h w"], after: Float[Tensor, "batch 3 h w"], regions: Bool[Tensor, "batch h w"],
) -> tuple[Float[Tensor, "batch"], Float[Tensor, "batch"]]:
    """Mean absolute pixel change (averaged over colour channels) inside and outside each prompt's region;
    NaN on a side that has no pixels."""
    if before.shape != after.shape or before.shape[:1] + before.shape[2:] != regions.shape:
        raise ValueError(f"before and after must be (prompt, 3, h, w) and regions (prompt, h, w); got {tuple(before.shape)}, "
                         f"{tuple(after.shape)} and {tuple(regions.shape)}.")
    change = (after - before).abs().mean(dim=1)  # (prompt, h, w)
    regions = regions.bool()
    inside = (change * regions).flatten(1).sum(-1) / regions.flatten(1).sum(-1)
    outside = (change * ~regions).flatten(1).sum(-1) / (~regions).flatten(1).sum(-1)
    return inside, outside
