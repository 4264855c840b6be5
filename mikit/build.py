"""`mikit build`: turn the solution notebooks into the exercise notebooks students open.

Solutions are the single source. nbgrader's `ClearSolutions` replaces each
`### BEGIN SOLUTION` … `### END SOLUTION` region by a stub that raises NotImplementedError,
and nbconvert's `ClearOutputPreprocessor` drops outputs, so students start from a clean page.
"""

from __future__ import annotations

from pathlib import Path

import nbformat
from nbconvert.preprocessors import ClearOutputPreprocessor
from nbgrader.preprocessors import ClearSolutions

ROOT = Path(__file__).resolve().parents[1]
SOLUTIONS = ROOT / "solutions"
NOTEBOOKS = ROOT / "notebooks"
STUB = "# YOUR CODE HERE\nraise NotImplementedError()"


def exercise_version(solution: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """Return the exercise notebook for a solution notebook (the input is left unchanged)."""
    nb = nbformat.from_dict(solution)
    nb, _ = ClearSolutions(code_stub={"python": STUB}).preprocess(nb, {})
    nb, _ = ClearOutputPreprocessor().preprocess(nb, {})
    for cell in nb.cells:
        cell.metadata.pop("execution", None)
    return nb


def build(check: bool = False, solutions: Path = SOLUTIONS, notebooks: Path = NOTEBOOKS) -> list[Path]:
    """Write `notebooks/` from `solutions/`; with `check`, write nothing and return the stale files."""
    stale = []
    for src in sorted(solutions.glob("*.ipynb")):
        text = nbformat.writes(exercise_version(nbformat.read(src, as_version=4))) + "\n"
        dst = notebooks / src.name
        if dst.exists() and dst.read_text() == text:
            continue
        stale.append(dst)
        if not check:
            dst.parent.mkdir(parents=True, exist_ok=True)
            dst.write_text(text)
    expected = {p.name for p in solutions.glob("*.ipynb")}
    for orphan in sorted(notebooks.glob("*.ipynb")):
        if orphan.name not in expected:
            stale.append(orphan)
            if not check:
                orphan.unlink()
    return stale
