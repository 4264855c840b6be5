"""A picture of a circuit on a model's computational graph (`mikit.circuits`), edge width by score."""

from __future__ import annotations

import plotly.graph_objects as go
import torch
from jaxtyping import Bool, Float
from torch import Tensor

from mikit.circuits import Graph

# Where an edge ends on its receiver's node: queries left, keys centre, values right, from below.
_INPUT_OFFSET = {"q": -0.18, "k": 0.0, "v": 0.18}
_INPUT_COLOUR = {"q": "#1f77b4", "k": "#2ca02c", "v": "#d62728", "": "#555555"}


def _node_positions(graph: Graph) -> dict[str, tuple[float, float]]:
    """Sources and logits in rows from the bottom (input) up: each layer's heads, then its MLP, then the logits."""
    middle = (graph.n_heads - 1) / 2
    positions, row = {"input": (middle, 0.0)}, 1.0
    for layer in range(graph.n_layers):
        for head in range(graph.n_heads):
            positions[f"a{layer}.h{head}"] = (float(head), row)
        row += 1
        if not graph.attn_only:
            positions[f"m{layer}"] = (middle, row)
            row += 1
    positions["logits"] = (middle, row)
    return positions


def _fed(graph: Graph, node: str) -> list[str]:
    """The nodes a receiver's node name stands for: a key/value group (a1.kv0) feeds its query heads."""
    if ".kv" not in node:
        return [node]
    layer, group = node[1:].split(".kv")
    size = graph.n_heads // graph.n_kv_heads
    return [f"a{layer}.h{h}" for h in range(int(group) * size, (int(group) + 1) * size)]


def _end(graph: Graph, receiver: str, positions: dict) -> tuple[float, float, str, list[str]]:
    """Where an edge into `receiver` (a0.h1<q>, a0.kv0<k>, m1, logits) ends, which input it is, the nodes it feeds."""
    node, _, kind = receiver.partition("<")
    kind, fed = kind.rstrip(">"), _fed(graph, node)
    x = sum(positions[name][0] for name in fed) / len(fed)  # a group's edge ends between its heads
    return x + _INPUT_OFFSET.get(kind, 0.0), positions[fed[0]][1] - 0.2, kind, fed


def circuit_graph(
    graph: Graph, scores: Float[Tensor, "edge"], present: Bool[Tensor, "edge"] | None = None, top: int = 30,
    title: str = "circuit",
) -> go.Figure:
    """The edges of `present` (default: the `top` edges by |score|) from source to receiver input, line width by
    |score|; queries blue, keys green, values red. Nodes with an edge drawn are dark, the others faint."""
    scores = torch.as_tensor(scores, dtype=torch.float).flatten()
    if scores.shape[0] != graph.n_edges:
        raise ValueError(f"expected one score per edge ({graph.n_edges}), got {scores.shape[0]}.")
    if present is None:
        present = torch.zeros(graph.n_edges, dtype=torch.bool)
        present[scores.abs().topk(min(top, graph.n_edges)).indices] = True
    drawn = torch.as_tensor(present, dtype=torch.bool).nonzero().flatten().tolist()
    positions = _node_positions(graph)
    largest = max((abs(scores[e].item()) for e in drawn), default=0.0) or 1.0
    fig, used = go.Figure(), {"logits"}
    for e in sorted(drawn, key=lambda e: abs(scores[e].item())):  # the strongest on top
        source, receiver = graph.edge_names[e].split("->")
        (x0, y0), (x1, y1, kind, fed) = positions[source], _end(graph, receiver, positions)
        used |= {source, *fed}
        fig.add_trace(go.Scatter(
            x=[x0, x1], y=[y0 + 0.2, y1], mode="lines", name="edge", showlegend=False,
            line=dict(width=0.5 + 7.5 * abs(scores[e].item()) / largest, color=_INPUT_COLOUR[kind]),
            opacity=0.75, hoverinfo="text", hovertext=f"{graph.edge_names[e]}: {scores[e].item():+.3g}",
        ))
    names = list(positions)
    fig.add_trace(go.Scatter(
        x=[positions[n][0] for n in names], y=[positions[n][1] for n in names], mode="markers+text", name="node",
        text=names, textposition="middle center", hoverinfo="text", hovertext=names, showlegend=False,
        marker=dict(size=36, symbol="square", line=dict(width=1),
                    color=["#f2c14e" if n in used else "#eeeeee" for n in names],
                    opacity=[1.0 if n in used else 0.4 for n in names]),
    ))
    for kind in ("q", "k", "v"):  # a legend for the input kinds
        fig.add_trace(go.Scatter(x=[None], y=[None], mode="lines", name=f"into {dict(q='query', k='key', v='value')[kind]}",
                                 line=dict(color=_INPUT_COLOUR[kind], width=3)))
    top_row = positions["logits"][1]
    fig.update_xaxes(visible=False, range=[-0.7, graph.n_heads - 0.3])
    fig.update_yaxes(visible=False, range=[-0.5, top_row + 0.5])
    fig.update_layout(title=f"{title}: {len(drawn)} edges", plot_bgcolor="white",
                      width=160 + 110 * graph.n_heads, height=180 + 130 * top_row,
                      legend=dict(orientation="h", yanchor="top", y=-0.02, x=0))
    return fig
