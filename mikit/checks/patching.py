"""Checks for notebook 03 (activation patching): each compares a student function with `mikit.patching`.

The mechanics are checked on tiny random transformers built here (3 layers, one of them with
grouped-query attention), so a check takes a fraction of a second and holds in either mode; the
notebook then runs the student's functions on the real model.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any, Callable

import torch
from torch import Tensor
from transformer_lens import ActivationCache, HookedTransformer, HookedTransformerConfig
from transformer_lens.hook_points import HookPoint
from transformer_lens.utilities import get_act_name

from mikit import patching as ref
from mikit.checks import (
    CheckFailed, call_student, expect_close, expect_number, expect_tensor, passed, reject_known_mistakes,
)

Head = tuple[int, int]
D_VOCAB = 40


@lru_cache(maxsize=2)
def _tiny(n_key_value_heads: int | None = None) -> HookedTransformer:
    cfg = HookedTransformerConfig(
        n_layers=3, d_model=32, n_heads=4, d_head=8, d_mlp=64, d_vocab=D_VOCAB, n_ctx=16, act_fn="gelu",
        normalization_type="LN", n_key_value_heads=n_key_value_heads, seed=7, device="cpu",
    )
    return HookedTransformer(cfg).eval()


def _tokens() -> tuple[Tensor, Tensor]:
    """Clean and corrupted prompts (3 × 6) that differ at positions 1 and 3."""
    generator = torch.Generator().manual_seed(11)
    clean = torch.randint(0, D_VOCAB, (3, 6), generator=generator)
    corrupted = clean.clone()
    corrupted[:, 1] = (clean[:, 1] + 1) % D_VOCAB
    corrupted[:, 3] = (clean[:, 3] + 5) % D_VOCAB
    return clean, corrupted


def _metric(logits: Tensor) -> Tensor:
    return logits[:, -1, 7].mean() - logits[:, -1, 3].mean()


def _hook(name: str) -> HookPoint:
    hook = HookPoint()
    hook.name = name
    return hook


def _caches(model: HookedTransformer) -> tuple[Tensor, Tensor, ActivationCache, ActivationCache]:
    clean, corrupted = _tokens()
    with torch.no_grad():
        _, clean_cache = model.run_with_cache(clean)
        _, corrupted_cache = model.run_with_cache(corrupted)
    return clean, corrupted, clean_cache, corrupted_cache


def _run_hook(fn: Callable, name: str, activation: Tensor, *args: Any) -> Tensor:
    """What a TransformerLens hook leaves: its return value, or the activation it edited in place."""
    __tracebackhide__ = True
    out = call_student(fn, name, activation, *args)
    return activation if out is None else out


def patch_resid_hook(fn: Callable) -> None:
    """Exercise 1: a hook that patches the residual stream at one position."""
    __tracebackhide__ = True
    name = "patch_resid_hook"
    generator = torch.Generator().manual_seed(1)
    for pos in (2, 4):
        resid, clean = torch.randn(5, 6, 8, generator=generator), torch.randn(5, 6, 8, generator=generator)
        clean_before = clean.clone()
        hook = _hook("blocks.1.hook_resid_pre")
        got = expect_tensor(_run_hook(fn, name, resid.clone(), hook, pos, clean), name, resid.shape, "batch pos d_model")
        if not torch.equal(clean, clean_before):
            raise CheckFailed("your hook changed clean_resid: write into the activation it is given, not into the clean one")
        want = ref.copy_index(resid.clone(), hook, (pos,), clean)
        every, later, batch, before = resid.clone(), resid.clone(), resid.clone(), resid.clone()
        every[:] = clean
        later[:, pos:] = clean[:, pos:]
        batch[pos] = clean[pos]
        before[:, pos - 1] = clean[:, pos - 1]
        reject_known_mistakes(got, [
            (resid, "nothing changed: assign clean_resid[:, pos] into resid[:, pos] (and return resid)"),
            (every, "you replaced every position: patch only position `pos`, resid[:, pos]"),
            (later, "you replaced position `pos` and every later one: patch only resid[:, pos]"),
            (batch, "you indexed the batch axis: the residual stream is (batch, pos, d_model), so use resid[:, pos]"),
            (before, "off by one: you patched position pos - 1"),
        ], want)
        expect_close(got, want, name, hint="copy clean_resid[:, pos] into resid[:, pos] and return resid")
    passed(name)


def patch_resid_nnsight(fn: Callable) -> None:
    """Exercise 2: the same patch as an nnsight trace, returning the patched logits."""
    __tracebackhide__ = True
    from nnsight import NNsight

    name = "patch_resid_nnsight"
    model = _tiny()
    clean, corrupted, clean_cache, _ = _caches(model)
    traced = NNsight(model)

    def tl_patch(layer: int, positions) -> Tensor:
        def hook(resid: Tensor, hook: HookPoint) -> Tensor:
            resid[:, positions] = clean_cache[hook.name][:, positions]
            return resid

        with torch.no_grad():
            return model.run_with_hooks(corrupted, fwd_hooks=[(get_act_name("resid_pre", layer), hook)])

    for layer, pos in ((1, 1), (0, 3)):
        out = call_student(fn, name, traced, corrupted, clean_cache, layer, pos)
        if not isinstance(out, Tensor):
            raise CheckFailed(
                f"`{name}` should return the logits as a torch.Tensor, but returned a {type(out).__name__}: "
                "save them inside the trace, logits = nn_model.output.save(), and return logits"
            )
        got = expect_tensor(out, name, (*corrupted.shape, D_VOCAB), "batch pos d_vocab")
        want = tl_patch(layer, [pos])
        with torch.no_grad():
            unpatched = model(corrupted)
        reject_known_mistakes(got, [
            (unpatched, "these are the corrupted run's logits: assign into the hook point's output inside the trace, "
                        "nn_model.blocks[layer].hook_resid_pre.output[:, pos] = clean_cache['resid_pre', layer][:, pos]"),
            (tl_patch(layer + 1, [pos]), "you patched one layer too late: blocks[layer].output is the stream after the block "
                                         "(resid_post); resid_pre is blocks[layer].hook_resid_pre.output"),
            (tl_patch(layer, slice(None)), "you patched every position: index the output with [:, pos]"),
        ], want, atol=1e-4)
        expect_close(got, want, name, hint="patch blocks[layer].hook_resid_pre.output[:, pos] in the corrupted run")
    passed(name, "the nnsight trace and the TransformerLens hook give the same logits")


def resid_patching_loop(fn: Callable, patch_hook: Callable) -> None:
    """Exercise 3: one forward pass per (layer, position), with the hook from exercise 1."""
    __tracebackhide__ = True
    name = "resid_patching_loop"
    model = _tiny()
    clean, corrupted, clean_cache, _ = _caches(model)
    layers, positions = [0, 2], [1, 3, 4]
    got = expect_tensor(
        call_student(fn, name, model, corrupted, clean_cache, _metric, layers, positions, patch_hook),
        name, (len(layers), len(positions)), "layer pos",
    )
    with torch.no_grad():
        _, target_cache = model.run_with_cache(corrupted)
    cells = [(layer, pos) for layer in layers for pos in positions]

    def sweep(activation: str) -> Tensor:
        patches = [(get_act_name(activation, layer), (pos,)) for layer, pos in cells]
        return ref.run_patches(model, target_cache, clean_cache, _metric, patches, progress=False).view(got.shape)

    def leaking() -> Tensor:
        results = []
        for n in range(1, len(cells) + 1):
            hooks = [(get_act_name("resid_pre", layer), lambda r, hook, pos=pos: ref.copy_index(r, hook, (pos,), clean_cache[hook.name]))
                     for layer, pos in cells[:n]]
            with torch.no_grad():
                results.append(_metric(model.run_with_hooks(corrupted, fwd_hooks=hooks)))
        return torch.stack(results).view(got.shape)

    want = sweep("resid_pre")
    reject_known_mistakes(got, [
        (sweep("resid_post"), "you patched resid_post: the sweep patches the stream *entering* each layer, "
                              "utils.get_act_name('resid_pre', layer)"),
        (leaking(), "your patches accumulate: each run must carry one patch only; use model.run_with_hooks, "
                    "which removes its hooks afterwards (add_hook without reset_hooks keeps them)"),
    ], want)
    expect_close(got, want, name, hint="for each layer and position, run the corrupted tokens with one hook on "
                 "resid_pre of that layer and record metric(logits)")
    passed(name)


def patch_pattern_hook(fn: Callable) -> None:
    """Exercise 4: a hook that patches one head's attention pattern."""
    __tracebackhide__ = True
    name = "patch_pattern_hook"
    generator = torch.Generator().manual_seed(2)
    for head in (1, 3):
        pattern = torch.rand(2, 4, 5, 5, generator=generator).softmax(-1)
        clean = torch.rand(2, 4, 5, 5, generator=generator).softmax(-1)
        hook = _hook("blocks.0.attn.hook_pattern")
        got = expect_tensor(_run_hook(fn, name, pattern.clone(), hook, head, clean), name, pattern.shape, "batch head q k")
        want = ref.copy_index(pattern.clone(), hook, (head,), clean)
        query_axis, every = pattern.clone(), clean.clone()
        query_axis[:, :, head] = clean[:, :, head]
        reject_known_mistakes(got, [
            (pattern, "nothing changed: assign clean_pattern[:, head] into pattern[:, head] (and return pattern)"),
            (query_axis, "you indexed the query axis: patterns are (batch, head, query, key) — the head axis is 1, "
                         "unlike hook_z's (batch, pos, head, d_head)"),
            (every, "you replaced every head's pattern: patch only pattern[:, head]"),
        ], want)
        expect_close(got, want, name, hint="pattern[:, head] = clean_pattern[:, head]")
    passed(name)


def _as_heads(value: Any, name: str, key: str) -> set[Head]:
    __tracebackhide__ = True
    try:
        return {(int(layer), int(head)) for layer, head in value}
    except (TypeError, ValueError):
        raise CheckFailed(f"`{name}`['{key}'] should be a list of (layer, head) pairs.") from None


def necessary_and_sufficient(fn: Callable) -> None:
    """Exercise 5: sufficient heads from denoising, necessary heads from noising."""
    __tracebackhide__ = True
    name = "necessary_and_sufficient"
    denoised = torch.tensor([[float("nan")] * 4, [0.02, 0.35, -0.30, 0.10], [0.25, 0.05, 0.60, -0.01]])
    noised = torch.tensor([[float("nan")] * 4, [0.95, 0.55, 1.30, 0.70], [0.98, 1.01, 0.40, 0.90]])
    threshold = 0.2
    out = call_student(fn, name, denoised.clone(), noised.clone(), threshold)
    if not isinstance(out, dict) or set(out) != {"sufficient", "necessary"}:
        raise CheckFailed(f"`{name}` should return a dict with the keys 'sufficient' and 'necessary'.")
    got = {key: _as_heads(out[key], name, key) for key in out}
    want = {key: set(value) for key, value in ref.necessary_and_sufficient(denoised, noised, threshold).items()}
    if got == {"sufficient": want["necessary"], "necessary": want["sufficient"]}:
        raise CheckFailed("you swapped them: denoising (clean into corrupted) tests sufficiency, noising "
                          "(corrupted into clean) tests necessity")
    if got["necessary"] != want["necessary"] and got["necessary"] in (
        {tuple(h) for h in (noised <= threshold).nonzero().tolist()},
        {tuple(h) for h in (noised >= threshold).nonzero().tolist()},
    ):
        raise CheckFailed("noising starts from the clean run (1): a necessary head is one whose corruption "
                          "lowers the metric by at least the threshold, 1 - noised >= threshold")
    if (1, 2) in got["sufficient"] or (1, 2) in got["necessary"]:
        raise CheckFailed("a head whose clean value makes things worse (negative denoising, noising above 1) is "
                          "neither sufficient nor necessary: do not take absolute values")
    if any(layer == 0 for heads in got.values() for layer, _ in heads):
        raise CheckFailed("layer 0 was not swept (NaN): NaN compares False, so keep comparisons as >= threshold")
    for key in ("sufficient", "necessary"):
        if got[key] != want[key]:
            raise CheckFailed(f"your {key} heads are {sorted(got[key])}, expected {sorted(want[key])}")
    passed(name)


def path_patch(fn: Callable) -> None:
    """Exercise 6: path patching into the receivers' queries, keys or values, in a grouped-query model."""
    __tracebackhide__ = True
    name = "path_patch"
    model = _tiny(n_key_value_heads=2)  # 4 query heads share 2 key/value heads: head h reads kv head h // 2
    _, _, clean_cache, corrupted_cache = _caches(model)
    senders = [(0, 1), (1, 2)]
    for receivers in ([(2, 1)], [(2, 0), (2, 3)]):
        for receiver_input in ("q", "k", "v"):
            try:
                out = call_student(fn, name, model, clean_cache, corrupted_cache, _metric, senders, receivers, receiver_input)
            except IndexError:
                raise CheckFailed(
                    f"an IndexError with receiver_input='{receiver_input}': in a grouped-query model hook_k and hook_v "
                    "have n_key_value_heads heads; query head h reads key/value head h // (n_heads // n_key_value_heads)"
                ) from None
            got = expect_number(out, name)
            want = ref.path_patch(model, clean_cache, corrupted_cache, _metric, senders, receivers, receiver_input).item()
            same_index = [(layer, head * 2 if receiver_input != "q" else head) for layer, head in receivers if head * 2 < 4]
            wrongs = {
                "you patched the wrong key/value head: query head h reads kv head h // group, with "
                "group = n_heads // n_key_value_heads":
                    ref.path_patch(model, clean_cache, corrupted_cache, _metric, senders, same_index, receiver_input).item()
                    if receiver_input != "q" and same_index else None,
                "you patched the senders' outputs and let every other head recompute (activation patching): path "
                "patching freezes every other head at its clean output in the first run":
                    _activation_patch(model, clean_cache, corrupted_cache, senders).item(),
            }
            for message, wrong in wrongs.items():
                if wrong is not None and abs(got - wrong) < 1e-4 and abs(got - want) > 1e-4:
                    raise CheckFailed(message)
            if abs(got - want) > 1e-4:
                raise CheckFailed(
                    f"with receiver_input='{receiver_input}' and receivers {receivers} you got {got:.4f}, expected "
                    f"{want:.4f}: run 1 freezes every head but the senders and records the receivers' hook_"
                    f"{receiver_input}; run 2 is the clean run with only those replaced"
                )
    passed(name, "queries, keys and values, with grouped-query attention")


def _activation_patch(model: HookedTransformer, clean_cache: ActivationCache, corrupted_cache: ActivationCache,
                      heads: list[Head]) -> Tensor:
    def patch(z: Tensor, hook: HookPoint) -> Tensor:
        for layer, head in heads:
            if layer == hook.layer():
                z[:, :, head] = corrupted_cache[hook.name][:, :, head]
        return z

    with torch.no_grad():
        return _metric(model.run_with_hooks(clean_cache["resid_pre", 0], start_at_layer=0,
                                            fwd_hooks=[(lambda n: n.endswith("hook_z"), patch)]))


def attribution_patch_heads(fn: Callable) -> None:
    """Exercise 7: attribution patching of every head's output (denoising)."""
    __tracebackhide__ = True
    name = "attribution_patch_heads"
    model = _tiny()
    clean, corrupted = _tokens()
    got = expect_tensor(
        call_student(fn, name, model, clean, corrupted, _metric), name,
        (model.cfg.n_layers, model.cfg.n_heads), "layer head",
    )
    model.zero_grad(set_to_none=True)
    want = ref.attribution_patch(model, clean, corrupted, _metric, "z")
    with torch.no_grad():
        base, clean_value = _metric(model(corrupted)), _metric(model(clean))
    noise = ref.attribution_patch(model, clean, corrupted, _metric, "z", direction="noise")
    reject_known_mistakes(got, [
        (want - base, "you returned the estimated change only: add the corrupted run's metric, so the estimate "
                      "is comparable with activation patching"),
        (2 * base - want, "your sign is flipped: the change is (clean − corrupted) activation · gradient"),
        (base - (noise - clean_value), "you took the gradient in the clean run: for denoising it is taken in the "
                                       "corrupted run, where the patch happens"),
    ], want, atol=1e-4)
    expect_close(got, want, name, atol=1e-4, hint="metric(corrupted) + sum over batch, position and d_head of "
                 "(clean_z − corrupted_z) · ∂metric/∂z, the gradient taken in the corrupted run")
    passed(name)


def ablate_head(fn: Callable) -> None:
    """Exercise 8: zero, mean and resample ablation of one head."""
    __tracebackhide__ = True
    name = "ablate_head"
    generator = torch.Generator().manual_seed(3)
    z = torch.randn(4, 5, 3, 2, generator=generator) + 1.0
    reference = torch.randn(6, 5, 3, 2, generator=generator) - 1.0
    perm = torch.tensor([5, 2, 0, 3])
    hook, head = _hook("blocks.0.attn.hook_z"), 1
    for method in ("zero", "mean", "resample"):
        got = expect_tensor(_run_hook(fn, name, z.clone(), hook, head, method, reference, perm), name, z.shape,
                            "batch pos head d_head")
        want = ref.ablate_head(z.clone(), hook, head, method, reference, perm)

        def replaced(value: Tensor) -> Tensor:
            out = z.clone()
            out[:, :, head] = value
            return out

        reject_known_mistakes(got, [
            (z, f"{method}: nothing changed — replace z[:, :, head] and return z"),
            (replaced(reference[:, :, head].mean((0, 1), keepdim=True).squeeze(0)),
             "mean: you averaged over positions too; the mean is over the reference prompts only, one value per position"),
            (replaced(z[:, :, head].mean(0)), "mean: you averaged this batch's own outputs; take the mean over reference_z"),
            (replaced(torch.zeros(())), f"{method}: you zeroed the head; {method} ablation replaces it with "
                                        + ("its mean output" if method == "mean" else "another prompt's output")),
            (replaced(reference[: len(z), :, head]), "resample: prompt i takes the output of reference prompt perm[i], "
                                                     "not of reference prompt i"),
            (replaced(z[perm.clamp(max=len(z) - 1), :, head]), "resample: take the outputs from reference_z, not from z"),
        ], want)
        expect_close(got, want, name, hint=f"{method} ablation of head {head}")
    passed(name)
