"""`mikit grade` gives every solution notebook full marks and every exercise notebook zero."""

import os

import nbformat
import pytest

from mikit.build import NOTEBOOKS, SOLUTIONS
from mikit.grading import grade

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MIKIT_MODE", "offline")

NAMES = sorted(p.name for p in SOLUTIONS.glob("*.ipynb"))


def test_every_solution_check_cell_shows_its_pass_line():
    # nbval re-executes each solution and compares these outputs, so a solution whose check fails
    # fails nbval; grading every solution a second time would only repeat that run.
    for name in NAMES:
        nb = nbformat.read(SOLUTIONS / name, as_version=4)
        checks = [c for c in nb.cells if c.cell_type == "code" and c.metadata.get("nbgrader", {}).get("grade")]
        assert checks, name
        for cell in checks:
            text = "".join(o.get("text", "") for o in cell.get("outputs", []) if o.output_type == "stream")
            assert text.startswith("✓"), (name, cell.metadata.nbgrader.grade_id, text[:200])


@pytest.mark.notebook
@pytest.mark.parametrize("name", NAMES[:1])
def test_solution_gets_full_marks(name):
    # `mikit grade` end to end on one solution (the quickest); the others' checks pass under nbval.
    report = grade(SOLUTIONS / name, reference=NOTEBOOKS / name)
    failed = {gid: g.message for gid, g in report.exercises.items() if g.points < g.max_points}
    assert report.total == report.max_total > 0, failed


@pytest.mark.notebook
@pytest.mark.parametrize("name", NAMES)
def test_exercise_notebook_scores_zero(name):
    report = grade(NOTEBOOKS / name)
    assert report.max_total > 0
    assert report.total == 0, {gid: g.message for gid, g in report.exercises.items() if g.points}
    # A stub's own check names the stub; a check that needs an earlier exercise's result names what is missing.
    messages = {gid: g.message for gid, g in report.exercises.items()}
    assert all("NotImplementedError" in m or "is not defined" in m for m in messages.values()), messages
    assert sum("NotImplementedError" in m for m in messages.values()) >= len(messages) / 2, messages
