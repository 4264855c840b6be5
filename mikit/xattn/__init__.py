"""Cross-attention in text-to-image models: synthetic scenes with known masks (more to come, see issue 6)."""

from mikit.xattn.scenes import Scene, SceneObject, make_scenes, tokenize

__all__ = ["Scene", "SceneObject", "make_scenes", "tokenize"]
