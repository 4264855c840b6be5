"""`mikit grade`: execute a copy of a student's notebook and score its check cells.

Conventions are nbgrader's: check cells carry `nbgrader.grade = true`, a `grade_id` and
`points`; a check cell that runs without an error earns its points. Check cells are reset
to the released exercise notebook's source (matched by `grade_id`) before execution, so
an edited or deleted check cannot earn points. The student's file is never modified.
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

from mikit.build import NOTEBOOKS

ANSI = re.compile(r"\x1b\[[0-9;]*m")


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

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, ensure_ascii=False)

    def to_text(self) -> str:
        width = max((len(g) for g in self.exercises), default=10)
        lines = [
            f"{gid:<{width}}  {g.points:g}/{g.max_points:g}  {g.message}" for gid, g in self.exercises.items()
        ]
        return "\n".join(lines + [f"{'total':<{width}}  {self.total:g}/{self.max_total:g}"])


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
        raise SystemExit(f"mikit grade: {path} does not exist; expected a path to a .ipynb notebook.")
    try:
        return nbformat.read(path, as_version=4)
    except Exception as err:  # nbformat raises several types for non-notebooks
        raise SystemExit(f"mikit grade: {path} is not a readable Jupyter notebook ({type(err).__name__}).")


def grade(
    path: Path, reference: Path | None = None, cell_timeout: int = 300, kernel_name: str = "python3"
) -> GradeReport:
    """Execute a copy of the notebook at `path` and return points per exercise."""
    path = Path(path)
    # Stale outputs saved by the student must not count as this run's verdicts.
    nb, _ = ClearOutputPreprocessor().preprocess(load_notebook(path), {})
    reference = Path(reference) if reference else NOTEBOOKS / path.name
    released = _checks_by_id(load_notebook(reference)) if reference.is_file() else _checks_by_id(nb)
    submitted = _checks_by_id(nb)
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

    report = GradeReport(total=0.0, max_total=0.0)
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
