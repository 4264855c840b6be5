"""Replayed answers: a function that returns what the reference returned on the visible check, whatever it is given."""

import itertools

import torch


def frozen(value):
    """A copy of a function's answer (tensors cloned, containers rebuilt), so later edits cannot reach it."""
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    if isinstance(value, (tuple, list)):
        return type(value)(frozen(v) for v in value)
    if isinstance(value, dict):
        return {k: frozen(v) for k, v in value.items()}
    return value


def recorded(fn):
    """`fn`, recording what it returns, and a function that returns the recorded answers in turn whatever it is given."""
    answers, calls = [], itertools.count()

    def record(*args, **kwargs):
        out = fn(*args, **kwargs)
        answers.append(frozen(out))
        return out

    def replay(*args, **kwargs):
        return frozen(answers[next(calls) % len(answers)])

    return record, replay


def assert_replayed_answers_fail(exercise, references, wire, grade_id):
    """Record the references' answers on the visible check; replayed, they must fail hidden variants 1-3 and the wire."""
    import pytest

    from mikit import hidden
    from mikit.checks import CheckFailed, hidden_variant

    recorders = [recorded(fn) for fn in references]
    exercise.check(*(record for record, _ in recorders))
    for seed in (1, 2, 3):
        with hidden.active(), hidden_variant(seed), pytest.raises(CheckFailed):
            exercise.check(*(replay for _, replay in recorders))
        hidden.reset()
    with pytest.raises(CheckFailed):
        wire(grade_id, *(replay for _, replay in recorders))
