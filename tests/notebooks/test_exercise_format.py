"""Every solution notebook presents its exercises the same way (GUIDE.md, "Notebooks").

Read from the notebook files, nothing executed:
- every graded check cell has an exercise header above it, exactly
  `### Exercise N — title` then the line `*Difficulty D/3 · P point(s) · ~M min.*`;
- the headers are numbered 1..k in order, one per check cell;
- points follow difficulty (P == D), and the header's P is the check cell's nbgrader `points`;
- every exercise has tiered, collapsed hints: `Hint 1 — the idea`, then `Hint 2 — …` (a third is
  optional), none of them a code block;
- the notebook asks 2-3 ungraded `**Think.**` questions, each with a collapsed `Model answer`;
- the notebook has at least 8 graded exercises.

Each problem is reported as one sentence naming the notebook, the exercise and what is wrong.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import nbformat
import pytest

SOLUTIONS = Path(__file__).resolve().parents[2] / "solutions"
NAMES = sorted(p.name for p in SOLUTIONS.glob("*.ipynb"))
MIN_EXERCISES = 8
THINK_RANGE = (2, 3)

# Any line that introduces an exercise, in whatever format ("### Exercise 3 — …", "**Exercise 3** (…)").
ANY_HEADER = re.compile(r"^[ \t]*(?:#+[ \t]*)?\**[ \t]*Exercise[ \t]+\d+", re.M)
HEADER = re.compile(r"^### Exercise (\d+) — (\S.*)$")
DIFFICULTY = re.compile(r"^\*Difficulty ([1-3])/3 · (\d+) (points?) · ~(\d+) min\.\*$")
SUMMARY = re.compile(r"<details>\s*<summary>(.*?)</summary>", re.S)
FORMAT = "'### Exercise N — title' followed by the line '*Difficulty D/3 · P point(s) · ~M min.*'"


@dataclass
class Exercise:
    notebook: str
    gid: str  # the check cell's grade_id
    check_points: float
    text: str  # from the header line to the next exercise header or the end of its markdown cell
    number: int | None = None  # None when the header is not in the exact format
    difficulty: int | None = None
    points: int | None = None
    unit: str | None = None

    @property
    def name(self) -> str:
        return f"{self.notebook}: exercise {self.number} ({self.gid})"


def _read(path: Path):
    return nbformat.read(path, as_version=4)


def _is_check(cell) -> bool:
    meta = cell.metadata.get("nbgrader", {})
    return cell.cell_type == "code" and bool(meta.get("grade")) and not meta.get("solution")


def _headers(source: str) -> list[str]:
    """The exercise texts of one markdown cell: each from its header line to the next header or the end."""
    starts = [m.start() for m in ANY_HEADER.finditer(source)]
    return [source[a:b] for a, b in zip(starts, starts[1:] + [len(source)])]


def parse(path: Path) -> tuple[list[Exercise], list[str]]:
    """Pair every graded check cell with the exercise header above it; return the exercises and the problems."""
    notebook, problems, exercises = path.name, [], []
    pending: list[str] = []  # exercise texts seen since the previous check cell
    for cell in _read(path).cells:
        if cell.cell_type == "markdown":
            pending += _headers(cell.source)
        elif _is_check(cell):
            gid = cell.metadata.nbgrader.get("grade_id", "?")
            if not pending:
                problems.append(f"{notebook}: check cell `{gid}` has no exercise header above it (none since the "
                                f"previous check cell).")
                continue
            for extra in pending[:-1]:
                problems.append(f"{notebook}: the exercise header {extra.splitlines()[0].strip()!r} has no graded "
                                f"check cell of its own (the next check cell, `{gid}`, belongs to the last header "
                                "above it).")
            exercise = Exercise(notebook, gid, cell.metadata.nbgrader.get("points", 0), pending[-1])
            pending = []
            lines = exercise.text.split("\n")
            header = HEADER.match(lines[0])
            difficulty = DIFFICULTY.match(lines[1]) if len(lines) > 1 else None
            if header and difficulty:
                exercise.number = int(header.group(1))
                exercise.difficulty, exercise.points = int(difficulty.group(1)), int(difficulty.group(2))
                exercise.unit = difficulty.group(3)
            else:
                found = " / ".join(line.strip() for line in lines[:2])[:160]
                problems.append(f"{notebook}: the exercise above check cell `{gid}` does not start with {FORMAT}; "
                                f"it starts {found!r}.")
            exercises.append(exercise)
    for extra in pending:
        problems.append(f"{notebook}: the exercise header {extra.splitlines()[0].strip()!r} has no graded check "
                        "cell after it.")
    return exercises, problems


def header_problems(path: Path) -> list[str]:
    exercises, problems = parse(path)
    for position, exercise in enumerate(exercises, start=1):
        if exercise.number is not None and exercise.number != position:
            problems.append(f"{exercise.name} is numbered {exercise.number} but is exercise {position} in order; "
                            f"headers must run 1..{len(exercises)}.")
        if exercise.unit is not None and exercise.unit != ("point" if exercise.points == 1 else "points"):
            problems.append(f"{exercise.name} says '{exercise.points} {exercise.unit}' in its header; write "
                            "'1 point' for one point and 'P points' otherwise.")
    return problems


def points_problems(path: Path) -> list[str]:
    exercises, _ = parse(path)
    problems = []
    for exercise in exercises:
        if exercise.points is None:
            problems.append(f"{exercise.notebook}: the exercise of check cell `{exercise.gid}` states no "
                            f"difficulty and points in the format {FORMAT}.")
            continue
        if exercise.points != exercise.difficulty:
            problems.append(f"{exercise.name} is difficulty {exercise.difficulty}/3 but worth {exercise.points} "
                            "point(s); points must equal the difficulty.")
        if exercise.points != exercise.check_points:
            problems.append(f"{exercise.name} says {exercise.points} point(s) in its header but its check cell's "
                            f"nbgrader points are {exercise.check_points:g}.")
    return problems


def hint_problems(path: Path) -> list[str]:
    exercises, _ = parse(path)
    problems = []
    for exercise in exercises:
        name = exercise.name if exercise.number is not None else f"{exercise.notebook}: the exercise of `{exercise.gid}`"
        hints = [title.strip() for title in SUMMARY.findall(exercise.text) if title.strip().startswith("Hint")]
        if len(hints) < 2:
            problems.append(f"{name} has {len(hints)} hint(s); it needs at least two collapsed hints, "
                            "'Hint 1 — the idea' then 'Hint 2 — …'.")
        if hints and hints[0] != "Hint 1 — the idea":
            problems.append(f"{name}: its first hint is titled {hints[0]!r}; it must be 'Hint 1 — the idea'.")
        for k, title in enumerate(hints[1:], start=2):
            if not re.fullmatch(rf"Hint {k} — \S.*", title):
                problems.append(f"{name}: its hint number {k} is titled {title!r}; it must be 'Hint {k} — …'"
                                + (" (the shape of the computation)." if k == 2 else "."))
        if exercise.text.count("<details>") != exercise.text.count("</details>"):
            problems.append(f"{name} opens {exercise.text.count('<details>')} <details> blocks but closes "
                            f"{exercise.text.count('</details>')}; close every hint.")
        if "```" in exercise.text.split("<details>", 1)[-1] and "<details>" in exercise.text:
            problems.append(f"{name} has a code block in its hints; hints give the idea and the shape of the "
                            "computation, never the code.")
    return problems


def think_problems(path: Path) -> list[str]:
    cells = [c for c in _read(path).cells if c.cell_type == "markdown" and c.source.lstrip().startswith("**Think.**")]
    problems = []
    low, high = THINK_RANGE
    if not low <= len(cells) <= high:
        problems.append(f"{path.name} has {len(cells)} '**Think.**' question(s); it needs {low} to {high}.")
    for cell in cells:
        question = cell.source.lstrip().removeprefix("**Think.**").split("<details>")[0].strip()
        answer = re.search(r"<details>\s*<summary>Model answer</summary>(.*?)</details>", cell.source, re.S)
        if not question:
            problems.append(f"{path.name}: a '**Think.**' cell asks no question before its model answer.")
        if not answer or not answer.group(1).strip():
            problems.append(f"{path.name}: the Think question {question[:60]!r} has no collapsed "
                            "'<details><summary>Model answer</summary> … </details>' with an answer in it.")
    return problems


def count_problems(path: Path) -> list[str]:
    n = sum(_is_check(c) for c in _read(path).cells)
    return [] if n >= MIN_EXERCISES else [f"{path.name} has {n} graded exercises; it needs at least {MIN_EXERCISES}."]


CHECKS = {
    "headers": header_problems, "points": points_problems, "hints": hint_problems, "think": think_problems,
    "count": count_problems,
}


# headers: one format, numbered in order; points: P == D and the check cell's points; hints: tiered and
# collapsed; think: 2-3 questions with model answers; count: at least 8 graded exercises.
@pytest.mark.parametrize("check", sorted(CHECKS))
@pytest.mark.parametrize("name", NAMES)
def test_notebook_follows_the_exercise_format(name, check):
    problems = CHECKS[check](SOLUTIONS / name)
    assert not problems, "\n".join(problems)


# The checks above must fail on broken notebooks: each doctoring of notebook 01 (which passes them all) must be
# reported by the named check, with a sentence naming the notebook, the exercise and the fault.
REFERENCE = "01_induction_heads.ipynb"


def _markdown_with(nb, text: str):
    (cell,) = [c for c in nb.cells if c.cell_type == "markdown" and text in c.source]
    return cell


def _check_cell(nb, gid: str):
    (cell,) = [c for c in nb.cells if _is_check(c) and c.metadata.nbgrader.grade_id == gid]
    return cell


def _edit(nb, text: str, new: str):
    cell = _markdown_with(nb, text)
    cell.source = cell.source.replace(text, new)


def _old_header(nb):
    _edit(nb, "*Difficulty 1/3 · 1 point · ~5 min.*\nThe cross-entropy", "*Difficulty 1/3 · 1 point.* The cross-entropy")


def _renumber(nb):
    _edit(nb, "### Exercise 3 —", "### Exercise 4 —")


def _singular(nb):
    _edit(nb, "### Exercise 4 — per-token loss\n*Difficulty 1/3 · 1 point ·", "### Exercise 4 — per-token loss\n"
          "*Difficulty 1/3 · 1 points ·")


def _header_deleted(nb):
    cell = _markdown_with(nb, "### Exercise 5 —")
    cell.source = cell.source.replace("### Exercise 5 —", "### Induction score —")


def _two_headers_one_check(nb):
    cell = _markdown_with(nb, "### Exercise 5 —")
    cell.source = "### Exercise 5 — a draft\n*Difficulty 1/3 · 1 point · ~5 min.*\n\n" + cell.source


def _points_off_difficulty(nb):
    _edit(nb, "*Difficulty 2/3 · 2 points · ~15 min.*\nCompute the causal", "*Difficulty 2/3 · 1 point · ~15 min.*\n"
          "Compute the causal")


def _check_points_changed(nb):
    _check_cell(nb, "head_detectors").metadata.nbgrader["points"] = 3


def _one_hint(nb):
    cell = _markdown_with(nb, "### Exercise 6 —")
    start = cell.source.index("<details><summary>Hint 2")
    cell.source = cell.source[:start].rstrip()


def _untitled_hint(nb):
    cell = _markdown_with(nb, "### Exercise 2 —")
    cell.source = cell.source.replace("Hint 1 — the idea", "Hint")


def _second_hint_misnamed(nb):
    cell = _markdown_with(nb, "### Exercise 9 —")
    cell.source = cell.source.replace("Hint 2 — the shape of the computation", "Hint 3 — the code")


def _code_in_hint(nb):
    cell = _markdown_with(nb, "### Exercise 9 —")
    cell.source = cell.source.replace("</details>\n<details><summary>Hint 2",
                                      "\n```python\nmodel.run_with_hooks(tokens)\n```\n</details>\n<details><summary>Hint 2", 1)


def _unclosed_hint(nb):
    cell = _markdown_with(nb, "### Exercise 1 —")
    cell.source = cell.source[: cell.source.rindex("</details>")]


def _one_think(nb):
    thinks = [c for c in nb.cells if c.cell_type == "markdown" and c.source.startswith("**Think.**")]
    for cell in thinks[1:]:
        nb.cells.remove(cell)


def _four_thinks(nb):
    think = next(c for c in nb.cells if c.cell_type == "markdown" and c.source.startswith("**Think.**"))
    nb.cells.append(nbformat.v4.new_markdown_cell(think.source))


def _think_without_answer(nb):
    think = next(c for c in nb.cells if c.cell_type == "markdown" and c.source.startswith("**Think.**"))
    think.source = think.source.split("<details>")[0].strip()


def _seven_exercises(nb):
    checks = [c for c in nb.cells if _is_check(c)]
    for cell in checks[7:]:
        cell.metadata.nbgrader["grade"] = False


DOCTORED = [
    # (doctoring, the check that must catch it, words its sentence must contain)
    (_old_header, "headers", ["`per_token_loss` does not start with", "*Difficulty 1/3 · 1 point.*"]),
    (_renumber, "headers", ["exercise 4 (head_detectors) is numbered 4 but is exercise 3 in order"]),
    (_singular, "headers", ["exercise 4 (per_token_loss) says '1 points'"]),
    (_header_deleted, "headers", ["check cell `logit_attribution` has no exercise header above it"]),
    (_two_headers_one_check, "headers", ["'### Exercise 5 — a draft' has no graded check cell of its own"]),
    (_points_off_difficulty, "points", ["exercise 2 (attention_pattern) is difficulty 2/3 but worth 1 point(s)",
                                        "exercise 2 (attention_pattern) says 1 point(s) in its header but its check "
                                        "cell's nbgrader points are 2"]),
    (_check_points_changed, "points", ["exercise 3 (head_detectors) says 2 point(s) in its header but its "
                                       "check cell's nbgrader points are 3"]),
    (_one_hint, "hints", ["exercise 6 (ablate_head) has 1 hint(s)"]),
    (_untitled_hint, "hints", ["exercise 2 (attention_pattern): its first hint is titled 'Hint'"]),
    (_second_hint_misnamed, "hints", ["exercise 9 (scan_heads): its hint number 2 is titled 'Hint 3 — the code'"]),
    (_code_in_hint, "hints", ["exercise 9 (scan_heads) has a code block in its hints"]),
    (_unclosed_hint, "hints", ["exercise 1 (count_correct_predictions) opens 2 <details> blocks but closes 1"]),
    (_one_think, "think", ["has 1 '**Think.**' question(s); it needs 2 to 3"]),
    (_four_thinks, "think", ["has 4 '**Think.**' question(s); it needs 2 to 3"]),
    (_think_without_answer, "think", ["has no collapsed '<details><summary>Model answer</summary>"]),
    (_seven_exercises, "count", ["has 7 graded exercises; it needs at least 8"]),
]


def test_the_reference_for_the_doctored_copies_passes_every_check():
    problems = [p for check in CHECKS.values() for p in check(SOLUTIONS / REFERENCE)]
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("doctor, check, expected", DOCTORED, ids=[d.__name__.strip("_") for d, _, _ in DOCTORED])
def test_each_check_reports_a_doctored_notebook(doctor, check, expected, tmp_path):
    nb = _read(SOLUTIONS / REFERENCE)
    doctor(nb)
    nbformat.write(nb, tmp_path / REFERENCE)
    problems = CHECKS[check](tmp_path / REFERENCE)
    assert problems, f"{check} did not notice {doctor.__name__}"
    for words in expected:
        assert any(words in p for p in problems), (words, problems)
    assert all(p.startswith(REFERENCE) for p in problems), problems  # every sentence names the notebook
