"""mikit: a course kit for mechanistic interpretability that runs offline on a CPU."""

from mikit.session import Session, setup


def load_model(name: str, device: str | None = None):
    """Load a TransformerLens model by name: a hub name, `smollm2-135m`, or a zoo model."""
    from mikit.models import load_model as _load

    return _load(name, device=device)


__all__ = ["Session", "load_model", "setup"]
__version__ = "0.1.0"
