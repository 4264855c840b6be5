"""`mikit grade`: execute a copy of a student's notebook and score each exercise by its hidden test.

Conventions are nbgrader's: check cells carry `nbgrader.grade = true`, a `grade_id` and `points`.
The released notebook is found from the id `mikit build` wrote into the submission's metadata
(`metadata.mikit.notebook`), never from its file name and never from the submission's own checks;
check cells are reset to the released source before execution. For the kit's notebooks, the
points come from hidden tests: after the notebook has run, the grader calls each exercise's
function in the kernel on fresh inputs and judges the returned data in its own process
(`mikit.hidden`), so nothing the notebook does to its kernel changes a verdict. A notebook
outside the kit is scored by its check cells, as nbgrader does. The student's file is never modified.
"""

from __future__ import annotations

import ast
import contextlib
import csv
import html
import importlib
import io
import json
import os
import re
import resource
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import DeadKernelError
from nbconvert.preprocessors import ClearOutputPreprocessor
from nbformat.v4 import new_code_cell

from mikit.build import NOTEBOOKS, released_version

ANSI = re.compile(r"\x1b\[[0-9;]*m")
MAX_MESSAGE = 400  # characters of a check's message kept in a report (a student's error can be megabytes)


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
    seed: int | None = None  # the hidden tests' seed: `mikit grade --seed` reproduces them

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str) -> GradeReport:
        data = json.loads(text)
        exercises = {gid: ExerciseGrade(**grade) for gid, grade in data["exercises"].items()}
        return cls(data["total"], data["max_total"], exercises, data.get("notes", []), data.get("seed"))

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
            return False, _shorten(ANSI.sub("", text).strip())
    stdout = "".join(o.get("text", "") for o in cell.outputs if o.output_type == "stream")
    lines = [ln for ln in stdout.splitlines() if ln.strip()]
    return True, _shorten(lines[-1]) if lines else "passed"


def _shorten(message: str) -> str:
    return message if len(message) <= MAX_MESSAGE else message[: MAX_MESSAGE - 1] + "…"


def _defined_names(source: str) -> set[str]:
    """Top-level functions and variables a cell defines (none if it is not valid Python)."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return set()
    names = {node.name for node in tree.body if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))}
    for node in tree.body:
        if isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names |= {t.id for t in targets if isinstance(t, ast.Name)}
    return names


def _grade_id(cell: nbformat.NotebookNode) -> str | None:
    return cell.metadata.get("nbgrader", {}).get("grade_id")


def restore_cells(nb: nbformat.NotebookNode, released: nbformat.NotebookNode) -> list[str]:
    """Put a damaged submission back into gradable shape, in place; one sentence per repair.

    Cells are matched by nbgrader metadata, and where it is gone (VS Code, copy-paste) by source: a check
    by its text or its `check.NAME(` call, a solution by the function it defines. Retyped cells become
    code again; each check runs the released source, once, below its solution (put back if deleted).
    """
    notes = []
    checks = _checks_by_id(released)
    solutions = {  # solution grade_id -> the names its released cell defines
        _grade_id(c): _defined_names(c.source) for c in released.cells if c.metadata.get("nbgrader", {}).get("solution")
    }
    solution_of = _solution_of(released)  # a check belongs to the solution cell above it
    for i, cell in enumerate(nb.cells):
        gid = _grade_id(cell)
        if gid is None:
            text = cell.source.strip()
            call = re.match(r"check\.(\w+)\(", text)
            by_text = next((g for g, c in checks.items() if c.source.strip() == text), None)
            gid = by_text or (call.group(1) if call and call.group(1) in checks else None)
            if gid is None:
                defined = _defined_names(cell.source)
                gid = next((g for g, names in solutions.items() if names and names <= defined), None)
            if gid is None:
                continue
            source_cell = checks[gid] if gid in checks else next(c for c in released.cells if _grade_id(c) == gid)
            cell.metadata["nbgrader"] = dict(source_cell.metadata.nbgrader)
            notes.append(f"cell {i + 1} had lost its grading metadata; it was recognised as `{gid}`.")
        if gid in checks or gid in solutions:
            if cell.cell_type != "code":
                notes.append(f"cell {i + 1} (`{gid}`) had been turned into a {cell.cell_type} cell; it was run as code.")
                nb.cells[i] = new_code_cell(cell.source, metadata=cell.metadata, id=cell.get("id"))
    kept = []
    for i, cell in enumerate(nb.cells):
        gid = _grade_id(cell)
        if gid in checks and _is_check(cell):
            if any(_grade_id(k) == gid for k in kept if _is_check(k)):
                notes.append(f"check `{gid}` appeared more than once (cell {i + 1}); only the first copy was run.")
                continue
            if cell.source.strip() != checks[gid].source.strip():
                notes.append(f"check `{gid}` had been edited; the released check was run instead.")
            cell.source = checks[gid].source
        kept.append(cell)
    for gid, check in checks.items():
        position = next((i for i, c in enumerate(kept) if _is_check(c) and _grade_id(c) == gid), None)
        solution = next((i for i, c in enumerate(kept) if solution_of[gid] and _grade_id(c) == solution_of[gid]), None)
        if position is None:
            cell = new_code_cell(check.source, metadata=dict(check.metadata))
            where = "after your solution" if solution is not None else "at the end (no solution cell was found for it)"
            kept.insert(solution + 1 if solution is not None else len(kept), cell)
            notes.append(f"check `{gid}` had been deleted; the released check was put back {where}.")
        elif solution is not None and position < solution:
            kept.insert(solution, kept.pop(position))  # the solution moved up by one when the check left
            notes.append(f"check `{gid}` had been moved above its exercise; it was run below it.")
    nb.cells = kept
    return notes


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


def _checks_module(reference_nb: nbformat.NotebookNode) -> dict:
    """The released notebook's hidden tests (`EXERCISES` of its checks module), or none for a notebook outside the kit."""
    from mikit.checks import NOTEBOOK_CHECKS

    module = NOTEBOOK_CHECKS.get(reference_nb.metadata.get("mikit", {}).get("notebook", ""))
    return importlib.import_module(module).EXERCISES if module else {}


def _solution_of(released: nbformat.NotebookNode) -> dict[str, str | None]:
    """Check grade_id -> the grade_id of the solution cell above it in the released notebook."""
    solution_of, above = {}, None
    for cell in released.cells:
        if cell.metadata.get("nbgrader", {}).get("solution"):
            above = _grade_id(cell)
        elif _is_check(cell):
            solution_of[_grade_id(cell)] = above
    return solution_of


def reference_uses(notebook: nbformat.NotebookNode, source: str, forbidden: list[Callable]) -> str | None:
    """The first forbidden reference function `source` names (as `module.name` or a name imported from it), if any.

    Module aliases are collected from every code cell of `notebook` (the setup cell usually imports them).
    """
    targets = {(fn.__module__, fn.__name__) for fn in forbidden}
    modules = {module for module, _ in targets}
    aliases: dict[str, str] = {}  # local name -> module it stands for
    names: dict[str, tuple[str, str]] = {}  # local name -> (module, function) imported directly
    for cell in notebook.cells:
        if cell.cell_type != "code":
            continue
        try:
            tree = ast.parse(cell.source)
        except SyntaxError:
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    aliases[alias.asname or alias.name.split(".")[0]] = alias.name if alias.asname else alias.name.split(".")[0]
            elif isinstance(node, ast.ImportFrom) and node.module:
                for alias in node.names:
                    full = f"{node.module}.{alias.name}"
                    if full in modules:
                        aliases[alias.asname or alias.name] = full
                    elif (node.module, alias.name) in targets:
                        names[alias.asname or alias.name] = (node.module, alias.name)
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return None

    def dotted(node: ast.AST) -> str | None:
        if isinstance(node, ast.Name):
            return aliases.get(node.id, node.id)
        if isinstance(node, ast.Attribute):
            base = dotted(node.value)
            return f"{base}.{node.attr}" if base else None
        return None

    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            base = dotted(node.value)
            if (base, node.attr) in targets:
                return f"{base}.{node.attr}"
        elif isinstance(node, ast.Name) and node.id in names:
            return ".".join(names[node.id])
        elif isinstance(node, ast.ImportFrom) and node.module:
            found = next((a.name for a in node.names if (node.module, a.name) in targets), None)
            if found:
                return f"{node.module}.{found}"
    return None


def _run_hidden_test(exercise, run: Callable[[str], None], folder: Path, seed: int) -> tuple[bool, str]:
    """Run `exercise`'s check in this process on hidden inputs, calling the student's code in the kernel."""
    from mikit import hidden
    from mikit.checks import CheckFailed, hidden_variant

    forbidden = [hidden._qualified(fn) for fn in exercise.forbidden]
    printed = io.StringIO()
    try:
        with hidden.active(), hidden_variant(seed), contextlib.redirect_stdout(printed):
            known = hidden.resolve(list(exercise.students), run, folder, forbidden)
            exercise.check(*(known[name] for name in exercise.students), *exercise.context())
    except (CheckFailed, hidden.StudentError) as failure:
        return False, _shorten(str(failure))
    except Exception as error:  # the student's own exception, raised again by the check's call
        return False, _shorten(f"{type(error).__name__}: {error}")
    lines = [line for line in printed.getvalue().splitlines() if line.strip()]
    return True, _shorten(lines[-1]) if lines else "passed"


def grade(
    path: Path, reference: Path | None = None, cell_timeout: int = 300, kernel_name: str = "python3",
    seed: int | None = None,
) -> GradeReport:
    """Execute a copy of the notebook at `path` and return points per exercise.

    `reference` is the released exercise notebook; by default the one named in the submission's metadata.
    Each exercise of a kit notebook is judged by its hidden test (fresh inputs from `seed`, random by
    default), run in this process; the check cells still run in the kernel, as the student saw them.
    """
    from mikit import hidden

    path = Path(path)
    # Stale outputs saved by the student must not count as this run's verdicts.
    nb, _ = ClearOutputPreprocessor().preprocess(load_notebook(path), {})
    reference_nb = load_notebook(Path(reference) if reference else released_notebook(nb, path))
    released = _checks_by_id(reference_nb)
    if not released:
        raise GradingError(f"{reference or 'the released notebook'} has no check cells (nbgrader `grade` cells) to grade with.")
    notes = restore_cells(nb, reference_nb)
    made_from = nb.metadata.get("mikit", {}).get("version")
    if made_from and made_from != released_version(reference_nb):
        notes.append(
            f"the submission was made from checks version {made_from}, and is graded with version "
            f"{released_version(reference_nb)} (the released checks changed since)."
        )
    exercises = _checks_module(reference_nb)
    seed = seed or secrets.randbelow(2**31 - 1) + 1
    defines = {_grade_id(c): sorted(_defined_names(c.source)) for c in reference_nb.cells if c.metadata.get("nbgrader", {}).get("solution")}
    client = NotebookClient(
        nb, timeout=cell_timeout, interrupt_on_timeout=True, allow_errors=True, kernel_name=kernel_name,
        resources={"metadata": {"path": str(path.parent.resolve())}},
    )

    def run(code: str) -> None:
        """Execute the grader's own `code` in the kernel (a cell appended for the call, then removed)."""
        nb.cells.append(new_code_cell(code))
        try:
            client.execute_cell(nb.cells[-1], len(nb.cells) - 1, store_history=False)
        finally:
            nb.cells.pop()

    report = GradeReport(total=0.0, max_total=0.0, notes=notes, seed=seed)
    solution_of = _solution_of(reference_nb)
    solutions = {_grade_id(c): c for c in nb.cells if c.metadata.get("nbgrader", {}).get("solution")}
    with tempfile.TemporaryDirectory(prefix="mikit-hidden-") as folder, client.setup_kernel():
        client.reset_execution_trackers()
        alive = True
        for index, cell in enumerate(nb.cells):
            try:
                client.execute_cell(cell, index, execution_count=client.code_cells_executed + 1)
                if exercises and _grade_id(cell) in defines and cell.metadata.nbgrader.get("solution"):
                    run(f"__import__('mikit.hidden', fromlist=['stash']).stash({defines[_grade_id(cell)]!r})")
            except DeadKernelError:
                alive = False  # the cells after the crash stay unexecuted and score 0
                break
        submitted = _checks_by_id(nb)
        for gid, ref_cell in released.items():
            max_points = float(ref_cell.metadata.nbgrader.get("points", 0))
            if gid in exercises:
                solution = solutions.get(solution_of.get(gid))
                used = solution is not None and reference_uses(nb, solution.source, list(exercises[gid].forbidden))
                if used:
                    ok, message = False, f"your solution refers to the reference `{used}`: the exercise asks you to write it yourself"
                elif not alive:
                    ok, message = False, "the kernel died before the hidden tests could run"
                else:
                    try:
                        ok, message = _run_hidden_test(exercises[gid], run, Path(folder), seed)
                    except DeadKernelError:
                        alive, ok, message = False, False, "your code stopped the kernel during the hidden test"
            elif gid in submitted:
                ok, message = _verdict(submitted[gid])
            else:
                ok, message = False, "this check cell was deleted from the notebook"
            points = max_points if ok else 0.0
            report.exercises[gid] = ExerciseGrade(points, max_points, message)
            report.total += points
            report.max_total += max_points
    hidden.reset()
    return report


@dataclass
class SubmissionResult:
    """One row of a class: the student, their file, and the report, or why there is none."""

    student: str
    path: Path
    report: GradeReport | None
    problem: str = ""


def find_submissions(paths: list[Path]) -> list[Path]:
    """The notebooks named, and those in the folders named (recursively, skipping checkpoints), in order."""
    found = []
    for path in map(Path, paths):
        if path.is_dir():
            found += sorted(p for p in path.rglob("*.ipynb") if ".ipynb_checkpoints" not in p.parts)
        elif path.is_file():
            found.append(path)
        else:
            raise GradingError(f"{path} does not exist; expected notebooks or folders of notebooks.")
    if not found:
        raise GradingError(f"no .ipynb notebooks in {', '.join(map(str, paths))}.")
    return found


def student_id(path: Path, pattern: str | None = None) -> str:
    """The file name without `.ipynb`, or the first group of `pattern` searched in the file name."""
    if pattern is None:
        return path.stem
    match = re.search(pattern, path.name)
    if not match:
        raise GradingError(f"--id-pattern {pattern!r} does not match the file name {path.name!r}.")
    return match.group(1) if match.groups() else match.group(0)


def grade_class(
    paths: list[Path],
    reference: Path | None = None,
    *,
    jobs: int = 1,
    cell_timeout: int = 300,
    notebook_timeout: int = 1800,
    memory_gb: float = 8.0,
    id_pattern: str | None = None,
    progress: bool = True,
    seed: int | None = None,
) -> list[SubmissionResult]:
    """Grade every submission in its own process, working folder and HOME, with time and memory limits.

    A notebook that loops, raises, floods its output, kills its kernel or deletes files still gets a
    row with the reason, and cannot change another's: each runs on a private copy. This isolates
    mistakes, not attacks: run hostile code in a container. The whole class gets the same hidden inputs
    (`seed`, random by default).
    """
    from tqdm.auto import tqdm

    submissions = find_submissions(paths)
    students = [student_id(path, id_pattern) for path in submissions]
    twins = {s for s in students if students.count(s) > 1}
    if twins:
        raise GradingError(f"several submissions share the student id {sorted(twins)[0]!r}: rename them or pass --id-pattern.")
    reference = Path(reference).resolve() if reference else None
    seed = seed or secrets.randbelow(2**31 - 1) + 1

    with tempfile.TemporaryDirectory(prefix="mikit-grade-") as scratch:
        # Every submission is copied before any runs, so a notebook that deletes files reaches no other's.
        folders = []
        for i, path in enumerate(submissions):
            folder = Path(scratch) / str(i)
            (folder / "work").mkdir(parents=True)
            (folder / "home").mkdir()
            shutil.copyfile(path, folder / "work" / path.name)
            folders.append(folder)

        def one(i: int) -> SubmissionResult:
            copy = folders[i] / "work" / submissions[i].name
            result = _grade_isolated(copy, reference, cell_timeout, notebook_timeout, memory_gb, seed)
            return SubmissionResult(students[i], submissions[i], *result)

        with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
            rows = pool.map(one, range(len(submissions)))
            return list(tqdm(rows, total=len(submissions), desc="grading", unit="notebook", disable=not progress))


def _grade_isolated(
    copy: Path, reference: Path | None, cell_timeout: int, notebook_timeout: int, memory_gb: float, seed: int
) -> tuple[GradeReport | None, str]:
    """`mikit grade COPY --json` in a process of its own, HOME beside the copy; the report or why there is none."""
    work, home = copy.parent, copy.parent.parent / "home"
    command = [sys.executable, "-m", "mikit", "grade", str(copy), "--json", "--timeout", str(cell_timeout), "--seed", str(seed)]
    command += ["--reference", str(reference)] if reference else []
    limit = int(memory_gb * 2**30)

    def cap_memory() -> None:  # runs in the child before exec; the kernel it starts inherits the cap
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    process = subprocess.Popen(
        command, cwd=work, env=dict(os.environ, HOME=str(home)), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, start_new_session=True, preexec_fn=cap_memory,
    )
    try:
        out, err = process.communicate(timeout=notebook_timeout)
    except subprocess.TimeoutExpired:
        # The grader's process group; its kernel, in a session of its own, exits when its parent is gone.
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        return None, f"stopped after {notebook_timeout} s, the time allowed per notebook"
    if process.returncode != 0:
        lines = [line for line in err.strip().splitlines() if line.strip()]
        reason = lines[-1].removeprefix("mikit grade: ") if lines else f"the grader stopped (exit code {process.returncode})"
        return None, _shorten(reason)
    return GradeReport.from_json(out), ""


def write_csv(results: list[SubmissionResult], path: Path) -> None:
    """One row per submission: student, file, points per exercise, total, max total, problem."""
    exercises = list(dict.fromkeys(gid for r in results if r.report for gid in r.report.exercises))
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["student", "file", *exercises, "total", "max_total", "problem"])
        for r in results:
            points = [r.report.exercises[g].points if r.report and g in r.report.exercises else 0.0 for g in exercises]
            total, max_total = (r.report.total, r.report.max_total) if r.report else (0.0, "")
            writer.writerow([r.student, r.path.name, *points, total, max_total, r.problem])


def feedback_markdown(result: SubmissionResult) -> str:
    """What a student reads: points and the message of each exercise (never hidden inputs or references)."""
    lines = [f"# Feedback for {result.student}", "", f"Notebook: `{result.path.name}`", ""]
    if result.report is None:
        return "\n".join(lines + [f"**Not graded:** {result.problem}", ""])
    report = result.report
    lines += [f"**Total: {report.total:g} / {report.max_total:g}**", ""]
    lines += [f"> {note}" for note in report.notes] + ([""] if report.notes else [])
    lines += ["| exercise | points | feedback |", "|---|---|---|"]
    for gid, grade in report.exercises.items():
        message = grade.message.replace("|", "\\|").replace("\n", " ")
        lines.append(f"| {gid} | {grade.points:g} / {grade.max_points:g} | {message} |")
    return "\n".join(lines + [""])


def feedback_html(result: SubmissionResult) -> str:
    """The same feedback as a standalone HTML page."""
    esc = html.escape
    head = f"<h1>Feedback for {esc(result.student)}</h1><p>Notebook: <code>{esc(result.path.name)}</code></p>"
    if result.report is None:
        body = f"<p><strong>Not graded:</strong> {esc(result.problem)}</p>"
    else:
        report = result.report
        notes = "".join(f"<blockquote>{esc(note)}</blockquote>" for note in report.notes)
        rows = "".join(
            f"<tr><td>{esc(gid)}</td><td>{g.points:g} / {g.max_points:g}</td><td>{esc(g.message)}</td></tr>"
            for gid, g in report.exercises.items()
        )
        body = (
            f"<p><strong>Total: {report.total:g} / {report.max_total:g}</strong></p>{notes}"
            f"<table><tr><th>exercise</th><th>points</th><th>feedback</th></tr>{rows}</table>"
        )
    style = "body{font-family:sans-serif;max-width:60em;margin:2em auto}td,th{border:1px solid #ccc;padding:.3em .6em}"
    return f'<!doctype html><html><head><meta charset="utf-8"><style>{style}</style></head><body>{head}{body}</body></html>\n'


def write_feedback(results: list[SubmissionResult], folder: Path) -> None:
    """`folder/<student>.md` and `.html` for every submission."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for result in results:
        (folder / f"{result.student}.md").write_text(feedback_markdown(result))
        (folder / f"{result.student}.html").write_text(feedback_html(result))
