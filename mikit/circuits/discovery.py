"""ACDC on a model's computational graph (evaluation: `mikit.circuits.evaluation`).

ACDC (Conmy et al. 2023) starts from the whole graph and visits the receivers from the logits backwards
(the reverse of the forward pass). For each edge into a receiver it asks: if this edge gets its corrupted
source, does the distance to the clean model's output grow by less than the threshold τ? Then the edge
goes, for good, and the next question is asked of the smaller graph. A node whose outputs have all gone
has no say in the output any more, so the edges into it go without a question.

The questions are sequential, each asked of the graph the earlier answers left, but most answers are
"remove". So `acdc` asks a run of them at once, speculatively: edge set i has the first i candidates
removed. The answers up to the first "keep" are exactly the sequential ones; the run restarts after it.
A run doubles in length (up to `batch_size`) after a run of removals and shrinks after an early "keep".
"""

from __future__ import annotations

from typing import Literal

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor
from tqdm.auto import tqdm
from transformer_lens import HookedTransformer

from mikit.circuits.edges import Metric, run_with_edges, source_outputs
from mikit.circuits.graph import Graph

Ablation = Literal["patch", "mean", "zero"]


def kl_to_clean(clean_logits: Float[Tensor, "batch pos d_vocab"], positions: Int[Tensor, "batch"] | int = -1) -> Metric:
    """The metric ACDC minimises: KL(clean model ‖ circuit) of the next-token distribution at `positions`
    (one per prompt, or one for all), averaged over prompts."""
    batch = torch.arange(len(clean_logits))
    where = torch.as_tensor(positions).expand(len(clean_logits))
    clean = clean_logits[batch, where].log_softmax(-1)

    def kl(logits: Tensor) -> Tensor:
        got = logits[batch, where.to(logits.device)].log_softmax(-1)
        return (clean.exp() * (clean - got)).sum(-1).mean()

    return kl


def ablated_outputs(
    model: HookedTransformer, graph: Graph, corrupted_tokens: Int[Tensor, "batch pos"], ablation: Ablation = "patch",
) -> Float[Tensor, "batch pos source d_model"]:
    """What a removed edge carries: the source's output on the corrupted prompts ("patch"), its mean over them
    at each position ("mean"), or nothing ("zero")."""
    if ablation not in ("patch", "mean", "zero"):
        raise ValueError(f"ablation must be 'patch', 'mean' or 'zero', not {ablation!r}.")
    out = source_outputs(model, graph, corrupted_tokens)
    if ablation == "mean":
        return out.mean(0, keepdim=True).expand_as(out)
    return torch.zeros_like(out) if ablation == "zero" else out


def _dangling(graph: Graph, present: Tensor, hook_index: int) -> Tensor:
    """For the receivers at one hook: True where the node they feed has no outgoing edge left."""
    receiver = graph.receivers[hook_index]
    if receiver.names == ("logits",):
        return torch.zeros(1, dtype=torch.bool)
    feeds = [name.split("<")[0] for name in receiver.names]  # a0.h3 (or a0.kv1 for a group), m2
    alive = {graph.sources[s] for s in graph.source_of(present.nonzero().flatten()).unique().tolist()}
    if all(f in graph.sources for f in feeds):
        return torch.tensor([f not in alive for f in feeds])
    layer, group_size = int(feeds[0][1:].split(".")[0]), graph.n_heads // graph.n_kv_heads
    return torch.tensor([all(f"a{layer}.h{h}" not in alive for h in range(g * group_size, (g + 1) * group_size))
                         for g in range(len(feeds))])


def acdc(
    model: HookedTransformer, graph: Graph, clean_tokens: Int[Tensor, "batch pos"],
    corrupted: Float[Tensor, "batch pos source d_model"], metric: Metric, threshold: float,
    *, batch_size: int = 16, progress: bool = True,
) -> Bool[Tensor, "edge"]:
    """The edges ACDC keeps at threshold τ = `threshold`, as a boolean mask in the graph's edge order.

    `metric(logits)` is a distance to minimise (e.g. `kl_to_clean`); `corrupted` is what a removed edge
    carries (`ablated_outputs`). Receivers are visited from the logits backwards; each receiver's sources
    from the latest to the earliest."""
    if threshold < 0:
        raise ValueError(f"the threshold is a growth of the metric that is tolerated, so it is ≥ 0; got {threshold}.")
    present = graph.mask()

    def measure(sets: Tensor) -> Tensor:
        return run_with_edges(model, graph, clean_tokens, corrupted, sets, metric)

    current, size = measure(present).item(), 1
    steps = tqdm(total=graph.n_edges, desc="ACDC", disable=not progress)
    for hook_index in reversed(range(len(graph.receivers))):
        receiver = graph.receivers[hook_index]
        dangling = _dangling(graph, present, hook_index)
        candidates = []
        for s in reversed(range(receiver.n_sources)):
            for i in range(receiver.n):
                edge = receiver.first_edge + s * receiver.n + i
                if dangling[i]:
                    present[edge] = False
                else:
                    candidates.append(edge)
        steps.update(receiver.n_sources * receiver.n - len(candidates))
        while candidates:
            run = torch.tensor(candidates[:size])
            sets = present.repeat(len(run), 1)
            for i in range(len(run)):
                sets[i:, run[i]] = False  # set i: the first i + 1 candidates removed
            values = measure(sets)
            growth = torch.diff(values, prepend=torch.tensor([current]))
            kept = (growth >= threshold).nonzero().flatten()
            accepted = len(run) if len(kept) == 0 else int(kept[0])
            present[run[:accepted]] = False
            if accepted:
                current = values[accepted - 1].item()
            done = accepted + (len(kept) > 0)
            candidates = candidates[done:]
            steps.update(done)
            # the next run as long as the streak of removals suggests: double after a run with no "keep"
            size = min(batch_size, 2 * size if len(kept) == 0 else max(1, 2 * accepted))
    steps.close()
    return present
