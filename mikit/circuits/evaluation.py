"""How good is a circuit? Faithfulness, completeness, minimality, size, and recovery of a known circuit.

A circuit C is a set of edges of the model's graph M; the edges outside it carry the ablated value
(`ablated_outputs`). With F(·) the task metric of a run (e.g. a logit difference):

- *faithfulness* (Wang et al. 2023; Conmy et al. 2023): F(C) / F(M), near 1 when the circuit alone does the task;
- *completeness* (Wang et al. 2023): for node sets K, F(C \\ K) ≈ F(M \\ K). A circuit that does the task only
  because of a node it left out fails once K knocks out the part that node stood in for;
- *minimality*: every node v of C matters inside it: F(C \\ K) − F(C \\ (K ∪ {v})) is large for some K
  (here K = ∅ unless given);
- *recovery* of a circuit known by construction: the ROC curve of edge scores against it (Conmy et al. 2023).

Removing a node removes every edge out of it. Every function runs its edge sets batched (`run_with_edges`).
"""

from __future__ import annotations

from typing import Sequence

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor
from transformer_lens import HookedTransformer

from mikit.circuits.edges import Metric, run_with_edges
from mikit.circuits.graph import Graph


def faithfulness(
    model: HookedTransformer, graph: Graph, present: Bool[Tensor, "edge"], clean_tokens: Int[Tensor, "batch pos"],
    corrupted: Float[Tensor, "batch pos source d_model"], metric: Metric,
) -> float:
    """metric(circuit) / metric(model): the circuit's edges kept, every other edge given `corrupted`
    (1 for the whole graph; for the empty graph, the metric of the ablated run over the clean one's)."""
    circuit, whole = run_with_edges(model, graph, clean_tokens, corrupted, torch.stack([present, graph.mask()]), metric)
    return (circuit / whole).item()


def completeness(
    model: HookedTransformer, graph: Graph, present: Bool[Tensor, "edge"], clean_tokens: Int[Tensor, "batch pos"],
    corrupted: Float[Tensor, "batch pos source d_model"], metric: Metric, removed: Sequence[Sequence[str]],
    *, chunk: int = 16,
) -> Float[Tensor, "set 2"]:
    """For each node set K in `removed` (source names, e.g. `["a1.h3", "m0"]`): the row (F(C \\ K), F(M \\ K)).
    A complete circuit has the two equal for every K; |difference| is K's incompleteness score."""
    sets = []
    for nodes in removed:
        out = graph.edges_from(nodes)
        sets += [present & ~out, ~out]
    return run_with_edges(model, graph, clean_tokens, corrupted, torch.stack(sets), metric, chunk=chunk).view(-1, 2)


def minimality(
    model: HookedTransformer, graph: Graph, present: Bool[Tensor, "edge"], clean_tokens: Int[Tensor, "batch pos"],
    corrupted: Float[Tensor, "batch pos source d_model"], metric: Metric,
    also_removed: dict[str, Sequence[str]] | None = None, *, chunk: int = 16,
) -> dict[str, float]:
    """For each node v of the circuit (a source with an edge in it): F(C \\ K_v) − F(C \\ (K_v ∪ {v})), K_v being
    `also_removed[v]` (default: no other node). A node whose score is near 0 could go."""
    also_removed = also_removed or {}
    nodes = circuit_nodes(graph, present)
    sets = []
    for v in nodes:
        without_k = present & ~graph.edges_from(also_removed.get(v, []))
        sets += [without_k, without_k & ~graph.edges_from([v])]
    values = run_with_edges(model, graph, clean_tokens, corrupted, torch.stack(sets), metric, chunk=chunk).view(-1, 2)
    return {v: float(with_v - without_v) for v, (with_v, without_v) in zip(nodes, values)}


def circuit_nodes(graph: Graph, present: Bool[Tensor, "edge"]) -> list[str]:
    """The sources with at least one outgoing edge in the circuit, in forward order."""
    present = torch.as_tensor(present, dtype=torch.bool)
    return [graph.sources[s] for s in graph.source_of(present.nonzero().flatten()).unique().tolist()]


def circuit_size(graph: Graph, present: Bool[Tensor, "edge"]) -> dict[str, int]:
    """Edges kept, and nodes that still touch one (a source with an outgoing edge, or the logits)."""
    present = torch.as_tensor(present, dtype=torch.bool)
    return {"edges": int(present.sum()),
            "nodes": len(circuit_nodes(graph, present)) + int(present[graph.receivers[-1].edges].any())}


def roc(scores: Float[Tensor, "edge"], truth: Bool[Tensor, "edge"]) -> tuple[Tensor, Tensor, float]:
    """The ROC curve of edges ranked by `scores` (larger = more likely in the circuit) against the true circuit:
    false- and true-positive rates at every cut, and the area under the curve (ties count half)."""
    truth = torch.as_tensor(truth, dtype=torch.bool)
    if truth.all() or not truth.any():
        raise ValueError("the true circuit must hold some edges and leave some out, or there is no curve to draw.")
    order = torch.argsort(scores.float(), descending=True, stable=True)
    hits = truth[order].float()
    tpr = torch.cat([torch.zeros(1), hits.cumsum(0) / hits.sum()])
    fpr = torch.cat([torch.zeros(1), (1 - hits).cumsum(0) / (1 - hits).sum()])
    # the area by ranks (Mann-Whitney), which treats tied scores as half above, half below
    _, inverse, counts = torch.unique(scores.float(), return_inverse=True, return_counts=True)
    first = torch.cumsum(counts, 0) - counts
    ranks = (first + (counts + 1) / 2)[inverse]
    n_true, n_false = int(truth.sum()), int((~truth).sum())
    auc = (ranks[truth].sum() - n_true * (n_true + 1) / 2) / (n_true * n_false)
    return fpr, tpr, float(auc)


def roc_points(circuits: Bool[Tensor, "circuit edge"], truth: Bool[Tensor, "edge"]) -> tuple[Tensor, Tensor, float]:
    """The ROC points of circuits found at several thresholds (an ACDC τ sweep: `torch.stack([acdc(..., τ) for τ in
    taus])`) against the true circuit: each circuit's false- and true-positive rate, with (0, 0) and (1, 1) added,
    sorted by false- then true-positive rate, and the area under the line through them (as Conmy et al. 2023 do)."""
    circuits, truth = torch.as_tensor(circuits, dtype=torch.bool), torch.as_tensor(truth, dtype=torch.bool)
    if truth.all() or not truth.any():
        raise ValueError("the true circuit must hold some edges and leave some out, or there is no curve to draw.")
    if circuits.ndim != 2 or circuits.shape[1] != truth.shape[0]:
        raise ValueError(f"expected one row per circuit with one entry per edge ({truth.shape[0]}), "
                         f"got shape {tuple(circuits.shape)}.")
    tpr = (circuits & truth).sum(1) / truth.sum()
    fpr = (circuits & ~truth).sum(1) / (~truth).sum()
    points = sorted({(0.0, 0.0), (1.0, 1.0), *zip(fpr.tolist(), tpr.tolist())})
    fpr, tpr = torch.tensor(points).T
    return fpr, tpr, float(torch.trapezoid(tpr, fpr))
