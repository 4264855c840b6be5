"""Every notebook-03 check passes a correct solution and rejects plausible wrong implementations.

Each exercise's test runs as the notebook runs the check (`variant` 0) and as the grader does, on hidden
inputs (`variant` 1-3: other seeds, and each of the three size offsets). The hidden tests also run through
the wire (`mikit.hidden`, its kernel side in this process with gradients off, as the notebook leaves
them), with the reference, the correct alternatives of tests/alternatives/patching.py, and functions that
only return the visible check's answers.
"""

import json
from functools import partial

import pytest
import torch
from replay import assert_replayed_answers_fail  # tests/replay.py
from alternatives import patching as alternatives  # tests/alternatives/
from alternatives import assert_two_each, check_hidden_variants, listed
from transformer_lens.utilities import get_act_name

import mikit.checks as mikit_checks
from mikit import core, hidden
from mikit import patching as ref
from mikit.checks import CheckFailed, hidden_variant
from mikit.checks import patching as checks


def rejects(check, fn, *args, match=None):
    with pytest.raises(CheckFailed, match=match):
        check(fn, *args)


def accepts(check, fn, capsys, *args):
    check(fn, *args)
    assert "✓" in capsys.readouterr().out


# --- exercise 1: one patch, end to end -----------------------------------------------------
def patch_resid(model, corrupted_tokens, clean_cache, layer, pos, metric, hook_name=None, index=None, keep_hook=False):
    name = hook_name or get_act_name("resid_pre", layer)
    where = (slice(None), pos) if index is None else index

    def patch(resid, hook):
        resid[where] = clean_cache[name][where]
        return resid

    if keep_hook:
        model.add_hook(name, patch)
        return metric(model(corrupted_tokens)).item()
    return metric(model.run_with_hooks(corrupted_tokens, fwd_hooks=[(name, patch)])).item()


def test_patch_resid(capsys, variant):
    accepts(checks.patch_resid, patch_resid, capsys)

    def every_position(*args):
        return patch_resid(*args, index=(slice(None),))

    def from_pos_on(model, corrupted_tokens, clean_cache, layer, pos, metric):
        return patch_resid(model, corrupted_tokens, clean_cache, layer, pos, metric, index=(slice(None), slice(pos, None)))

    def batch_axis(model, corrupted_tokens, clean_cache, layer, pos, metric):
        return patch_resid(model, corrupted_tokens, clean_cache, layer, pos, metric, index=(pos,))

    def resid_post(model, corrupted_tokens, clean_cache, layer, pos, metric):
        return patch_resid(model, corrupted_tokens, clean_cache, layer, pos, metric,
                           hook_name=get_act_name("resid_post", layer))

    def layer_before(model, corrupted_tokens, clean_cache, layer, pos, metric):
        return patch_resid(model, corrupted_tokens, clean_cache, max(layer - 1, 0), pos, metric)

    def hook_left_on(*args):
        return patch_resid(*args, keep_hook=True)

    def the_clean_run(model, corrupted_tokens, clean_cache, layer, pos, metric):
        name = get_act_name("resid_pre", layer)
        hook = lambda resid, hook: resid.index_copy_(1, torch.tensor([pos]), clean_cache[name][:, [pos]])  # noqa: E731
        start = clean_cache["resid_pre", 0].clone()
        return metric(model.run_with_hooks(start, start_at_layer=0, fwd_hooks=[(name, hook)])).item()

    def edits_a_copy(model, corrupted_tokens, clean_cache, layer, pos, metric):
        def patch(resid, hook):
            resid = resid.clone()
            resid[:, pos] = clean_cache[hook.name][:, pos]  # the copy is dropped: TransformerLens keeps the input

        return metric(model.run_with_hooks(corrupted_tokens, fwd_hooks=[(get_act_name("resid_pre", layer), patch)])).item()

    def writes_into_clean(model, corrupted_tokens, clean_cache, layer, pos, metric):
        def patch(resid, hook):
            clean_cache[hook.name][:, pos] = resid[:, pos]

        with torch.no_grad():  # as in the notebook (the cache's tensors cannot be edited with autograd on)
            return metric(model.run_with_hooks(corrupted_tokens, fwd_hooks=[(get_act_name("resid_pre", layer), patch)])).item()

    def returns_logits(model, corrupted_tokens, clean_cache, layer, pos, metric):
        name = get_act_name("resid_pre", layer)
        hook = lambda resid, hook: resid.index_copy_(1, torch.tensor([pos]), clean_cache[name][:, [pos]])  # noqa: E731
        return model.run_with_hooks(corrupted_tokens, fwd_hooks=[(name, hook)])

    def stub(*args):
        raise NotImplementedError

    rejects(checks.patch_resid, every_position, match="you replaced every position")
    rejects(checks.patch_resid, from_pos_on, match="every later one")
    rejects(checks.patch_resid, batch_axis, match="batch axis")  # visible: an IndexError; hidden: a wrong number
    rejects(checks.patch_resid, resid_post, match="one layer too late")
    rejects(checks.patch_resid, layer_before, match="one layer too early")
    rejects(checks.patch_resid, the_clean_run, match="clean run's metric")
    rejects(checks.patch_resid, edits_a_copy, match="nothing changed")
    rejects(checks.patch_resid, writes_into_clean, match="changed clean_cache")
    rejects(checks.patch_resid, returns_logits, match="not the logits")
    rejects(checks.patch_resid, stub, match="NotImplementedError")
    if not variant:  # under the grader the kernel takes left-over hooks off after each call
        rejects(checks.patch_resid, hook_left_on, match="a hook stayed on the model")
        assert not mikit_checks.hooks_left(checks._model())  # the check took it off: later checks run on a clean model


# --- exercise 2: the same patch in nnsight ----------------------------------------------
def patch_resid_nnsight(nn_model, corrupted_tokens, clean_cache, layer, pos):
    with nn_model.trace(corrupted_tokens):
        nn_model.blocks[layer].hook_resid_pre.output[:, pos] = clean_cache["resid_pre", layer][:, pos]
        logits = nn_model.output.save()
    return logits


def test_patch_resid_nnsight(capsys, variant):
    accepts(checks.patch_resid_nnsight, patch_resid_nnsight, capsys)

    def block_output(nn_model, corrupted_tokens, clean_cache, layer, pos):
        with nn_model.trace(corrupted_tokens):
            nn_model.blocks[layer].output[:, pos] = clean_cache["resid_pre", layer + 1][:, pos]
            logits = nn_model.output.save()
        return logits

    def every_position(nn_model, corrupted_tokens, clean_cache, layer, pos):
        with nn_model.trace(corrupted_tokens):
            nn_model.blocks[layer].hook_resid_pre.output[:] = clean_cache["resid_pre", layer]
            logits = nn_model.output.save()
        return logits

    def no_patch(nn_model, corrupted_tokens, clean_cache, layer, pos):
        with nn_model.trace(corrupted_tokens):
            logits = nn_model.output.save()
        return logits

    def returns_a_number(nn_model, corrupted_tokens, clean_cache, layer, pos):
        return 0.5

    rejects(checks.patch_resid_nnsight, block_output, match="one layer too late")
    rejects(checks.patch_resid_nnsight, every_position, match="every position")
    rejects(checks.patch_resid_nnsight, no_patch, match="corrupted run's logits")
    rejects(checks.patch_resid_nnsight, returns_a_number, match="save")


# --- exercise 3: the patching loop ------------------------------------------------------
def resid_patching_loop(model, corrupted_tokens, clean_cache, metric, layers, positions, patch, skip=True,
                        skipped_value=None, cell=None):
    logits, cache = model.run_with_cache(corrupted_tokens, names_filter=lambda name: name.endswith("resid_pre"))
    unpatched = metric(logits).item()
    results = torch.zeros(len(layers), len(positions))
    for i, layer in enumerate(layers):
        for j, pos in enumerate(positions):
            at_layer, at_pos = cell(i, j) if cell else (layer, pos)
            if skip and torch.equal(clean_cache["resid_pre", layer][:, pos], cache["resid_pre", layer][:, pos]):
                results[i, j] = unpatched if skipped_value is None else skipped_value
            else:
                results[i, j] = patch(model, corrupted_tokens, clean_cache, at_layer, at_pos, metric)
    return results


def test_resid_patching_loop(capsys, variant):
    accepts(checks.resid_patching_loop, resid_patching_loop, capsys)
    rejects(checks.resid_patching_loop, partial(resid_patching_loop, skip=False), match="cannot change anything")
    rejects(checks.resid_patching_loop, partial(resid_patching_loop, skipped_value=0.0), match="not 0")
    rejects(checks.resid_patching_loop, partial(resid_patching_loop, cell=lambda i, j: (i, j)), match="index")

    def by_index_throughout(model, corrupted_tokens, clean_cache, metric, layers, positions, patch):
        rows = range(len(layers))
        return resid_patching_loop(model, corrupted_tokens, clean_cache, metric, rows, range(len(positions)), patch)

    rejects(checks.resid_patching_loop, by_index_throughout, match="index")

    def skips_everything(model, corrupted_tokens, clean_cache, metric, layers, positions, patch):
        unpatched = metric(model(corrupted_tokens)).item()
        return torch.full((len(layers), len(positions)), unpatched)

    def own_resid_post_patch(model, corrupted_tokens, clean_cache, metric, layers, positions, patch):
        def post(model, corrupted_tokens, clean_cache, layer, pos, metric):
            name = get_act_name("resid_post", layer)
            hook = partial(lambda resid, hook, p: resid.index_copy_(1, torch.tensor([p]), clean_cache[name][:, [p]]), p=pos)
            return metric(model.run_with_hooks(corrupted_tokens, fwd_hooks=[(name, hook)])).item()

        return resid_patching_loop(model, corrupted_tokens, clean_cache, metric, layers, positions, post)

    def transposed(*args):
        return resid_patching_loop(*args).T

    rejects(checks.resid_patching_loop, skips_everything, match="skipped patches that change the run")
    rejects(checks.resid_patching_loop, own_resid_post_patch, match="resid_post")
    rejects(checks.resid_patching_loop, transposed, match=r"shape \(layer pos\)")

    def own_value_error(*args):
        raise ValueError("something else")

    with pytest.raises(ValueError, match="something else"):  # only the check's own refusal becomes its sentence
        checks.resid_patching_loop(own_value_error)


# --- exercise 4: a head's pattern, then its values -----------------------------------------
def patch_pattern_and_values(model, corrupted_tokens, clean_cache, layer, head, metric, kv_of=None,
                             pattern_index=None, values_index=None, keep_hooks=False, order=(0, 1)):
    group = model.cfg.n_heads // (model.cfg.n_key_value_heads or model.cfg.n_heads)
    kv = kv_of(head, model) if kv_of else head // group
    runs = [(get_act_name("pattern", layer), pattern_index or (slice(None), head)),
            (get_act_name("v", layer), values_index or (slice(None), slice(None), kv))]
    out = []
    for name, where in runs:
        def patch(act, hook, where=where):
            act[where] = clean_cache[hook.name][where]
            return act

        if keep_hooks:
            model.add_hook(name, patch)
            out.append(metric(model(corrupted_tokens)).item())
        else:
            out.append(metric(model.run_with_hooks(corrupted_tokens, fwd_hooks=[(name, patch)])).item())
    if keep_hooks:
        model.reset_hooks()
    return tuple(out[i] for i in order)


def test_patch_pattern_and_values(capsys, variant):
    accepts(checks.patch_pattern_and_values, patch_pattern_and_values, capsys)
    wrong = partial(rejects, checks.patch_pattern_and_values)
    wrong(partial(patch_pattern_and_values, order=(1, 0)), match="swapped")
    wrong(partial(patch_pattern_and_values, pattern_index=(slice(None),)), match="every head's pattern")
    wrong(partial(patch_pattern_and_values, values_index=(slice(None),)), match="every value head")
    wrong(partial(patch_pattern_and_values, kv_of=lambda head, model: head), match="IndexError|wrong value head")
    wrong(partial(patch_pattern_and_values, kv_of=lambda head, model: head % model.cfg.n_key_value_heads
                  if model.cfg.n_key_value_heads else head), match="wrong value head")
    wrong(partial(patch_pattern_and_values, keep_hooks=True), match="hook stayed on")

    def query_axis(model, corrupted_tokens, clean_cache, layer, head, metric):
        return patch_pattern_and_values(model, corrupted_tokens, clean_cache, layer, head, metric,
                                        pattern_index=(slice(None), slice(None), head))

    def output_for_values(model, corrupted_tokens, clean_cache, layer, head, metric):
        pattern, _ = patch_pattern_and_values(model, corrupted_tokens, clean_cache, layer, head, metric)
        name = get_act_name("z", layer)
        hook = lambda z, hook: z.index_copy_(2, torch.tensor([head]), clean_cache[name][:, :, [head]])  # noqa: E731
        return pattern, metric(model.run_with_hooks(corrupted_tokens, fwd_hooks=[(name, hook)])).item()

    def no_patch(model, corrupted_tokens, clean_cache, layer, head, metric):
        value = metric(model(corrupted_tokens)).item()
        return value, value

    def a_dict(*args):
        pattern, values = patch_pattern_and_values(*args)
        return {"pattern": pattern, "values": values}

    def hooks_left_on(model, corrupted_tokens, clean_cache, layer, head, metric):
        out = patch_pattern_and_values(model, corrupted_tokens, clean_cache, layer, head, metric)
        model.add_hook(get_act_name("v", layer), lambda v, hook: v)
        return out

    wrong(query_axis, match="query axis")
    wrong(output_for_values, match="pattern too.*hook_z")
    wrong(no_patch, match="nothing changed")
    wrong(a_dict, match=r"pair of numbers, \(pattern, values\)")
    if not variant:
        wrong(hooks_left_on, match="a hook stayed on the model")


# --- exercise 5: necessary and sufficient -----------------------------------------------
def necessary_and_sufficient(denoised, noised, threshold):
    return {
        "sufficient": [tuple(h) for h in (denoised >= threshold).nonzero().tolist()],
        "necessary": [tuple(h) for h in (1 - noised >= threshold).nonzero().tolist()],
    }


def test_necessary_and_sufficient(capsys, variant):
    accepts(checks.necessary_and_sufficient, necessary_and_sufficient, capsys)

    def swapped(denoised, noised, threshold):
        right = necessary_and_sufficient(denoised, noised, threshold)
        return {"sufficient": right["necessary"], "necessary": right["sufficient"]}

    def noising_from_zero(denoised, noised, threshold):
        return {"sufficient": necessary_and_sufficient(denoised, noised, threshold)["sufficient"],
                "necessary": (noised >= threshold).nonzero().tolist()}

    def absolute(denoised, noised, threshold):
        return {"sufficient": (denoised.abs() >= threshold).nonzero().tolist(),
                "necessary": ((1 - noised).abs() >= threshold).nonzero().tolist()}

    def nan_included(denoised, noised, threshold):
        return {"sufficient": (~(denoised < threshold)).nonzero().tolist(),
                "necessary": (~(1 - noised < threshold)).nonzero().tolist()}

    def a_list(denoised, noised, threshold):
        return list(necessary_and_sufficient(denoised, noised, threshold).values())

    rejects(checks.necessary_and_sufficient, swapped, match="swapped")
    rejects(checks.necessary_and_sufficient, noising_from_zero, match="starts from the clean run")
    rejects(checks.necessary_and_sufficient, absolute, match="absolute")
    rejects(checks.necessary_and_sufficient, nan_included, match="NaN")
    rejects(checks.necessary_and_sufficient, a_list, match="dict")


# --- exercise 6: path patching through q, k or v -----------------------------------------
def path_patch(model, clean_cache, corrupted_cache, metric, senders, receivers, receiver_input, kv_index=None):
    n_kv = model.cfg.n_key_value_heads or model.cfg.n_heads
    group = 1 if receiver_input == "q" else model.cfg.n_heads // n_kv
    kv_index = kv_index or (lambda head: head // group)

    def freeze(z, hook):
        z = clean_cache[hook.name].clone()
        for layer, head in senders:
            if layer == hook.layer():
                z[:, :, head] = corrupted_cache[hook.name][:, :, head]
        return z

    recorded = {}

    def record(act, hook):
        recorded[hook.name] = act.clone()

    def replace(act, hook):
        for layer, head in receivers:
            if layer == hook.layer():
                act[:, :, kv_index(head)] = recorded[hook.name][:, :, kv_index(head)]
        return act

    names = sorted({get_act_name(receiver_input, layer) for layer, _ in receivers})
    start = clean_cache["resid_pre", 0]
    model.run_with_hooks(start, start_at_layer=0,
                         fwd_hooks=[(lambda n: n.endswith("hook_z"), freeze)] + [(n, record) for n in names])
    return metric(model.run_with_hooks(start, start_at_layer=0, fwd_hooks=[(n, replace) for n in names])).item()


def test_path_patch(capsys, variant):
    accepts(checks.path_patch, path_patch, capsys)

    def query_head_index(*args):
        return path_patch(*args, kv_index=lambda head: head)

    def modulo_group(*args):
        return path_patch(*args, kv_index=lambda head: head % 2)

    def activation_patching(model, clean_cache, corrupted_cache, metric, senders, receivers, receiver_input):
        def patch(z, hook):
            for layer, head in senders:
                if layer == hook.layer():
                    z[:, :, head] = corrupted_cache[hook.name][:, :, head]
            return z

        return metric(model.run_with_hooks(clean_cache["resid_pre", 0], start_at_layer=0,
                                           fwd_hooks=[(lambda n: n.endswith("hook_z"), patch)])).item()

    def always_queries(model, clean_cache, corrupted_cache, metric, senders, receivers, receiver_input):
        return path_patch(model, clean_cache, corrupted_cache, metric, senders, receivers, "q")

    rejects(checks.path_patch, query_head_index, match="IndexError|wrong key/value head")
    rejects(checks.path_patch, modulo_group, match="wrong key/value head")
    rejects(checks.path_patch, activation_patching, match="freezes every other head")
    rejects(checks.path_patch, always_queries, match="receiver_input='k'")


# --- exercise 7: attribution patching ---------------------------------------------------
def attribution_patch_heads(model, clean_tokens, corrupted_tokens, metric, grad_run="corrupted", sign=1.0, base=True):
    is_z = lambda name: name.endswith("hook_z")  # noqa: E731
    _, clean_cache = model.run_with_cache(clean_tokens, names_filter=is_z)
    _, corrupted_cache = model.run_with_cache(corrupted_tokens, names_filter=is_z)
    z = {}

    def keep(act, hook):
        z[hook.layer()] = act

    with torch.enable_grad():
        value = metric(model.run_with_hooks(corrupted_tokens if grad_run == "corrupted" else clean_tokens,
                                            fwd_hooks=[(is_z, keep)]))
        grads = torch.autograd.grad(value, [z[layer] for layer in sorted(z)])
    with torch.no_grad():
        corrupted_value = metric(model(corrupted_tokens))
    effects = torch.stack([((clean_cache["z", layer] - corrupted_cache["z", layer]) * grad).sum((0, 1, 3))
                           for layer, grad in enumerate(grads)])
    return (corrupted_value if base else 0) + sign * effects


def test_attribution_patch_heads(capsys, variant):
    accepts(checks.attribution_patch_heads, attribution_patch_heads, capsys)
    rejects(checks.attribution_patch_heads, partial(attribution_patch_heads, base=False), match="change only")
    rejects(checks.attribution_patch_heads, partial(attribution_patch_heads, sign=-1.0), match="sign")
    rejects(checks.attribution_patch_heads, partial(attribution_patch_heads, grad_run="clean"), match="clean run")

    def per_position(model, clean_tokens, corrupted_tokens, metric):
        return torch.zeros(model.cfg.n_layers, 6, model.cfg.n_heads)

    rejects(checks.attribution_patch_heads, per_position, match=r"shape \(layer head\)")


# --- exercise 8: zero, mean and resample ablation ----------------------------------------
def ablate_head(z, hook, head, method, reference_z, perm):
    if method == "zero":
        z[:, :, head] = 0
    elif method == "mean":
        z[:, :, head] = reference_z[:, :, head].mean(0)
    else:
        z[:, :, head] = reference_z[perm, :, head]
    return z


def test_ablate_head(capsys, variant):
    accepts(checks.ablate_head, ablate_head, capsys)

    def mean_over_positions(z, hook, head, method, reference_z, perm):
        if method == "mean":
            z[:, :, head] = reference_z[:, :, head].mean((0, 1))
            return z
        return ablate_head(z, hook, head, method, reference_z, perm)

    def own_batch_mean(z, hook, head, method, reference_z, perm):
        if method == "mean":
            z[:, :, head] = z[:, :, head].mean(0)
            return z
        return ablate_head(z, hook, head, method, reference_z, perm)

    def resample_without_perm(z, hook, head, method, reference_z, perm):
        if method == "resample":
            z[:, :, head] = reference_z[: len(z), :, head]
            return z
        return ablate_head(z, hook, head, method, reference_z, perm)

    def always_zero(z, hook, head, method, reference_z, perm):
        return ablate_head(z, hook, head, "zero", reference_z, perm)

    def wrong_head(z, hook, head, method, reference_z, perm):
        return ablate_head(z, hook, head + 1, method, reference_z, perm)

    rejects(checks.ablate_head, mean_over_positions, match="over positions")
    rejects(checks.ablate_head, own_batch_mean, match="own outputs")
    rejects(checks.ablate_head, resample_without_perm, match=r"perm\[i\]")
    rejects(checks.ablate_head, always_zero, match="zeroed")
    rejects(checks.ablate_head, wrong_head, match="differs from the reference")


# ---- hidden tests -------------------------------------------------------------------------------------------

REFERENCE = {  # grade_id -> the reference implementation of each name the check receives
    "patch_resid": (patch_resid,),
    "patch_resid_nnsight": (patch_resid_nnsight,),
    "resid_patching_loop": (resid_patching_loop,),
    "patch_pattern_and_values": (patch_pattern_and_values,),
    "necessary_and_sufficient": (necessary_and_sufficient,),
    "path_patch": (path_patch,),
    "attribution_patch_heads": (attribution_patch_heads,),
    "ablate_head": (ablate_head,),
}


@pytest.fixture
def wire(hidden_wire):
    """`wire(grade_id, *functions, seed=1)`: the exercise's hidden test through the wire (tests/conftest.py)."""
    return partial(hidden_wire, checks, kernel_grad=False)


@pytest.mark.parametrize("gid", list(REFERENCE))
def test_the_reference_passes_the_hidden_test_through_the_wire(gid, wire, capsys):
    for seed in (1, 2, 3):
        wire(gid, *REFERENCE[gid], seed=seed)
    assert capsys.readouterr().out.count("✓") == 3


def test_the_hidden_models_differ_and_are_rebuilt_identically():
    build = checks._tiny.__wrapped__.__wrapped__  # past the recipe and the lru_cache: a fresh model each call
    with hidden.active(), hidden_variant(2):
        hidden_model = checks._model(n_key_value_heads=2)
        (key, _), = [(k, m) for k, m in hidden._memo.items() if m is hidden_model]
        prompts = checks._prompts()
    hidden.reset()
    args = json.loads(key)["kwargs"]["__dict__"]
    assert dict(args) == {"seed": 7 + 1_000_003 * 2, "n_layers": 6, "n_heads": 10, "initializer_range": 0.5}
    model, again = build(2, **dict(args)), build(2, **dict(args))
    for name, weight in model.state_dict().items():
        assert torch.equal(weight, again.state_dict()[name]), name
        assert torch.equal(weight, hidden_model.state_dict()[name]), name
    assert not torch.equal(model.W_Q[0], build(2, n_layers=6, n_heads=10, initializer_range=0.5).W_Q[0])  # seed 7
    clean, corrupted, clean_cache, _ = checks._caches.__wrapped__(model, *prompts)
    clean_again, _, cache_again, _ = checks._caches.__wrapped__(again, *prompts)
    assert clean.shape == (6, 9) and torch.equal(clean, clean_again)
    assert torch.equal(clean_cache["z", 5], cache_again["z", 5])
    assert (clean != corrupted).any(0).nonzero().flatten().tolist() == [1, 3]


def test_the_loop_is_graded_with_the_checks_own_patch(wire, capsys):
    """The loop gets the check's patch, which refuses patches that cannot change anything: a wrong exercise 1
    does not cost exercise 3, and a loop that does not skip them fails in the kernel as in the notebook."""
    given = []

    def loop(model, corrupted_tokens, clean_cache, metric, layers, positions, patch):
        given.append(patch)
        return resid_patching_loop(model, corrupted_tokens, clean_cache, metric, layers, positions, patch)

    wire("resid_patching_loop", loop)
    assert given == [checks._patch_resid_once] and "✓ resid_patching_loop" in capsys.readouterr().out
    with pytest.raises(CheckFailed, match="cannot change anything"):
        wire("resid_patching_loop", partial(resid_patching_loop, skip=False))
    with pytest.raises(CheckFailed, match="not 0"):
        wire("resid_patching_loop", partial(resid_patching_loop, skipped_value=0.0))


def test_a_hook_left_on_the_model_does_not_reach_later_checks(capsys):
    def leaves_a_hook(model, corrupted_tokens, clean_cache, layer, pos, metric):
        return patch_resid(model, corrupted_tokens, clean_cache, layer, pos, metric, keep_hook=True)

    with pytest.raises(CheckFailed, match="a hook stayed on the model"):
        checks.patch_resid(leaves_a_hook)
    accepts(checks.patch_resid, patch_resid, capsys)  # the same cached model, without the hook


def test_a_hook_left_on_the_model_fails_under_the_grader_too(wire, capsys):
    """The kernel takes the hook off after the call, and reports it: the grader fails the call for it."""
    with pytest.raises(CheckFailed, match="a hook stayed on the model after `patch_resid` returned"):
        wire("patch_resid", partial(patch_resid, keep_hook=True))
    wire("patch_resid", patch_resid)  # the next call, in the same kernel, runs without it
    assert "✓ patch_resid" in capsys.readouterr().out


def test_attribution_patching_runs_in_a_kernel_without_gradients(wire, capsys):
    grad_enabled = []

    def noting(model, clean_tokens, corrupted_tokens, metric):
        grad_enabled.append(torch.is_grad_enabled())
        return attribution_patch_heads(model, clean_tokens, corrupted_tokens, metric)

    def without_enable_grad(model, clean_tokens, corrupted_tokens, metric):
        is_z = lambda name: name.endswith("hook_z")  # noqa: E731
        z = []
        value = metric(model.run_with_hooks(corrupted_tokens, fwd_hooks=[(is_z, lambda act, hook: z.append(act))]))
        return torch.stack([g.sum((0, 1, 3)) for g in torch.autograd.grad(value, z)])

    wire("attribution_patch_heads", noting)
    assert grad_enabled == [False] and "✓ attribution_patch_heads" in capsys.readouterr().out
    with pytest.raises(RuntimeError, match="does not require grad"):  # as the visible check in the notebook would
        wire("attribution_patch_heads", without_enable_grad)


def test_an_in_place_hook_that_returns_none_is_graded_through_the_wire(wire, capsys):
    wire("patch_resid", alternatives.patch_resid__in_place_hook_returns_none)
    wire("patch_pattern_and_values", alternatives.patch_pattern_and_values__in_place_hooks_return_none)
    wire("ablate_head", alternatives.ablate_head__in_place_returns_none)
    assert capsys.readouterr().out.count("✓") == 3

    def writes_nothing(model, corrupted_tokens, clean_cache, layer, head, metric):
        def copy(act, hook):  # returns None and changes nothing: the run is the corrupted one
            act.clone()[:, head] = clean_cache[hook.name][:, head]

        return tuple(metric(model.run_with_hooks(corrupted_tokens, fwd_hooks=[(get_act_name(kind, layer), copy)])).item()
                     for kind in ("pattern", "v"))

    with pytest.raises(CheckFailed, match="nothing changed"):
        wire("patch_pattern_and_values", writes_nothing)


def test_calling_the_reference_scores_zero(wire):
    cases = {
        "patch_resid": lambda model, corrupted, clean_cache, layer, pos, metric: metric(model.run_with_hooks(
            corrupted, fwd_hooks=[(get_act_name("resid_pre", layer), partial(ref.copy_index, index=(pos,),
                                                                               source=clean_cache["resid_pre", layer]))])).item(),
        "patch_pattern_and_values": lambda model, corrupted, clean_cache, layer, head, metric: tuple(ref.run_patches(
            model, model.run_with_cache(corrupted)[1], clean_cache, metric,
            [(get_act_name("pattern", layer), (head,))] * 2, progress=False).tolist()),
        "necessary_and_sufficient": ref.necessary_and_sufficient,
        "path_patch": lambda *args: ref.path_patch(*args).item(),
        "attribution_patch_heads": lambda model, clean, corrupted, metric: ref.attribution_patch(model, clean, corrupted, metric),
        "ablate_head": lambda z, hook, head, method, reference_z, perm: core.ablate_head(
            z, hook, head, method, reference_z=reference_z, perm=perm),
    }
    for gid, cheat in cases.items():
        with pytest.raises(CheckFailed, match=r"calls the reference `mikit\.(patching|core\.hooks)\."):
            wire(gid, cheat)

    def engine_loop(model, corrupted_tokens, clean_cache, metric, layers, positions, patch):
        _, target_cache = model.run_with_cache(corrupted_tokens)
        patches = [(get_act_name("resid_pre", layer), (pos,)) for layer in layers for pos in positions]
        return ref.run_patches(model, target_cache, clean_cache, metric, patches, progress=False).view(len(layers), -1)

    with pytest.raises(CheckFailed, match=r"calls the reference `mikit\.patching\.run_patches`"):
        wire("resid_patching_loop", engine_loop)


@pytest.mark.parametrize("gid", list(REFERENCE))
def test_the_visible_answers_fail_the_hidden_test(gid, wire):
    assert_replayed_answers_fail(checks.EXERCISES[gid], REFERENCE[gid], wire, gid)


ALTERNATIVES = listed(alternatives)


def test_every_exercise_has_two_alternatives():
    assert_two_each(alternatives, [name for exercise in checks.EXERCISES.values() for name in exercise.students])


@pytest.mark.parametrize("name", ALTERNATIVES)
def test_alternative_passes_visible_and_hidden_checks(name, wire, capsys):
    function = name.split("__")[0]
    gid = next(gid for gid, exercise in checks.EXERCISES.items() if function in exercise.students[:1])
    exercise = checks.EXERCISES[gid]
    functions = [getattr(alternatives, name), *REFERENCE[gid][1:]]
    with torch.no_grad():  # the notebook's kernel state
        exercise.check(*functions)
    check_hidden_variants(exercise, functions)
    wire(gid, *functions, seed=5)
    assert capsys.readouterr().out.count("✓") == 5
