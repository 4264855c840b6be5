"""Causal scrubbing (Chan et al. 2022, Redwood Research) of the hypothesis "only these edges matter".

A hypothesis that names a circuit claims that the model's output depends on the input only through the
circuit's edges. Causal scrubbing tests the claim by running the model with every other edge carrying
its source's output on a *different* input, drawn at random from the dataset, independently for each
edge (the "treeified" model: no two resampled edges share an input, so the test cannot pass because two
wrong values happen to cancel). An edge of the circuit carries its source's value in the same run, so a
source inside the circuit is itself scrubbed along its own incoming edges, recursively, as the method
asks. An edge outside the circuit carries its source's unscrubbed output on the drawn input: the whole
subtree behind an unimportant edge is resampled together.

    scrubbed = scrub(model, graph, tokens, circuit, metric)
    # the share of the metric the hypothesis explains, against everything resampled:
    (scrubbed - scrub(model, graph, tokens, none, metric)) / (metric(model(tokens)) - scrub(..., none, ...))

This is the scrubbing of a subgraph hypothesis. The method's richer hypotheses also resample an edge of
the circuit among inputs that agree on a feature the hypothesis says the edge carries; that is not here.
Memory grows with (sources × receivers at one hook × prompts × positions × d_model): fine for the zoo and
the planted model, large for SmolLM2.
"""

from __future__ import annotations

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor
from transformer_lens import HookedTransformer

from mikit.circuits.edges import Metric, _outputs, graph_hooks, source_outputs
from mikit.circuits.graph import Graph


def scrub(
    model: HookedTransformer, graph: Graph, tokens: Int[Tensor, "batch pos"], circuit: Bool[Tensor, "edge"],
    metric: Metric, *, seed: int = 0, draws: Int[Tensor, "edge batch"] | None = None,
) -> float:
    """`metric` of the scrubbed run: the edges outside `circuit` carry their source's output on prompt
    `draws[edge, i]` instead of prompt i (default: an independent random permutation of the prompts per edge)."""
    circuit = torch.as_tensor(circuit, dtype=torch.bool)
    batch = len(tokens)
    if circuit.shape != (graph.n_edges,):
        raise ValueError(f"the circuit should have one entry per edge ({graph.n_edges}), not shape {tuple(circuit.shape)}.")
    if draws is None:
        generator = torch.Generator().manual_seed(seed)
        draws = torch.stack([torch.randperm(batch, generator=generator) for _ in range(graph.n_edges)])
    elif draws.shape != (graph.n_edges, batch):
        raise ValueError(f"draws should give a prompt per edge and prompt, shape ({graph.n_edges}, {batch}), "
                         f"not {tuple(draws.shape)}.")
    by_source = source_outputs(model, graph, tokens).permute(2, 0, 1, 3)  # (source, batch, pos, d_model)
    current: list[Tensor] = []  # this run's source outputs so far, in source order

    def record(activation: Tensor, hook) -> None:
        current.extend(_outputs(model, hook.name, activation).unbind(2))

    def receive(activation: Tensor, hook) -> Tensor:
        r = next(r for r in graph.receivers if r.hook == hook.name)
        add = scrubbed_input(by_source[: r.n_sources], torch.stack(current[: r.n_sources]),
                             ~circuit[r.edges].view(r.n_sources, r.n), draws[r.edges].view(r.n_sources, r.n, batch))
        return activation + (add if activation.ndim == 4 else add[:, :, 0])

    hooks = [(name, record) for name in graph.source_hooks] + [(r.hook, receive) for r in graph.receivers]
    with torch.no_grad(), graph_hooks(model):
        logits = model.run_with_hooks(tokens, fwd_hooks=hooks)
    return float(metric(logits))


def scrubbed_input(
    by_source: Float[Tensor, "source batch pos d_model"], current: Float[Tensor, "source batch pos d_model"],
    resampled: Bool[Tensor, "source receiver"], draws: Int[Tensor, "source receiver batch"],
) -> Float[Tensor, "batch pos receiver d_model"]:
    """What the receivers at one hook add to their input: for each resampled edge s -> n, its source's output on
    the prompt drawn for that edge, `by_source[s, draws[s, n, i]]` for prompt i, minus what s gives in this run,
    `current[s, i]` (which the residual stream already holds)."""
    picked = by_source[torch.arange(len(draws))[:, None, None], draws]  # (source, receiver, batch, pos, d_model)
    change = (picked - current[:, None]) * resampled[:, :, None, None, None].to(picked.dtype)
    return change.sum(0).permute(1, 2, 0, 3)
