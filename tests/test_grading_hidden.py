"""Hidden tests under `mikit grade`: what a student does to the kernel cannot earn points.

Submissions are made from notebook 01's released exercise notebook, cut after exercise 4 (the
grader puts the later checks back and scores them 0), with the tricks that fooled the grader
before hidden tests: a patched checks module, a patched `torch.allclose`, a silenced
`showtraceback`, the reference called (by name and by a route the static scan cannot see), and
a function that returns the visible check's answer whatever it is given.
"""

import nbformat
import pytest
from nbformat.v4 import new_code_cell

from mikit.build import NOTEBOOKS
from mikit.grading import grade, reference_uses

pytestmark = pytest.mark.notebook

RELEASED = NOTEBOOKS / "01_induction_heads.ipynb"
LAST_KEPT = next(i for i, cell in enumerate(nbformat.read(RELEASED, as_version=4).cells)
                 if cell.metadata.get("nbgrader", {}).get("grade_id") == "per_token_loss")  # exercise 4's check cell

HONEST = {
    "count_correct_predictions": '''
def count_correct_predictions(model, text):
    tokens = model.to_tokens(text)
    return int((model(tokens)[0, :-1].argmax(-1) == tokens[0, 1:]).sum())
''',
    "attention_pattern": '''
def attention_pattern(q, k):
    scores = torch.einsum("bqhd,bkhd->bhqk", q, k) / q.shape[-1] ** 0.5
    future = torch.ones(q.shape[1], k.shape[1], dtype=torch.bool).triu(1)
    return scores.masked_fill(future, float("-inf")).softmax(-1)
''',
    "per_token_loss": '''
def per_token_loss(logits, tokens):
    logprobs = logits[:, :-1].log_softmax(-1)
    return -logprobs.gather(-1, tokens[:, 1:, None])[..., 0]
''',
}

HONEST_DETECTORS = '''
def previous_token_scores(pattern):
    return pattern.diagonal(-1, dim1=-2, dim2=-1).mean((0, -1))


def duplicate_token_scores(pattern, seq_len):
    return pattern.diagonal(-seq_len, dim1=-2, dim2=-1)[..., -seq_len:].mean((0, -1))


def induction_scores(pattern, seq_len):
    return pattern.diagonal(1 - seq_len, dim1=-2, dim2=-1)[..., -seq_len:].mean((0, -1))
'''


def submission(tmp_path, name, solutions, extra_after_setup=""):
    """The released notebook cut after exercise 4, with `solutions` (grade_id → source) and an extra cell."""
    nb = nbformat.read(RELEASED, as_version=4)
    nb.cells = nb.cells[: LAST_KEPT + 1]
    for cell in nb.cells:
        gid = cell.metadata.get("nbgrader", {}).get("grade_id", "")
        if gid.removesuffix("_solution") in solutions and gid.endswith("_solution"):
            cell.source = solutions[gid.removesuffix("_solution")]
    if extra_after_setup:
        nb.cells.insert(3, new_code_cell(extra_after_setup))
    path = tmp_path / f"{name}.ipynb"
    nbformat.write(nb, path)
    return path


def test_tampering_with_the_kernel_earns_nothing(tmp_path):
    # Each trick makes the visible check cells print their ✓ line (or no error) in the kernel.
    tricks = '''
import mikit.checks.induction_heads as checks_module
for name in ["count_correct_predictions", "attention_pattern", "previous_token_scores",
             "duplicate_token_scores", "induction_scores", "per_token_loss"]:
    setattr(checks_module, name, lambda *args, name=name: print(f"✓ {name}: correct."))
torch.allclose = lambda *args, **kwargs: True
get_ipython().showtraceback = lambda *args, **kwargs: None
'''
    wrong = {  # plausible but wrong: no 1/sqrt(d_head) scale
        "attention_pattern": HONEST["attention_pattern"].replace(" / q.shape[-1] ** 0.5", ""),
    }
    report = grade(submission(tmp_path, "tampered", wrong, tricks), reference=RELEASED, seed=5)
    assert report.total == 0, report.to_text()
    assert "scale the scores by 1/sqrt(d_head)" in report.exercises["attention_pattern"].message
    assert "NotImplementedError" in report.exercises["per_token_loss"].message


def test_reference_calls_and_hard_coded_answers_score_zero_and_honest_work_scores(tmp_path):
    detectors = HONEST_DETECTORS.replace(
        "def previous_token_scores(pattern):\n    return pattern.diagonal(-1, dim1=-2, dim2=-1).mean((0, -1))",
        "def previous_token_scores(pattern):\n    return induction.previous_token_scores(pattern)",
    )
    solutions = {
        **HONEST,
        # named in the solution: the static scan sees it
        "head_detectors": detectors,
        # reached by a route no scan sees: the guard sees the call
        "per_token_loss": (
            "def per_token_loss(logits, tokens):\n"
            "    module = __import__('mikit.' + 'induction', fromlist=['_'])\n"
            "    return getattr(module, 'per_token_' + 'loss')(logits, tokens)\n"
        ),
        # the visible check's answer, computed once (in another cell) and returned for any input
        "attention_pattern": "def attention_pattern(q, k):\n    return VISIBLE_ANSWER\n",
    }
    visible_answer = '''
q, k = (torch.randn(2, 7, 3, 16, generator=torch.Generator().manual_seed(seed)) for seed in (1, 2))
VISIBLE_ANSWER = induction.attention_pattern(q, k)
'''
    report = grade(submission(tmp_path, "shortcuts", solutions, visible_answer), reference=RELEASED, seed=11)
    ex = report.exercises
    assert "head_detectors" in ex and ex["count_correct_predictions"].points == 1, report.to_text()
    assert ex["head_detectors"].points == 0
    assert "refers to the reference `mikit.induction.previous_token_scores`" in ex["head_detectors"].message
    assert ex["per_token_loss"].points == 0
    assert "calls the reference `mikit.core.metrics.per_token_loss`" in ex["per_token_loss"].message
    assert ex["attention_pattern"].points == 0
    assert "shape" in ex["attention_pattern"].message  # hidden inputs have other sizes
    assert report.total == 1


def test_static_scan_follows_import_aliases():
    nb = nbformat.v4.new_notebook(cells=[new_code_cell("from mikit import induction as ind\nimport mikit.induction")])
    from mikit import induction

    forbidden = [induction.induction_scores]
    assert reference_uses(nb, "def f(p, n):\n    return ind.induction_scores(p, n)", forbidden)
    assert reference_uses(nb, "def f(p, n):\n    return mikit.induction.induction_scores(p, n)", forbidden)
    assert reference_uses(nb, "from mikit.induction import induction_scores as s\ndef f(p, n):\n    return s(p, n)", forbidden)
    # other functions of the module, and a student's own function of the same name, are allowed
    assert not reference_uses(nb, "def f(p, n):\n    return ind.repeated_tokens(p, n)", forbidden)
    assert not reference_uses(nb, "def induction_scores(p, n):\n    return induction_scores(p, n - 1)", forbidden)


@pytest.mark.parametrize("notebook", sorted(__import__("mikit.checks").checks.NOTEBOOK_CHECKS))
def test_every_check_cell_is_a_hidden_test(notebook):
    import importlib
    import inspect

    from mikit import hidden
    from mikit.checks import NOTEBOOK_CHECKS

    exercises = importlib.import_module(NOTEBOOK_CHECKS[notebook]).EXERCISES
    nb = nbformat.read(NOTEBOOKS / f"{notebook}.ipynb", as_version=4)
    assert nb.metadata.mikit.notebook == notebook
    calls = {c.metadata.nbgrader["grade_id"]: c.source.strip() for c in nb.cells
             if c.cell_type == "code" and c.metadata.get("nbgrader", {}).get("grade")}
    assert set(calls) == set(exercises)
    for grade_id, exercise in exercises.items():
        # the check cell passes the exercise's names first, then notebook objects the grader rebuilds itself
        assert calls[grade_id].startswith(f"check.{exercise.check.__name__}({', '.join(exercise.students)}")
        for fn in exercise.forbidden:  # the kernel finds each forbidden function by its qualified name
            assert inspect.unwrap(hidden._resolve(hidden._qualified(fn))) is inspect.unwrap(fn)
