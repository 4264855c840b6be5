"""`mikit grade`: execute a copy of a student's notebook and score its check cells.

Conventions are nbgrader's: check cells carry `nbgrader.grade = true`, a `grade_id` and
`points`; a check cell that runs without an error earns its points. Check cells are reset
to the released exercise notebook's source (matched by `grade_id`) before execution, so
an edited or deleted check cannot earn points. The released notebook is found from the id
`mikit build` wrote into the submission's metadata (`metadata.mikit.notebook`), never from
its file name and never from the submission's own checks. The student's file is never modified.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import DeadKernelError
from nbconvert.preprocessors import ClearOutputPreprocessor

from mikit.build import NOTEBOOKS, released_version

ANSI = re.compile(r"\x1b\[[0-9;]*m")


class GradingError(Exception):
    """A submission or reference that cannot be graded; the message is one sentence for the instructor."""


@dataclass
class ExerciseGrade:
    points: float
    max_points: float
    message: str


@dataclass
class GradeReport:
    total: float
    max_total: float
    exercises: dict[str, ExerciseGrade] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, ensure_ascii=False)

    def to_text(self) -> str:
        width = max((len(g) for g in self.exercises), default=10)
        lines = [
            f"{gid:<{width}}  {g.points:g}/{g.max_points:g}  {g.message}" for gid, g in self.exercises.items()
        ]
        notes = [f"note: {note}" for note in self.notes]
        return "\n".join(notes + lines + [f"{'total':<{width}}  {self.total:g}/{self.max_total:g}"])


def _is_check(cell: nbformat.NotebookNode) -> bool:
    meta = cell.metadata.get("nbgrader", {})
    return cell.cell_type == "code" and meta.get("grade", False) and not meta.get("solution", False)


def _checks_by_id(nb: nbformat.NotebookNode) -> dict[str, nbformat.NotebookNode]:
    return {c.metadata.nbgrader["grade_id"]: c for c in nb.cells if _is_check(c)}


def _verdict(cell: nbformat.NotebookNode) -> tuple[bool, str]:
    """Passed or not, and the message a student would read in the cell's output."""
    if cell.get("execution_count") is None:
        return False, "this check cell was never executed (the kernel died before it)"
    for out in cell.outputs:
        if out.output_type == "error":
            text = out.evalue or out.ename
            if out.ename == "CellTimeoutError" or not text:
                text = out.ename
            return False, ANSI.sub("", text).strip()
    stdout = "".join(o.get("text", "") for o in cell.outputs if o.output_type == "stream")
    lines = [ln for ln in stdout.splitlines() if ln.strip()]
    return True, lines[-1] if lines else "passed"


def load_notebook(path: Path) -> nbformat.NotebookNode:
    """Read a notebook, or fail with one sentence saying what was expected."""
    path = Path(path)
    if not path.is_file():
        raise GradingError(f"{path} does not exist; expected a path to a .ipynb notebook.")
    try:
        return nbformat.read(path, as_version=4)
    except Exception as err:  # nbformat raises several types for non-notebooks
        raise GradingError(f"{path} is not a readable Jupyter notebook ({type(err).__name__}).") from err


def released_notebook(submission: nbformat.NotebookNode, path: Path) -> Path:
    """The released exercise notebook a submission was made from, by the id `mikit build` wrote into it."""
    notebook_id = submission.metadata.get("mikit", {}).get("notebook")
    if not notebook_id:
        raise GradingError(
            f"{path} carries no mikit notebook id (its metadata was lost, or it was not made by `mikit build`): "
            "pass the released notebook with --reference."
        )
    released = NOTEBOOKS / f"{notebook_id}.ipynb"
    if not released.is_file():
        raise GradingError(
            f"{path} was made from notebook {notebook_id!r}, which is not in {NOTEBOOKS}: "
            "pass the released notebook with --reference."
        )
    return released


def grade(
    path: Path, reference: Path | None = None, cell_timeout: int = 300, kernel_name: str = "python3"
) -> GradeReport:
    """Execute a copy of the notebook at `path` and return points per exercise.

    `reference` is the released exercise notebook; by default the one named in the submission's metadata.
    """
    path = Path(path)
    # Stale outputs saved by the student must not count as this run's verdicts.
    nb, _ = ClearOutputPreprocessor().preprocess(load_notebook(path), {})
    reference_nb = load_notebook(Path(reference) if reference else released_notebook(nb, path))
    released = _checks_by_id(reference_nb)
    if not released:
        raise GradingError(f"{reference or 'the released notebook'} has no check cells (nbgrader `grade` cells) to grade with.")
    submitted = _checks_by_id(nb)
    notes = []
    made_from = nb.metadata.get("mikit", {}).get("version")
    if made_from and made_from != released_version(reference_nb):
        notes.append(
            f"the submission was made from checks version {made_from}, and is graded with version "
            f"{released_version(reference_nb)} (the released checks changed since)."
        )
    for gid, cell in submitted.items():
        if gid in released:
            cell.source = released[gid].source
    client = NotebookClient(
        nb,
        timeout=cell_timeout,
        interrupt_on_timeout=True,
        allow_errors=True,
        kernel_name=kernel_name,
        resources={"metadata": {"path": str(path.parent.resolve())}},
    )
    try:
        client.execute()
    except DeadKernelError:
        pass  # the cells after the crash stay unexecuted and score 0

    report = GradeReport(total=0.0, max_total=0.0, notes=notes)
    for gid, ref_cell in released.items():
        max_points = float(ref_cell.metadata.nbgrader.get("points", 0))
        if gid in submitted:
            ok, message = _verdict(submitted[gid])
        else:
            ok, message = False, "this check cell was deleted from the notebook"
        points = max_points if ok else 0.0
        report.exercises[gid] = ExerciseGrade(points, max_points, message)
        report.total += points
        report.max_total += max_points
    return report
