"""nbgrader round trip: what `mikit build` makes, nbgrader releases and autogrades to the points `mikit grade` gives."""

import os
import shutil
import sys
from pathlib import Path

import nbformat
import pytest
from nbgrader.api import Gradebook
from nbgrader.apps import NbGraderAPI
from traitlets.config import Config

from mikit.build import SOLUTIONS, build
from mikit.grading import grade
from test_build_and_grading import SOLUTION_BODY, tiny_solution


@pytest.fixture(autouse=True)
def venv_on_path(monkeypatch):
    # nbgrader's gradebook runs the `alembic` command, installed beside this Python.
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")


def nbgrader_api(course):
    config = Config()
    config.CourseDirectory.root = str(course)
    config.CourseDirectory.course_id = "mikit"
    return NbGraderAPI(config=config)


def test_nbgrader_accepts_every_solution_notebook(tmp_path):
    # generate_assignment validates the cell metadata (ids, points, locked checks) of the real notebooks.
    (tmp_path / "source" / "kit").mkdir(parents=True)
    for path in sorted(SOLUTIONS.glob("*.ipynb")):
        shutil.copy(path, tmp_path / "source" / "kit" / path.name)
    with Gradebook(f"sqlite:///{tmp_path / 'gradebook.db'}") as gradebook:
        gradebook.add_assignment("kit")
    result = nbgrader_api(tmp_path).generate_assignment("kit")
    assert result["success"], result["log"]
    released = sorted(p.name for p in (tmp_path / "release" / "kit").glob("*.ipynb"))
    assert released == sorted(p.name for p in SOLUTIONS.glob("*.ipynb"))


@pytest.mark.notebook
def test_nbgrader_autograde_gives_the_points_mikit_grade_gives(tmp_path, monkeypatch):
    course = tmp_path / "course"
    (course / "source" / "ps1").mkdir(parents=True)
    nbformat.write(tiny_solution(), course / "source" / "ps1" / "tiny.ipynb")
    build(solutions=course / "source" / "ps1", notebooks=tmp_path / "notebooks")  # mikit's own release
    with Gradebook(f"sqlite:///{course / 'gradebook.db'}") as gradebook:
        gradebook.add_assignment("ps1")
        for student in ("alice", "bob"):
            gradebook.add_student(student)
    api = nbgrader_api(course)
    assert api.generate_assignment("ps1")["success"]
    released = nbformat.read(course / "release" / "ps1" / "tiny.ipynb", as_version=4)
    for student, answer in (("alice", SOLUTION_BODY), ("bob", None)):
        nb = nbformat.from_dict(released)
        if answer:
            nb.cells[1].source = answer
        folder = course / "submitted" / student / "ps1"
        folder.mkdir(parents=True)
        nbformat.write(nb, folder / "tiny.ipynb")
        assert api.autograde("ps1", student)["success"]
    mikit_points = {
        student: grade(course / "submitted" / student / "ps1" / "tiny.ipynb", reference=tmp_path / "notebooks" / "tiny.ipynb").total
        for student in ("alice", "bob")
    }
    with Gradebook(f"sqlite:///{course / 'gradebook.db'}") as gradebook:
        nbgrader_points = {s: gradebook.find_submission("ps1", s).score for s in ("alice", "bob")}
    assert nbgrader_points == mikit_points == {"alice": 2.0, "bob": 0.0}
