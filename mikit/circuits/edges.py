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
        return torch.einsum("bphd,hdm->bphm", activation, model.W_O[layer])
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
    corrupted_tokens: Int[Tensor, "batch pos"], metric: Metric, *, steps: int = 1,
) -> Float[Tensor, "edge"]:
    """EAP (`steps=1`) or EAP-IG (`steps` > 1) scores of every edge, in the graph's edge order: the estimated
    change of `metric` on the clean prompts when that edge alone is patched from the corrupted ones."""
    if clean_tokens.shape != corrupted_tokens.shape:
        raise ValueError(f"clean and corrupted prompts must have the same shape (so that positions line up); "
                         f"got {tuple(clean_tokens.shape)} and {tuple(corrupted_tokens.shape)}.")
    if steps < 1:
        raise ValueError(f"steps must be at least 1, not {steps}.")
    clean, corrupted = source_outputs(model, graph, clean_tokens), source_outputs(model, graph, corrupted_tokens)
    difference = corrupted - clean
    embed = "blocks.0.hook_resid_pre"
    with torch.no_grad():
        _, cache = model.run_with_cache(corrupted_tokens, names_filter=embed, stop_at_layer=1)
    corrupted_embed = cache[embed]
    grads = {r.hook: 0.0 for r in graph.receivers}

    def keep_grad(activation: Tensor, hook) -> None:
        def store(grad: Tensor) -> None:
            grads[hook.name] = grads[hook.name] + (grad if grad.ndim == 4 else grad[:, :, None])

        activation.register_hook(store)

    for step in range(1, steps + 1):
        alpha = step / steps

        def interpolate(resid: Tensor, hook) -> Tensor:
            return (corrupted_embed + alpha * (resid - corrupted_embed)).detach().requires_grad_()

        hooks = [(embed, interpolate)] + [(r.hook, keep_grad) for r in graph.receivers]
        with torch.enable_grad(), graph_hooks(model), _frozen(model):
            metric(model.run_with_hooks(clean_tokens, fwd_hooks=hooks)).backward()
    scores = torch.empty(graph.n_edges)
    for r in graph.receivers:
        piece = torch.einsum("bpsd,bpnd->sn", difference[:, :, : r.n_sources], grads[r.hook] / steps)
        scores[r.edges] = piece.flatten().detach().float().cpu()
    return scores
