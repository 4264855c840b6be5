"""The notebooks' Colab cell, run as Colab runs it: a fresh environment that already has torch keeps it."""

import importlib.metadata
import os
import re
import shlex
import shutil
import subprocess
import sysconfig
import venv
from pathlib import Path

import nbformat
import pytest
from packaging.requirements import Requirement

from mikit.build import COLAB_GUARD, NOTEBOOKS, KitSettings

def colab_commands() -> list[str]:
    """The `%pip` lines of notebook 01's Colab cell, as a student's Colab runs them."""
    nb = nbformat.read(NOTEBOOKS / "01_induction_heads.ipynb", as_version=4)
    (cell,) = [c for c in nb.cells if c.cell_type == "code" and COLAB_GUARD in c.source]
    return [line.strip().removeprefix("%pip ") for line in cell.source.splitlines() if line.strip().startswith("%pip ")]


def preinstall(distribution: str, site_packages: Path) -> None:
    """Put `distribution` and what it requires into `site_packages` as pip left them here (hard links, else copies).

    A Colab image has torch installed; linking this venv's copy gives the new environment the same thing
    in seconds instead of a minute of unpacking.
    """
    seen, todo = set(), [distribution]
    while todo:
        dist = importlib.metadata.distribution(todo.pop())
        name = dist.metadata["Name"].lower().replace("-", "_")
        # What the new environment has already (pip, setuptools) stays as it is.
        if name in seen or any(p.name.lower().startswith(f"{name}-") for p in site_packages.glob("*.dist-info")):
            continue
        seen.add(name)
        todo += [r.name for r in map(Requirement, dist.requires or []) if r.marker is None]
        for file in dist.files:
            if file.parts[0] == "..":  # console scripts outside site-packages
                continue
            source, destination = Path(dist.locate_file(file)), site_packages / file
            destination.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(source, destination)
            except OSError:
                shutil.copy2(source, destination)


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
    site_packages = Path(sysconfig.get_path("purelib", vars={"base": str(env_dir)}))
    preinstall("torch", site_packages)
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
