"""Figures for the notebooks: plotly heatmaps with hover, circuitsvis attention with widget selectors."""

from __future__ import annotations

from typing import Sequence

import plotly.express as px
import plotly.graph_objects as go
import torch
from jaxtyping import Float
from torch import Tensor


def heads_heatmap(
    scores: Float[Tensor, "layer head"], title: str, zmid: float | None = None, label: str = "score"
) -> go.Figure:
    """Layer × head heatmap; hover shows `L{layer}H{head}` and the score."""
    scores = scores.detach().float().cpu()
    diverging = zmid is not None or bool((scores < 0).any())
    fig = px.imshow(
        scores.numpy(),
        labels={"x": "head", "y": "layer", "color": label},
        color_continuous_scale="RdBu" if diverging else "Blues",
        color_continuous_midpoint=(zmid if zmid is not None else 0.0) if diverging else None,
        aspect="auto",
        title=title,
    )
    n_layers, n_heads = scores.shape
    fig.update_traces(
        customdata=[[f"L{layer}H{head}" for head in range(n_heads)] for layer in range(n_layers)],
        hovertemplate="%{customdata}: %{z:.3f}<extra></extra>",
    )
    fig.update_layout(height=max(250, 22 * n_layers + 120), width=max(350, 45 * n_heads + 200))
    return fig


def attention_explorer(
    str_tokens: Sequence[str], patterns: Float[Tensor, "layer head q k"], title: str = "attention"
):
    """Pick a layer (slider) and a head (dropdown, or all heads) to see its attention with circuitsvis."""
    import circuitsvis as cv
    import ipywidgets as widgets
    from IPython.display import display

    patterns = patterns.detach().float().cpu()
    n_layers, n_heads = patterns.shape[:2]
    layer = widgets.IntSlider(value=0, min=0, max=n_layers - 1, description="layer")
    head = widgets.Dropdown(options=[("all heads", -1)] + [(f"head {h}", h) for h in range(n_heads)], description="head")
    out = widgets.Output()

    def render(_=None) -> None:
        out.clear_output(wait=True)
        with out:
            if head.value < 0:
                display(cv.attention.attention_patterns(list(str_tokens), patterns[layer.value]))
            else:
                display(cv.attention.attention_pattern(list(str_tokens), patterns[layer.value, head.value]))

    layer.observe(render, names="value")
    head.observe(render, names="value")
    render()
    return widgets.VBox([widgets.HTML(f"<b>{title}</b>"), widgets.HBox([layer, head]), out])


def stack_patterns(cache, n_layers: int, batch_index: int = 0) -> Float[Tensor, "layer head q k"]:
    """All layers' attention patterns for one sequence of a TransformerLens cache."""
    return torch.stack([cache["pattern", layer][batch_index] for layer in range(n_layers)])
