"""Correct answers written differently from the references, one module per notebook's checks.

Each function is named `<student function or grade id>__<how it differs>`; the notebook's checks must accept
every one visibly, under hidden variants and through the grader's wire (the tests in tests/test_checks_*.py).
"""

import linecache

from mikit import hidden
from mikit.checks import hidden_variant
from mikit.dev import mutants


def listed(module) -> list[str]:
    """The alternatives a module holds, sorted."""
    return sorted(name for name in vars(module) if "__" in name and not name.startswith("_"))


def assert_two_each(module, targets) -> None:
    """Every student function (or grade id) in `targets` has at least two alternatives in `module`."""
    per_target = {target: 0 for target in targets}
    for name in listed(module):
        per_target[name.split("__")[0]] += 1
    assert min(per_target.values()) >= 2, per_target


def check_hidden_variants(exercise, functions, seeds=(1, 2, 3), context: bool = False) -> None:
    """The exercise's check of `functions` under each hidden variant, as the grader runs it (with the exercise's
    own context when `context`), forgetting the variant's memoised objects after each."""
    for seed in seeds:
        with hidden.active(), hidden_variant(seed):
            exercise.check(*functions, *(exercise.context() if context else ()))
        hidden.reset()


def solution_functions(notebook: str) -> dict:
    """The solution notebook's function for every name its checks receive (read with mikit.dev.mutants)."""
    found = {}
    for target in mutants.targets(notebook):
        namespace = dict(mutants.prepare(target).base)
        filename = f"<{target.exercise}>"
        # tracers that read their `with` block back (nnsight) find the source as in a notebook cell
        linecache.cache[filename] = (len(target.source), None, target.source.splitlines(True), filename)
        exec(compile(target.source, filename, "exec"), namespace)
        found.update({name: namespace[name] for name in target.students})
    return found


def check_alternative(checks_module, alternatives_module, name: str, wire, seeds=(1, 3)) -> None:
    """Alternative `name` through its exercise's visible check, the hidden variants `seeds` and the wire (seed 5)."""
    function = getattr(alternatives_module, name)
    gid = next(gid for gid, exercise in checks_module.EXERCISES.items() if name.split("__")[0] in exercise.students)
    exercise = checks_module.EXERCISES[gid]
    exercise.check(function)
    check_hidden_variants(exercise, [function], seeds=seeds)
    wire(gid, function, seed=5)
