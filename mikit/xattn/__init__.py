"""Cross-attention in text-to-image models: synthetic scenes with known masks and a tiny hooked DiT (issue 6)."""

from mikit.xattn.model import TinyT2I, TinyT2IConfig
from mikit.xattn.scenes import Scene, SceneObject, make_scenes, tokenize

__all__ = ["Scene", "SceneObject", "TinyT2I", "TinyT2IConfig", "make_scenes", "tokenize"]
