"""Figures for the notebooks, by topic: plotly heatmaps with hover, circuitsvis attention with widget selectors,
cross-attention heatmaps. Import them from here: `from mikit import viz; viz.heads_heatmap(...)`."""

from mikit.viz.attention import attention_explorer, pattern_png, stack_patterns
from mikit.viz.heads import circuit_diagram, heads_heatmap, positions_heatmap
from mikit.viz.xattn import t2i_explorer, word_heatmaps_png

__all__ = [
    "attention_explorer",
    "circuit_diagram",
    "heads_heatmap",
    "pattern_png",
    "positions_heatmap",
    "stack_patterns",
    "t2i_explorer",
    "word_heatmaps_png",
]
