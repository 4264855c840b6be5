"""Activation patching, batched: many patches per forward pass, each pass starting at the patched layer.

    result = patch_head_out(model, clean_tokens, corrupted_tokens, metric, by_position=True)
    # (layer, pos, head): metric of the corrupted run with that one head output taken from the clean run

Every sweep runs the *target* prompts (the corrupted ones when denoising, the clean ones when
noising) with one activation index replaced by its value in the *source* run. It agrees with
`transformer_lens.patching` number for number, and it is faster for three reasons:

- **batching**: up to `batch_size` rows (prompts × patches) go through the model at once, each
  copy of the prompts carrying a different patch;
- **starting late**: a patch at layer L changes nothing before L, so the pass starts at L from the
  target run's cached `resid_pre` (`model(resid, start_at_layer=L)`);
- **skipping no-ops**: a patch that copies values equal to those already there (every position
  before the first token where clean and corrupted prompts differ) is not run.

Two backends run the same patches: `backend="tl"` (TransformerLens hooks, the default) and
`backend="nnsight"` (an nnsight trace over the same model), for every sweep, `path_patch` and
`attribution_patch`. `remote=True` hands the trace to
NDIF, where large models are hosted; NDIF runs Hugging Face models wrapped as nnsight
`LanguageModel`s, not a local HookedTransformer, so that path needs network, an NDIF key and such
a model (untested here: CI has no network).

`layers=[...]` restricts a sweep (the other layers' results are NaN), for coarse-to-fine searches.
`metric(logits)` maps the logits of one copy of the target prompts, `(batch, pos, d_vocab)`, to a
scalar, as in TransformerLens; with `metric_input="resid"` it gets the final residual stream instead
and can unembed only what it reads. Prompts must share their padding-free length or be right-padded
(no attention mask is applied).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Callable, Literal, Sequence

import torch
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm
from transformer_lens import ActivationCache, HookedTransformer
from transformer_lens.hook_points import HookPoint
from transformer_lens.utilities import get_act_name

from mikit.core import Head, hook_layer, module_at

Backend = Literal["tl", "nnsight"]
Metric = Callable[[Float[Tensor, "batch pos d_vocab"]], Float[Tensor, ""]]
Direction = Literal["denoise", "noise"]
Index = tuple  # indexes an activation after its batch axis: (pos,), (slice(None), head), ...

DIRECTIONS = ("denoise", "noise")


def _runs(
    model: HookedTransformer, clean_tokens: Tensor, corrupted_tokens: Tensor, direction: str, activation: str
) -> tuple[Tensor, ActivationCache, ActivationCache]:
    """The target tokens, the target run's resid_pre cache and the source run's cache of `activation`."""
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be 'denoise' (clean into corrupted) or 'noise' (corrupted into clean), not {direction!r}.")
    if clean_tokens.shape != corrupted_tokens.shape:
        raise ValueError(
            f"clean and corrupted tokens must have the same shape, not {tuple(clean_tokens.shape)} and "
            f"{tuple(corrupted_tokens.shape)}: patching swaps activations position by position."
        )
    target, source = (corrupted_tokens, clean_tokens) if direction == "denoise" else (clean_tokens, corrupted_tokens)
    with torch.inference_mode():
        _, target_cache = model.run_with_cache(target, names_filter=lambda name: name.endswith(("hook_resid_pre", f"hook_{activation}")))
        _, source_cache = model.run_with_cache(source, names_filter=lambda name: name.endswith(f"hook_{activation}"))
    return target, target_cache, source_cache


Setter = Callable[[Tensor, HookPoint, Index, Tensor], Tensor]


def copy_index(target: Tensor, hook: HookPoint, index: Index, source: Tensor) -> Tensor:
    """The default patch: copy `source[:, *index]` into `target[:, *index]`."""
    target[(slice(None), *index)] = source[(slice(None), *index)]
    return target


def _forward(
    model: HookedTransformer, resid: Tensor, layer: int, patches: dict[str, list[tuple[slice, Index]]],
    source_cache: ActivationCache, backend: str, remote: bool, setter: Setter, stop_at_layer: int | None,
) -> Tensor:
    """Output of a run from `layer` on `resid` with each `(rows, index)` of each hook patched from the source."""
    if backend == "tl":
        def patch(activation: Tensor, hook) -> Tensor:
            for rows, index in patches[hook.name]:
                activation[rows] = setter(activation[rows], hook, index, source_cache[hook.name])
            return activation

        with torch.inference_mode():
            return model.run_with_hooks(
                resid, start_at_layer=layer, stop_at_layer=stop_at_layer, fwd_hooks=[(name, patch) for name in patches]
            )
    from nnsight import NNsight

    traced = NNsight(model)
    # A local NNsight wrapper takes no `remote` argument; only pass it when asked to run remotely.
    with torch.inference_mode(), traced.trace(
        resid, start_at_layer=layer, stop_at_layer=stop_at_layer, **({"remote": True} if remote else {})
    ):
        # nnsight needs modules touched in execution order: by layer, then in the order given.
        for name in sorted(patches, key=lambda name: hook_layer(name)):
            activation = module_at(traced, name).output
            for rows, index in patches[name]:
                activation[(rows, *index)] = source_cache[name][(slice(None), *index)]
        logits = traced.output.save()
    return logits


def _copies_equal_values(
    target_cache: ActivationCache, source_cache: ActivationCache, name: str, index: Index, setter: Setter
) -> bool:
    """Whether a default patch would copy in what is already there (e.g. before the first differing token)."""
    if setter is not copy_index or name not in target_cache.cache_dict:
        return False
    where = (slice(None), *index)
    return torch.equal(target_cache[name][where], source_cache[name][where])


def run_patches(
    model: HookedTransformer,
    target_cache: ActivationCache,
    source_cache: ActivationCache,
    metric: Metric,
    patches: Sequence[tuple[str, Index]],
    *,
    batch_size: int = 256,
    progress: bool = True,
    backend: Backend = "tl",
    remote: bool = False,
    setter: Setter = copy_index,
    metric_input: Literal["logits", "resid"] = "logits",
) -> Float[Tensor, "patch"]:
    """The metric of the target run with each patch `(hook_name, index)` applied alone, in batches.

    A patch calls `setter(activation, hook, index, source_cache[hook_name])` on one copy of the target
    prompts; the default copies `source[:, *index]` in. A custom setter needs the TransformerLens backend.
    With `metric_input="resid"` the metric gets the final residual stream instead of the logits, so it
    can unembed only the positions and tokens it reads (the full unembedding of a 49k-token
    vocabulary is most of a late-layer pass). Where `target_cache` holds the patched activation too,
    patches that would copy identical values (positions before the first token where the prompts
    differ, under causal attention) are not run: their result is the unpatched metric.
    """
    if metric_input not in ("logits", "resid"):
        raise ValueError(f"metric_input must be 'logits' or 'resid', not {metric_input!r}.")
    if backend not in ("tl", "nnsight"):
        raise ValueError(f"backend must be 'tl' or 'nnsight', not {backend!r}.")
    if backend == "nnsight" and setter is not copy_index:
        raise ValueError("a custom setter runs as a TransformerLens hook: use backend='tl'.")
    if remote and backend != "nnsight":
        raise ValueError("remote=True runs on NDIF through nnsight: pass backend='nnsight' as well.")
    n_prompts = target_cache["resid_pre", 0].shape[0]
    per_pass = max(1, batch_size // n_prompts)
    stop = model.cfg.n_layers if metric_input == "resid" else None
    results = torch.empty(len(patches))
    by_layer: dict[int, list[int]] = defaultdict(list)
    no_ops = []
    for i, (name, index) in enumerate(patches):
        if _copies_equal_values(target_cache, source_cache, name, index, setter):
            no_ops.append(i)
        else:
            by_layer[hook_layer(name)].append(i)
    if no_ops:  # one unpatched pass through the last layer gives all their results
        last = model.cfg.n_layers - 1
        output = _forward(model, target_cache["resid_pre", last], last, {}, source_cache, backend, remote, setter, stop)
        results[no_ops] = metric(output).item()
    chunks = [(layer, ids[i : i + per_pass]) for layer, ids in sorted(by_layer.items()) for i in range(0, len(ids), per_pass)]
    for layer, ids in tqdm(chunks, desc="patching", disable=not progress, leave=False):
        hooks: dict[str, list[tuple[slice, Index]]] = defaultdict(list)
        for copy, i in enumerate(ids):
            name, index = patches[i]
            hooks[name].append((slice(copy * n_prompts, (copy + 1) * n_prompts), index))
        resid = target_cache["resid_pre", layer].repeat(len(ids), 1, 1)
        output = _forward(model, resid, layer, hooks, source_cache, backend, remote, setter, stop)
        for copy, i in enumerate(ids):
            results[i] = metric(output[copy * n_prompts : (copy + 1) * n_prompts]).item()
    return results


def _sweep(
    model: HookedTransformer, clean_tokens: Tensor, corrupted_tokens: Tensor, metric: Metric, activation: str,
    axes: dict[str, int], index_of: Callable[..., Index], *, direction: str, batch_size: int, progress: bool,
    layers: Sequence[int] | None, backend: Backend, remote: bool, metric_input: str,
) -> Tensor:
    """Patch every index of `activation` in `layers` (default all); one result axis per entry of `axes`, NaN elsewhere."""
    n_layers = axes["layer"]
    layers = range(n_layers) if layers is None else sorted(set(layers))
    if not all(isinstance(layer, int) and 0 <= layer < n_layers for layer in layers):
        raise ValueError(f"layers must be layer numbers from 0 to {n_layers - 1}, not {list(layers)}.")
    _, target_cache, source_cache = _runs(model, clean_tokens, corrupted_tokens, direction, activation)
    sizes = list(axes.values())
    grid = torch.cartesian_prod(torch.tensor(list(layers)), *[torch.arange(size) for size in sizes[1:]])
    grid = grid.view(-1, len(axes)).tolist()
    patches = [(get_act_name(activation, cell[0]), index_of(*cell[1:])) for cell in grid]
    results = torch.full(sizes, float("nan"))
    results[list(layers)] = run_patches(
        model, target_cache, source_cache, metric, patches, batch_size=batch_size, progress=progress,
        backend=backend, remote=remote, metric_input=metric_input,
    ).view(
        len(layers), *sizes[1:]
    )
    return results


def patch_residual(
    model: HookedTransformer, clean_tokens: Int[Tensor, "batch pos"], corrupted_tokens: Int[Tensor, "batch pos"],
    metric: Metric, component: Literal["resid_pre", "attn_out", "mlp_out"] = "resid_pre",
    *, direction: Direction = "denoise", batch_size: int = 256, progress: bool = True, layers: Sequence[int] | None = None,
    backend: Backend = "tl", remote: bool = False, metric_input: Literal["logits", "resid"] = "logits",
) -> Float[Tensor, "layer pos"]:
    """Patch one residual-stream component (`resid_pre`, `attn_out` or `mlp_out`) at one layer and position."""
    if component not in ("resid_pre", "attn_out", "mlp_out"):
        raise ValueError(f"component must be 'resid_pre', 'attn_out' or 'mlp_out', not {component!r}.")
    axes = {"layer": model.cfg.n_layers, "pos": clean_tokens.shape[1]}
    return _sweep(model, clean_tokens, corrupted_tokens, metric, component, axes, lambda pos: (pos,),
                  direction=direction, batch_size=batch_size, progress=progress, layers=layers, backend=backend,
                  remote=remote, metric_input=metric_input)


def patch_head_out(
    model: HookedTransformer, clean_tokens: Int[Tensor, "batch pos"], corrupted_tokens: Int[Tensor, "batch pos"],
    metric: Metric, *, by_position: bool = False, direction: Direction = "denoise", batch_size: int = 256,
    progress: bool = True, layers: Sequence[int] | None = None,
    backend: Backend = "tl", remote: bool = False, metric_input: Literal["logits", "resid"] = "logits",
) -> Float[Tensor, "layer head"] | Float[Tensor, "layer pos head"]:
    """Patch one head's output (`hook_z`) at all positions, or at one position with `by_position=True`."""
    n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads
    if by_position:
        axes = {"layer": n_layers, "pos": clean_tokens.shape[1], "head": n_heads}
        return _sweep(model, clean_tokens, corrupted_tokens, metric, "z", axes, lambda pos, head: (pos, head),
                      direction=direction, batch_size=batch_size, progress=progress, layers=layers, backend=backend,
                  remote=remote, metric_input=metric_input)
    axes = {"layer": n_layers, "head": n_heads}
    return _sweep(model, clean_tokens, corrupted_tokens, metric, "z", axes, lambda head: (slice(None), head),
                  direction=direction, batch_size=batch_size, progress=progress, layers=layers, backend=backend,
                  remote=remote, metric_input=metric_input)


def patch_head_pattern(
    model: HookedTransformer, clean_tokens: Int[Tensor, "batch pos"], corrupted_tokens: Int[Tensor, "batch pos"],
    metric: Metric, *, direction: Direction = "denoise", batch_size: int = 256, progress: bool = True,
    layers: Sequence[int] | None = None,
    backend: Backend = "tl", remote: bool = False, metric_input: Literal["logits", "resid"] = "logits",
) -> Float[Tensor, "layer head"]:
    """Patch one head's attention pattern (`hook_pattern`, all queries and keys)."""
    axes = {"layer": model.cfg.n_layers, "head": model.cfg.n_heads}
    return _sweep(model, clean_tokens, corrupted_tokens, metric, "pattern", axes, lambda head: (head,),
                  direction=direction, batch_size=batch_size, progress=progress, layers=layers, backend=backend,
                  remote=remote, metric_input=metric_input)


def patch_head_values(
    model: HookedTransformer, clean_tokens: Int[Tensor, "batch pos"], corrupted_tokens: Int[Tensor, "batch pos"],
    metric: Metric, *, direction: Direction = "denoise", batch_size: int = 256, progress: bool = True,
    layers: Sequence[int] | None = None,
    backend: Backend = "tl", remote: bool = False, metric_input: Literal["logits", "resid"] = "logits",
) -> Float[Tensor, "layer kv_head"]:
    """Patch one value head (`hook_v`, all positions); grouped-query models have fewer value heads than heads."""
    n_kv = model.cfg.n_key_value_heads or model.cfg.n_heads
    axes = {"layer": model.cfg.n_layers, "head": n_kv}
    return _sweep(model, clean_tokens, corrupted_tokens, metric, "v", axes, lambda head: (slice(None), head),
                  direction=direction, batch_size=batch_size, progress=progress, layers=layers, backend=backend,
                  remote=remote, metric_input=metric_input)



def attribution_patch(
    model: HookedTransformer, clean_tokens: Int[Tensor, "batch pos"], corrupted_tokens: Int[Tensor, "batch pos"],
    metric: Metric, activation: str = "z", *, by_position: bool = False, direction: Direction = "denoise",
    backend: Backend = "tl", remote: bool = False,
) -> Float[Tensor, "layer ..."]:
    """First-order estimate of every patch of `activation`, from two forward passes and one backward pass.

    metric(patched) ≈ metric(target) + (source − target) · ∂metric/∂activation, the gradient taken in the
    target run. Shapes follow the sweeps: `z` gives (layer, head), or (layer, pos, head) by position;
    `resid_pre` / `attn_out` / `mlp_out` give (layer, pos); `pattern` gives (layer, head).
    `backend="nnsight"` takes the gradients in an nnsight trace's backward context.
    """
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be 'denoise' or 'noise', not {direction!r}.")
    if backend not in ("tl", "nnsight"):
        raise ValueError(f"backend must be 'tl' or 'nnsight', not {backend!r}.")
    if remote and backend != "nnsight":
        raise ValueError("remote=True runs on NDIF through nnsight: pass backend='nnsight' as well.")
    target, source = (corrupted_tokens, clean_tokens) if direction == "denoise" else (clean_tokens, corrupted_tokens)
    names = [get_act_name(activation, layer) for layer in range(model.cfg.n_layers)]
    with torch.inference_mode():
        _, source_cache = model.run_with_cache(source, names_filter=lambda name: name in names)
    with torch.enable_grad():
        gradient = _gradients_nnsight if backend == "nnsight" else _gradients_tl
        value, saved, grads = gradient(model, target, names, metric, remote)
    model.zero_grad(set_to_none=True)
    # Which axes a patch covers (summed over): batch always, plus the vector axis, plus positions
    # when a patch spans all of them. Patterns are (batch, head, q, k): a patch spans q and k.
    summed = {"pattern": (0, 2, 3)}.get(activation, (0, -1) if by_position or activation != "z" else (0, 1, -1))
    effects = [((source_cache[name] - saved[i].detach()) * grads[i]).sum(dim=summed) for i, name in enumerate(names)]
    return value.detach() + torch.stack(effects)


Gradients = tuple[Tensor, list[Tensor], list[Tensor]]


def _gradients_tl(model: HookedTransformer, tokens: Tensor, names: list[str], metric: Metric, remote: bool) -> Gradients:
    """The metric of a run, and the activations at `names` with the metric's gradient at each (hooks)."""
    saved: dict[str, Tensor] = {}
    grads: dict[str, Tensor] = {}

    def keep(act: Tensor, hook) -> Tensor:
        saved[hook.name] = act
        act.register_hook(lambda grad: grads.__setitem__(hook.name, grad.detach()))
        return act

    value = metric(model.run_with_hooks(tokens, fwd_hooks=[(lambda name: name in names, keep)]))
    value.backward()
    return value, [saved[name] for name in names], [grads[name] for name in names]


def _gradients_nnsight(model: HookedTransformer, tokens: Tensor, names: list[str], metric: Metric, remote: bool) -> Gradients:
    """As `_gradients_tl`, in an nnsight trace: gradients are read in a backward context, last layer first."""
    import nnsight

    traced = nnsight.NNsight(model)
    with traced.trace(tokens, **({"remote": True} if remote else {})):
        # Values leave a trace only through saved objects: save the lists, append raw values to them.
        saved, grads = nnsight.save([]), nnsight.save([])
        for name in names:
            saved.append(module_at(traced, name).output)
        value = metric(traced.output).save()
        with value.backward():
            for act in reversed(saved):
                grads.append(act.grad)
    return value, saved, grads[::-1]


def path_patch(
    model: HookedTransformer, clean_cache: ActivationCache, corrupted_cache: ActivationCache, metric: Metric,
    senders: Sequence[Head], receivers: Sequence[Head], receiver_input: Literal["q", "k", "v"] = "q",
    backend: Backend = "tl", remote: bool = False,
) -> Float[Tensor, ""]:
    """Metric of the clean run when the senders' corrupted outputs reach the receivers' `receiver_input` only.

    Run 1: the clean run with every head frozen to its clean output except the senders, which take their
    corrupted one (MLPs recompute); record the receivers' q, k or v. Run 2: the clean run with only those
    replaced. Both caches need `hook_z` and `hook_resid_pre`. In grouped-query models a receiver's k or v
    is shared by its group of query heads, and the whole shared head is patched. `backend="nnsight"`
    runs both passes as nnsight traces (`remote=True` is passed to them).
    """
    if backend not in ("tl", "nnsight"):
        raise ValueError(f"backend must be 'tl' or 'nnsight', not {backend!r}.")
    if remote and backend != "nnsight":
        raise ValueError("remote=True runs on NDIF through nnsight: pass backend='nnsight' as well.")
    if receiver_input not in ("q", "k", "v"):
        raise ValueError(f"receiver_input must be 'q', 'k' or 'v', not {receiver_input!r}.")
    if not senders or not receivers:
        raise ValueError("path patching needs at least one sender and one receiver head.")
    first, receiver_layers = min(layer for layer, _ in senders), sorted({layer for layer, _ in receivers})
    if first >= receiver_layers[0]:
        raise ValueError("every sender must sit in an earlier layer than every receiver.")
    group = 1 if receiver_input == "q" else model.cfg.n_heads // (model.cfg.n_key_value_heads or model.cfg.n_heads)
    wanted = {layer: sorted({head // group for l, head in receivers if l == layer}) for layer in receiver_layers}
    sender_set = set(senders)

    def frozen_z(layer: int) -> Tensor:
        """The clean head outputs of `layer`, the senders' taken from the corrupted run."""
        name = get_act_name("z", layer)
        z = clean_cache[name].clone()
        for head in range(z.shape[2]):
            if (layer, head) in sender_set:
                z[:, :, head] = corrupted_cache[name][:, :, head]
        return z

    def freeze(z: Tensor, hook) -> Tensor:
        return frozen_z(hook.layer())

    recorded: dict[str, Tensor] = {}

    def record(act: Tensor, hook) -> None:
        recorded[hook.name] = act.clone()

    def replace(act: Tensor, hook) -> Tensor:
        heads = wanted[hook.layer()]
        act[:, :, heads] = recorded[hook.name][:, :, heads]
        return act

    inputs = [get_act_name(receiver_input, layer) for layer in receiver_layers]
    if backend == "nnsight":
        return _path_patch_nnsight(model, clean_cache, first, wanted, frozen_z, receiver_input, metric, remote)
    with torch.inference_mode():
        model.run_with_hooks(
            clean_cache["resid_pre", first], start_at_layer=first, stop_at_layer=receiver_layers[-1] + 1,
            fwd_hooks=[(lambda name: name.endswith("hook_z"), freeze)] + [(name, record) for name in inputs],
        )
        logits = model.run_with_hooks(
            clean_cache["resid_pre", receiver_layers[0]], start_at_layer=receiver_layers[0],
            fwd_hooks=[(name, replace) for name in inputs],
        )
    return metric(logits)


def necessary_and_sufficient(
    denoised: Float[Tensor, "layer head"], noised: Float[Tensor, "layer head"], threshold: float
) -> dict[str, list[tuple[int, int]]]:
    """Heads whose clean value alone restores ≥ `threshold` (sufficient) and whose corruption alone costs ≥ it (necessary).

    Both sweeps are normalised (0 = corrupted, 1 = clean): denoising starts at 0, noising at 1.
    NaN (unswept) entries are in neither list.
    """
    sufficient = (denoised >= threshold).nonzero().tolist()
    necessary = (1 - noised >= threshold).nonzero().tolist()
    return {"sufficient": [tuple(h) for h in sufficient], "necessary": [tuple(h) for h in necessary]}


def _path_patch_nnsight(
    model: HookedTransformer, clean_cache: ActivationCache, first: int, wanted: dict[int, list[int]],
    frozen_z: Callable[[int], Tensor], receiver_input: str, metric: Metric, remote: bool,
) -> Float[Tensor, ""]:
    """`path_patch`'s two runs as nnsight traces: hook points are modules, touched in execution order."""
    from nnsight import NNsight

    traced = NNsight(model)
    options = {"remote": True} if remote else {}
    receiver_layers = sorted(wanted)
    recorded = {}
    with torch.inference_mode(), traced.trace(
        clean_cache["resid_pre", first], start_at_layer=first, stop_at_layer=receiver_layers[-1] + 1, **options
    ):
        for layer in range(first, receiver_layers[-1] + 1):
            if layer in wanted:  # q, k and v are computed before the head outputs
                recorded[layer] = module_at(traced, get_act_name(receiver_input, layer)).output.save()
            module_at(traced, get_act_name("z", layer)).output[:] = frozen_z(layer)
    with torch.inference_mode(), traced.trace(
        clean_cache["resid_pre", receiver_layers[0]], start_at_layer=receiver_layers[0], **options
    ):
        for layer in receiver_layers:
            heads = wanted[layer]
            module_at(traced, get_act_name(receiver_input, layer)).output[:, :, heads] = recorded[layer][:, :, heads]
        logits = traced.output.save()
    return metric(logits)
