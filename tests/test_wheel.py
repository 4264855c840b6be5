"""The wheel carries the kit's data: installed outside the repository, it loads every shipped model and runs notebook 01."""

import os
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MAX_WHEEL_MB = 30


def test_wheel_holds_every_shipped_file_and_stays_small(built_wheel):
    names = set(zipfile.ZipFile(built_wheel).namelist())
    shipped = {f"mikit/data/{p.relative_to(ROOT / 'data')}" for p in (ROOT / "data").rglob("*") if p.is_file()}
    assert shipped and shipped <= names, sorted(shipped - names)
    assert "mikit/paths.py" in names and not any(n.startswith(("tests/", "solutions/", "data/")) for n in names)
    assert built_wheel.stat().st_size < MAX_WHEEL_MB * 2**20


@pytest.mark.wheel
@pytest.mark.notebook
def test_installed_wheel_works_outside_the_repository(built_wheel, tmp_path):
    target, work = tmp_path / "site", tmp_path / "work"
    work.mkdir()
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(built_wheel)],
                   check=True, capture_output=True, text=True)
    solution = work / "01_induction_heads.ipynb"
    solution.write_bytes((ROOT / "solutions" / solution.name).read_bytes())
    script = textwrap.dedent(f"""
        import nbformat
        from nbclient import NotebookClient

        import mikit
        from mikit import load_model, paths
        from mikit.circuits.planted import load_planted
        from mikit.circuits.sparse import load_sparse
        from mikit.sae import load
        from mikit.sae.latents import LatentIndex
        from mikit.xattn.captioner_recipe import load_captioner
        from mikit.xattn.recipes import load_t2i
        from mikit.zoo import ZOO_MODELS

        target = {str(target)!r}
        assert mikit.__file__.startswith(target), mikit.__file__
        assert str(paths.DATA_DIR).startswith(target), paths.DATA_DIR
        for name in ZOO_MODELS:
            print(name, load_model(name).cfg.n_layers, "layers")
        for folder in sorted(paths.SAE_DIR.iterdir()):
            print(folder.name, load(folder).d_sae, "latents,", LatentIndex.load(folder).n_tokens, "indexed tokens")
        print("tiny-t2i", sum(p.numel() for p in load_t2i().parameters()), "parameters")
        print("tiny-captioner", sum(p.numel() for p in load_captioner().parameters()), "parameters")
        print("planted-induction", load_planted().cfg.n_heads, "heads")
        print("sparse-attn-only-2l", load_sparse().to_str_tokens("ab"), "tokens")

        nb = nbformat.read("{solution.name}", as_version=4)
        nb.cells.append(nbformat.v4.new_code_cell("import mikit; assert mikit.__file__.startswith(%r)" % target))
        # Every check cell raises when its answer is wrong, so running to the end means full marks.
        NotebookClient(nb, timeout=600, kernel_name="python3").execute()
        print("notebook 01 ran to the end on the installed wheel")
    """)
    env = dict(os.environ, PYTHONPATH=str(target), HF_HUB_OFFLINE="1", MIKIT_MODE="offline")
    done = subprocess.run([sys.executable, "-c", script], cwd=work, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "notebook 01 ran to the end on the installed wheel" in done.stdout
    assert "attn-only-2l 2 layers" in done.stdout and "smollm2-135m-l15-topk64 2304 latents" in done.stdout
    assert "planted-induction 4 heads" in done.stdout
    assert "sparse-attn-only-2l ['<|bos|>', 'a', 'b'] tokens" in done.stdout  # weights and character tokenizer
