"""Mutation testing of the checks (mikit.dev.mutants): the hidden tests reject plausible mistakes.

A deterministic sample of each notebook's mutants is graded; the full run is
`python -m mikit.dev.mutants` (minutes), with its survivors reported one by one.
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import ast  # noqa: E402

import pytest  # noqa: E402

from mikit.checks import NOTEBOOK_CHECKS  # noqa: E402
from mikit.dev import mutants  # noqa: E402

SAMPLE, SEED = 8, mutants.DEFAULT_SEED
NOTEBOOKS = [notebook for notebook in NOTEBOOK_CHECKS if mutants.exercises_of(notebook)]


@pytest.mark.parametrize("notebook", NOTEBOOKS)
def test_a_sample_of_mutants_is_killed(notebook):
    report = mutants.run(notebook, sample=SAMPLE, seed=SEED)
    assert not report.errors, report.text()  # every sampled exercise's own solution passes first
    assert report.mutants == min(SAMPLE, report.sampled_from) > 0
    assert report.rate >= mutants.MIN_KILL_RATE, report.text()


@pytest.mark.parametrize("notebook", NOTEBOOKS)
def test_listed_equivalent_mutants_exist_and_say_why(notebook):
    listed = mutants.equivalents().get(notebook, {})
    ids = {mutant.id for _, mutant in mutants.all_mutants(notebook)}
    assert set(listed) <= ids, f"stale ids: {sorted(set(listed) - ids)}"
    assert all(isinstance(reason, str) and len(reason) > 10 for reason in listed.values())


def test_the_solution_passes_and_obvious_mistakes_are_killed():
    (target,) = [t for t in mutants.targets("01_induction_heads") if t.exercise == "attention_pattern"]
    prepared = mutants.prepare(target)
    assert mutants.grade(prepared, target.source, SEED) is None
    by_id = {m.id.split(":", 2)[1] + ":" + m.id.rsplit(":", 1)[1]: m for m in mutants.mutants(target)}
    for kind in ("mask:drop", "constant:zero", "identity:q", "scale:left"):
        assert mutants.grade(prepared, by_id[kind].source, SEED) is not None, kind
    broken = target.source.replace("softmax(dim=-1)", "softmax(dim=-2)")
    assert broken != target.source and "CheckFailed" in mutants.grade(prepared, broken, SEED)


SOURCE = '''
def f(x, mask, k):
    """doc"""
    ### BEGIN SOLUTION
    s = torch.einsum("bqd,bkd->bqk", x, x) / x.shape[-1] ** 0.5
    s = s.masked_fill(mask, float("-inf")).softmax(dim=-1)
    y = torch.where(s > 0, s, -s).mean(dim=(0, -1)) * 2
    z = x[:, -1] - x[:, 1:k].sum(0).argmax(-1)
    return max(y.topk(k).values, z)
    ### END SOLUTION
'''


def test_every_operator_makes_mutants_with_stable_ids():
    target = mutants.Target("nb", "f", ("f",), SOURCE, mutants._regions(SOURCE), (), True)
    found = mutants.mutants(target)
    assert {m.operator for m in found} == {
        "identity", "off_by_one", "slice", "dim", "reduce", "softmax", "minmax", "mask", "scale", "sign",
        "position", "compare", "constant", "transpose",
    }
    assert len({m.id for m in found}) == len({m.source for m in found}) == len(found)
    assert [m.id for m in found] == [m.id for m in mutants.mutants(target)]
    assert all(ast.parse(m.source) and m.source != ast.unparse(ast.parse(SOURCE)) for m in found)
    by_id = {m.id: m for m in found}
    assert "return x" in by_id["f:identity:2:0:x"].source
    assert ".softmax(dim=-2)" in by_id["f:dim:6:55:-2"].source
    assert "x[:, -2]" in by_id["f:position:8:13:-2"].source
    assert "s = s.softmax(dim=-1)" in by_id["f:mask:6:8:drop"].source
    assert all(m.operator != "off_by_one" or m.diff.startswith(("s =", "y =", "z =")) for m in found)


def test_the_command_line_lists_and_fails_under_the_threshold(capsys, monkeypatch):
    assert mutants.main(["01_induction_heads", "--list"]) == 0
    out = capsys.readouterr().out
    assert "01_induction_heads:" in out and "[equivalent]" in out
    runs = []

    def run(notebook, *, sample, seed, log):
        runs.append((notebook, sample, seed))
        return mutants.Report(notebook, seed, mutants=10, killed=8, equivalent=1)  # 8 of 9: 88.9 %

    monkeypatch.setattr(mutants, "run", run)
    assert mutants.main(["01_induction_heads", "--sample", "5", "--seed", "3"]) == 1
    assert runs == [("01_induction_heads", 5, 3)]
    assert "kill rate 88.9% [UNDER 90%]" in capsys.readouterr().out
