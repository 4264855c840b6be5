"""Cross-attention in text-to-image models (issue 6): scenes with known masks, a tiny hooked DiT, attention
stores and DAAM heatmaps, a causal test of them (value ablation), binding and neglect, a tiny captioner,
and the diffusers (Stable Diffusion) side."""

from mikit.xattn.model import TinyT2I, TinyT2IConfig
from mikit.xattn.scenes import Scene, SceneObject, make_scenes, tokenize

# Stable Diffusion (full mode) lives in diffusers_attention; importing diffusers takes seconds, so on first use only.
_DIFFUSERS_NAMES = {
    "DiffusersCrossAttentionStore", "StoreCrossAttention", "attn2_probs_nnsight", "load_stable_diffusion",
    "tiny_unet", "word_heatmap_sd",
}


def __getattr__(name: str):
    if name in _DIFFUSERS_NAMES:
        from mikit.xattn import diffusers_attention

        return getattr(diffusers_attention, name)
    raise AttributeError(f"module 'mikit.xattn' has no attribute {name!r}")


__all__ = ["Scene", "SceneObject", "TinyT2I", "TinyT2IConfig", "make_scenes", "tokenize", *sorted(_DIFFUSERS_NAMES)]
