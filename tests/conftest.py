"""Fixtures shared by several test modules."""

import pytest
import torch

from mikit import hidden
from mikit.checks import hidden_variant
from mikit.xattn.model import TinyT2I, TinyT2IConfig


@pytest.fixture(params=[0, 1, 2, 3], ids=["notebook", "hidden1", "hidden2", "hidden3"])
def variant(request):
    """The check as the notebook runs it (0), or as the grader does, under a hidden variant."""
    if request.param == 0:
        yield 0
        return
    with hidden.active(), hidden_variant(request.param):
        yield request.param
    hidden.reset()


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
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    out = tmp_path_factory.mktemp("wheel")
    # Built from a copy: the build writes into its source folder, and another test process may build too.
    source = tmp_path_factory.mktemp("source") / "mikit"
    shutil.copytree(Path(__file__).resolve().parents[1], source, ignore=shutil.ignore_patterns(
        ".venv", ".git", "build", "*.egg-info", "browser-run-*", "__pycache__"))
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(source)],
        check=True, capture_output=True, text=True,
    )
    (wheel,) = out.glob("mikit-*.whl")
    return wheel


@pytest.fixture
def hidden_wire(tmp_path, monkeypatch):
    """`hidden_wire(checks_module, grade_id, *functions, seed=1, kernel_grad=True)`: an exercise's hidden test
    as `mikit grade` runs it, with the student's kernel simulated in this process.

    The kernel side has its own recipe memo and no hidden variant, as a real kernel has (recipes are rebuilt
    there from their arguments); `kernel_grad=False` turns gradients off there, as the notebooks'
    `torch.set_grad_enabled(False)` does.
    """
    import mikit.checks
    from mikit import hidden
    from mikit.checks import hidden_variant

    namespace = {}
    monkeypatch.setattr(hidden, "_user_namespace", lambda: namespace)
    monkeypatch.setattr(hidden, "_stash", {})

    def grade(checks_module, grade_id, *functions, seed=1, kernel_grad=True, kernel_memo=None, keep=False):
        """`kernel_memo` (a pair of dicts) keeps the kernel's recipes between calls, as a kernel keeps them for a
        whole grading; `keep` keeps the grader's too (both save rebuilding a model for every call)."""
        kernel = kernel_memo if kernel_memo is not None else ({}, {})

        def run(code):
            grader = hidden._memo, hidden._recipe_of, mikit.checks._variant
            (hidden._memo, hidden._recipe_of), mikit.checks._variant = kernel, 0
            try:
                with torch.set_grad_enabled(kernel_grad):
                    hidden.serve(str(tmp_path))
            finally:
                hidden._memo, hidden._recipe_of, mikit.checks._variant = grader

        exercise = checks_module.EXERCISES[grade_id]
        namespace.update(zip(exercise.students, functions))
        forbidden = [hidden._qualified(fn) for fn in exercise.forbidden]
        try:
            with hidden.active(), hidden_variant(seed):
                known = hidden.resolve(list(exercise.students), run, tmp_path, forbidden)
                exercise.check(*(known[name] for name in exercise.students), *exercise.context())
        finally:
            if not keep:
                hidden.reset()

    return grade


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module's tests (`pytestmark = pytest.mark.usefixtures("one_thread")`): small
    models train faster on one thread of a shared 2-core machine than on two fighting for it (5 times, measured
    training the time-series classifier)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
