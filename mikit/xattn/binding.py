"""Binding and neglect: which caption objects the generator drops, how weakly they are attended, and a fix.

    report = neglect_report(model, data)                      # shares of objects ok / leaked / neglected
    strength = token_strength(maps, tokens)                   # a token's peak cross-attention per prompt
    with model.hooks(fwd_hooks=reweighting_hooks(model, tokens, factor=2.0, n_prompts=n)):
        images = sample(model, captions)                      # Prompt-to-Prompt-style reweighting

Attend-and-Excite (Chefer et al. 2023) observed that an object Stable Diffusion leaves out is one whose
subject token never gets a strong cross-attention peak. Prompt-to-Prompt (Hertz et al. 2022) showed that
scaling one token's cross-attention strengthens (or weakens) what it describes. Here the generator's own
scene parser says which objects were drawn, so both claims can be measured.
"""

from __future__ import annotations

from collections import Counter

import torch
from jaxtyping import Float, Int
from torch import Tensor

from mikit.xattn.attention import CrossAttentionStore
from mikit.xattn.parser import VERDICTS, compare, parse_scene
from mikit.xattn.scenes import WORD_KINDS
from mikit.xattn.training import SceneData, sample


def token_strength(maps: Float[Tensor, "step layer batch head patch word"], tokens: Int[Tensor, "batch"]) -> Float[Tensor, "batch"]:
    """Per prompt, the peak over image patches of its token's attention averaged over steps, layers and heads."""
    mean = maps.mean(dim=(0, 1, 3))  # (prompt, patch, word)
    return mean[torch.arange(mean.shape[0]), :, tokens].amax(-1)


def object_tokens(scene, kind: str = "colour") -> list[int]:
    """Per object of `scene`, the token index of its colour (or shape, or size) word in the caption."""
    if kind not in WORD_KINDS:
        raise ValueError(f"kind must be one of {list(WORD_KINDS)}, not {kind!r}.")
    found = {owner: w + 1 for w, (word, owner) in enumerate(zip(scene.words, scene.word_object))
             if word in WORD_KINDS[kind]}  # token w + 1: <bos> comes first
    return [found[i] for i in range(len(scene.objects))]


def reweight_pattern(pattern: Float[Tensor, "batch head patch word"], tokens: Int[Tensor, "batch"], factor: float,
                     n_prompts: int) -> Float[Tensor, "batch head patch word"]:
    """Prompt-to-Prompt-style reweighting: multiply row i's attention to tokens[i] by `factor` for the first
    `n_prompts` rows (the conditional half under guidance), then renormalise those rows to sum to 1."""
    pattern = pattern.clone()
    conditional = pattern[:n_prompts]
    conditional[torch.arange(n_prompts), :, :, tokens] *= factor
    pattern[:n_prompts] = conditional / conditional.sum(-1, keepdim=True)
    return pattern


def reweighting_hooks(model, tokens: Int[Tensor, "batch"], factor: float, n_prompts: int) -> list:
    """Forward hooks that apply `reweight_pattern` to every layer's cross-attention."""
    def reweight(pattern: Tensor, hook) -> Tensor:
        return reweight_pattern(pattern, tokens, factor, n_prompts)

    return [(f"blocks.{layer}.cross_attn.hook_pattern", reweight) for layer in range(model.cfg.n_layers)]


@torch.no_grad()
def generate_and_judge(model, data: SceneData, hooks: list | None = None, store: bool = False, **sample_kwargs):
    """Sample every caption of `data` (optionally under `hooks`) and judge each caption object with the parser:
    returns the images, the per-object verdicts per scene and, with `store`, the cross-attention maps."""
    n = data.captions.shape[0]
    recorder = CrossAttentionStore(model, n_prompts=n) if store else None
    with model.hooks(fwd_hooks=hooks or []):
        if recorder is not None:
            with recorder:
                images = sample(model, data.captions, **sample_kwargs)
        else:
            images = sample(model, data.captions, **sample_kwargs)
    verdicts = [compare(scene.objects, parse_scene(image)) for scene, image in zip(data.scenes, images)]
    return images, verdicts, (recorder.stacked() if recorder is not None else None)


def rates(verdicts: list[list[str]]) -> dict[str, float]:
    """Shares of caption objects per verdict: ok, leaked, misshaped, neglected (see `parser.compare`)."""
    counts = Counter(v for scene in verdicts for v in scene)
    total = sum(counts.values())
    return {kind: counts[kind] / total for kind in VERDICTS}
