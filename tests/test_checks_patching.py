"""Every notebook-03 check passes a correct solution and rejects plausible wrong implementations."""

from functools import partial

import pytest
import torch
from transformer_lens.utilities import get_act_name

from mikit.checks import CheckFailed
from mikit.checks import patching as checks


def rejects(check, fn, *args, match=None):
    with pytest.raises(CheckFailed, match=match):
        check(fn, *args)


def accepts(check, fn, capsys, *args):
    check(fn, *args)
    assert "✓" in capsys.readouterr().out


# --- exercise 1: a residual-stream patching hook ------------------------------------------
def patch_resid_hook(resid, hook, pos, clean_resid):
    resid[:, pos] = clean_resid[:, pos]
    return resid


def test_patch_resid_hook(capsys):
    accepts(checks.patch_resid_hook, patch_resid_hook, capsys)

    def in_place_returning_none(resid, hook, pos, clean_resid):
        resid[:, pos] = clean_resid[:, pos]

    accepts(checks.patch_resid_hook, in_place_returning_none, capsys)

    def every_position(resid, hook, pos, clean_resid):
        return clean_resid.clone()

    def batch_axis(resid, hook, pos, clean_resid):
        resid[pos] = clean_resid[pos]
        return resid

    def from_pos_on(resid, hook, pos, clean_resid):
        resid[:, pos:] = clean_resid[:, pos:]
        return resid

    def off_by_one(resid, hook, pos, clean_resid):
        resid[:, pos - 1] = clean_resid[:, pos - 1]
        return resid

    def writes_into_clean(resid, hook, pos, clean_resid):
        clean_resid[:, pos] = resid[:, pos]
        return resid

    def stub(resid, hook, pos, clean_resid):
        raise NotImplementedError

    rejects(checks.patch_resid_hook, every_position, match="every position")
    rejects(checks.patch_resid_hook, batch_axis, match="batch axis")
    rejects(checks.patch_resid_hook, from_pos_on, match="every later one")
    rejects(checks.patch_resid_hook, off_by_one, match="off by one")
    rejects(checks.patch_resid_hook, writes_into_clean, match="changed clean_resid")
    rejects(checks.patch_resid_hook, stub, match="NotImplementedError")


# --- exercise 2: the same patch in nnsight ----------------------------------------------
def patch_resid_nnsight(nn_model, corrupted_tokens, clean_cache, layer, pos):
    with nn_model.trace(corrupted_tokens):
        nn_model.blocks[layer].hook_resid_pre.output[:, pos] = clean_cache["resid_pre", layer][:, pos]
        logits = nn_model.output.save()
    return logits


def test_patch_resid_nnsight(capsys):
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
def resid_patching_loop(model, corrupted_tokens, clean_cache, metric, layers, positions, patch_hook):
    results = torch.zeros(len(layers), len(positions))
    for i, layer in enumerate(layers):
        name = get_act_name("resid_pre", layer)
        for j, pos in enumerate(positions):
            hook = partial(patch_hook, pos=pos, clean_resid=clean_cache[name])
            results[i, j] = metric(model.run_with_hooks(corrupted_tokens, fwd_hooks=[(name, hook)]))
    return results


def test_resid_patching_loop(capsys):
    accepts(checks.resid_patching_loop, resid_patching_loop, capsys, patch_resid_hook)

    def resid_post(model, corrupted_tokens, clean_cache, metric, layers, positions, patch_hook):
        results = torch.zeros(len(layers), len(positions))
        for i, layer in enumerate(layers):
            name = get_act_name("resid_post", layer)
            for j, pos in enumerate(positions):
                hook = partial(patch_hook, pos=pos, clean_resid=clean_cache[name])
                results[i, j] = metric(model.run_with_hooks(corrupted_tokens, fwd_hooks=[(name, hook)]))
        return results

    def leaking_hooks(model, corrupted_tokens, clean_cache, metric, layers, positions, patch_hook):
        results = torch.zeros(len(layers), len(positions))
        for i, layer in enumerate(layers):
            name = get_act_name("resid_pre", layer)
            for j, pos in enumerate(positions):
                model.add_hook(name, partial(patch_hook, pos=pos, clean_resid=clean_cache[name]))
                results[i, j] = metric(model(corrupted_tokens))
        model.reset_hooks()
        return results

    def transposed(model, corrupted_tokens, clean_cache, metric, layers, positions, patch_hook):
        return resid_patching_loop(model, corrupted_tokens, clean_cache, metric, layers, positions, patch_hook).T

    def metric_of_the_clean_run(model, corrupted_tokens, clean_cache, metric, layers, positions, patch_hook):
        return torch.ones(len(layers), len(positions)) * metric(model(clean_cache["resid_pre", 0], start_at_layer=0))

    rejects(checks.resid_patching_loop, resid_post, patch_resid_hook, match="resid_post")
    rejects(checks.resid_patching_loop, leaking_hooks, patch_resid_hook, match="accumulate")
    rejects(checks.resid_patching_loop, transposed, patch_resid_hook, match=r"shape \(layer pos\)")
    rejects(checks.resid_patching_loop, metric_of_the_clean_run, patch_resid_hook, match="differs from the reference")


# --- exercise 4: a pattern-patching hook ------------------------------------------------
def patch_pattern_hook(pattern, hook, head, clean_pattern):
    pattern[:, head] = clean_pattern[:, head]
    return pattern


def test_patch_pattern_hook(capsys):
    accepts(checks.patch_pattern_hook, patch_pattern_hook, capsys)

    def query_axis(pattern, hook, head, clean_pattern):
        pattern[:, :, head] = clean_pattern[:, :, head]
        return pattern

    def every_head(pattern, hook, head, clean_pattern):
        return clean_pattern

    def nothing(pattern, hook, head, clean_pattern):
        return pattern

    def last_axis(pattern, hook, head, clean_pattern):
        pattern[..., head] = clean_pattern[..., head]
        return pattern

    rejects(checks.patch_pattern_hook, query_axis, match="query axis")
    rejects(checks.patch_pattern_hook, every_head, match="every head")
    rejects(checks.patch_pattern_hook, nothing, match="nothing changed")
    rejects(checks.patch_pattern_hook, last_axis, match="differs from the reference")


# --- exercise 5: necessary and sufficient -----------------------------------------------
def necessary_and_sufficient(denoised, noised, threshold):
    return {
        "sufficient": [tuple(h) for h in (denoised >= threshold).nonzero().tolist()],
        "necessary": [tuple(h) for h in (1 - noised >= threshold).nonzero().tolist()],
    }


def test_necessary_and_sufficient(capsys):
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


def test_path_patch(capsys):
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


def test_attribution_patch_heads(capsys):
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


def test_ablate_head(capsys):
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
