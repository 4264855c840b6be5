"""`mikit.setup()`: the first code cell of every notebook — device, mode, models, seeds."""

from __future__ import annotations

import os
import random
import time
from dataclasses import dataclass, field

import torch

MODES = ("offline", "full")
# The real LM each mode uses; zoo models are the same in both.
REAL_LM = {"offline": "smollm2-135m", "full": "gpt2-small"}
TOY_LM = "attn-only-2l"


@dataclass
class Session:
    """What a notebook runs on; `lm` is the real pretrained LM of the active mode."""

    mode: str
    device: str
    lm: str
    toy: str = TOY_LM
    started: float = field(default_factory=time.perf_counter)

    def elapsed(self) -> str:
        return f"{time.perf_counter() - self.started:.0f} s"


def choose_mode() -> str:
    """`MIKIT_MODE` if set, else full only when a GPU and the Hugging Face Hub are both reachable."""
    forced = os.environ.get("MIKIT_MODE", "").strip().lower()
    if forced:
        if forced not in MODES:
            raise ValueError(f"MIKIT_MODE must be one of {', '.join(MODES)}, not {forced!r}.")
        return forced
    from mikit.models import hub_available

    return "full" if torch.cuda.is_available() and hub_available() else "offline"


def choose_device(requested: str | None = None) -> str:
    """`requested` (or `MIKIT_DEVICE`) if given, else CUDA when there is a GPU, else the CPU; never MPS unasked."""
    requested = (requested or os.environ.get("MIKIT_DEVICE", "")).strip().lower()
    if not requested:
        return "cuda" if torch.cuda.is_available() else "cpu"
    kind = requested.split(":")[0]
    if kind == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {requested!r} was asked for, but PyTorch sees no CUDA GPU; use 'cpu'.")
    if kind == "mps":
        if not torch.backends.mps.is_available():
            raise ValueError(f"device {requested!r} was asked for, but this PyTorch has no Apple MPS backend; use 'cpu'.")
        print(
            "warning: on Apple MPS, TransformerLens gives silently wrong logits for some models (GPT-2 among them: "
            "TransformerLens issue 1178); compare with device='cpu' before trusting a result."
        )
    elif kind not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'cpu', 'cuda', 'cuda:N' or 'mps', not {requested!r}.")
    return requested


def seed_everything(seed: int = 0) -> None:
    """Seed Python, NumPy and torch so outputs repeat run to run."""
    import numpy as np

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def setup(seed: int = 0, verbose: bool = True, device: str | None = None) -> Session:
    """Pick device and mode, seed everything, and print what the notebook will run on.

    The device is CUDA when PyTorch sees a GPU, else the CPU; `device="mps"` (or `MIKIT_DEVICE=mps`)
    asks for Apple's GPU, with a warning.
    """
    mode = choose_mode()
    if mode == "offline":
        # Any hub call would otherwise hang ~23 s before failing.
        os.environ["HF_HUB_OFFLINE"] = "1"
    device = choose_device(device)
    seed_everything(seed)
    session = Session(mode=mode, device=device, lm=REAL_LM[mode])
    if verbose:
        print(f"device: {device} | mode: {mode} | models: {session.lm} (real LM), {session.toy} (zoo)")
    return session
