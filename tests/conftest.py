"""Fixtures shared by several test modules."""

import pytest
import torch

from mikit.xattn.model import TinyT2I, TinyT2IConfig


@pytest.fixture(scope="module")
def tiny_t2i():
    """A 2-layer TinyT2I with every weight nudged off its init (adaLN-Zero starts as the identity), in eval mode."""
    torch.manual_seed(0)
    model = TinyT2I(TinyT2IConfig(d_model=32, n_heads=2, n_layers=2, d_mlp=64))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model.eval()


@pytest.fixture(scope="session")
def built_wheel(tmp_path_factory):
    """The kit's wheel, built from this checkout as `pip wheel .` does (no network: the venv's setuptools)."""
    import subprocess
    import sys
    from pathlib import Path

    out = tmp_path_factory.mktemp("wheel")
    root = Path(__file__).resolve().parents[1]
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(root)],
        check=True, capture_output=True, text=True,
    )
    (wheel,) = out.glob("mikit-*.whl")
    return wheel
