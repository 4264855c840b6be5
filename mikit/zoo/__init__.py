"""The zoo: tiny models trained by mikit's own recipes, shipped as safetensors + JSON + tokenizer files.

    model = load_zoo_model("attn-only-2l")      # a HookedTransformer with a character tokenizer
    python -m mikit.zoo train attn-only-2l      # retrain it from scratch (about 3 minutes on 2 cores)
"""

from __future__ import annotations

import os
from pathlib import Path

from transformer_lens import HookedTransformer

from mikit.paths import ZOO_DIR
from mikit.zoo.metrics import induction_scores, previous_token_scores, repeated_sequence_losses
from mikit.zoo.recipes import RECIPES, Recipe, held_out_text, train
from mikit.zoo.storage import load_model_folder, read_config

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
    if not (folder / "config.json").exists():
        raise FileNotFoundError(f"Zoo model {name!r} is not in {folder}; train it with `python -m mikit.zoo train {name}`.")
    return load_model_folder(folder, device)


__all__ = [
    "RECIPES",
    "ZOO_DIR",
    "ZOO_MODELS",
    "Recipe",
    "held_out_text",
    "induction_scores",
    "load_model_folder",
    "load_zoo_model",
    "model_folder",
    "previous_token_scores",
    "read_config",
    "repeated_sequence_losses",
    "train",
    "zoo_dir",
]
