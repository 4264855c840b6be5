"""The recipe for the captioner mikit ships: trained on a CPU from a seed, judged on held-out scenes.

    python -m mikit.xattn train-captioner --threads 1   # writes data/xattn/tiny-captioner/
    model = load_captioner()                            # the shipped model, in eval mode

config.json holds the model's shape, the recipe, the time training took and the captions' quality on
held-out clean scenes (seed + 1): exact captions (at most about 0.56: a caption lists objects
in the scene's random order, which no image reveals), object recall (scene objects some generated phrase
names with the right colour and shape), phrase precision (generated phrases that name a scene object),
and the hallucination study's word counts and image-share gap (see `hallucination_study`).
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import torch
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from mikit.xattn.captioner import (END, TinyCaptioner, TinyCaptionerConfig, WordShares, attention_gap,
                                   generated_word_shares, greedy_caption, label_words, object_phrases, phrase_matches)
from mikit.xattn.recipes import XATTN_DIR, Recipe, load_trained, rounded, save_trained
from mikit.xattn.scenes import COLOURS, SHAPES, Scene, SceneObject
from mikit.xattn.training import SceneData


@dataclass(frozen=True)
class CaptionerRecipe(Recipe):
    """How the shipped captioner is made and judged."""

    eval_noise: float  # a second, harder hallucination study: Gaussian pixel noise of this sigma (images in [0, 1])
    seed: int

    def model_config(self) -> TinyCaptionerConfig:
        return TinyCaptionerConfig(d_model=self.d_model, n_heads=self.n_heads, n_layers=self.n_layers, d_mlp=self.d_mlp)


RECIPE = CaptionerRecipe(
    name="tiny-captioner", d_model=64, n_heads=4, n_layers=3, d_mlp=128, n_scenes=10_000, steps=4800, batch_size=16,
    lr=3e-3, eval_scenes=1000, eval_noise=0.1, seed=0,
)


def caption_data(n: int, seed: int) -> tuple[Float[Tensor, "batch 3 32 32"], Int[Tensor, "batch word"], list[Scene]]:
    """`n` scenes as images in [0, 1], caption ids (<bos>, words, <pad>...) and the scenes themselves."""
    data = SceneData.generate(n, seed=seed)
    return (data.images + 1) / 2, data.captions, data.scenes


def next_word_targets(caption_ids: Int[Tensor, "batch word"]) -> tuple[Int[Tensor, "batch word_minus_1"], Int[Tensor, "batch word_minus_1"]]:
    """Inputs and targets for next-word prediction; the first <pad> is the end target, later ones are ignored (-100)."""
    inputs, targets = caption_ids[:, :-1], caption_ids[:, 1:].clone()
    is_end = targets == END
    targets[(is_end.cumsum(1) - is_end.long()) > 0] = -100  # past the end token
    return inputs, targets


def train_captioner(
    model: TinyCaptioner, images: Float[Tensor, "batch 3 32 32"], caption_ids: Int[Tensor, "batch word"], steps: int,
    batch_size: int = 64, lr: float = 2e-3, seed: int = 0, log_every: int = 100, *, progress: bool = True,
) -> dict[str, list[float]]:
    """Next-word cross-entropy training; returns the mean loss every `log_every` steps."""
    if steps <= 0:
        raise ValueError(f"steps must be positive, not {steps}.")
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    warmup = max(1, steps // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(  # warm up, then cosine decay to 10 %
        optimizer, lambda s: min(1.0, (s + 1) / warmup) * (0.55 + 0.45 * math.cos(math.pi * s / steps))
    )
    inputs, targets = next_word_targets(caption_ids)
    history: dict[str, list[float]] = defaultdict(list)
    model.train()
    running = 0.0
    for step in tqdm(range(steps), desc="training captioner", disable=not progress):
        index = torch.randint(0, images.shape[0], (batch_size,), generator=generator)
        logits = model(images[index], inputs[index])
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets[index].flatten(), ignore_index=-100)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        running += loss.item()
        if (step + 1) % log_every == 0 or step == steps - 1:
            history["step"].append(step + 1)
            history["loss"].append(running / ((step % log_every) + 1))
            running = 0.0
    model.eval()
    return dict(history)


def caption_quality(captions: list[list[str]], scenes: list[Scene]) -> dict[str, float]:
    """Exact captions, object recall, phrase precision and the share of colour/shape words hallucinated."""
    exact = recalled = n_objects = n_phrases = grounded_phrases = 0
    labels: list[str] = []
    for words, scene in zip(captions, scenes):
        exact += words == scene.words
        phrases = [words[start:end] for start, end in object_phrases(words)]
        n_objects += len(scene.objects)
        recalled += sum(any(phrase_names(p, o) for p in phrases) for o in scene.objects)
        n_phrases += len(phrases)
        grounded_phrases += sum(any(phrase_matches(p, o) for o in scene.objects) for p in phrases)
        labels += [label for label in label_words(words, scene.objects) if label is not None]
    return {"exact": exact / len(scenes), "object_recall": recalled / n_objects,
            "phrase_precision": grounded_phrases / max(n_phrases, 1),
            "hallucinated_word_rate": labels.count("hallucinated") / max(len(labels), 1)}


def phrase_names(phrase: list[str], obj: SceneObject) -> bool:
    """Whether the phrase names exactly `obj`'s colour and shape (recall needs both words, not just no clash)."""
    return [w for w in phrase if w in COLOURS or w in SHAPES] == [obj.colour, obj.shape]


def noisy(images: Float[Tensor, "batch 3 32 32"], sigma: float, seed: int = 0) -> Float[Tensor, "batch 3 32 32"]:
    """`images` plus Gaussian pixel noise of standard deviation `sigma`, clamped to [0, 1]."""
    if sigma == 0:
        return images
    return (images + sigma * torch.randn(images.shape, generator=torch.Generator().manual_seed(seed))).clamp(0, 1)


def hallucination_study(model: TinyCaptioner, images: Float[Tensor, "batch 3 32 32"], scenes: list[Scene],
                        noise: float = 0.0, seed: int = 0, n_boot: int = 1000) -> tuple[WordShares, dict]:
    """Caption (noisy) images greedily, label their colour/shape words, and compare image shares.

    Returns every judged word with its per-layer share, and a summary: counts, caption quality on
    these inputs, and the gap mean(hallucinated) − mean(grounded) with its bootstrap 95 % interval
    (over layers' mean, per layer, colour and shape words apart), once raw and once within strata of
    equal caption position and word kind: later words attend less to the image whatever they are,
    and hallucinations gather late in long captions, so the raw gap mixes both.
    """
    images = noisy(images, noise, seed)
    captions = greedy_caption(model, images)
    shares = generated_word_shares(model, images, captions, [s.objects for s in scenes])
    h, colour = shares.hallucinated, shares.is_colour
    strata = shares.position * 2 + colour.long()
    summary: dict = {"noise": noise, "n_hallucinated": int(h.sum()), "n_grounded": int((~h).sum()),
                     "quality": caption_quality(captions, scenes)}

    def gap(values: Tensor, keep: Tensor, matched: bool) -> dict | None:
        if (keep & h).sum() < 2 or (keep & ~h).sum() < 2:
            return None  # too few words in a group for a gap
        by = (strata[keep & h], strata[keep & ~h]) if matched else None
        result = attention_gap(values[keep & h], values[keep & ~h], n_boot=n_boot, seed=seed, strata=by)
        return {"gap": result.gap.tolist(), "low": result.low.tolist(), "high": result.high.tolist()}

    every = torch.ones_like(h)
    mean_share = shares.shares.mean(1)
    for name, matched in (("raw", False), ("same_position", True)):
        summary[f"gap_{name}"] = {
            "mean_over_layers": gap(mean_share, every, matched), "per_layer": gap(shares.shares, every, matched),
            "colour_words": gap(mean_share, colour, matched), "shape_words": gap(mean_share, ~colour, matched),
        }
    if h.any() and (~h).any():
        summary["mean_share"] = {"hallucinated": mean_share[h].mean().item(), "grounded": mean_share[~h].mean().item()}
    return shares, summary


def train_recipe(recipe: CaptionerRecipe = RECIPE, out: Path | None = None, *,
                 progress: bool = True) -> tuple[TinyCaptioner, dict]:
    """Train `recipe`'s captioner, judge it on held-out scenes, run the hallucination study, save it into `out`."""
    torch.manual_seed(recipe.seed)
    model = TinyCaptioner(recipe.model_config())
    images, caption_ids, _ = caption_data(recipe.n_scenes, recipe.seed)
    start = time.perf_counter()
    history = train_captioner(model, images, caption_ids, recipe.steps, recipe.batch_size, recipe.lr,
                              seed=recipe.seed, progress=progress)
    seconds = time.perf_counter() - start
    held_images, _, held_scenes = caption_data(recipe.eval_scenes, recipe.seed + 1)
    _, clean = hallucination_study(model, held_images, held_scenes, noise=0.0, seed=recipe.seed)
    _, noisy_study = hallucination_study(model, held_images, held_scenes, recipe.eval_noise, seed=recipe.seed)
    report = {"final_loss": history["loss"][-1], **clean["quality"],
              "hallucination_study": {"clean": clean, f"noise_{recipe.eval_noise}": noisy_study}}
    save_trained(model, Path(out or XATTN_DIR / recipe.name), recipe, report, seconds)
    return model, rounded(report)


def load_captioner(folder: str | Path | None = None) -> TinyCaptioner:
    """A captioner saved by `train_recipe` (default: the shipped one), in eval mode."""
    return load_trained(Path(folder or XATTN_DIR / RECIPE.name),
                        lambda config: TinyCaptioner(TinyCaptionerConfig(**config)), "captioner", "train-captioner")
