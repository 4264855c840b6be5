"""A zoo model on disk: `model.safetensors`, `config.json` and the tokenizer files, never a pickle."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

from safetensors.torch import load_file, save_file
from torch import nn
from transformer_lens import HookedTransformer, HookedTransformerConfig

from mikit.zoo.tokenizer import load_char_tokenizer

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"


def build_model(hooked_config: dict, folder: Path, device: str = "cpu") -> HookedTransformer:
    """A freshly initialised model for `hooked_config`, with the tokenizer saved in `folder`."""
    cfg = HookedTransformerConfig(**hooked_config, device=device)
    # TransformerLens 3.9 flags HookedTransformer itself as deprecated; students need not see that here.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="HookedTransformer is deprecated", category=DeprecationWarning)
        return HookedTransformer(cfg, tokenizer=load_char_tokenizer(folder))


def save_model_folder(model: nn.Module, folder: Path, config: dict) -> None:
    """Write the weights and `config` into `folder` (a zoo model's `config` holds `hooked_transformer_config`)."""
    state = {name: tensor.detach().cpu().contiguous() for name, tensor in model.state_dict().items()}
    save_file(state, str(folder / WEIGHTS_FILE))
    (folder / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")


def read_config(folder: Path) -> dict:
    """The `config.json` of the zoo model in `folder`."""
    return json.loads((folder / CONFIG_FILE).read_text())


def load_model_folder(folder: Path, device: str | None = None) -> HookedTransformer:
    """Rebuild the model saved in `folder`, load its weights and put it in eval mode on `device` (default CPU)."""
    device = device or "cpu"
    model = build_model(read_config(folder)["hooked_transformer_config"], folder, device)
    model.load_state_dict(load_file(str(folder / WEIGHTS_FILE), device=str(device)))
    return model.eval()
