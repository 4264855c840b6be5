"""Figures for the notebooks: plotly heatmaps with hover, circuitsvis attention with widget selectors."""

from __future__ import annotations

from typing import Sequence

import plotly.express as px
import plotly.graph_objects as go
import torch
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


def pattern_png(str_tokens: Sequence[str], pattern: Float[Tensor, "q k"], title: str) -> bytes:
    """One head's attention pattern as a PNG heatmap with the tokens on both axes."""
    import io

    # The object API, not pyplot: it leaves the notebook's inline backend and open figures alone.
    from matplotlib.figure import Figure

    n = len(str_tokens)
    size = min(10, max(4, 0.18 * n + 2))
    fig = Figure(figsize=(size, size))
    ax = fig.subplots()
    ax.imshow(pattern.detach().float().cpu().numpy(), cmap="Blues", vmin=0, vmax=1)
    step = max(1, n // 40)  # at most ~40 labels per axis stay readable
    ticks = list(range(0, n, step))
    labels = [repr(str_tokens[i])[1:-1] for i in ticks]
    ax.set_xticks(ticks, labels, rotation=90, fontsize=7)
    ax.set_yticks(ticks, labels, fontsize=7)
    ax.set(xlabel="key (attended to)", ylabel="query (attending)", title=title)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=80)
    return buffer.getvalue()


def attention_explorer(
    str_tokens: Sequence[str],
    patterns: Float[Tensor, "layer head q k"],
    title: str = "attention",
    layer: int = 0,
    head: int = 0,
):
    """Pick a layer (slider) and a head (dropdown) to see its attention pattern over the tokens."""
    # A PNG in an Image widget, not circuitsvis in an Output widget: the 1.3 MB of inlined JS
    # circuitsvis sends offline makes nbclient (grading, CI) stall until its timeout.
    import ipywidgets as widgets

    patterns = patterns.detach().float().cpu()
    n_layers, n_heads = patterns.shape[:2]
    layer_slider = widgets.IntSlider(value=layer, min=0, max=n_layers - 1, description="layer")
    head_menu = widgets.Dropdown(options=[(f"head {h}", h) for h in range(n_heads)], value=head, description="head")
    image = widgets.Image(format="png")

    def render(_=None) -> None:
        image.value = pattern_png(
            str_tokens, patterns[layer_slider.value, head_menu.value], f"{title}: L{layer_slider.value}H{head_menu.value}"
        )

    layer_slider.observe(render, names="value")
    head_menu.observe(render, names="value")
    render()
    return widgets.VBox([widgets.HBox([layer_slider, head_menu]), image])


def stack_patterns(cache, n_layers: int, batch_index: int = 0) -> Float[Tensor, "layer head q k"]:
    """All layers' attention patterns for one sequence of a TransformerLens cache."""
    return torch.stack([cache["pattern", layer][batch_index] for layer in range(n_layers)])


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


def word_heatmaps_png(image: Float[Tensor, "3 h w"], heats: Float[Tensor, "word h w"], words: Sequence[str],
                      title: str = "") -> bytes:
    """A generated image beside one heatmap overlay per word, as PNG bytes."""
    import io

    from matplotlib.figure import Figure

    image = image.detach().float().cpu().permute(1, 2, 0).clamp(0, 1).numpy()
    fig = Figure(figsize=(1.6 * (len(words) + 1), 2.0))
    axes = fig.subplots(1, len(words) + 1, squeeze=False)[0]
    axes[0].imshow(image)
    axes[0].set_title("image", fontsize=8)
    for ax, word, heat in zip(axes[1:], words, heats.detach().float().cpu()):
        ax.imshow(image)
        ax.imshow(heat.numpy(), cmap="jet", alpha=0.5, vmin=0, vmax=1)
        ax.set_title(word, fontsize=8)
    for ax in axes:
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=80)
    return buffer.getvalue()


def t2i_explorer(model, caption: str = "a large red circle left of a small blue square", steps: int = 20,
                 guidance: float = 3.0, seed: int = 0):
    """Type a caption, generate it, and see each word's cross-attention heatmap; sliders pick the layer and
    the sampling step (-1: averaged over all)."""
    import ipywidgets as widgets

    from mikit.xattn.attention import CrossAttentionStore, word_heatmap
    from mikit.xattn.scenes import tokenize
    from mikit.xattn.training import sample

    text = widgets.Text(value=caption, description="caption", continuous_update=False, layout=widgets.Layout(width="70%"))
    seed_box = widgets.IntText(value=seed, description="seed", layout=widgets.Layout(width="150px"))
    layer = widgets.IntSlider(value=-1, min=-1, max=model.cfg.n_layers - 1, description="layer")
    step = widgets.IntSlider(value=-1, min=-1, max=steps - 1, description="step")
    image = widgets.Image(format="png")
    message = widgets.HTML()
    state: dict = {}

    def generate(_=None) -> None:
        words = text.value.replace(",", " ,").split()
        try:
            ids = tokenize(words, model.cfg.caption_length)[None]
        except ValueError as error:
            message.value = f"<span style='color:#c0392b'>{error}</span>"
            state.clear()  # the last picture belongs to another caption: hide it, and let sliders not redraw it
            image.layout.display = "none"
            return
        message.value = ""
        with CrossAttentionStore(model, n_prompts=1) as store:
            state["image"] = sample(model, ids, steps=steps, guidance=guidance, seed=seed_box.value)[0]
        state["maps"], state["words"] = store.stacked(), words
        render()

    def render(_=None) -> None:
        if "maps" not in state:
            return
        pick = lambda value: None if value < 0 else [value]  # noqa: E731
        heats = torch.cat([word_heatmap(state["maps"], i + 1, steps=pick(step.value), layers=pick(layer.value))
                           for i in range(len(state["words"]))])
        where = f"layer {layer.value if layer.value >= 0 else 'all'}, step {step.value if step.value >= 0 else 'all'}"
        image.value = word_heatmaps_png(state["image"], heats, state["words"], where)
        image.layout.display = None

    text.observe(generate, names="value")
    seed_box.observe(generate, names="value")
    layer.observe(render, names="value")
    step.observe(render, names="value")
    generate()
    return widgets.VBox([widgets.HBox([text, seed_box]), widgets.HBox([layer, step]), message, image])
