"""A check's verdicts on one student function, and the grader tests, shared by the checks tests of notebooks 06-08."""

from functools import partial

import pytest
from alternatives import assert_two_each, check_alternative, listed  # tests/alternatives/
from replay import assert_replayed_answers_fail  # tests/replay.py

from mikit.checks import CheckFailed


def rejects(check, fn, match):
    """`check(fn)` fails with a sentence matching `match`."""
    with pytest.raises(CheckFailed, match=match):
        check(fn)


def accepts(check, fn, capsys):
    """`check(fn)` passes and prints its ✓ line."""
    check(fn)
    assert "✓" in capsys.readouterr().out


def grader_tests(checks, solution: dict, alternatives, **wire_options) -> dict:
    """The `wire` fixture and the grader tests of a checks test module, for its namespace
    (`globals().update(grader_tests(checks, SOLUTION, alternatives))`):

    - `wire(grade_id, *functions, seed=1)` runs an exercise's hidden test through the wire (tests/conftest.py,
      `wire_options` passed on);
    - the reference (the notebook's `solution` functions) passes it, and answers replayed from the visible check
      fail it;
    - every exercise has two correct alternatives in `alternatives`, and each passes visibly, under hidden
      variants and through the wire.
    """

    @pytest.fixture
    def wire(hidden_wire):
        return partial(hidden_wire, checks, **wire_options)

    def reference(gid):
        return tuple(solution[name] for name in checks.EXERCISES[gid].students)

    @pytest.mark.parametrize("gid", list(checks.EXERCISES))
    def test_the_reference_passes_the_hidden_test_through_the_wire(gid, wire, capsys):
        wire(gid, *reference(gid), seed=2)
        assert "✓" in capsys.readouterr().out

    @pytest.mark.parametrize("gid", list(checks.EXERCISES))
    def test_the_visible_answers_fail_the_hidden_test(gid, wire):
        assert_replayed_answers_fail(checks.EXERCISES[gid], reference(gid), wire, gid)

    def test_every_exercise_has_two_alternatives():
        assert_two_each(alternatives, [name for exercise in checks.EXERCISES.values() for name in exercise.students])

    @pytest.mark.parametrize("name", listed(alternatives))
    def test_alternative_passes_visible_and_hidden_checks(name, wire, capsys):
        check_alternative(checks, alternatives, name, wire)
        assert capsys.readouterr().out.count("✓") == 4

    return {f.__name__: f for f in (
        wire, test_the_reference_passes_the_hidden_test_through_the_wire, test_the_visible_answers_fail_the_hidden_test,
        test_every_exercise_has_two_alternatives, test_alternative_passes_visible_and_hidden_checks)}
