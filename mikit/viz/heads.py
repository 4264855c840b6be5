"""Head-level figures: (layer, head) and (layer, pos) heatmaps with hover, and circuit diagrams."""

from __future__ import annotations

from typing import Sequence

import plotly.express as px
import plotly.graph_objects as go
from jaxtyping import Float
from torch import Tensor


def heads_heatmap(
    scores: Float[Tensor, "layer head"], title: str, zmid: float | None = None, label: str = "score",
    layers: Sequence[int] | None = None,
) -> go.Figure:
    """Layer × head heatmap; hover shows `L{layer}H{head}` and the score. `layers` names the rows of a subset."""
    scores = scores.detach().float().cpu()
    n_layers, n_heads = scores.shape
    layers = list(range(n_layers)) if layers is None else list(layers)
    if len(layers) != n_layers:
        raise ValueError(f"layers names {len(layers)} rows, but scores has {n_layers}.")
    diverging = zmid is not None or bool((scores < 0).any())
    fig = px.imshow(
        scores.numpy(),
        y=[str(layer) for layer in layers],
        labels={"x": "head", "y": "layer", "color": label},
        color_continuous_scale="RdBu" if diverging else "Blues",
        color_continuous_midpoint=(zmid if zmid is not None else 0.0) if diverging else None,
        aspect="auto",
        title=title,
    )
    fig.update_traces(
        customdata=[[f"L{layer}H{head}" for head in range(n_heads)] for layer in layers],
        hovertemplate="%{customdata}: %{z:.3f}<extra></extra>",
    )
    fig.update_xaxes(dtick=1)
    fig.update_yaxes(dtick=1 if n_layers <= 16 else 2)
    fig.update_layout(height=max(320, 22 * n_layers + 140), width=max(420, 45 * n_heads + 220))
    return fig


def positions_heatmap(
    scores: Float[Tensor, "layer pos"], str_tokens: Sequence[str], title: str, label: str = "score"
) -> go.Figure:
    """Layer × position heatmap with the prompt's tokens on the x axis (numbered: a name may occur twice)."""
    scores = scores.detach().float().cpu()
    n_layers, n_pos = scores.shape
    if len(str_tokens) != n_pos:
        raise ValueError(f"str_tokens has {len(str_tokens)} tokens, but scores has {n_pos} positions.")
    columns = [f"{token} ({pos})" for pos, token in enumerate(str_tokens)]
    fig = px.imshow(
        scores.numpy(), x=columns, y=[str(layer) for layer in range(n_layers)],
        labels={"x": "position", "y": "layer", "color": label},
        color_continuous_scale="RdBu", color_continuous_midpoint=0.0, aspect="auto", title=title,
    )
    fig.update_traces(hovertemplate="layer %{y}, %{x}: %{z:.3f}<extra></extra>")
    fig.update_yaxes(dtick=1 if n_layers <= 16 else 2)
    fig.update_layout(height=max(320, 16 * n_layers + 160), width=max(480, 50 * n_pos + 220))
    return fig


def circuit_diagram(classes: dict[str, Sequence[tuple[int, int]]], title: str = "circuit") -> go.Figure:
    """Heads as boxes in columns, one column per class in the order given, read left to right into the logits."""
    columns = [(name, list(heads)) for name, heads in classes.items() if heads] + [("logits", [])]
    fig = go.Figure()
    positions: list[list[tuple[float, float]]] = []
    for x, (name, heads) in enumerate(columns):
        labels = [f"L{layer}H{head}" for layer, head in heads] or ["IO − S"]
        ys = [(len(labels) - 1) / 2 - i for i in range(len(labels))]
        positions.append([(x, y) for y in ys])
        fig.add_trace(go.Scatter(
            x=[x] * len(labels), y=ys, mode="markers+text", text=labels, textposition="middle center",
            marker=dict(size=46, symbol="square", color=px.colors.qualitative.Pastel[x % 10], line=dict(width=1)),
            hovertext=[f"{name}: {label}" for label in labels], hoverinfo="text", name=name,
        ))
        fig.add_annotation(x=x, y=max(ys) + 0.9, text=f"<b>{name}</b>", showarrow=False)
    for left, right in zip(positions, positions[1:]):
        for x0, y0 in left:
            for x1, y1 in right:
                fig.add_annotation(x=x1 - 0.18, y=y1, ax=x0 + 0.18, ay=y0, xref="x", yref="y", axref="x", ayref="y",
                                   showarrow=True, arrowhead=2, arrowwidth=0.6, arrowcolor="rgba(90,90,90,0.35)")
    tallest = max(len(p) for p in positions)
    fig.update_xaxes(visible=False, range=[-0.6, len(columns) - 0.4])
    fig.update_yaxes(visible=False, range=[-tallest / 2 - 0.3, tallest / 2 + 0.6])
    fig.update_layout(title=title, showlegend=False, height=110 + 60 * tallest, width=170 * len(columns) + 80,
                      plot_bgcolor="white")
    return fig
