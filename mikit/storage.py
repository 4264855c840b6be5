"""A trained model on disk, in one layout for every model the kit saves: never a pickle.

    folder/model.safetensors   the state dict
    folder/config.json         {"config": <the model's constructor arguments>, "recipe": ..., "metrics": ..., ...}

The zoo's models, the text-to-image models and the converted SmolLM2 cache all use it; saved SAEs
use SAELens' own format instead (`mikit.sae.io`), so that SAELens can read them.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from safetensors.torch import load_file, save_file
from torch import Tensor, nn

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"


def save_folder(model: nn.Module | dict[str, Tensor], folder: Path, record: dict) -> None:
    """Write the weights of `model` (a module or a state dict) and `record` (with its "config") into `folder`."""
    if "config" not in record:
        raise ValueError("a saved model's record needs a 'config' entry: the arguments that rebuild the model.")
    state = model.state_dict() if isinstance(model, nn.Module) else model
    folder.mkdir(parents=True, exist_ok=True)
    save_file({name: tensor.detach().cpu().contiguous() for name, tensor in state.items()}, str(folder / WEIGHTS_FILE))
    (folder / CONFIG_FILE).write_text(json.dumps(record, indent=2) + "\n")


def save_cache(
    state: dict[str, Tensor], folder: Path, record: dict, *, also: Callable[[Path], None] | None = None
) -> None:
    """`save_folder` for a cache that several processes may fill at once: written into a scratch folder (plus
    whatever `also(scratch)` writes, e.g. a tokenizer) and renamed to `folder` at the end, so that a crash never
    leaves a half-written cache and a process that finishes second keeps the first one's."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        save_folder(state, scratch, record)
        if also is not None:
            also(scratch)
        try:
            scratch.rename(folder)
        except OSError:
            if not folder.exists():  # otherwise another process finished the same cache first
                raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def is_saved(folder: Path) -> bool:
    """Whether `folder` holds both files of a saved model."""
    return (folder / CONFIG_FILE).is_file() and (folder / WEIGHTS_FILE).is_file()


def read_config(folder: Path) -> dict:
    """The record (`config.json`) of the model saved in `folder`."""
    return json.loads((folder / CONFIG_FILE).read_text())


def load_weights(folder: Path, device: str = "cpu") -> dict[str, Tensor]:
    """The state dict saved in `folder`, on `device`."""
    return load_file(str(folder / WEIGHTS_FILE), device=str(device))
