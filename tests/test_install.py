"""The notebooks' Colab cell, run as Colab runs it: a fresh environment that already has torch keeps it."""

import os
import re
import shlex
import subprocess
import sys
import venv
from pathlib import Path

import nbformat
import pytest

from mikit.build import COLAB_GUARD, NOTEBOOKS, KitSettings

TORCH = "torch==2.13.0"  # the release CI's venv has (Makefile); Colab has its own


def colab_commands() -> list[str]:
    """The `%pip` lines of notebook 01's Colab cell, as a student's Colab runs them."""
    nb = nbformat.read(NOTEBOOKS / "01_induction_heads.ipynb", as_version=4)
    (cell,) = [c for c in nb.cells if c.cell_type == "code" and COLAB_GUARD in c.source]
    return [line.strip().removeprefix("%pip ") for line in cell.source.splitlines() if line.strip().startswith("%pip ")]


def torch_fingerprint(python: Path) -> str:
    """torch's version, and the inode and mtime of its __init__.py: any reinstall changes them."""
    code = "import os, torch; s = os.stat(torch.__file__); print(torch.__version__, s.st_ino, s.st_mtime_ns)"
    return subprocess.run([python, "-c", code], check=True, capture_output=True, text=True).stdout.strip()


@pytest.mark.install
def test_colab_cell_keeps_torch_and_installs_a_working_kit(built_wheel, tmp_path):
    settings = KitSettings.read()
    commands = colab_commands()
    git_target = f"mikit[colab] @ git+{settings.repository}@{settings.ref}"
    assert len(commands) == 2 and git_target in commands[0], commands

    env_dir = tmp_path / "colab"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    subprocess.run([python, "-m", "pip", "install", "-q", TORCH], check=True, capture_output=True, text=True)
    before = torch_fingerprint(python)

    output = ""
    for command in commands:
        # The same command, with the kit's address swapped for the wheel built from this checkout.
        args = [arg.replace(git_target, f"mikit[colab] @ {built_wheel.as_uri()}") for arg in shlex.split(command)]
        done = subprocess.run([python, "-m", "pip", *args], capture_output=True, text=True)
        output += done.stdout + done.stderr
        assert done.returncode == 0, output[-3000:]
    # pip neither uninstalled nor installed torch, and its files are the ones that were there.
    assert not re.search(r"Uninstalling torch-|Successfully installed .*\btorch-", output), output[-3000:]
    assert torch_fingerprint(python) == before

    script = (
        "import mikit; S = mikit.setup(); toy = mikit.load_model(S.toy, device=S.device); "
        "print(mikit.__file__); print(toy.cfg.n_layers, 'layers', toy.to_str_tokens('ab'))"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("MIKIT_MODE", "PYTHONPATH", "VIRTUAL_ENV")}
    done = subprocess.run([python, "-c", script], cwd=tmp_path, env=dict(env, HF_HUB_OFFLINE="1"),
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "mode: offline" in done.stdout and str(env_dir) in done.stdout
    assert "2 layers ['<|bos|>', 'a', 'b']" in done.stdout
