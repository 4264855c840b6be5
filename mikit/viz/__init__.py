"""Figures for the notebooks, by topic: plotly heatmaps with hover, circuitsvis attention with widget selectors,
SAE latent cards, dashboard and steering table, cross-attention heatmaps, circuits on a model's computational graph. Import them from here:
`from mikit import viz; viz.heads_heatmap(...)`."""

from mikit.viz.attention import attention_explorer, pattern_png, stack_patterns
from mikit.viz.circuits import circuit_graph
from mikit.viz.heads import circuit_diagram, heads_heatmap, positions_heatmap
from mikit.viz.sae import activation_histogram, latent_card, latent_dashboard, steering_table, top_contexts_html
from mikit.viz.xattn import t2i_explorer, word_heatmaps_png

__all__ = [
    "activation_histogram",
    "attention_explorer",
    "circuit_diagram",
    "circuit_graph",
    "heads_heatmap",
    "latent_card",
    "latent_dashboard",
    "pattern_png",
    "positions_heatmap",
    "stack_patterns",
    "steering_table",
    "t2i_explorer",
    "top_contexts_html",
    "word_heatmaps_png",
]
