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
def test_damaged_solution_still_gets_full_marks(name, tmp_path):
    # `mikit grade` end to end on one solution (the quickest; the others' checks pass under nbval), damaged
    # as editors and copy-paste damage notebooks: every cell's metadata gone (VS Code), one check retyped
    # as Markdown, one moved above its exercise, one deleted.
    nb = nbformat.read(SOLUTIONS / name, as_version=4)
    checks = [i for i, c in enumerate(nb.cells) if c.metadata.get("nbgrader", {}).get("grade")]
    for cell in nb.cells:
        cell.metadata = {}
    nb.cells[checks[0]] = nbformat.v4.new_markdown_cell(nb.cells[checks[0]].source)
    nb.cells.insert(checks[1] - 2, nb.cells.pop(checks[1]))
    del nb.cells[checks[-1]]
    nbformat.write(nb, tmp_path / name)
    report = grade(tmp_path / name, reference=NOTEBOOKS / name)
    failed = {gid: g.message for gid, g in report.exercises.items() if g.points < g.max_points}
    assert report.total == report.max_total > 0, (failed, report.notes)
    assert sum("had been deleted" in note for note in report.notes) == 1
    assert sum("moved above its exercise" in note for note in report.notes) == 1
    assert sum("turned into a markdown cell" in note for note in report.notes) == 1


@pytest.mark.notebook
@pytest.mark.parametrize("name", NAMES)
def test_exercise_notebook_scores_zero(name):
    report = grade(NOTEBOOKS / name)  # found by the id in its metadata
    assert report.max_total > 0 and report.notes == []
    assert report.total == 0, {gid: g.message for gid, g in report.exercises.items() if g.points}
    # A stub's own check names the stub; a check that needs an earlier exercise's result names what is missing.
    messages = {gid: g.message for gid, g in report.exercises.items()}
    assert all("NotImplementedError" in m or "is not defined" in m for m in messages.values()), messages
    assert sum("NotImplementedError" in m for m in messages.values()) >= len(messages) / 2, messages


@pytest.mark.parametrize("name", NAMES)
def test_stated_exercises_and_points_match_the_check_cells(name):
    import re

    nb = nbformat.read(SOLUTIONS / name, as_version=4)
    checks = [c for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade") and not c.metadata.nbgrader.get("solution")]
    actual = (len(checks), sum(c.metadata.nbgrader["points"] for c in checks))
    intro = re.search(r"\*\*Grading\.\*\* (\d+) exercises, (\d+) points", nb.cells[0].source)
    assert intro, f"{name}: the first cell should say '**Grading.** N exercises, P points'"
    assert tuple(map(int, intro.groups())) == actual
    readme = (SOLUTIONS.parent / "README.md").read_text()
    row = re.search(rf"`{name.removesuffix('.ipynb')}` \|.*ready \((\d+) exercises, (\d+) points\)", readme)
    assert row and tuple(map(int, row.groups())) == actual
