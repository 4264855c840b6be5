"""mikit: a course kit for mechanistic interpretability that runs offline on a CPU."""

from mikit.session import Session, setup


def load_model(name: str, device: str | None = None):
    """Load a TransformerLens model by name: a hub name, `smollm2-135m`, or a zoo model."""
    from mikit.models import load_model as _load

    return _load(name, device=device)


def list_models(*, show: bool = True) -> list[dict]:
    """Print (with `show`) and return every model the kit loads: where it runs, its size, what it is good for."""
    from mikit.models import list_models as _list

    return _list(show=show)


__all__ = ["Session", "list_models", "load_model", "setup"]
__version__ = "0.1.0"
