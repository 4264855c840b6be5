"""The zoo: tiny models trained by mikit's own recipes, shipped as safetensors + JSON + tokenizer files.

    model = load_zoo_model("attn-only-2l")      # a HookedTransformer with a character tokenizer
    load_zoo_model("gelu-2l")                   # the same data with MLPs: gelu-1l, gelu-2l
    checkpoint_steps("attn-only-2l")            # [0, 1, 2, 3, 4, 5, 8, ..., 856, 1200]: its training checkpoints
    load_checkpoint("attn-only-2l", 311)        # the model after 311 training steps (float16 weights, as float32)
    checkpoint_metrics("attn-only-2l")          # each checkpoint's step and recorded figures
    python -m mikit.zoo train gelu-2l                        # retrain a model from scratch (minutes on 2 cores)
    python -m mikit.zoo train attn-only-2l --checkpoints     # ... and its checkpoints (--out DIR keeps the shipped model)
    load_zoo_model("max-of-4"), load_checkpoint("modular-addition", step)   # the toy tasks' models (mikit.toys)
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

from transformer_lens import HookedTransformer, HookedTransformerConfig

from mikit.paths import ZOO_DIR
from mikit.storage import is_saved, load_weights, read_config
from mikit.zoo.recipes import RECIPES, Recipe, build_model, checkpoint_key, held_out_text, log_spaced_steps, train

# Models of the toy tasks (mikit.toys): token ids in, no tokenizer; `python -m mikit.zoo train NAME` runs their recipes.
TOY_MODELS = {
    "max-of-4": "1-layer, 1-head attention-only model that outputs the largest of 4 tokens (vocabulary 64): "
                "proofs of its accuracy from its circuits (mikit.toys.max_of_k).",
    "max-of-4-small": "max-of-4 with a vocabulary of 16: all 65,536 inputs run in a second (mikit.toys.max_of_k).",
    "modular-addition": "1-layer transformer with a ReLU MLP that grokked (a + b) mod 59, with checkpoints "
                        "through the grokking transition: Fourier features (mikit.toys.modular_addition).",
}
ZOO_MODELS = {**{name: recipe.description for name, recipe in RECIPES.items()}, **TOY_MODELS}
CHECKPOINTS_SUFFIX = "-checkpoints"  # a model's training checkpoints live in the zoo folder "<name>-checkpoints"


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


def build_from_config(config: dict, device: str = "cpu") -> HookedTransformer:
    """A freshly initialised HookedTransformer for `config`, without a tokenizer (seed it with `torch.manual_seed`)."""
    # TransformerLens 3.9 flags HookedTransformer itself as deprecated; students need not see that here.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="HookedTransformer is deprecated", category=DeprecationWarning)
        return HookedTransformer(HookedTransformerConfig(**config, device=device))


def _build(config: dict, folder: Path, device: str) -> HookedTransformer:
    """A fresh model for a zoo folder: with the character tokenizer saved there, or without one (the toys' models)."""
    if (folder / "tokenizer.json").is_file():
        return build_model(config, folder, device)
    return build_from_config(config, device)


def load_model_folder(folder: Path, device: str | None = None) -> HookedTransformer:
    """The zoo model saved in `folder` (by `train`), in eval mode on `device` (default CPU)."""
    device = device or "cpu"
    model = _build(read_config(folder)["config"], folder, device)
    model.load_state_dict(load_weights(folder, device))
    return model.eval()


def checkpoint_folder(name: str) -> Path:
    """The folder of zoo model `name`'s training checkpoints; a ValueError if it has none."""
    model_folder(name)  # an unknown name fails here, with the list of the zoo's models
    folder = zoo_dir() / f"{name}{CHECKPOINTS_SUFFIX}"
    if not is_saved(folder):
        with_checkpoints = [other for other in ZOO_MODELS if is_saved(zoo_dir() / f"{other}{CHECKPOINTS_SUFFIX}")]
        have = ", ".join(with_checkpoints) or "none"
        raise ValueError(f"Zoo model {name!r} has no training checkpoints; these have: {have}.")
    return folder


def checkpoint_steps(name: str) -> list[int]:
    """The training steps at which zoo model `name` was saved, increasing: 0 (the initialisation) up to the last."""
    return read_config(checkpoint_folder(name))["steps"]


def checkpoint_metrics(name: str) -> list[dict]:
    """One dict per checkpoint of `name`, by step: `step` plus the figures recorded for it.

    For the character models the figures are `mikit.induction.summarize_model`'s: `induction_score` (best head),
    `prev_token_score` (best layer-0 head), `repeat_loss_first_half` / `repeat_loss_second_half` on `[BOS, r, r]`,
    `text_loss` on held-out text, and the heads that scored best; modular-addition's are its train and test loss
    and accuracy and the restricted and excluded losses (`mikit.toys.modular_addition`).
    """
    return [{"step": entry["step"], **entry["metrics"]} for entry in read_config(checkpoint_folder(name))["checkpoints"]]


def load_checkpoint(name: str, step: int, device: str | None = None) -> HookedTransformer:
    """Zoo model `name` as it was after `step` training steps (one of `checkpoint_steps(name)`), in eval mode.

    Checkpoints are stored in float16 and returned in float32; their figures are in `checkpoint_metrics`. They come
    from their own run of the recipe, which need not end in the shipped model: the series' config.json says how they relate.
    """
    folder = checkpoint_folder(name)
    record = read_config(folder)
    if step not in record["steps"]:
        raise ValueError(f"{name} has no checkpoint at step {step!r}; its steps are {', '.join(map(str, record['steps']))}.")
    device = device or "cpu"
    prefix = checkpoint_key(step, "")
    stored = load_weights(folder, device)
    weights = {key.removeprefix(prefix): tensor.float() for key, tensor in stored.items() if key.startswith(prefix)}
    model = _build(record["config"], folder, device)
    # Only parameters are stored; the buffers (causal mask, IGNORE) come from the constructor.
    missing = set(model.load_state_dict(weights, strict=False).missing_keys) - {key for key, _ in model.named_buffers()}
    if missing:
        raise RuntimeError(f"The checkpoint at step {step} in {folder} lacks {sorted(missing)}; retrain the checkpoints.")
    return model.eval()


__all__ = [
    "CHECKPOINTS_SUFFIX",
    "RECIPES",
    "ZOO_DIR",
    "ZOO_MODELS",
    "Recipe",
    "TOY_MODELS",
    "build_from_config",
    "checkpoint_folder",
    "checkpoint_metrics",
    "checkpoint_steps",
    "held_out_text",
    "load_checkpoint",
    "load_model_folder",
    "load_zoo_model",
    "log_spaced_steps",
    "model_folder",
    "read_config",
    "train",
    "zoo_dir",
]
