"""`make gpu-check`: every solution notebook offline on a CUDA GPU, graded by its own checks, with wall times.

Skipped without CUDA (CI has none); the full-mode stand-ins run on CUDA from tests/test_full_mode.py.
"""

import shutil
import time

import pytest
import torch

from mikit.build import NOTEBOOKS, SOLUTIONS
from mikit.grading import grade

NAMES = sorted(p.name for p in SOLUTIONS.glob("*.ipynb"))


@pytest.mark.gpu
@pytest.mark.notebook
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU: `make gpu-check` is for a machine with one")
@pytest.mark.parametrize("name", NAMES)
def test_solution_on_cuda_gets_full_marks(name, tmp_path, monkeypatch):
    monkeypatch.setenv("MIKIT_MODE", "offline")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    copy = tmp_path / name
    shutil.copy(SOLUTIONS / name, copy)
    start = time.perf_counter()
    report = grade(copy, reference=NOTEBOOKS / name, cell_timeout=600)
    print(f"\ngpu-check offline {name}: {time.perf_counter() - start:.0f} s on {torch.cuda.get_device_name()}")
    failed = {gid: g.message for gid, g in report.exercises.items() if g.points < g.max_points}
    assert report.total == report.max_total > 0, failed
