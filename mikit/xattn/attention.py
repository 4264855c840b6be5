"""Record cross-attention while a model generates, and turn it into per-word heatmaps (DAAM-style).

    with CrossAttentionStore(model, n_prompts=len(captions)) as store:
        images = sample(model, captions)
    maps = store.stacked()                                  # (step, layer, prompt, head, patch, word)
    heat = word_heatmap(maps, word=3)                       # (prompt, 32, 32) in [0, 1]
    iou(heat[0] > 0.4, scene.masks[0])                      # against the object's true mask

DAAM (Tang et al. 2023) upsamples every cross-attention map of a word to the image size and sums them
over heads, layers and time steps; we average instead (the same map up to a constant) and normalise
each image's heatmap to a maximum of 1. With classifier-free guidance the model runs on
[conditional, unconditional] batches; only the conditional half attends to the prompt, so the store
keeps the first `n_prompts` rows of each call.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float
from torch import Tensor

from mikit.xattn.scenes import SIZE, word_kind


class CrossAttentionStore:
    """Collects `blocks.{layer}.cross_attn.hook_pattern` on every forward pass while active (a context manager).

    `maps[step][layer]` is (prompt, head, image patch, caption word); one step per model call.
    """

    def __init__(self, model, n_prompts: int | None = None, layers: list[int] | None = None):
        self.model, self.n_prompts = model, n_prompts
        self.layers = list(range(model.cfg.n_layers)) if layers is None else list(layers)
        bad = [layer for layer in self.layers if not 0 <= layer < model.cfg.n_layers]
        if bad:
            raise ValueError(f"layers {bad} do not exist: the model has {model.cfg.n_layers} layers (0 to {model.cfg.n_layers - 1}).")
        self.maps: list[dict[int, Tensor]] = []
        self._context = None

    def _hook(self, layer: int):
        def record(pattern: Tensor, hook) -> None:
            if layer == self.layers[0]:
                self.maps.append({})
            kept = pattern if self.n_prompts is None else pattern[: self.n_prompts]
            # A copy, not a view: a slice would keep the whole guidance batch alive and show any in-place
            # edit a later hook makes to the pattern (`.cpu()` alone copies nothing on the CPU).
            self.maps[-1][layer] = kept.detach().to("cpu", copy=True)

        return record

    def __enter__(self) -> CrossAttentionStore:
        self.maps = []
        hooks = [(f"blocks.{layer}.cross_attn.hook_pattern", self._hook(layer)) for layer in self.layers]
        self._context = self.model.hooks(fwd_hooks=hooks)
        self._context.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._context.__exit__(*exc)
        self._context = None

    def stacked(self) -> Float[Tensor, "step layer batch head patch word"]:
        """Every recorded map in one tensor."""
        if not self.maps:
            raise ValueError("nothing was recorded: run the model inside `with store:`.")
        return torch.stack([torch.stack([step[layer] for layer in self.layers]) for step in self.maps])


def upsample(maps: Float[Tensor, "... patch"], size: int = SIZE) -> Float[Tensor, "... h w"]:
    """Patch maps (a square number of patches) → bilinear images of `size` × `size`."""
    side = int(round(maps.shape[-1] ** 0.5))
    if side * side != maps.shape[-1]:
        raise ValueError(f"the last axis must hold a square number of image patches, not {maps.shape[-1]}.")
    grid = maps.reshape(-1, 1, side, side)
    image = F.interpolate(grid, size=(size, size), mode="bilinear", align_corners=False)
    return image.reshape(*maps.shape[:-1], size, size)


def word_heatmap(
    maps: Float[Tensor, "step layer batch head patch word"], word: int,
    steps: slice | list[int] | None = None, layers: slice | list[int] | None = None,
) -> Float[Tensor, "batch h w"]:
    """A word's DAAM heatmap per prompt: its attention maps averaged over the chosen steps, layers and heads,
    upsampled to the image and scaled to a maximum of 1."""
    if maps.ndim != 6:
        raise ValueError(f"maps must be (step, layer, prompt, head, patch, word) as CrossAttentionStore.stacked() gives, not {maps.ndim}-d.")
    chosen = maps[steps if steps is not None else slice(None)][:, layers if layers is not None else slice(None)]
    heat = upsample(chosen[..., word].mean(dim=(0, 1, 3)))  # (prompt, size, size)
    return heat / heat.flatten(1).amax(-1).clamp_min(1e-12)[:, None, None]


def iou(predicted: Bool[Tensor, "... h w"], target: Bool[Tensor, "... h w"]) -> float:
    """Intersection over union of two masks (1.0 when both are empty)."""
    union = (predicted | target).sum().item()
    return 1.0 if union == 0 else (predicted & target).sum().item() / union


@torch.no_grad()
def noised_attention(model, images: Float[Tensor, "batch 3 32 32"], captions: Tensor,
                     times: list[float], seed: int = 0) -> Float[Tensor, "step layer batch head patch word"]:
    """Cross-attention of the model on real images noised to each time t (0 = noise, 1 = image), as DAAM
    reads real images: the masks of the scenes are then the exact ground truth for every word."""
    noise = torch.randn(images.shape, generator=torch.Generator().manual_seed(seed))
    with CrossAttentionStore(model) as store:
        for t in times:
            model((1 - t) * noise + t * images, torch.full((images.shape[0],), t), captions)
    return store.stacked()


def object_word_heatmaps(maps: Float[Tensor, "step layer batch head patch word"], scenes) -> tuple[Tensor, Tensor, list[str]]:
    """Every object word's heatmap per step and layer (head mean, upsampled, not yet normalised), its true
    mask and its kind: (n_words, step, layer, 32, 32), (n_words, 32, 32) bool, ["size" | "colour" | "shape"]."""
    heads_mean = maps.mean(dim=3)  # (step, layer, prompt, patch, word)
    heats, masks, kinds = [], [], []
    for p, scene in enumerate(scenes):
        for w, owner in enumerate(scene.word_object):
            if owner < 0:
                continue
            heats.append(upsample(heads_mean[:, :, p, :, w + 1]))  # token w + 1: <bos> comes first
            masks.append(scene.masks[owner])
            kinds.append(word_kind(scene.words[w]))
    return torch.stack(heats), torch.stack(masks), kinds


def mean_iou(heat: Float[Tensor, "batch h w"], masks: Bool[Tensor, "batch h w"], threshold: float = 0.4) -> float:
    """Mean IoU of heatmaps (each scaled to a maximum of 1, then cut at `threshold`) against masks."""
    heat = heat / heat.flatten(1).amax(-1).clamp_min(1e-12)[:, None, None]
    return sum(iou(h >= threshold, m) for h, m in zip(heat, masks)) / len(masks)


def miou_report(maps: Float[Tensor, "step layer batch head patch word"], scenes, threshold: float = 0.4) -> dict:
    """Object-word mIoU overall, per layer (all steps), per step (all layers) and per word kind."""
    heats, masks, kinds = object_word_heatmaps(maps, scenes)
    overall = heats.mean(dim=(1, 2))
    return {
        "overall": mean_iou(overall, masks, threshold),
        "per_layer": [mean_iou(heats[:, :, layer].mean(1), masks, threshold) for layer in range(heats.shape[2])],
        "per_step": [mean_iou(heats[:, step].mean(1), masks, threshold) for step in range(heats.shape[1])],
        "per_kind": {kind: mean_iou(overall[[k == kind for k in kinds]], masks[[k == kind for k in kinds]], threshold)
                     for kind in ("size", "colour", "shape")},
    }
