"""Every notebook-02 check passes the reference and rejects plausible wrong implementations (on SmolLM2).

The same checks run as hidden tests (`mikit grade`) on other inputs, in a tiny random model with SmolLM2's
tokenizer: there the reference, the correct alternatives of tests/alternatives/ioi.py and the wrong
implementations below are judged again, on three hidden variants and through the wire (`mikit.hidden`, its
kernel side in this process), and functions that only return the visible check's answers fail.
"""

import contextlib
import functools
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
from transformer_lens.utilities import get_act_name

import mikit
import mikit.checks
from replay import recorded  # tests/replay.py
from alternatives import ioi as alternatives  # tests/alternatives/
from alternatives import assert_two_each, listed
from mikit import core, hidden, patching
from mikit import ioi as ref
from mikit.checks import CheckFailed, hidden_variant
from mikit.checks import ioi as checks
from mikit.ioi import logit_diff as ref_logit_diff

# Found in SmolLM2 by notebook 02's analysis: its solution's 20-head circuit, receivers and senders.
CIRCUIT = [
    (2, 4), (5, 6), (8, 0), (8, 1), (9, 2), (13, 7), (14, 3), (15, 6), (15, 7), (17, 4),
    (17, 5), (19, 2), (20, 0), (23, 0), (23, 1), (23, 2), (23, 3), (23, 7), (28, 1), (29, 1),
]
RECEIVERS = [(23, 0), (23, 1), (23, 2), (23, 3)]
SENDERS = [(20, 0), (19, 2)]


@pytest.fixture(scope="module")
def lm():
    return mikit.load_model("smollm2-135m", device="cpu")


def rejects(check, fn, *args, match=None):
    with pytest.raises(CheckFailed, match=match):
        check(fn, *args)


def batch_end(ds):
    return torch.arange(len(ds)), ds.word_idx["END"]


# --- exercise 1 -------------------------------------------------------------------------
def last_position(logits, ds):
    b = torch.arange(len(ds))
    return logits[b, -1, ds.io_tokens] - logits[b, -1, ds.s_tokens]


def s_minus_io(logits, ds):
    return -ref_logit_diff(logits, ds)


def probabilities(logits, ds):
    b, end = batch_end(ds)
    probs = logits[b, end].softmax(-1)
    return probs[b, ds.io_tokens] - probs[b, ds.s_tokens]


def at_io_position(logits, ds):
    b = torch.arange(len(ds))
    row = logits[b, ds.word_idx["IO"]]
    return row[b, ds.io_tokens] - row[b, ds.s_tokens]


def batch_mean(logits, ds):
    return ref_logit_diff(logits, ds).mean()


WRONG_LOGIT_DIFF = [
    (last_position, "right-padded"), (s_minus_io, "sign"), (probabilities, "raw logits"),
    (at_io_position, "differs"), (batch_mean, "shape"),
]


def test_logit_diff(lm, capsys):
    checks.logit_diff(ref_logit_diff, lm)
    assert "✓" in capsys.readouterr().out
    for wrong, match in WRONG_LOGIT_DIFF:
        rejects(checks.logit_diff, wrong, lm, match=match)


# --- exercise 2 -------------------------------------------------------------------------
def _direction(model, ds):
    return (model.W_U[:, ds.io_tokens] - model.W_U[:, ds.s_tokens]).T


def unscaled(stack, cache, model, ds):
    return (stack * _direction(model, ds)).sum(-1).mean(-1)


def norm_per_component(stack, cache, model, ds):
    return (model.ln_final(stack) * _direction(model, ds)).sum(-1).mean(-1)


def summed_components(stack, cache, model, ds):
    return ref.residual_stack_to_logit_diff(stack, cache, model, ds) * len(ds)


def scale_at_last_position(stack, cache, model, ds):
    scale = cache["ln_final.hook_scale"][:, -1]
    return (stack / scale * _direction(model, ds)).sum(-1).mean(-1)


def flipped(stack, cache, model, ds):
    return -ref.residual_stack_to_logit_diff(stack, cache, model, ds)


WRONG_RESIDUAL = [
    (unscaled, "hook_scale"), (norm_per_component, "differs"), (summed_components, "summed"),
    (scale_at_last_position, "differs"), (flipped, "differs"),
]


def test_residual_stack_to_logit_diff(lm):
    checks.residual_stack_to_logit_diff(ref.residual_stack_to_logit_diff, lm)
    for wrong, match in WRONG_RESIDUAL:
        rejects(checks.residual_stack_to_logit_diff, wrong, lm, match=match)


# --- exercise 3 -------------------------------------------------------------------------
def transposed(pattern, ds, query, key):
    return ref.attention_between(pattern.transpose(-1, -2), ds, query, key)


def last_position_for_end(pattern, ds, query, key):
    b = torch.arange(len(ds))
    q = torch.full((len(ds),), -1) if query == "END" else ds.word_idx[query]
    return pattern[b, :, q, ds.word_idx[key]].mean(0)


def every_query(pattern, ds, query, key):
    b = torch.arange(len(ds))
    return pattern[b, :, :, ds.word_idx[key]].mean((0, -1))


def summed_prompts(pattern, ds, query, key):
    return ref.attention_between(pattern, ds, query, key) * len(ds)


WRONG_ATTENTION = [
    (transposed, "swapped"), (last_position_for_end, "differs"), (every_query, "differs"), (summed_prompts, "differs"),
]


def test_attention_between(lm):
    checks.attention_between(ref.attention_between, lm)
    for wrong, match in WRONG_ATTENTION:
        rejects(checks.attention_between, wrong, lm, match=match)


# --- exercise 4 -------------------------------------------------------------------------
def _classify(rule):
    def classify(dla, attn_io, attn_s, threshold):
        classes = {name: [] for name in ref.HEAD_CLASSES}
        for layer, head in rule(dla, threshold).nonzero().tolist():
            args = dla[layer, head], attn_io[layer, head], attn_s[layer, head]
            classes[classify.name_of(*args)].append((layer, head))
        return classes

    return classify


def _name_of(dla, io, s, other=True, swap=False):
    if other and max(io, s) < ref.MIN_NAME_ATTENTION:
        return "other"
    to_io = (io >= s) != swap
    return {(True, True): "name mover", (True, False): "negative name mover",
            (False, True): "S suppressor", (False, False): "S mover"}[bool(to_io), bool(dla > 0)]


no_other = _classify(lambda d, t: d.abs() >= t)
no_other.name_of = lambda *a: _name_of(*a, other=False)
swapped = _classify(lambda d, t: d.abs() >= t)
swapped.name_of = lambda *a: _name_of(*a, swap=True)
positive_only = _classify(lambda d, t: d >= t)
positive_only.name_of = _name_of
every_head = _classify(lambda d, t: torch.ones_like(d, dtype=torch.bool))
every_head.name_of = _name_of

WRONG_CLASSIFY = [(no_other, "class"), (swapped, "class"), (positive_only, "class"), (every_head, "class"),
                  (lambda *a: [], "dict")]


def _visible_classify_evidence():
    dla = torch.randn(6, 5, generator=torch.Generator().manual_seed(0))
    attn_io, attn_s = torch.rand(2, 6, 5, generator=torch.Generator().manual_seed(1)) * 0.5
    return dla, attn_io, attn_s, 0.5


def test_classify_heads():
    evidence = _visible_classify_evidence()
    checks.classify_heads(ref.classify_heads, *evidence)
    for wrong, match in WRONG_CLASSIFY:
        rejects(checks.classify_heads, wrong, *evidence, match=match)


def test_paper_comparison(capsys):
    checks.paper_comparison({"name mover": [(23, 0)]}, "smollm2-135m")
    assert "no published IOI circuit" in capsys.readouterr().out
    checks.paper_comparison(
        {"name mover": [(9, 9), (9, 6)], "S-inhibition": [(7, 3), (8, 6), (8, 10)]}, "gpt2-small"
    )
    assert "recovers" in capsys.readouterr().out
    with pytest.raises(CheckFailed, match="name mover"):
        checks.paper_comparison({"name mover": [(9, 9), (11, 2)], "S-inhibition": [(7, 3), (8, 6)]}, "gpt2-small")
    with pytest.raises(CheckFailed, match="S-inhibition"):
        checks.paper_comparison({"name mover": [(9, 9), (10, 0)], "S-inhibition": []}, "gpt2-small")


# --- exercise 5 -------------------------------------------------------------------------
def patch_head(model, ds, corrupted_tokens, clean_cache, layer, head, clean_ld, corrupted_ld, index=None,
               normalise=None, keep_hook=False, reduce="mean"):
    """The reference, with one thing changed to build wrong implementations from."""
    where = index(head, model) if index else (slice(None), slice(None), head)

    def patch(z, hook):
        z[where] = clean_cache[hook.name][where]
        return z

    name = get_act_name("z", layer)
    if keep_hook:
        model.add_hook(name, patch)
        logits = model(corrupted_tokens)
    else:
        logits = model.run_with_hooks(corrupted_tokens, fwd_hooks=[(name, patch)])
    per_prompt = ref_logit_diff(logits, ds)
    ld = (per_prompt.mean() if reduce == "mean" else per_prompt.sum()).item()
    if normalise:
        return normalise(ld, clean_ld, corrupted_ld)
    return (ld - corrupted_ld) / (clean_ld - corrupted_ld)


WRONG_PATCH_HEAD = [
    (functools.partial(patch_head, normalise=lambda ld, clean, corrupted: ld), "the mean logit difference itself"),
    (functools.partial(patch_head, normalise=lambda ld, clean, corrupted: (clean - ld) / (clean - corrupted)), "reversed"),
    (functools.partial(patch_head, normalise=lambda ld, clean, corrupted: (ld - clean) / (clean - corrupted)), "shifted"),
    (functools.partial(patch_head, normalise=lambda ld, clean, corrupted: (ld - corrupted) / clean), "divide by the gap"),
    (functools.partial(patch_head, reduce="sum"), "summed"),
    (functools.partial(patch_head, index=lambda head, model: (slice(None),)), "every head of the layer"),
    (functools.partial(patch_head, index=lambda head, model: (slice(None), head)), "axis 2"),
    (functools.partial(patch_head, index=lambda head, model: (
        slice(None), slice(None), head // (model.cfg.n_heads // model.cfg.n_key_value_heads))), "one slice per query head"),
    (lambda *args: torch.zeros(3), "return one number"),
]


def test_patch_head(lm, capsys):
    checks.patch_head(patch_head, lm)
    assert "✓ patch_head" in capsys.readouterr().out
    # On SmolLM2 (the notebook's model, a check of several seconds) the mistake its grouped-query attention invites;
    # every mistake of WRONG_PATCH_HEAD is judged on the hidden variants, in the tiny model, and so are these.
    rejects(checks.patch_head, WRONG_PATCH_HEAD[7][0], lm, match=WRONG_PATCH_HEAD[7][1])
    tiny = checks.tiny_lm()
    rejects(checks.patch_head, functools.partial(patch_head, keep_hook=True), tiny, match="a hook stayed on the model")
    assert not any(point.fwd_hooks for point in tiny.hook_dict.values())  # the check took it off

    def writes_into_clean(model, ds, corrupted_tokens, clean_cache, layer, head, *args):
        def patch(z, hook):
            clean_cache[hook.name][:, :, head] = z[:, :, head]

        model.run_with_hooks(corrupted_tokens, fwd_hooks=[(get_act_name("z", layer), patch)])
        return 0.5

    with torch.no_grad():  # as in the notebook (the cache's tensors cannot be edited with autograd on)
        rejects(checks.patch_head, writes_into_clean, tiny, match="changed clean_cache")


# --- exercise 6 -------------------------------------------------------------------------
def _run_end_ld(model, ds, hooks):
    with torch.inference_mode():
        return ref_logit_diff(model.run_with_hooks(ds.tokens, fwd_hooks=hooks), ds).mean().item()


def _sender_hook(senders, corrupted_cache):
    def hook(z, hook):
        for layer, head in senders:
            if layer == hook.layer():
                z[:, :, head] = corrupted_cache[hook.name][:, :, head]
        return z

    return hook


def _query_path(model, ds, clean_cache, corrupted_cache, senders, receivers, freeze=True, all_heads=False, patch="q"):
    """Two-step path patching with one thing changed, to build wrong implementations from."""
    stored = {}

    def frozen(z, hook):
        if freeze:
            z = clean_cache[hook.name].clone()
        return _sender_hook(senders, corrupted_cache)(z, hook)

    layers = sorted({layer for layer, _ in receivers})
    _run_end_ld(model, ds, [(lambda name: name.endswith("hook_z"), frozen)]
                + [(get_act_name(patch, layer), lambda a, hook: stored.__setitem__(hook.name, a.clone())) for layer in layers])

    def patched(a, hook):
        heads = range(a.shape[2]) if all_heads else [h for l, h in receivers if l == hook.layer()]
        for head in heads:
            a[:, :, head] = stored[hook.name][:, :, head]
        return a

    return _run_end_ld(model, ds, [(get_act_name(patch, layer), patched) for layer in layers])


def every_path(model, ds, clean_cache, corrupted_cache, senders, receivers):
    return _run_end_ld(model, ds, [(lambda name: name.endswith("hook_z"), _sender_hook(senders, corrupted_cache))])


def nothing_frozen(*args):
    return _query_path(*args, freeze=False)


def receivers_outputs(*args):
    return _query_path(*args, patch="z")


def every_query_of_the_layer(*args):
    return _query_path(*args, all_heads=True)


WRONG_PATH_PATCH = [(wrong, "freeze every head") for wrong in (every_path, nothing_frozen, receivers_outputs,
                                                               every_query_of_the_layer)]


def test_path_patch_to_queries(lm):
    checks.path_patch_to_queries(ref.path_patch_to_queries, lm, SENDERS, RECEIVERS)
    # The helper with nothing changed is the reference, so the wrong ones differ for their one change.
    checks.path_patch_to_queries(_query_path, lm, SENDERS, RECEIVERS)
    for wrong, match in WRONG_PATH_PATCH:
        rejects(checks.path_patch_to_queries, wrong, lm, SENDERS, RECEIVERS, match=match)


# --- exercise 7 -------------------------------------------------------------------------
def inside(z, hook, circuit, means):
    keep = [h for l, h in circuit if l == hook.layer()]
    z[:, :, keep] = means[hook.name][:, :, keep]
    return z


def zero(z, hook, circuit, means):
    outside = [h for h in range(z.shape[2]) if (hook.layer(), h) not in circuit]
    z[:, :, outside] = 0
    return z


def any_layer(z, hook, circuit, means):
    outside = [h for h in range(z.shape[2]) if h not in {h for _, h in circuit}]
    z[:, :, outside] = means[hook.name][:, :, outside]
    return z


def everything(z, hook, circuit, means):
    return means[hook.name].clone()


def in_place_inside(z, hook, circuit, means):  # an in-place hook returning None, wrong the same way as `inside`
    inside(z, hook, circuit, means)


WRONG_MEAN_ABLATE = [
    (inside, "circuit heads"), (zero, "differs"), (any_layer, "differs"), (everything, "circuit heads"),
    (in_place_inside, "circuit heads"), (lambda z, hook, circuit, means: None, "differs"),
]


def test_mean_ablate_outside():
    checks.mean_ablate_outside(ref.mean_ablate_outside)
    checks.mean_ablate_outside(alternatives.mean_ablate_outside__in_place_returns_none)  # was rejected before
    for wrong, match in WRONG_MEAN_ABLATE:
        rejects(checks.mean_ablate_outside, wrong, match=match)


# --- exercise 8 -------------------------------------------------------------------------
def test_circuit(lm):
    assert checks.circuit_faithfulness(CIRCUIT, lm, n_prompts=16) >= 0.6
    with pytest.raises(CheckFailed, match="at most 20"):
        checks.circuit([(layer, head) for layer in range(3) for head in range(7)], lm)
    with pytest.raises(CheckFailed, match="not heads of this model"):
        checks.circuit([(30, 0)], lm)
    with pytest.raises(CheckFailed, match="list of"):
        checks.circuit("L23H3", lm)
    movers_only = [(23, 0), (23, 1), (23, 2), (23, 3), (23, 7), (28, 1), (29, 1)]
    with pytest.raises(CheckFailed, match="keeps"):
        checks.circuit(movers_only, lm, n_prompts=16)


# --- hidden tests ------------------------------------------------------------------------
REFERENCE = {  # grade_id -> the reference of the student object the check receives
    "logit_diff": ref_logit_diff,
    "residual_stack_to_logit_diff": ref.residual_stack_to_logit_diff,
    "attention_between": ref.attention_between,
    "classify_heads": ref.classify_heads,
    "patch_head": patch_head,
    "path_patch_to_queries": ref.path_patch_to_queries,
    "mean_ablate_outside": ref.mean_ablate_outside,
}
WRONG = {
    "logit_diff": WRONG_LOGIT_DIFF,
    "residual_stack_to_logit_diff": WRONG_RESIDUAL,
    "attention_between": WRONG_ATTENTION,
    "classify_heads": WRONG_CLASSIFY,
    "patch_head": WRONG_PATCH_HEAD,
    "path_patch_to_queries": WRONG_PATH_PATCH,
    "mean_ablate_outside": WRONG_MEAN_ABLATE,
}
SEEDS = (1, 2, 3)  # one of each size offset


def _notebook_solutions():
    """The solution notebook's own functions (the references above are forbidden in the graded code)."""
    import json
    from pathlib import Path

    from mikit.datasets.ioi import IOIDataset

    notebook = json.loads((Path(__file__).parents[1] / "solutions" / "02_ioi.ipynb").read_text())
    namespace = {"__name__": "notebook", "torch": torch, "IOIDataset": IOIDataset, "get_act_name": get_act_name}
    for cell in notebook["cells"]:
        if cell.get("metadata", {}).get("nbgrader", {}).get("grade_id") in {f"{gid}_solution" for gid in REFERENCE}:
            exec("".join(cell["source"]), namespace)
    return {gid: namespace[gid] for gid in REFERENCE}


SOLUTION = _notebook_solutions()


def hidden_check(gid, fn, seed):
    """The exercise's check on hidden variant `seed`, with the context the grader builds (recipes memoised)."""
    exercise = checks.EXERCISES[gid]
    with hidden.active(), hidden_variant(seed):
        return exercise.check(fn, *exercise.context())


def visible_context(gid):
    """The context's objects with the notebook's inputs: what the tiny model gets without a hidden variant."""
    with hidden.active():
        return checks.EXERCISES[gid].context()


def test_the_tiny_model_is_rebuilt_identically():
    with hidden.active():
        model = checks.tiny_lm()
        hidden.reset()
        again = checks.tiny_lm()
    assert again is not model and model.cfg.n_layers == 4
    for name, weight in model.state_dict().items():
        assert torch.equal(weight, again.state_dict()[name]), name
    ds, _ = checks.ioi_data(model, 8, 3)  # SmolLM2's tokenizer: the names are single tokens
    assert len(ds) == 8 and ds.tokens.max() < model.cfg.d_vocab


def test_hidden_variants_change_every_input():
    with hidden.active():
        model = checks.tiny_lm()
        shapes = set()
        for seed in (0, *SEEDS):
            with hidden_variant(seed) if seed else contextlib.nullcontext():
                ds, _ = checks._check_data(model)
                shapes.add((tuple(ds.tokens.shape), tuple(ds.io_tokens.tolist())))
    assert len(shapes) == 4


@pytest.mark.parametrize("gid", list(REFERENCE))
def test_the_reference_passes_hidden_variants(gid, capsys):
    for seed in SEEDS:
        hidden_check(gid, REFERENCE[gid], seed)
    assert capsys.readouterr().out.count("✓") == len(SEEDS)


@pytest.mark.parametrize("gid", list(WRONG))
def test_wrong_implementations_fail_hidden_variants(gid):
    for seed in SEEDS:
        for wrong, match in WRONG[gid]:
            with pytest.raises(CheckFailed, match=match):
                hidden_check(gid, wrong, seed)


@pytest.mark.parametrize("gid", list(REFERENCE))
def test_the_visible_answers_fail_the_hidden_test(gid, wire):
    record, replay = recorded(REFERENCE[gid])
    checks.EXERCISES[gid].check(record, *visible_context(gid))  # the notebook's inputs, in the tiny model
    for seed in SEEDS:
        with pytest.raises(CheckFailed):
            hidden_check(gid, replay, seed)
    with pytest.raises(CheckFailed):
        wire(gid, replay)


# The kernel side of the wire: its own memo and no hidden variant, as in a real kernel, kept between calls
# (a kernel builds each recipe once per grading).
KERNEL_MEMO: tuple[dict, dict] = ({}, {})


@pytest.fixture
def wire(hidden_wire):
    """`wire(grade_id, student, seed=1)`: the exercise's hidden test through the wire (tests/conftest.py)."""
    return functools.partial(hidden_wire, checks, kernel_memo=KERNEL_MEMO, keep=True)


@pytest.mark.parametrize("gid", list(REFERENCE))
def test_the_solution_passes_the_hidden_test_through_the_wire(gid, wire, capsys):
    for seed in SEEDS:
        wire(gid, SOLUTION[gid], seed=seed)
    assert capsys.readouterr().out.count("✓") == len(SEEDS)


def test_a_wrong_function_fails_through_the_wire(wire):
    with pytest.raises(CheckFailed, match="right-padded"):
        wire("logit_diff", last_position)
    with pytest.raises(CheckFailed, match="freeze every head"):
        wire("path_patch_to_queries", receivers_outputs)
    with pytest.raises(CheckFailed, match="circuit heads"):
        wire("mean_ablate_outside", in_place_inside)  # an in-place edit comes back from the kernel
    with pytest.raises(KeyError, match="S3"):  # the student's own exception, raised again in the grader
        wire("attention_between", lambda pattern, ds, query, key: pattern[:, :, ds.word_idx["S3"]])


def test_a_hook_left_on_the_model_fails_under_the_grader_too(wire):
    with pytest.raises(CheckFailed, match="a hook stayed on the model after `patch_head` returned"):
        wire("patch_head", functools.partial(patch_head, keep_hook=True))


def test_calling_the_reference_scores_zero(wire):
    from mikit import ioi

    with pytest.raises(CheckFailed, match="calls the reference `mikit.ioi.logit_diff`"):
        wire("logit_diff", lambda logits, ds: ioi.logit_diff(logits, ds))
    with pytest.raises(CheckFailed, match="calls the reference `mikit.patching.path_patch`"):
        wire("path_patch_to_queries", lambda model, ds, clean, corrupted, senders, receivers: patching.path_patch(
            model, clean, corrupted, lambda logits: ref_logit_diff(logits, ds).mean(), senders, receivers, "q").item())
    with pytest.raises(CheckFailed, match="calls the reference `mikit.ioi.head_patching`"):
        wire("patch_head", lambda model, ds, corrupted, clean_cache, layer, head, clean_ld, corrupted_ld: (
            ioi.head_patching(model, ds, clean_cache, model.run_with_cache(corrupted)[1], [layer])[layer, head].item()))
    with pytest.raises(CheckFailed, match="calls the reference `mikit.core.metrics.normalised_metric`"):
        wire("patch_head", functools.partial(patch_head, normalise=core.normalised_metric))

    def with_the_notebooks_helper(stack, cache, model, ds):  # ioi.at_end is a helper the notebook itself uses
        scale = ioi.at_end(cache["ln_final.hook_scale"], ds)
        return ((stack / scale) * _direction(model, ds)).sum(-1).mean(-1)

    wire("residual_stack_to_logit_diff", with_the_notebooks_helper)


# --- correct alternatives ---------------------------------------------------------------
ALTERNATIVES = listed(alternatives)


def test_every_exercise_has_two_alternatives():
    assert_two_each(alternatives, checks.EXERCISES)


def _visible_args(gid, lm):
    if gid == "classify_heads":
        return _visible_classify_evidence()
    if gid == "path_patch_to_queries":
        return lm, SENDERS, RECEIVERS
    if gid == "patch_head":  # the notebook's inputs in the tiny model: a check on SmolLM2 takes seconds
        return visible_context(gid)
    return (lm,) if gid in ("logit_diff", "residual_stack_to_logit_diff", "attention_between") else ()


@pytest.mark.parametrize("name", [name for name in ALTERNATIVES if not name.startswith("circuit__")])
def test_alternative_passes_visible_and_hidden_checks(name, lm, wire, capsys):
    gid, fn = name.split("__")[0], getattr(alternatives, name)
    checks.EXERCISES[gid].check(fn, *_visible_args(gid, lm))
    for seed in SEEDS:
        hidden_check(gid, fn, seed)
    wire(gid, fn, seed=5)
    assert capsys.readouterr().out.count("✓") == 2 + len(SEEDS)


# --- the circuit: judged on the real LM, on other prompts under the grader ---------------
def test_the_circuit_is_judged_on_the_real_lm_of_the_mode(monkeypatch):
    monkeypatch.setattr(checks, "offline_model", lambda name: name)
    monkeypatch.setenv("MIKIT_MODE", "offline")
    assert checks.EXERCISES["circuit"].context() == ("smollm2-135m",)
    monkeypatch.setenv("MIKIT_MODE", "full")
    assert checks.EXERCISES["circuit"].context() == ("gpt2-small",)


def test_the_circuit_is_measured_on_other_prompts_under_the_grader(lm):
    seen = {checks.circuit_faithfulness(CIRCUIT, lm, n_prompts=16)}
    for seed in SEEDS:
        with hidden_variant(seed):
            seen.add(checks.circuit_faithfulness(CIRCUIT, lm, n_prompts=16))
    assert len(seen) == 1 + len(SEEDS) and min(seen) >= 0.6  # other prompts each time, and the circuit holds
    movers_only = [(23, 0), (23, 1), (23, 2), (23, 3), (23, 7), (28, 1), (29, 1)]
    with hidden_variant(2), pytest.raises(CheckFailed, match="keeps") as failure:
        checks.circuit(movers_only, lm, n_prompts=16)
    assert "seed" not in str(failure.value)  # the hidden prompts are not named
    for name in ALTERNATIVES:
        if name.startswith("circuit__"):
            with hidden_variant(1):
                checks.circuit(getattr(alternatives, name), lm, n_prompts=16)
