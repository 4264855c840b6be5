"""Cross-attention in the text-to-image model: word heatmaps over an image, and the interactive explorer."""

from __future__ import annotations

from typing import Sequence

import torch
from jaxtyping import Float
from torch import Tensor


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
