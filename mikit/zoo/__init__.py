"""The zoo: tiny models trained by mikit's own recipes, shipped as safetensors + JSON + tokenizer files.

    model = load_zoo_model("attn-only-2l")      # a HookedTransformer with a character tokenizer
    python -m mikit.zoo train attn-only-2l      # retrain it from scratch (about 3 minutes on 2 cores)
"""

from __future__ import annotations

import os
from pathlib import Path

from transformer_lens import HookedTransformer

from mikit.paths import ZOO_DIR
from mikit.storage import is_saved, load_weights, read_config
from mikit.zoo.recipes import RECIPES, Recipe, build_model, held_out_text, train

ZOO_MODELS = {name: recipe.description for name, recipe in RECIPES.items()}


def zoo_dir() -> Path:
    """The folder holding the zoo's models: `$MIKIT_ZOO_DIR` if set, else `ZOO_DIR`."""
    return Path(os.environ.get("MIKIT_ZOO_DIR", ZOO_DIR))


def model_folder(name: str) -> Path:
    """The folder of zoo model `name`; a ValueError if the zoo has no such model."""
    if name not in ZOO_MODELS:
        raise ValueError(f"No zoo model named {name!r}; available: {', '.join(sorted(ZOO_MODELS))}.")
    return zoo_dir() / name


def load_zoo_model(name: str, device: str | None = None) -> HookedTransformer:
    """Load zoo model `name` in eval mode on `device` (default CPU), tokenizer attached."""
    folder = model_folder(name)
    if not is_saved(folder):
        raise FileNotFoundError(f"Zoo model {name!r} is not in {folder}; train it with `python -m mikit.zoo train {name}`.")
    return load_model_folder(folder, device)


def load_model_folder(folder: Path, device: str | None = None) -> HookedTransformer:
    """The zoo model saved in `folder` (by `train`), in eval mode on `device` (default CPU)."""
    device = device or "cpu"
    model = build_model(read_config(folder)["config"], folder, device)
    model.load_state_dict(load_weights(folder, device))
    return model.eval()


__all__ = [
    "RECIPES",
    "ZOO_DIR",
    "ZOO_MODELS",
    "Recipe",
    "held_out_text",
    "load_model_folder",
    "load_zoo_model",
    "model_folder",
    "read_config",
    "train",
    "zoo_dir",
]
