"""Edge patching and edge attribution on a model's computational graph (`mikit.circuits.graph`).

A receiver's input is the sum of its sources' outputs. *Patching* an edge `u -> v` gives `v` the output
`u` has on the corrupted prompts, while every other receiver still sees `u`'s output in the current run:

    input_v = resid_v + Σ over patched edges u->v of (out_u(corrupted) − out_u(current run))

`run_with_edges` does that for many edge sets in one forward pass: each set gets its own copy of the
prompts in the batch (the batching idea of `mikit.patching`, carried to edges).

*Edge attribution patching* (EAP, Syed et al. 2023) estimates every edge's effect on a metric at once,
to first order, from one forward and one backward pass on the clean prompts:

    score(u -> v) = Σ over prompts and positions of (out_u(corrupted) − out_u(clean)) · ∂metric/∂input_v

*EAP with integrated gradients* (EAP-IG, Hanna et al. 2024) averages that gradient over `steps` inputs
interpolated from the corrupted prompts' embeddings to the clean ones' (α = 1/steps, 2/steps, …, 1), which
follows the metric along the way instead of trusting its slope at the clean end. With one step it is EAP.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor
from transformer_lens import HookedTransformer

from mikit.circuits.graph import Graph

Metric = Callable[[Tensor], Tensor]
"""Logits `(batch, pos, d_vocab)` → a scalar tensor (the mean over prompts, for attribution to be a sum)."""


@contextmanager
def graph_hooks(model: HookedTransformer) -> Iterator[None]:
    """Turn on the hook points the graph needs (split q/k/v inputs, the MLP input) and restore them after."""
    before = model.cfg.use_split_qkv_input, model.cfg.use_hook_mlp_in
    model.set_use_split_qkv_input(True)
    if not model.cfg.attn_only:
        model.set_use_hook_mlp_in(True)
    try:
        yield
    finally:
        model.set_use_split_qkv_input(before[0])
        if not model.cfg.attn_only:
            model.set_use_hook_mlp_in(before[1])


@contextmanager
def _frozen(model: HookedTransformer) -> Iterator[None]:
    """No gradient for the weights while attributing (only the activations' gradients are read)."""
    wanted = [p.requires_grad for p in model.parameters()]
    model.requires_grad_(False)
    try:
        yield
    finally:
        for p, w in zip(model.parameters(), wanted):
            p.requires_grad_(w)


def _outputs(model: HookedTransformer, hook: str, activation: Tensor) -> Float[Tensor, "batch pos source d_model"]:
    """The outputs of the sources read at `hook`, one per source."""
    if hook.endswith("hook_z"):  # each head's own output: its z times its slice of W_O
        layer = int(hook.split(".")[1])
        # model.blocks[layer].attn.W_O, not model.W_O[layer]: model.W_O stacks every layer's at each call
        return torch.einsum("bphd,hdm->bphm", activation, model.blocks[layer].attn.W_O)
    return activation[:, :, None]


def source_outputs(
    model: HookedTransformer, graph: Graph, tokens: Int[Tensor, "batch pos"],
) -> Float[Tensor, "batch pos source d_model"]:
    """Every source's output on `tokens`, stacked in source order (no gradients)."""
    out: dict[str, Tensor] = {}

    def record(activation: Tensor, hook) -> None:
        out[hook.name] = _outputs(model, hook.name, activation)

    with torch.no_grad(), graph_hooks(model):
        model.run_with_hooks(tokens, fwd_hooks=[(name, record) for name in graph.source_hooks],
                             stop_at_layer=graph.n_layers)
    return torch.cat([out[name] for name in graph.source_hooks], dim=2)


def run_with_edges(
    model: HookedTransformer, graph: Graph, tokens: Int[Tensor, "batch pos"],
    corrupted: Float[Tensor, "batch pos source d_model"], present: Bool[Tensor, "edge_set edge"], metric: Metric,
    *, chunk: int | None = None,
) -> Float[Tensor, "edge_set"]:
    """The metric of the clean prompts `tokens` with, for each row of `present`, the edges marked False patched:
    their receivers get the source's output in `corrupted` (e.g. `source_outputs` of the corrupted prompts, or
    a mean of them for mean ablation). All rows run in one forward pass, or `chunk` rows per pass."""
    present = torch.as_tensor(present, dtype=torch.bool)
    if present.ndim == 1:
        present = present[None]
    if present.shape[-1] != graph.n_edges:
        raise ValueError(f"`present` should have one entry per edge ({graph.n_edges}); it has {present.shape[-1]}.")
    if chunk is not None and len(present) > chunk:
        return torch.cat([run_with_edges(model, graph, tokens, corrupted, part, metric) for part in present.split(chunk)])
    with torch.no_grad():
        logits = patched_logits(model, graph, tokens.repeat(len(present), 1), corrupted, present)
    return torch.stack([torch.as_tensor(metric(chunk)).detach().float().cpu()
                        for chunk in logits.unflatten(0, (len(present), len(tokens)))])


def patched_logits(
    model: HookedTransformer, graph: Graph, tokens: Int[Tensor, "set_batch pos"],
    corrupted: Float[Tensor, "batch pos source d_model"], present: Bool[Tensor, "edge_set edge"],
) -> Float[Tensor, "set_batch pos d_vocab"]:
    """The logits of `tokens` (`present`'s rows of edge sets one after another, each a copy of the same `batch`
    prompts) with every edge marked False given its source's output in `corrupted`; differentiable, so a model
    can be trained with edges patched (`mikit.circuits.planted`)."""
    n_sets, batch = len(present), len(corrupted)
    patched = graph.per_hook((~present).to(corrupted.dtype).to(corrupted.device))
    if torch.is_grad_enabled():
        return _patched_logits_differentiable(model, graph, tokens, corrupted, patched, n_sets)
    # Which sources (grouped by the hook they are read at) each receiver hook has a patched edge from, in any
    # set: only those are added, so that a few patched edges cost a few products, not one over every source.
    reads = {hook: [(name, slice_) for name, slice_ in graph.source_hooks.items()
                    if slice_.start < mask.shape[1] and bool(mask[:, slice_].any())]
             for hook, mask in patched.items()}
    needed = {name for pieces in reads.values() for name, _ in pieces}
    corrupted_rows = corrupted.permute(2, 0, 1, 3)  # (source, batch, pos, d_model)
    delta: dict[str, Tensor] = {}  # per source hook: corrupted − current output, (set, source, batch * pos * d_model)

    def record(activation: Tensor, hook) -> None:
        current = _outputs(model, hook.name, activation).unflatten(0, (n_sets, batch)).permute(0, 3, 1, 2, 4)
        here = corrupted_rows[graph.source_hooks[hook.name]] - current
        delta[hook.name] = here.reshape(n_sets, current.shape[1], -1)

    def receive(activation: Tensor, hook) -> Tensor:
        if not reads[hook.name]:
            return activation
        mask = patched[hook.name].transpose(1, 2)  # (set, receiver, source)
        add = sum(mask[:, :, slice_] @ delta[name] for name, slice_ in reads[hook.name])  # (set, receiver, b*p*d)
        add = add.unflatten(2, (batch, activation.shape[1], -1)).permute(0, 2, 3, 1, 4).flatten(0, 1)
        return activation + (add if activation.ndim == 4 else add[:, :, 0])

    hooks = [(name, record) for name in graph.source_hooks if name in needed]
    hooks += [(r.hook, receive) for r in graph.receivers]
    with graph_hooks(model):
        return model.run_with_hooks(tokens, fwd_hooks=hooks)


def _patched_logits_differentiable(
    model: HookedTransformer, graph: Graph, tokens: Tensor, corrupted: Tensor, patched: dict[str, Tensor], n_sets: int,
) -> Tensor:
    """`patched_logits` under autograd. Every receiver adds its patches from all sources in one product, so that a
    source whose edges are all patched gets a gradient of exactly 0 (resid − current + corrupted cancels bit for
    bit; the sparse sum of the no-gradient path leaves float noise there, which Adam turns into full steps)."""
    batch = len(corrupted)
    delta: dict[str, Tensor] = {}  # per source hook: corrupted − current output, (set, batch, pos, source, d_model)

    def record(activation: Tensor, hook) -> None:
        current = _outputs(model, hook.name, activation).unflatten(0, (n_sets, batch))
        delta[hook.name] = corrupted[:, :, graph.source_hooks[hook.name]] - current

    def receive(activation: Tensor, hook) -> Tensor:
        mask = patched[hook.name]  # (set, source, receiver)
        sources = torch.cat(list(delta.values()), dim=3)[:, :, :, : mask.shape[1]]
        add = torch.einsum("kbpsd,ksn->kbpnd", sources, mask).flatten(0, 1)
        return activation + (add if activation.ndim == 4 else add[:, :, 0])

    hooks = [(name, record) for name in graph.source_hooks] + [(r.hook, receive) for r in graph.receivers]
    with graph_hooks(model):
        return model.run_with_hooks(tokens, fwd_hooks=hooks)


def attribute(
    model: HookedTransformer, graph: Graph, clean_tokens: Int[Tensor, "batch pos"],
    corrupted_tokens: Int[Tensor, "batch pos"], metric: Metric, *, steps: int = 1, batch_size: int = 64,
) -> Float[Tensor, "edge"]:
    """EAP (`steps=1`) or EAP-IG (`steps` > 1) scores of every edge, in the graph's edge order: the estimated
    change of `metric` on the clean prompts when that edge alone is patched from the corrupted ones. The IG
    steps run several to a forward pass, as copies of the prompts, up to `batch_size` rows (at least one step)."""
    if clean_tokens.shape != corrupted_tokens.shape:
        raise ValueError(f"clean and corrupted prompts must have the same shape (so that positions line up); "
                         f"got {tuple(clean_tokens.shape)} and {tuple(corrupted_tokens.shape)}.")
    if steps < 1:
        raise ValueError(f"steps must be at least 1, not {steps}.")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, not {batch_size}.")
    # Each source's difference as one row over (batch, pos, d_model), so that every edge's score is one entry of a
    # single matrix product with the receivers' gradients laid out the same way (sources × receivers; the entries
    # of a source after its receiver are computed and dropped: cheaper than one product per receiver).
    difference = source_outputs(model, graph, corrupted_tokens)
    difference -= source_outputs(model, graph, clean_tokens)
    difference = difference.permute(2, 0, 1, 3).flatten(1)  # (source, batch * pos * d_model)
    embed = "blocks.0.hook_resid_pre"
    with torch.no_grad():
        _, cache = model.run_with_cache(corrupted_tokens, names_filter=embed, stop_at_layer=1)
    corrupted_embed = cache[embed]
    batch = len(clean_tokens)
    grads = {r.hook: 0.0 for r in graph.receivers}

    def keep_grad(activation: Tensor, hook) -> None:
        def store(grad: Tensor) -> None:  # summed over the pass's steps: (batch, pos, n, d_model)
            grad = grad if grad.ndim == 4 else grad[:, :, None]
            grads[hook.name] = grads[hook.name] + grad.unflatten(0, (-1, batch)).sum(0)

        activation.register_hook(store)

    per_pass = max(1, batch_size // batch)
    for first in range(1, steps + 1, per_pass):
        alphas = torch.arange(first, min(first + per_pass, steps + 1), device=corrupted_embed.device) / steps
        alphas = alphas.to(corrupted_embed.dtype)[:, None, None, None]  # (step, 1, 1, 1)

        def interpolate(resid: Tensor, hook) -> Tensor:
            mixed = corrupted_embed + alphas * (resid.unflatten(0, (len(alphas), batch)) - corrupted_embed)
            return mixed.flatten(0, 1).detach().requires_grad_()

        hooks = [(embed, interpolate)] + [(r.hook, keep_grad) for r in graph.receivers]
        with torch.enable_grad(), graph_hooks(model), _frozen(model):
            logits = model.run_with_hooks(clean_tokens.repeat(len(alphas), 1), fwd_hooks=hooks)
            sum(metric(block) for block in logits.unflatten(0, (len(alphas), batch))).backward()
    gradients = torch.cat([(grads[r.hook] / steps).permute(2, 0, 1, 3).flatten(1) for r in graph.receivers])
    every = (difference @ gradients.T).float().cpu()  # (source, receiver)
    scores, column = torch.empty(graph.n_edges), 0
    for r in graph.receivers:
        scores[r.edges] = every[: r.n_sources, column: column + r.n].flatten()
        column += r.n
    return scores


def node_scores(graph: Graph, scores: Float[Tensor, "edge"]) -> Float[Tensor, "source"]:
    """Node-level attribution from edge scores (EAP or EAP-IG): each source's edges summed, in source order.

    A source's output reaches every receiver after it, so patching the node is, to first order, patching all
    its edges at once: the sum is the node's attribution-patching estimate, a fast first pass that says which
    nodes an edge-level search (ACDC, exact patching) need look at."""
    scores = torch.as_tensor(scores, dtype=torch.float).flatten()
    if scores.shape[0] != graph.n_edges:
        raise ValueError(f"expected one score per edge ({graph.n_edges}), got {scores.shape[0]}.")
    return torch.zeros(len(graph.sources)).index_add_(0, graph.source_of(torch.arange(graph.n_edges)), scores)
