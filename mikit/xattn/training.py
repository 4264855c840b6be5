"""Train the tiny text-to-image model with flow matching, and sample from it with classifier-free guidance.

    data = SceneData.generate(20_000, seed=0)
    history = train_t2i(model, data, steps=6000)
    images = sample(model, data.captions[:8], steps=20, guidance=3.0)     # (8, 3, 32, 32) in [0, 1]

Flow matching (rectified flow; Lipman et al. 2023, Liu et al. 2023): draw noise x₀, an image x₁ and a
time t; the model sees x_t = (1 − t)·x₀ + t·x₁ and predicts the velocity x₁ − x₀. Sampling integrates
that velocity from noise (t = 0) to an image (t = 1) with Euler steps. One caption in ten is dropped
in training (replaced by the empty caption, just <bos>), so the model also learns the unconditional
velocity, and sampling can push away from it: v = v_uncond + guidance · (v_cond − v_uncond).

With `omit`, captions also lose words at random (`omit_words`): "a large red circle" may be seen as
"a circle" or "a red circle". Real captions name the object (the noun) and only sometimes its attributes;
so the shape word, not the colour word, becomes what an object's patches look up.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import torch
from jaxtyping import Float, Int
from torch import Tensor
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm.auto import tqdm

from mikit.xattn.model import TinyT2I
from mikit.xattn.scenes import VOCAB, WORD_KINDS, Scene, make_scenes, tokenize


@dataclass
class SceneData:
    """Scenes as tensors: images scaled to [-1, 1] and caption ids."""

    images: Float[Tensor, "batch 3 32 32"]
    captions: Int[Tensor, "batch word"]
    scenes: list[Scene]

    @classmethod
    def generate(cls, n: int, seed: int = 0, caption_length: int = 16) -> SceneData:
        scenes = make_scenes(n, seed=seed)
        images = torch.stack([s.image for s in scenes]) * 2 - 1
        return cls(images, torch.stack([tokenize(s.words, caption_length) for s in scenes]), scenes)


def empty_captions(n: int, length: int) -> Int[Tensor, "batch word"]:
    """The unconditional caption: <bos> then padding."""
    ids = torch.full((n, length), VOCAB.index("<pad>"))
    ids[:, 0] = VOCAB.index("<bos>")
    return ids


def omit_words(captions: Int[Tensor, "batch word"], omit: dict[str, float], generator: torch.Generator | None = None) -> Int[Tensor, "batch word"]:
    """Leave out each word of a kind in scenes.WORD_KINDS ("colour", "size", "shape") with probability
    omit[kind]; the caption closes up."""
    unknown = set(omit) - set(WORD_KINDS)
    if unknown:
        raise ValueError(f"omit may name the word kinds {list(WORD_KINDS)}, not {sorted(unknown)}.")
    keep = torch.ones(captions.shape, dtype=torch.bool)
    for kind, p in omit.items():
        ids = torch.tensor([VOCAB.index(w) for w in WORD_KINDS[kind]])
        keep &= ~(torch.isin(captions, ids) & (torch.rand(captions.shape, generator=generator) < p))
    order = torch.sort((~keep).long(), dim=1, stable=True).indices  # kept words first, in their order
    closed = captions.gather(1, order)
    closed[~keep.gather(1, order)] = VOCAB.index("<pad>")
    return closed


def train_t2i(
    model: TinyT2I, data: SceneData, steps: int, batch_size: int = 64, lr: float = 1e-3, p_uncond: float = 0.1,
    ema: float | None = None, omit: dict[str, float] | None = None, seed: int = 0, log_every: int = 100, *,
    progress: bool = True,
) -> dict[str, list[float]]:
    """Flow-matching training; returns the loss (mean squared velocity error) every `log_every` steps.

    With `ema` (a decay such as 0.995) the model ends with the exponential moving average of its weights,
    which samples cleaner images than the last step's weights (as in DDPM and DiT). With `omit` (such as
    {"colour": 0.25, "size": 0.25}) each training caption loses those words at random (`omit_words`).
    """
    if steps <= 0:
        raise ValueError(f"steps must be positive, not {steps}.")
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    averaged = None if ema is None else AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(ema))
    warmup = max(1, steps // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(  # warm up, then cosine decay to 10 %
        optimizer, lambda s: min(1.0, (s + 1) / warmup) * (0.55 + 0.45 * torch.cos(torch.tensor(torch.pi * s / steps)).item())
    )
    history: dict[str, list[float]] = defaultdict(list)
    model.train()
    running = 0.0
    for step in tqdm(range(steps), desc="training text-to-image", disable=not progress):
        index = torch.randint(0, data.images.shape[0], (batch_size,), generator=generator)
        x1, captions = data.images[index], data.captions[index].clone()
        if omit:
            captions = omit_words(captions, omit, generator)
        drop = torch.rand(batch_size, generator=generator) < p_uncond
        captions[drop] = empty_captions(int(drop.sum()), captions.shape[1])
        x0 = torch.randn(x1.shape, generator=generator)
        t = torch.randn(batch_size, generator=generator).sigmoid()  # logit-normal: mid-way times matter most (SD3)
        xt = (1 - t[:, None, None, None]) * x0 + t[:, None, None, None] * x1
        loss = (model(xt, t, captions) - (x1 - x0)).pow(2).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        if averaged is not None:
            averaged.update_parameters(model)
        running += loss.item()
        if (step + 1) % log_every == 0 or step == steps - 1:
            history["step"].append(step + 1)
            history["loss"].append(running / ((step % log_every) + 1))
            running = 0.0
    if averaged is not None:
        model.load_state_dict(averaged.module.state_dict())
    model.eval()
    return dict(history)


@torch.no_grad()
def sample(
    model: TinyT2I, captions: Int[Tensor, "batch word"], steps: int = 20, guidance: float = 3.0, seed: int = 0,
    noise: Tensor | None = None,
) -> Float[Tensor, "batch 3 32 32"]:
    """Images for `captions` by Euler integration of the guided velocity from noise; in [0, 1].

    guidance 1 is the plain conditional model; 0 the unconditional one.
    """
    n = captions.shape[0]
    if noise is None:
        noise = torch.randn((n, 3, 32, 32), generator=torch.Generator().manual_seed(seed))
    x = noise.clone()
    empty = empty_captions(n, captions.shape[1])
    for i in range(steps):
        t = torch.full((n,), i / steps)
        if guidance == 1.0:
            v = model(x, t, captions)
        else:
            both = model(torch.cat([x, x]), torch.cat([t, t]), torch.cat([captions, empty]))
            v_cond, v_uncond = both.chunk(2)
            v = v_uncond + guidance * (v_cond - v_uncond)
        x = x + v / steps
    return ((x + 1) / 2).clamp(0, 1)
