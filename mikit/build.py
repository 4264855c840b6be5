"""`mikit build`: turn the solution notebooks into the exercise notebooks students open.

Solutions are the single source. nbgrader's `ClearSolutions` replaces each
`### BEGIN SOLUTION` … `### END SOLUTION` region by a stub that raises NotImplementedError,
and nbconvert's `ClearOutputPreprocessor` drops outputs, so students start from a clean page.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import tomllib
from dataclasses import dataclass
from pathlib import Path

import nbformat
from nbconvert.preprocessors import ClearOutputPreprocessor
from nbgrader.preprocessors import ClearSolutions

from mikit.paths import PACKAGE

# Solutions and notebooks live only in a clone of the repository, beside the package.
SOLUTIONS = PACKAGE.parent / "solutions"
NOTEBOOKS = PACKAGE.parent / "notebooks"
PYPROJECT = PACKAGE.parent / "pyproject.toml"
STUB = "# YOUR CODE HERE\nraise NotImplementedError()"
COLAB_GUARD = '"google.colab" in sys.modules'
BADGE = re.compile(r"^\[!\[Open In Colab\]\(.*\n?")


class BuildError(Exception):
    """`mikit build` would overwrite work; the message says which files and how to go on."""


@dataclass(frozen=True)
class KitSettings:
    """`[tool.mikit]` in pyproject.toml: where the kit is published, the one place to change it."""

    repository: str
    ref: str
    data_packages: tuple[str, ...]

    @classmethod
    def read(cls, pyproject: Path = PYPROJECT) -> KitSettings:
        table = tomllib.loads(Path(pyproject).read_text())["tool"]["mikit"]
        if not table["repository"].startswith("https://github.com/"):
            raise ValueError(f"[tool.mikit] repository must be a https://github.com/OWNER/NAME address; got {table['repository']!r}.")
        return cls(table["repository"].rstrip("/"), table["ref"], tuple(table["data-packages"]))

    def install_lines(self) -> list[str]:
        """The Colab cell's pip commands: the kit at the tested versions (Colab's torch kept), then its data packages."""
        return [
            f'%pip install -q "mikit[colab] @ git+{self.repository}@{self.ref}"',
            f"%pip install -q --no-deps {' '.join(self.data_packages)}",
        ]

    def colab_badge(self, path: str) -> str:
        """A Markdown "Open in Colab" badge for the file at `path` in the repository."""
        github = self.repository.removeprefix("https://github.com/")
        url = f"https://colab.research.google.com/github/{github}/blob/{self.ref}/{path}"
        return f"[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]({url})"


def with_install_lines(nb: nbformat.NotebookNode, settings: KitSettings) -> nbformat.NotebookNode:
    """The notebook with its Colab cell's `%pip` lines written from `settings` (changed in place)."""
    for cell in nb.cells:
        if cell.cell_type != "code" or COLAB_GUARD not in cell.source:
            continue
        lines = cell.source.split("\n")
        guard = next(i for i, line in enumerate(lines) if COLAB_GUARD in line)
        end = guard + 1
        while end < len(lines) and lines[end].lstrip().startswith("%pip "):
            end += 1
        indent = " " * 4
        cell.source = "\n".join(lines[: guard + 1] + [indent + line for line in settings.install_lines()] + lines[end:])
    return nb


def released_version(nb: nbformat.NotebookNode) -> str:
    """A short hash of the notebook's check cells (id, points, source): it changes whenever grading would."""
    checks = [
        [c.metadata.nbgrader["grade_id"], c.metadata.nbgrader.get("points", 0), c.source]
        for c in nb.cells
        if c.cell_type == "code" and c.metadata.get("nbgrader", {}).get("grade") and not c.metadata.nbgrader.get("solution")
    ]
    return hashlib.sha256(json.dumps(checks).encode()).hexdigest()[:12]


def exercise_version(
    solution: nbformat.NotebookNode, badge: str | None = None, notebook_id: str | None = None
) -> nbformat.NotebookNode:
    """Return the exercise notebook for a solution notebook (the input is left unchanged).

    `badge`, if given, opens the first Markdown cell (an "Open in Colab" link to the released notebook).
    `notebook_id`, if given, is written with the checks' version into `metadata.mikit`, where
    `mikit grade` finds the released notebook again, whatever the student renamed the file to.
    """
    nb = nbformat.from_dict(solution)
    nb, _ = ClearSolutions(code_stub={"python": STUB}).preprocess(nb, {})
    nb, _ = ClearOutputPreprocessor().preprocess(nb, {})
    for cell in nb.cells:
        cell.metadata.pop("execution", None)
    title = next((cell for cell in nb.cells if cell.cell_type == "markdown"), None)
    if badge and title is not None:
        title.source = f"{badge}\n\n{BADGE.sub('', title.source).lstrip()}"
    if notebook_id:
        nb.metadata["mikit"] = {"notebook": notebook_id, "version": released_version(nb)}
    return nb


def _checksum(nb: nbformat.NotebookNode) -> str:
    """A hash of the whole notebook, its own checksum field left out."""
    nb = nbformat.from_dict(nb)
    nb.metadata.get("mikit", {}).pop("checksum", None)
    return hashlib.sha256(nbformat.writes(nb).encode()).hexdigest()[:16]


def edited_since_build(path: Path) -> bool | None:
    """Whether a notebook changed since `mikit build` wrote it; None when it was built before checksums."""
    try:
        nb = nbformat.read(path, as_version=4)
    except Exception:  # not a notebook any more: someone's work, whatever it is
        return True
    stored = nb.metadata.get("mikit", {}).get("checksum")
    return None if stored is None else stored != _checksum(nb)


def build(
    check: bool = False,
    solutions: Path | None = None,
    notebooks: Path | None = None,
    settings: KitSettings | None = None,
    force: bool = False,
) -> list[Path]:
    """Write `notebooks/` from `solutions/`; with `check`, write nothing and return the stale files.

    Both get their Colab cell's install lines from `settings` (default: pyproject's `[tool.mikit]`), so a
    solution whose lines are out of date is rewritten too (that cell only); exercises get a Colab badge.
    An exercise notebook edited since it was built (a student's work) is never overwritten or deleted:
    the build raises BuildError naming it, unless `force`, which keeps the old file as `NAME.ipynb.bak`.
    """
    solutions, notebooks = Path(solutions or SOLUTIONS), Path(notebooks or NOTEBOOKS)
    if not solutions.is_dir():
        raise FileNotFoundError(
            f"{solutions} does not exist: `mikit build` works in a clone of the repository (pip install -e .), "
            "not in an installed wheel."
        )
    settings = settings or KitSettings.read()
    stale, refused = [], []

    def replace(path: Path, text: str | None) -> None:
        """Write `text` to `path` (delete it for None), keeping what someone changed there."""
        stale.append(path)
        if check:
            return
        edited = edited_since_build(path) if path.exists() else False
        if edited and not force:
            refused.append(path)
            return
        if edited is not False:  # edited and forced, or built before checksums: keep a copy
            shutil.copyfile(path, path.with_name(path.name + ".bak"))
        if text is None:
            path.unlink()
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)

    for src in sorted(solutions.glob("*.ipynb")):
        solution = nbformat.read(src, as_version=4)
        before = nbformat.writes(solution)
        if nbformat.writes(with_install_lines(solution, settings)) != before:
            stale.append(src)
            if not check:
                nbformat.write(solution, src)
        dst = notebooks / src.name
        exercise = exercise_version(solution, settings.colab_badge(f"{notebooks.name}/{src.name}"), notebook_id=src.stem)
        exercise.metadata["mikit"]["checksum"] = _checksum(exercise)
        text = nbformat.writes(exercise) + "\n"
        if not (dst.exists() and dst.read_text() == text):
            replace(dst, text)
    expected = {p.name for p in solutions.glob("*.ipynb")}
    for orphan in sorted(notebooks.glob("*.ipynb")):
        if orphan.name not in expected:
            replace(orphan, None)
    if refused:
        names = ", ".join(str(p) for p in refused)
        raise BuildError(
            f"{names} changed since `mikit build` wrote them (someone's work?) and were left as they are; "
            "save that work elsewhere, or run `mikit build --force` to overwrite them, keeping each old file as NAME.ipynb.bak."
        )
    return stale
