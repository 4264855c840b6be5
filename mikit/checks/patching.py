"""Checks for notebook 03 (activation patching): each compares a student function with `mikit.patching`.

The mechanics are checked on tiny random transformers built here (3 layers, one of them with
grouped-query attention), so a check takes a fraction of a second and holds in either mode; the
notebook then runs the student's functions on the real model. Under the grader (`hidden_variant`)
the transformers have other weights, layers and heads, the prompts other tokens and lengths.
Models, caches and the nnsight wrapper are `@recipe`s, so the student's kernel rebuilds the same ones.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any, Callable

import torch
from torch import Tensor
from transformer_lens import ActivationCache, HookedTransformer, HookedTransformerConfig
from transformer_lens.hook_points import HookPoint
from transformer_lens.utilities import get_act_name

from mikit import core
from mikit import patching as ref
from mikit.core import Head
from mikit.checks import (
    CheckFailed, Exercise, call_student, expect_close, expect_number, expect_no_hooks_left, expect_tensor, hidden,
    hook_point, passed, reject_known_mistakes, reveal, seeded, size,
)
from mikit.hidden import recipe

D_VOCAB = 40
# Path patching's effects in these random models are small (one path through q moves the notebook's metric by
# 1.3e-4), and a correct solution repeats the reference's operations (differences of 0 to 1e-7): 1e-5 tells
# them apart where 1e-4 could not.
PATH_ATOL = 1e-5


def _seed(seed: int) -> int:
    """`seed` in the notebook; under the grader another one (small enough for numpy, which TL seeds too)."""
    return seeded(seed).initial_seed() % 2**31


@recipe
@lru_cache(maxsize=8)
def _tiny(
    n_key_value_heads: int | None = None, seed: int = 7, n_layers: int = 3, n_heads: int = 4,
    initializer_range: float = -1.0,
) -> HookedTransformer:
    cfg = HookedTransformerConfig(
        n_layers=n_layers, d_model=32, n_heads=n_heads, d_head=8, d_mlp=64, d_vocab=D_VOCAB, n_ctx=16, act_fn="gelu",
        normalization_type="LN", n_key_value_heads=n_key_value_heads, seed=seed, device="cpu",
        initializer_range=initializer_range,  # -1: TransformerLens's default, 0.8 / sqrt(d_model)
    )
    return HookedTransformer(cfg).eval()


def _model(n_key_value_heads: int | None = None) -> HookedTransformer:
    """The check's transformer: 3 layers × 4 heads in the notebook; other weights and sizes under the grader."""
    if not hidden():
        return _tiny(n_key_value_heads, seed=7, n_layers=3, n_heads=4)
    # Larger weights than TransformerLens's default: sharper attention, so that a path through queries or
    # keys moves the metric by far more than the checks' tolerance in every variant (at the default scale
    # some paths move it by 1e-5). Heads stay even for the grouped-query model's 2 kv heads.
    return _tiny(n_key_value_heads, seed=_seed(7), n_layers=size(3), n_heads=size(4, 2), initializer_range=0.5)


def _tokens(batch: int = 3, pos: int = 6, seed: int = 11) -> tuple[Tensor, Tensor]:
    """Clean and corrupted prompts (3 × 6 in the notebook) that differ at positions 1 and 3."""
    generator = torch.Generator().manual_seed(seed)
    clean = torch.randint(0, D_VOCAB, (batch, pos), generator=generator)
    corrupted = clean.clone()
    corrupted[:, 1] = (clean[:, 1] + 1) % D_VOCAB
    corrupted[:, 3] = (clean[:, 3] + 5) % D_VOCAB
    return clean, corrupted


def _prompts() -> tuple[int, int, int]:
    """(batch, pos, seed) of the check's prompts."""
    return size(3), size(6), _seed(11)


def _metric(logits: Tensor) -> Tensor:
    return logits[:, -1, 7].mean() - logits[:, -1, 3].mean()


@recipe
def _caches(
    model: HookedTransformer, batch: int = 3, pos: int = 6, seed: int = 11
) -> tuple[Tensor, Tensor, ActivationCache, ActivationCache]:
    clean, corrupted = _tokens(batch, pos, seed)
    with torch.no_grad():
        _, clean_cache = model.run_with_cache(clean)
        _, corrupted_cache = model.run_with_cache(corrupted)
    return clean, corrupted, clean_cache, corrupted_cache


@recipe
def _traced(model: HookedTransformer) -> Any:
    """`model` wrapped for nnsight, as the notebook's `nn_model`."""
    from nnsight import NNsight

    return NNsight(model)


def _run_hook(fn: Callable, name: str, activation: Tensor, *args: Any) -> Tensor:
    """What a TransformerLens hook leaves: its return value, or the activation it edited in place."""
    __tracebackhide__ = True
    out = call_student(fn, name, activation, *args)
    return activation if out is None else out


def _patched_metric(model: HookedTransformer, tokens: Tensor, hooks: list, metric: Callable | None = None) -> float:
    """`metric` (the check's by default) of a run of `tokens` with `hooks` attached for that run only."""
    with torch.no_grad():
        return float((metric or _metric)(model.run_with_hooks(tokens, fwd_hooks=hooks)))


def _copy_from(cache: ActivationCache, index: tuple) -> Callable:
    """A hook that copies `cache[hook.name][:, *index]` into the activation."""
    where = (slice(None), *index)

    def hook(activation: Tensor, hook: HookPoint) -> Tensor:
        activation[where] = cache[hook.name][where]
        return activation

    return hook


def _reference_patches(model: HookedTransformer, corrupted_cache: ActivationCache, clean_cache: ActivationCache,
                       patches: list[tuple[str, tuple]]) -> Tensor:
    """mikit.patching's metric for each `(hook name, index)` patch of the corrupted run, one at a time."""
    return ref.run_patches(model, corrupted_cache, clean_cache, _metric, patches, progress=False)


def _reject_numbers(got: list[float], want: list[float], wrongs: list[tuple[list[float], str]], atol: float) -> None:
    """`reject_known_mistakes` for a few numbers: fail with the message of the mistake `got` reproduces."""
    __tracebackhide__ = True
    reject_known_mistakes(torch.tensor(got), [(torch.tensor(wrong), message) for wrong, message in wrongs],
                          torch.tensor(want), atol=atol)


def _expect_metric(out: Any, name: str) -> float:
    """The student's result as one number, with a sentence for logits returned instead of the metric."""
    __tracebackhide__ = True
    if isinstance(out, Tensor) and out.numel() > 1:
        raise CheckFailed(
            f"`{name}` returned a tensor of shape {tuple(out.shape)}: return the metric of the patched run, "
            "metric(logits), one number, not the logits"
        )
    return expect_number(out, name)


def _close(got: float, want: float) -> bool:
    """Whether a student's metric matches the reference's (a full run against the engine's run from the layer)."""
    return abs(got - want) <= 1e-5 + 1e-4 * abs(want)


def patch_resid(fn: Callable) -> None:
    """Exercise 1: one residual-stream patch end to end: the metric of the corrupted run with one position patched."""
    __tracebackhide__ = True
    name = "patch_resid"
    model = _model()
    clean, corrupted, clean_cache, corrupted_cache = _caches(model, *_prompts())
    last, n_pos = model.cfg.n_layers - 1, corrupted.shape[1]
    # The first case tells every mistake below apart: position 3 differs between the runs at every layer (so the layer
    # before is no no-op), the last layer reads it (so resid_post is no no-op), and positions 3 and later are not the
    # whole run. Position 3 is no batch index of the notebook's 3 prompts: indexing the batch axis raises there.
    for layer, pos in ((last - 1, 3), (0, 1), (last, n_pos - 2)):
        resid_pre = get_act_name("resid_pre", layer)
        before = clean_cache[resid_pre].clone()
        try:
            out = call_student(fn, name, model, corrupted, clean_cache, layer, pos, _metric)
        except IndexError as err:
            raise CheckFailed(
                f"your function raised IndexError ({err}): the residual stream is (batch, pos, d_model), so position "
                "`pos` is on axis 1, the activation's [:, pos], not on the batch axis"
            ) from None
        expect_no_hooks_left(model, name)
        if not torch.equal(clean_cache[resid_pre], before):
            raise CheckFailed("your function changed clean_cache: write into the activation the hook is given, never "
                              "into the clean cache, which every later patch reads")
        got = _expect_metric(out, name)
        want = _reference_patches(model, corrupted_cache, clean_cache, [(resid_pre, (pos,))]).item()
        if _close(got, want):
            continue

        def run(hook_name: str, index: tuple) -> float:
            return _patched_metric(model, corrupted, [(hook_name, _copy_from(clean_cache, index))])

        def batch_axis(resid: Tensor, hook: HookPoint) -> Tensor:
            resid[pos] = clean_cache[hook.name][pos]
            return resid

        wrongs = [
            ([_patched_metric(model, corrupted, [])],
             "nothing changed: this is the corrupted run's metric; the hook must copy the clean value into position "
             "`pos` of the activation it is given (and return it)"),
            # Patching every position of resid_pre gives the clean run itself, so both mistakes give this number.
            ([_patched_metric(model, clean, [])],
             "this is the clean run's metric: you replaced every position (or ran the clean prompts); run the corrupted "
             "tokens and patch only position `pos`, the activation's [:, pos]"),
            ([run(resid_pre, (slice(pos, None),))],
             "you replaced position `pos` and every later one: patch only the activation's [:, pos]"),
            ([run(get_act_name("resid_post", layer), (pos,))],
             "you patched one layer too late: resid_post of layer `layer` is the stream leaving the block; the patch "
             "goes on the stream entering it, get_act_name('resid_pre', layer)"),
        ]
        if pos < corrupted.shape[0]:
            wrongs.append(([_patched_metric(model, corrupted, [(resid_pre, batch_axis)])],
                           "you indexed the batch axis: the residual stream is (batch, pos, d_model), so the position "
                           "is axis 1, [:, pos]"))
        if layer > 0:
            wrongs.append(([run(get_act_name("resid_pre", layer - 1), (pos,))],
                           "you patched one layer too early: the patch goes on resid_pre of layer `layer`"))
        _reject_numbers([got], [want], wrongs, atol=1e-6)
        raise CheckFailed(
            f"`{name}` gave {got:.5f}" + reveal(f" for layer {layer}, position {pos}, expected {want:.5f}")
            + ": run the corrupted tokens with one hook on resid_pre of `layer` that copies the clean stream at "
            "`pos` (every prompt), and return metric(logits)"
        )
    # Under the grader the student's kernel takes left-over hooks off itself: only the notebook's check sees them.
    passed(name, "one patch" + reveal(", and the model is left without hooks"))


def patch_resid_nnsight(fn: Callable) -> None:
    """Exercise 2: the same patch as an nnsight trace, returning the patched logits."""
    __tracebackhide__ = True
    name = "patch_resid_nnsight"
    model = _model()
    clean, corrupted, clean_cache, _ = _caches(model, *_prompts())
    traced = _traced(model)

    def tl_patch(layer: int, positions) -> Tensor:
        def hook(resid: Tensor, hook: HookPoint) -> Tensor:
            resid[:, positions] = clean_cache[hook.name][:, positions]
            return resid

        with torch.no_grad():
            return model.run_with_hooks(corrupted, fwd_hooks=[(get_act_name("resid_pre", layer), hook)])

    for layer, pos in ((model.cfg.n_layers - 2, corrupted.shape[1] - 5), (0, 3)):
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


NO_OP = "a patch that cannot change anything"


def _patch_resid_once(model: HookedTransformer, corrupted_tokens: Tensor, clean_cache: ActivationCache, layer: int,
                      pos: int, metric: Callable) -> float:
    """Exercise 1's patch, as the loop's check hands it to the student's loop: it refuses to run a patch at a position
    before the first token where clean and corrupted prompts differ (there the two runs are identical)."""
    with torch.no_grad():
        embedded = model(corrupted_tokens, stop_at_layer=0)  # resid_pre of layer 0
    same = (embedded == clean_cache["resid_pre", 0]).all(-1).all(0)  # (pos,): this token is equal in every prompt
    first = int(same.logical_not().nonzero()[0]) if not same.all() else same.shape[0]
    if pos < first:
        raise ValueError(f"{NO_OP}: resid_pre of layer {layer} at position {pos}, before the first token where the "
                         f"prompts differ ({first})")
    hook = (get_act_name("resid_pre", layer), _copy_from(clean_cache, (pos,)))
    return _patched_metric(model, corrupted_tokens, [hook], metric)


def resid_patching_loop(fn: Callable) -> None:
    """Exercise 3: the sweep over layers and positions, skipping the patches that cannot change anything."""
    __tracebackhide__ = True
    name = "resid_patching_loop"
    model = _model()
    clean, corrupted, clean_cache, corrupted_cache = _caches(model, *_prompts())
    n_layers, n_pos = model.cfg.n_layers, corrupted.shape[1]
    # Out of order, so that a table filled by index or sorted shows: layer 0 is not in `layers` and position 2 not in
    # `positions`; position 0 comes before the first token where the prompts differ.
    layers, positions = [n_layers - 1, n_layers - 2], [n_pos - 2, 0, 3, 1]
    try:
        out = call_student(fn, name, model, corrupted, clean_cache, _metric, layers, positions, _patch_resid_once)
    except ValueError as err:
        if NO_OP not in str(err):
            raise
        layer, pos = (int(n) for n in re.search(r"layer (\d+) at position (\d+)", str(err)).groups())
        if layer not in layers or pos not in positions:
            raise CheckFailed(
                "you patched at the index of an entry instead of its value" + reveal(f" (layer {layer}, position {pos})")
                + ": the patch for row i and column j is at layer layers[i] and position positions[j]"
            ) from None
        raise CheckFailed(
            "you ran a patch that cannot change anything" + reveal(f" (layer {layer}, position {pos})")
            + ": where the clean and corrupted residual streams are equal at that layer and position (every position "
            "before the first token where the prompts differ), skip the patch and record the corrupted run's own metric"
        ) from None
    got = expect_tensor(out, name, (len(layers), len(positions)), "layer pos")
    cells = [(layer, pos) for layer in layers for pos in positions]

    def sweep(cells: list[tuple[int, int]], activation: str = "resid_pre") -> Tensor:
        patches = [(get_act_name(activation, layer), (pos,)) for layer, pos in cells]
        return _reference_patches(model, corrupted_cache, clean_cache, patches).view(got.shape)

    want = sweep(cells)
    if torch.allclose(got, want, atol=1e-4, rtol=1e-3):
        passed(name, "the patches that cannot change anything were skipped")
        return
    # The patches a loop skips: those equal in both runs at that layer and position (in these layers, exactly those
    # before the first token where the prompts differ).
    skipped = torch.tensor([[torch.equal(clean_cache["resid_pre", layer][:, pos], corrupted_cache["resid_pre", layer][:, pos])
                             for pos in positions] for layer in layers])
    reject_known_mistakes(got, [
        (want.masked_fill(skipped, 0.0), "a skipped patch's result is the corrupted run's own metric (what the patch "
                                         "would have given), not 0: measure the corrupted run once"),
        (torch.full_like(want, _patched_metric(model, corrupted, [])),
         "every entry is the corrupted run's metric: you skipped patches that change the run; skip only where the clean "
         "and corrupted streams are equal"),
        (sweep([(i, j) for i in range(len(layers)) for j in range(len(positions))]),
         "you patched at the index of each entry (i, j) instead of its value: the patch for row i and column j is at "
         "layer layers[i] and position positions[j]"),
        (sweep(cells, "resid_post"), "you patched resid_post: the sweep patches the stream *entering* each layer"),
    ], want)
    expect_close(got, want, name, hint="entry [i, j] is the metric of the corrupted run patched at layer layers[i] and "
                 "position positions[j] with the patch function you are given")


def _as_pair(out: Any, name: str) -> tuple[float, float]:
    __tracebackhide__ = True
    if isinstance(out, dict) or not isinstance(out, (tuple, list)) or len(out) != 2:
        raise CheckFailed(f"`{name}` should return a pair of numbers, (pattern, values), but returned "
                          f"a {type(out).__name__}" + (f" of length {len(out)}" if isinstance(out, (tuple, list)) else ""))
    return tuple(_expect_metric(value, name) for value in out)


def patch_pattern_and_values(fn: Callable) -> None:
    """Exercise 4: one head's attention pattern alone, then its values alone: where it looks vs what it moves."""
    __tracebackhide__ = True
    name = "patch_pattern_and_values"
    for n_key_value_heads in (None, 2):
        model = _model(n_key_value_heads)
        clean, corrupted, clean_cache, corrupted_cache = _caches(model, *_prompts())
        last, n_heads = model.cfg.n_layers - 1, model.cfg.n_heads
        n_kv = model.cfg.n_key_value_heads or n_heads
        group = n_heads // n_kv
        # Head 1 of the grouped-query model reads kv head 0 but is a valid kv index itself; head n_heads - 1 is not.
        cases = [(last - 1, 2)] if n_key_value_heads is None else [(last, 1), (1, n_heads - 1)]
        for layer, head in cases:
            try:
                out = call_student(fn, name, model, corrupted, clean_cache, layer, head, _metric)
            except IndexError:
                raise CheckFailed(
                    "an IndexError in a grouped-query model: hook_v has n_key_value_heads heads, and query head h "
                    "reads value head h // (n_heads // n_key_value_heads)"
                ) from None
            expect_no_hooks_left(model, name)
            got = list(_as_pair(out, name))
            pattern_name, v_name = get_act_name("pattern", layer), get_act_name("v", layer)
            kv = head // group
            want = _reference_patches(model, corrupted_cache, clean_cache,
                                      [(pattern_name, (head,)), (v_name, (slice(None), kv))]).tolist()

            def run(*hooks: tuple[str, tuple]) -> float:
                return _patched_metric(model, corrupted, [(hook_name, _copy_from(clean_cache, index))
                                                          for hook_name, index in hooks])

            pattern, values = want
            if _close(got[0], pattern) and _close(got[1], values):
                continue
            pattern_too = "your values run patched the head's pattern too: either the pattern run's hook stayed on " \
                "(each run must carry one patch only; run_with_hooks removes its hooks when it returns) or you patched " \
                "hook_z, the head's output, which is pattern and values together; patch only hook_v"
            wrong_kv = "values: you patched the wrong value head; query head h reads value head h // group, with " \
                "group = n_heads // n_key_value_heads (hook_v has n_key_value_heads heads)"
            wrongs = [
                ([values, pattern], "you swapped them: return (pattern, values), the pattern patch first"),
                ([_patched_metric(model, corrupted, [])] * 2, "nothing changed: both runs give the corrupted run's metric; each run needs "
                                         "one hook that copies the clean activation of head `head` into it"),
                ([run((pattern_name, ())), values], "pattern: you replaced every head's pattern; patch only head `head`"),
                ([pattern, run((v_name, ()))], "values: you replaced every value head; patch only the one head `head` reads"),
                ([pattern, run((pattern_name, (head,)), (v_name, (slice(None), kv)))], pattern_too),
                # Without grouped-query attention this is the same number as the mistake above.
                ([pattern, run((get_act_name("z", layer), (slice(None), head)))], pattern_too),
            ]
            if head < corrupted.shape[1]:
                wrongs.append(([run((pattern_name, (slice(None), head))), values],
                               "pattern: you indexed the query axis; patterns are (batch, head, query_pos, key_pos), "
                               "the head is axis 1"))
            for kv_index in (head, head % n_kv):
                if kv_index < n_kv and kv_index != kv:
                    wrongs.append(([pattern, run((v_name, (slice(None), kv_index)))], wrong_kv))
            _reject_numbers(got, want, wrongs, atol=1e-6)
            for label, g, w in (("pattern", got[0], pattern), ("values", got[1], values)):
                if not _close(g, w):
                    raise CheckFailed(
                        f"your {label} patch gave {g:.5f}" + reveal(f" for L{layer}H{head}, expected {w:.5f}")
                        + ("" if n_key_value_heads is None else " in the grouped-query model") + ": "
                        + ("copy the clean pattern of head `head` (axis 1 of hook_pattern) into the corrupted run"
                           if label == "pattern" else
                           "copy the clean values of value head head // group (axis 2 of hook_v) into the corrupted run")
                    )
    passed(name, "patterns and values, with grouped-query attention" + reveal(", and no hook left behind"))


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
    threshold, negative = 0.2, (1, 2)  # `negative`: a head whose clean value makes things worse, both ways
    if hidden():
        generator = seeded(5)
        layers, heads = size(3), size(4)
        threshold = size(3) / 16  # a power-of-two fraction: the boundary heads below hit it exactly
        denoised = torch.rand(layers, heads, generator=generator) * 0.8 - 0.1
        noised = torch.rand(layers, heads, generator=generator) * 0.8 + 0.3
        negative = (1, heads - 2)
        denoised[negative], noised[negative] = -threshold - 0.1, 1 + threshold + 0.1
        # sufficient but not necessary, so that swapping the two lists is always wrong
        denoised[layers - 1, 0], noised[layers - 1, 0] = threshold + 0.3, 1 - threshold / 2
        denoised[0], noised[0] = float("nan"), float("nan")
        # exactly at the threshold: "at least the threshold" includes it
        denoised[layers - 1, heads - 1], noised[layers - 1, heads - 1] = threshold, 1 - threshold
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
    if negative in got["sufficient"] or negative in got["necessary"]:
        raise CheckFailed("a head whose clean value makes things worse (negative denoising, noising above 1) is "
                          "neither sufficient nor necessary: do not take absolute values")
    if any(layer == 0 for heads in got.values() for layer, _ in heads):
        raise CheckFailed("layer 0 was not swept (NaN): NaN compares False, so keep comparisons as >= threshold")
    for key in ("sufficient", "necessary"):
        if got[key] != want[key]:
            raise CheckFailed(
                f"your {key} heads are wrong" + reveal(f": {sorted(got[key])}, expected {sorted(want[key])}")
                + ("; sufficient: denoised >= threshold" if key == "sufficient" else "; necessary: 1 - noised >= threshold")
            )
    passed(name)


def path_patch(fn: Callable) -> None:
    """Exercise 6: path patching into the receivers' queries, keys or values, in a grouped-query model."""
    __tracebackhide__ = True
    name = "path_patch"
    model = _model(n_key_value_heads=2)  # in the notebook 4 query heads share 2 kv heads: head h reads kv head h // 2
    _, _, clean_cache, corrupted_cache = _caches(model, *_prompts())
    last, n_heads, n_kv = model.cfg.n_layers - 1, model.cfg.n_heads, model.cfg.n_key_value_heads
    group = n_heads // n_kv
    senders = [(0, 1), (last - 1, 2)]
    # Head 1 reads kv head 0 but is a valid kv index itself, so the usual indexing mistakes give other numbers.
    for receivers in ([(last, 1)], [(last, 0), (last, n_heads - 1)]):
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
            wrong_kv = "you patched the wrong key/value head: query head h reads kv head h // group, with " \
                "group = n_heads // n_key_value_heads"
            wrongs = [(
                _activation_patch(model, clean_cache, corrupted_cache, senders).item(),
                "you patched the senders' outputs and let every other head recompute (activation patching): path "
                "patching freezes every other head at its clean output in the first run",
            )]
            if receiver_input != "q":
                # kv head h (the query head's own index) or h % n_kv instead of h // group; the reference patches
                # kv head h' // group of a receiver h', so receiver kv * group stands for kv head `kv`.
                for kv_index in (lambda head: head, lambda head: head % n_kv):
                    if all(kv_index(head) < n_kv for _, head in receivers):
                        wrong = [(layer, kv_index(head) * group) for layer, head in receivers]
                        wrongs.append((
                            ref.path_patch(model, clean_cache, corrupted_cache, _metric, senders, wrong, receiver_input)
                            .item(), wrong_kv,
                        ))
            for wrong, message in wrongs:
                if abs(got - wrong) < PATH_ATOL and abs(got - want) > PATH_ATOL:
                    raise CheckFailed(message)
            if abs(got - want) > PATH_ATOL:
                raise CheckFailed(
                    f"with receiver_input='{receiver_input}'" + reveal(f" and receivers {receivers}")
                    + f" you got {got:.4f}" + reveal(f", expected {want:.4f}") + ": run 1 freezes every head but the "
                    f"senders and records the receivers' hook_{receiver_input}; run 2 is the clean run with only those "
                    "replaced"
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
    model = _model()
    clean, corrupted = _tokens(*_prompts())
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
    generator = seeded(3)
    batch, pos, heads, d_head, n_reference = size(4), size(5), size(3), size(2), size(6)
    z = torch.randn(batch, pos, heads, d_head, generator=generator) + 1.0
    reference = torch.randn(n_reference, pos, heads, d_head, generator=generator) - 1.0
    perm = torch.tensor([5, 2, 0, 3])
    if hidden():  # a random permutation, never the first prompts in order (that is a mistake the check names)
        perm = torch.randperm(n_reference, generator=generator)[:batch]
        if torch.equal(perm, torch.arange(batch)):
            perm = perm.flip(0)
    hook, head = hook_point("blocks.0.attn.hook_z"), heads - 2
    for method in ("zero", "mean", "resample"):
        got = expect_tensor(_run_hook(fn, name, z.clone(), hook, head, method, reference, perm), name, z.shape,
                            "batch pos head d_head")
        want = core.ablate_head(z.clone(), hook, head, method, reference_z=reference, perm=perm)

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
        expect_close(got, want, name, hint=f"{method} ablation" + reveal(f" of head {head}"))
    passed(name)


EXERCISES = {
    "patch_resid": Exercise(patch_resid, ("patch_resid",), forbidden=(ref.run_patches, ref._forward, ref.copy_index)),
    "patch_resid_nnsight": Exercise(patch_resid_nnsight, ("patch_resid_nnsight",), forbidden=(ref._forward,)),
    "resid_patching_loop": Exercise(
        resid_patching_loop, ("resid_patching_loop",),
        forbidden=(ref.patch_residual, ref.run_patches, ref._sweep, ref._forward),
    ),
    "patch_pattern_and_values": Exercise(
        patch_pattern_and_values, ("patch_pattern_and_values",),
        forbidden=(ref.patch_head_pattern, ref.patch_head_values, ref.run_patches, ref._sweep, ref._forward, ref.copy_index),
    ),
    "necessary_and_sufficient": Exercise(
        necessary_and_sufficient, ("necessary_and_sufficient",), forbidden=(ref.necessary_and_sufficient,)
    ),
    "path_patch": Exercise(path_patch, ("path_patch",), forbidden=(ref.path_patch, ref._path_patch_nnsight)),
    "attribution_patch_heads": Exercise(
        attribution_patch_heads, ("attribution_patch_heads",),
        forbidden=(ref.attribution_patch, ref._gradients_tl, ref._gradients_nnsight),
    ),
    "ablate_head": Exercise(ablate_head, ("ablate_head",), forbidden=(core.ablate_head,)),
}
