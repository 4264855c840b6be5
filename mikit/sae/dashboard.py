"""Browse an SAE's latents offline: top-activating contexts, activation histogram, logit effects, notes.

    index = LatentIndex.build(model, sae, "blocks.15.hook_resid_pre", rows)   # one pass over rows
    index.save(folder); index = LatentIndex.load(folder)                       # shipped beside the SAE
    latent_card(index, model, sae, 42)          # static HTML: contexts, histogram, boosted/suppressed tokens
    latent_dashboard(index, model, sae)         # the same, with a latent picker and an explanation box
    latents_for_token(index, model.tokenizer, " music")   # latents whose top examples sit on a word

The index keeps, for every latent, its `top_k` largest activations (row, position, value), how often it
fires and a histogram of its nonzero activations, plus the token rows themselves, so a dashboard needs
no model run. A latent's logit effects are W_dec[latent] @ W_U: the tokens whose logits its direction
raises and lowers most when added to the residual stream (the direct path only; with the final norm's
weights folded into W_U, as mikit's models are).
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from pathlib import Path

import plotly.graph_objects as go
import torch
from jaxtyping import Float, Int
from safetensors.torch import load_file, save_file
from torch import Tensor
from tqdm.auto import tqdm
from transformer_lens import HookedTransformer

from mikit.sae.architectures import SAE

INDEX_FILE = "latent_index.safetensors"


@dataclass
class LatentIndex:
    """Per-latent statistics of one SAE over a set of token rows (see the module docstring)."""

    tokens: Int[Tensor, "batch pos"]
    top_values: Float[Tensor, "d_sae top_k"]  # descending; 0 where a latent fired fewer than top_k times
    top_rows: Int[Tensor, "d_sae top_k"]
    top_positions: Int[Tensor, "d_sae top_k"]
    fire_counts: Int[Tensor, "d_sae"]
    histograms: Int[Tensor, "d_sae bins"]  # nonzero activations in bins of width top_values[:, 0] / bins

    @property
    def n_tokens(self) -> int:
        """Tokens scanned (BOS excluded)."""
        return self.tokens.shape[0] * (self.tokens.shape[1] - 1)

    @property
    def d_sae(self) -> int:
        return self.top_values.shape[0]

    def fire_frequency(self) -> Float[Tensor, "d_sae"]:
        """The fraction of scanned tokens on which each latent is nonzero."""
        return self.fire_counts.float() / self.n_tokens

    @classmethod
    @torch.no_grad()
    def build(
        cls, model: HookedTransformer, sae: SAE, hook_name: str, rows: Int[Tensor, "batch pos"], *,
        top_k: int = 20, bins: int = 32, batch_size: int = 16, progress: bool = False,
    ) -> LatentIndex:
        """Run `model` on `rows` (BOS first) up to `hook_name`, encode with `sae`, keep each latent's statistics."""
        if hook_name not in model.hook_dict:
            raise ValueError(f"{hook_name!r} is not a hook point of this model (e.g. 'blocks.0.hook_resid_pre').")
        if rows.ndim != 2 or rows.shape[1] < 2:
            raise ValueError(f"rows must be (n_rows, context >= 2) token ids, not shape {tuple(rows.shape)}.")
        layer = model.hook_dict[hook_name].layer() if hook_name.startswith("blocks.") else 0
        context = rows.shape[1]
        top_values = torch.zeros(sae.d_sae, top_k)
        top_places = torch.full((sae.d_sae, top_k), -1, dtype=torch.long)  # flat index row * context + position
        fire_counts = torch.zeros(sae.d_sae, dtype=torch.long)
        fired_latents, fired_values = [], []
        for start in tqdm(range(0, rows.shape[0], batch_size), desc="indexing latents", disable=not progress):
            batch = rows[start : start + batch_size]
            _, cache = model.run_with_cache(batch, names_filter=hook_name, stop_at_layer=layer + 1)
            latents = sae.encode(cache[hook_name][:, 1:].float())  # (B, T-1, d_sae)
            places = (torch.arange(start, start + batch.shape[0])[:, None] * context
                      + torch.arange(1, context)[None, :]).flatten()
            latents = latents.flatten(0, 1)
            # Running top-k per latent: this batch's activations compete with the best so far.
            values = torch.cat([top_values, latents.T], dim=1)
            candidates = torch.cat([top_places, places.expand(sae.d_sae, -1)], dim=1)
            top_values, chosen = values.topk(top_k, dim=1)
            top_places = candidates.gather(1, chosen)
            fired = latents.nonzero()
            fire_counts += torch.bincount(fired[:, 1], minlength=sae.d_sae)
            fired_latents.append(fired[:, 1])
            fired_values.append(latents[fired[:, 0], fired[:, 1]])
        latent_ids, values = torch.cat(fired_latents), torch.cat(fired_values)
        widths = (top_values[:, 0] / bins).clamp_min(1e-12)
        bin_ids = (values / widths[latent_ids]).long().clamp(0, bins - 1)
        histograms = torch.zeros(sae.d_sae * bins, dtype=torch.long)
        histograms.index_add_(0, latent_ids * bins + bin_ids, torch.ones_like(bin_ids))
        top_places = top_places.clamp_min(0)
        return cls(rows.clone(), top_values, top_places // context, top_places % context, fire_counts,
                   histograms.view(sae.d_sae, bins))

    def save(self, folder: str | Path) -> Path:
        """Write the index as `latent_index.safetensors` into `folder` (e.g. the SAE's own folder)."""
        path = Path(folder) / INDEX_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file({
            "tokens": self.tokens.int(), "top_values": self.top_values.half(), "top_rows": self.top_rows.int(),
            "top_positions": self.top_positions.short(), "fire_counts": self.fire_counts.int(),
            "histograms": self.histograms.int(),
        }, str(path))
        return path

    @classmethod
    def load(cls, folder: str | Path) -> LatentIndex:
        """Read an index written by `save`."""
        path = Path(folder) / INDEX_FILE
        if not path.exists():
            raise FileNotFoundError(f"no {INDEX_FILE} in {Path(folder)}: build one with LatentIndex.build(...).save(folder).")
        t = load_file(str(path))
        return cls(t["tokens"].long(), t["top_values"].float(), t["top_rows"].long(), t["top_positions"].long(),
                   t["fire_counts"].long(), t["histograms"].long())

    def examples(self, latent: int, n: int = 10) -> list[tuple[int, int, float]]:
        """The latent's `n` largest activations as (row, position, value), strongest first."""
        self._check_latent(latent)
        return [(int(r), int(p), float(v)) for r, p, v in
                zip(self.top_rows[latent, :n], self.top_positions[latent, :n], self.top_values[latent, :n]) if v > 0]

    def _check_latent(self, latent: int) -> None:
        if not isinstance(latent, int) or not 0 <= latent < self.d_sae:
            raise ValueError(f"latent must be an integer in [0, {self.d_sae}), not {latent!r}.")


def latents_for_token(index: LatentIndex, tokenizer, token: str, n: int = 5, top_k: int = 10) -> list[int]:
    """The `n` latents whose `top_k` strongest examples most often sit on `token` (e.g. " music"), best first.

    A way to find a latent for a concept on any SAE; latents with no such example are left out.
    """
    target = token.strip().lower()
    counts = []
    for latent in range(index.d_sae):
        tokens = [tokenizer.decode([int(index.tokens[r, p])]) for r, p, _ in index.examples(latent, top_k)]
        hits = sum(t.strip().lower() == target for t in tokens)
        if hits:
            counts.append((-hits, -float(index.top_values[latent, 0]), latent))
    return [latent for *_, latent in sorted(counts)[:n]]

@torch.no_grad()
def logit_effects(
    model: HookedTransformer, sae: SAE, latent: int, k: int = 10
) -> tuple[list[tuple[str, float]], list[tuple[str, float]]]:
    """The `k` tokens whose logits the latent's decoder direction raises most, and the `k` it lowers most."""
    if not 0 <= latent < sae.d_sae:
        raise ValueError(f"latent must be in [0, {sae.d_sae}), not {latent}.")
    direction = sae.W_dec[latent] / sae.W_dec[latent].norm()
    effects = direction.to(model.W_U.dtype) @ model.W_U  # (d_vocab,)
    top, bottom = effects.topk(k), effects.topk(k, largest=False)
    as_strings = lambda result: [(model.tokenizer.decode([int(i)]), float(v)) for v, i in zip(*result)]  # noqa: E731
    return as_strings(top), as_strings(bottom)


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

