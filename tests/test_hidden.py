"""mikit.hidden: the data wire between the grader and a student's kernel, run in one process here."""

import numpy as np
import pytest
import torch

from mikit import hidden, induction
from mikit.checks import CheckFailed, hook_point


@pytest.fixture
def wire(tmp_path, monkeypatch):
    """`resolve(names)` as the grader calls it, with the 'kernel' namespace a dict in this process."""
    namespace = {}
    monkeypatch.setattr(hidden, "_user_namespace", lambda: namespace)
    monkeypatch.setattr(hidden, "_stash", {})

    def run(code):  # what the kernel would execute: the grader's one-line call of serve()
        assert code.startswith("__import__('mikit.hidden'")
        hidden.serve(str(tmp_path))

    def resolve(*names, forbidden=()):
        return hidden.resolve(list(names), run, tmp_path, [hidden._qualified(f) for f in forbidden])

    yield namespace, resolve
    hidden.reset()


def test_data_round_trips_through_json_and_safetensors():
    value = {
        "t": torch.arange(6.0).reshape(2, 3), "b": torch.tensor([True, False]), "n": np.arange(3),
        (1, 2): [1, 2.5, None, "s", (True,)], "set": {3, 4}, "dtype": torch.float16, "size": torch.Size([2, 3]),
    }
    tensors = {}
    back = hidden.decode(hidden.encode(value, tensors), tensors)
    assert torch.equal(back["t"], value["t"]) and torch.equal(back["b"], value["b"])
    assert isinstance(back["n"], np.ndarray) and back["n"].tolist() == [0, 1, 2]
    assert back[(1, 2)] == [1, 2.5, None, "s", (True,)] and back["set"] == {3, 4}
    assert back["dtype"] is torch.float16 and back["size"] == (2, 3)
    with pytest.raises(hidden.Unencodable, match="a object cannot be sent as data"):
        hidden.encode(object(), {})
    with pytest.raises(hidden.Unencodable):
        hidden.encode(lambda x: x, {})  # a lambda has no importable name


def test_recipes_are_sent_as_the_call_that_made_them_and_memoised():
    with hidden.active():
        hook = hook_point("blocks.1.attn.hook_z")
        assert hook_point("blocks.1.attn.hook_z") is hook
        encoded = hidden.encode([hook], {})
        assert encoded[0]["__recipe__"]["fn"] == "mikit.checks:hook_point"
        hidden.reset()
        rebuilt = hidden.decode(encoded, {})[0]
    assert rebuilt is not hook and rebuilt.name == "blocks.1.attn.hook_z" and rebuilt.layer() == 1
    hidden.reset()
    assert hook_point("x") is not hook_point("x")  # outside active() a recipe is a plain call


def test_calls_travel_as_data_and_in_place_edits_come_back(wire):
    namespace, resolve = wire
    exec(
        "def zero_head(z, hook, head):\n    z[:, :, head] = 0\n"
        "def scaled(x, factor=2.0):\n    return x * factor, {'sum': float(x.sum())}\n"
        "def same(x):\n    return x\n",
        namespace,
    )
    known = resolve("zero_head", "scaled", "same")
    z = torch.ones(2, 3, 4, 5)
    with hidden.active():
        assert known["zero_head"](z, hook_point("blocks.0.attn.hook_z"), 1) is None
    assert z[:, :, 1].abs().sum() == 0 and z[:, :, 0].eq(1).all()  # the kernel's in-place edit reached our tensor
    out, info = known["scaled"](torch.ones(3), factor=3.0)
    assert out.tolist() == [3.0, 3.0, 3.0] and info == {"sum": 3.0}
    x = torch.randn(4)
    assert known["same"](x) is x  # returning the argument itself is recognised


def test_student_exceptions_keep_their_type_or_become_one_sentence(wire):
    namespace, resolve = wire
    exec(
        "def stub(x):\n    raise NotImplementedError()\n"
        "def bad_index(x):\n    return x[10]\n"
        "class Oops(Exception):\n    pass\n"
        "def custom(x):\n    raise Oops('no')\n"
        "def module_out(x):\n    return torch.nn.Linear(2, 2)\n",
        namespace,
    )
    namespace["torch"] = torch
    known = resolve("stub", "bad_index", "custom", "module_out")
    with pytest.raises(NotImplementedError):
        known["stub"](1)
    with pytest.raises(IndexError):  # a check may catch a builtin exception to explain it
        known["bad_index"](torch.zeros(2))
    with pytest.raises(hidden.StudentError, match="`custom` raised Oops: no"):
        known["custom"](1)
    with pytest.raises(CheckFailed, match="returned a Linear"):
        known["module_out"](1)
    with pytest.raises(hidden.StudentError, match="`missing` is not defined in your notebook"):
        resolve("missing")


def test_values_are_fetched_and_student_functions_are_passed_by_name(wire):
    namespace, resolve = wire
    exec("circuit = {'name movers': {(9, 6), (9, 9)}}\n"
         "def hook(x):\n    return x + 1\n"
         "def apply(f, x):\n    return f(x) * 10\n", namespace)
    known = resolve("circuit", "hook", "apply")
    assert known["circuit"] == {"name movers": {(9, 6), (9, 9)}}
    assert known["apply"](known["hook"], torch.ones(2)).tolist() == [20.0, 20.0]


def test_the_stash_keeps_what_the_solution_cell_defined(wire):
    namespace, resolve = wire
    exec("def f(x):\n    return x + 1\n", namespace)
    hidden.stash(["f"])
    exec("def f(x):\n    return x - 1\n", namespace)  # a later cell reuses the name
    assert resolve("f")["f"](1) == 2


def test_calls_into_forbidden_references_are_caught_however_reached(wire):
    namespace, resolve = wire
    exec(
        "from mikit.induction import top_heads as th\n"
        "def direct(s, k):\n    return th(s, k)\n"
        "def hidden_route(s, k):\n    return getattr(__import__('mikit.induction', fromlist=['_']), 'top_' + 'heads')(s, k)\n"
        "def honest(s, k):\n    flat = s.flatten().topk(k).indices\n    return [(int(i) // s.shape[1], int(i) % s.shape[1]) for i in flat]\n",
        namespace,
    )
    known = resolve("direct", "hidden_route", "honest", forbidden=[induction.top_heads])
    scores = torch.rand(3, 4)
    for name in ("direct", "hidden_route"):
        with pytest.raises(CheckFailed, match="calls the reference `mikit.induction.top_heads`"):
            known[name](scores, 2)
    assert known["honest"](scores, 2) == induction.top_heads(scores, 2)


def test_only_hooks_a_model_does_not_keep_by_design_count_as_left():
    from transformer_lens.hook_points import HookedRootModule, HookPoint

    class Model(HookedRootModule):
        def __init__(self):
            super().__init__()
            self.kept, self.patched, self.raw = HookPoint(), HookPoint(), HookPoint()
            self.setup()

        def forward(self, x):
            return self.raw(self.patched(self.kept(x)))

    calls = []
    model = Model()
    model.add_hook("kept", lambda x, hook: calls.append("kept"), is_permanent=True)  # e.g. a recording model's
    assert hidden.hooks_left(model) == []
    model.add_hook("patched", lambda x, hook: calls.append("patched"))
    model.raw.register_forward_hook(lambda module, inputs, output: calls.append("raw"))
    assert hidden.hooks_left(model) == ["patched", "raw"]
    hidden.take_hooks_off(model)
    assert hidden.hooks_left(model) == []
    model(torch.zeros(1))
    assert calls == ["kept"]  # the permanent hook survives; the others are gone
