"""The recipe for the text-to-image model mikit ships: trained on a CPU from a seed, judged by the scene parser.

    python -m mikit.xattn train             # writes data/xattn/tiny-t2i/ (model.safetensors + config.json)
    model = load_t2i()                      # the shipped model, in eval mode

config.json holds the model's shape, the recipe, the time training took and how well the model draws
held-out captions: the share of caption objects drawn right ("ok"), drawn in another caption object's
colour ("leaked"), in their colour but another shape ("misshaped") and missing ("neglected"), as
`mikit.xattn.parser` reads the samples.
"""

from __future__ import annotations

import platform
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from mikit.paths import XATTN_DIR
from mikit.xattn.model import TinyT2I, TinyT2IConfig
from mikit.xattn.parser import VERDICTS, compare, parse_scene
from mikit.xattn.training import SceneData, sample, train_t2i
from mikit.storage import is_saved, load_weights, read_config, save_folder



@dataclass(frozen=True)
class Recipe:
    """What every recipe of mikit.xattn states: the model's shape, its training run and its held-out scenes."""

    name: str
    d_model: int
    n_heads: int
    n_layers: int
    d_mlp: int
    n_scenes: int
    steps: int
    batch_size: int
    lr: float
    eval_scenes: int  # held out: drawn with seed + 1


@dataclass(frozen=True)
class T2IRecipe(Recipe):
    """How the shipped text-to-image model is made and judged."""

    sample_steps: int
    guidance: float
    seed: int
    ema: float | None = 0.995
    causal_text: bool = False
    omit_colour: float = 0.0  # the chance that a training caption leaves out a colour word (training.omit_words)
    omit_size: float = 0.0

    def model_config(self) -> TinyT2IConfig:
        return TinyT2IConfig(d_model=self.d_model, n_heads=self.n_heads, n_layers=self.n_layers, d_mlp=self.d_mlp,
                             causal_text=self.causal_text)


RECIPE = T2IRecipe(
    name="tiny-t2i", d_model=96, n_heads=4, n_layers=3, d_mlp=192, n_scenes=20_000, steps=2500, batch_size=64,
    lr=2e-3, eval_scenes=200, sample_steps=20, guidance=3.0, seed=0, causal_text=True, omit_colour=0.15, omit_size=0.5,
)


@torch.no_grad()
def judge(model: TinyT2I, data: SceneData, steps: int = 20, guidance: float = 3.0, seed: int = 0,
          batch_size: int = 100) -> dict[str, float]:
    """Sample every caption of `data` and parse the images: shares of caption objects per verdict (parser.VERDICTS)."""
    verdicts: Counter[str] = Counter()
    for start in range(0, data.captions.shape[0], batch_size):
        images = sample(model, data.captions[start : start + batch_size], steps, guidance, seed=seed + start)
        for scene, image in zip(data.scenes[start : start + batch_size], images):
            verdicts.update(compare(scene.objects, parse_scene(image)))
    total = sum(verdicts.values())
    return {kind: verdicts[kind] / total for kind in VERDICTS}


def train_recipe(recipe: T2IRecipe = RECIPE, out: Path | None = None, *, progress: bool = True) -> tuple[TinyT2I, dict]:
    """Train `recipe`'s model, judge it on held-out captions, save it into `out`."""
    torch.manual_seed(recipe.seed)
    model = TinyT2I(recipe.model_config())
    start = time.perf_counter()
    history = train_t2i(model, SceneData.generate(recipe.n_scenes, seed=recipe.seed), recipe.steps,
                        recipe.batch_size, recipe.lr, ema=recipe.ema, seed=recipe.seed, progress=progress,
                        omit={"colour": recipe.omit_colour, "size": recipe.omit_size})
    seconds = time.perf_counter() - start
    held_out = SceneData.generate(recipe.eval_scenes, seed=recipe.seed + 1)
    report = {"final_loss": history["loss"][-1],
              **judge(model, held_out, recipe.sample_steps, recipe.guidance, seed=recipe.seed)}
    save_trained(model, Path(out or XATTN_DIR / recipe.name), recipe, report, seconds)
    return model, report


def rounded(value):
    """`value` with every float rounded to 4 decimals, for a readable config.json."""
    if isinstance(value, float):
        return round(value, 4)
    if isinstance(value, dict):
        return {k: rounded(v) for k, v in value.items()}
    if isinstance(value, list):
        return [rounded(v) for v in value]
    return value


def save_trained(model, out: Path, recipe: Recipe, metrics: dict, seconds: float) -> None:
    """Save a trained model into `out`: its weights, shape, recipe, metrics and how long training took where."""
    save_folder(model, out, {
        "config": model.cfg.to_dict(), "recipe": asdict(recipe), "metrics": rounded(metrics),
        "train_seconds": round(seconds), "threads": torch.get_num_threads(),
        "trained_on": f"{platform.machine()}, {torch.get_num_threads()} threads",
    })


def load_trained(folder: Path, build, what: str, command: str):
    """The model saved by `save_trained` in `folder`, built by `build(config_dict)`, in eval mode."""
    if not is_saved(folder):
        raise FileNotFoundError(f"{folder} holds no trained {what}: run `python -m mikit.xattn {command}` to make one.")
    info = read_config(folder)
    model = build(info["config"])
    model.load_state_dict(load_weights(folder))
    model.info = info
    return model.eval()


def load_t2i(folder: str | Path | None = None) -> TinyT2I:
    """A text-to-image model saved by `train_recipe` (default: the shipped one), in eval mode."""
    return load_trained(Path(folder or XATTN_DIR / RECIPE.name), lambda config: TinyT2I(TinyT2IConfig(**config)),
                        "model", "train")
