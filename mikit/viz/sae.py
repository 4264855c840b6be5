"""SAE latents and steering, shown: top contexts shaded by activation, histograms, latent cards, the
latent dashboard widget, and a side-by-side table of steered generations.

    latent_card(index, model, sae, 42)          # static HTML: contexts, histogram, boosted/suppressed tokens
    latent_dashboard(index, model, sae)         # the same, with a latent picker and an explanation box
    steering_table(model, sae, 42, 20.0, ["I went to the", "My favourite"])    # without | with, side by side

The data come from `mikit.sae.latents` (the index, logit effects) and `mikit.sae.steering` (generation).
"""

from __future__ import annotations

import html
from typing import Sequence

import plotly.graph_objects as go
import torch
from transformer_lens import HookedTransformer

from mikit.sae.architectures import SAE
from mikit.sae.latents import LatentIndex, logit_effects
from mikit.sae.steering import generate_steered


def _context_html(tokens: list[str], values: list[float], focus: int, peak: float) -> str:
    spans = []
    for i, (token, value) in enumerate(zip(tokens, values)):
        alpha = 0.0 if peak <= 0 else max(0.0, min(1.0, value / peak))
        border = "border-bottom:2px solid #c0392b;" if i == focus else ""
        title = f' title="{value:.2f}"' if value > 0 else ""
        text = html.escape(token).replace("\n", "⏎")
        spans.append(f'<span style="background:rgba(230,126,34,{alpha:.2f});{border}white-space:pre"{title}>{text}</span>')
    return "".join(spans)


@torch.no_grad()
def top_contexts_html(
    index: LatentIndex, model: HookedTransformer, sae: SAE, hook_name: str, latent: int, n: int = 8,
    before: int = 12, after: int = 4,
) -> str:
    """The latent's strongest contexts as HTML, each token shaded by the latent's activation on it."""
    examples = index.examples(latent, n)
    if not examples:
        return f"<p>Latent {latent} never fired on the {index.n_tokens:,} indexed tokens (a dead latent).</p>"
    layer = model.hook_dict[hook_name].layer() if hook_name.startswith("blocks.") else 0
    rows = index.tokens[[row for row, _, _ in examples]]
    _, cache = model.run_with_cache(rows, names_filter=hook_name, stop_at_layer=layer + 1)
    acts = sae.encode(cache[hook_name].float())[..., latent]
    acts[:, 0] = 0  # BOS: the SAE is not meant to read it
    peak = examples[0][2]
    lines = []
    for i, (_, position, value) in enumerate(examples):
        lo, hi = max(1, position - before), min(rows.shape[1], position + after + 1)
        tokens = [model.tokenizer.decode([int(t)]) for t in rows[i, lo:hi]]
        lines.append(f"<div style='font-family:monospace;margin:2px 0'><b>{value:6.2f}</b>&nbsp; "
                     f"{_context_html(tokens, acts[i, lo:hi].tolist(), position - lo, peak)}</div>")
    return "".join(lines)


def activation_histogram(index: LatentIndex, latent: int) -> go.Figure:
    """A bar chart of the latent's nonzero activations over the indexed tokens."""
    index._check_latent(latent)
    counts = index.histograms[latent]
    width = float(index.top_values[latent, 0]) / counts.shape[0]
    centres = [(i + 0.5) * width for i in range(counts.shape[0])]
    fig = go.Figure(go.Bar(x=centres, y=counts.tolist(), width=width * 0.95, marker_color="#e67e22"))
    frequency = float(index.fire_frequency()[latent])
    fig.update_layout(
        title=f"latent {latent}: fires on {frequency:.3%} of {index.n_tokens:,} tokens",
        xaxis_title="activation", yaxis_title="tokens", yaxis_type="log", height=260, width=460,
        margin=dict(l=50, r=10, t=40, b=40),
    )
    return fig


def _effects_html(effects: tuple[list[tuple[str, float]], list[tuple[str, float]]]) -> str:
    def column(title: str, items: list[tuple[str, float]], colour: str) -> str:
        cells = "".join(f"<tr><td style='font-family:monospace;white-space:pre'>{html.escape(repr(t)[1:-1])}</td>"
                        f"<td style='color:{colour};text-align:right'>{v:+.2f}</td></tr>" for t, v in items)
        return f"<td style='vertical-align:top;padding-right:24px'><b>{title}</b><table>{cells}</table></td>"

    boosted, suppressed = effects
    return (f"<table><tr>{column('boosted logits', boosted, '#1a7f37')}"
            f"{column('suppressed logits', suppressed, '#c0392b')}</tr></table>")


def latent_card(
    index: LatentIndex, model: HookedTransformer, sae: SAE, latent: int, hook_name: str | None = None, n: int = 8
):
    """Everything about one latent, displayed inline: contexts, histogram and logit effects."""
    from IPython.display import HTML, display

    hook_name = hook_name or sae.metadata["hook_name"]
    display(HTML(f"<h4>Latent {latent}</h4>" + top_contexts_html(index, model, sae, hook_name, latent, n)))
    activation_histogram(index, latent).show()
    display(HTML(_effects_html(logit_effects(model, sae, latent))))


def latent_dashboard(
    index: LatentIndex, model: HookedTransformer, sae: SAE, latent: int = 0, hook_name: str | None = None,
    explanations: dict[int, str] | None = None, n: int = 8,
):
    """A widget: pick a latent, read its contexts, histogram and logit effects, and write what it means.

    What you type in the explanation box is kept in `explanations` (a dict latent → text, also
    reachable as `dashboard.explanations`); save it with `json.dump(dashboard.explanations, f)`.
    """
    import ipywidgets as widgets

    hook_name = hook_name or sae.metadata["hook_name"]
    explanations = {} if explanations is None else explanations
    picker = widgets.BoundedIntText(value=latent, min=0, max=index.d_sae - 1, description="latent")
    strongest = widgets.Button(description="next strongest", tooltip="the next latent by top activation")
    contexts, effects = widgets.HTML(), widgets.HTML()
    histogram = widgets.Output()
    note = widgets.Textarea(placeholder="What does this latent represent? (kept in dashboard.explanations)",
                            layout=widgets.Layout(width="95%", height="60px"))
    by_strength = index.top_values[:, 0].argsort(descending=True).tolist()

    def render(_=None) -> None:
        chosen = picker.value
        contexts.value = top_contexts_html(index, model, sae, hook_name, chosen, n)
        effects.value = _effects_html(logit_effects(model, sae, chosen))
        histogram.clear_output(wait=True)
        with histogram:
            activation_histogram(index, chosen).show()
        note.value = explanations.get(chosen, "")

    def remember(change) -> None:
        if change["new"]:
            explanations[picker.value] = change["new"]

    def next_strongest(_) -> None:
        current = by_strength.index(picker.value)
        picker.value = by_strength[(current + 1) % len(by_strength)]

    picker.observe(render, names="value")
    note.observe(remember, names="value")
    strongest.on_click(next_strongest)
    render()
    box = widgets.VBox([widgets.HBox([picker, strongest]), contexts, widgets.HBox([histogram, effects]), note])
    box.explanations = explanations
    return box


def steering_table(
    model: HookedTransformer, sae: SAE, latent: int, value: float, prompts: Sequence[str], max_new_tokens: int = 30,
    **generate_kwargs,
):
    """Each prompt's continuation without and with steering, side by side (an HTML table)."""
    from IPython.display import HTML

    rows = []
    for prompt in prompts:
        plain, steered = (generate_steered(model, sae, latent, v, prompt, max_new_tokens, **generate_kwargs)
                          for v in (0.0, value))
        cells = "".join(f"<td style='vertical-align:top;white-space:pre-wrap'><b>{html.escape(prompt)}</b>"
                        f"{html.escape(text[len(prompt):] if text.startswith(prompt) else text)}</td>"
                        for text in (plain, steered))
        rows.append(f"<tr>{cells}</tr>")
    return HTML(f"<table><tr><th>without steering</th><th>latent {latent} × {value:.3g}</th></tr>{''.join(rows)}</table>")
