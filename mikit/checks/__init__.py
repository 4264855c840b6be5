"""Inline checks: compare a student's function or result with the reference, say what is wrong.

One module per notebook (`mikit.checks.induction_heads` for 01, ...). A check either prints
a line starting with ✓ or raises `CheckFailed` with one sentence; `mikit grade` gives an
exercise its points when its check cell runs without an error, as nbgrader does.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
from torch import Tensor


class CheckFailed(AssertionError):
    """A check's verdict: one sentence saying what is wrong, shown without a traceback."""

    def _render_traceback_(self) -> list[str]:
        # IPython calls this instead of printing the traceback: students see the sentence only.
        return [f"\x1b[31m✗ {self}\x1b[0m"]


def passed(name: str, detail: str = "") -> None:
    """Print the success line for exercise `name`."""
    print(f"✓ {name}: correct{'; ' + detail if detail else ''}.")


def call_student(fn: Callable, name: str, *args: Any, **kwargs: Any) -> Any:
    """Call the student's `fn`, turning an unsolved stub or a non-function into one sentence."""
    __tracebackhide__ = True
    if not callable(fn):
        raise CheckFailed(f"`{name}` should be a function, but you passed a {type(fn).__name__}.")
    try:
        return fn(*args, **kwargs)
    except NotImplementedError:
        raise CheckFailed(
            f"`{name}` still raises NotImplementedError: replace the stub with your solution."
        ) from None


def expect_tensor(value: Any, name: str, shape: Sequence[int] | None = None, dims: str = "") -> Tensor:
    """Return `value` if it is a float tensor of `shape`, else fail with what was expected."""
    __tracebackhide__ = True
    if not isinstance(value, Tensor):
        raise CheckFailed(f"`{name}` should return a torch.Tensor, but returned a {type(value).__name__}.")
    if shape is not None and tuple(value.shape) != tuple(shape):
        want = f"({dims})={tuple(shape)}" if dims else str(tuple(shape))
        raise CheckFailed(f"`{name}` should return shape {want}, but returned shape {tuple(value.shape)}.")
    return value.detach().float().cpu()


def expect_number(value: Any, name: str) -> float:
    """Return `value` as a float if it is one number (a Python number or a one-element tensor)."""
    __tracebackhide__ = True
    if isinstance(value, Tensor) and value.numel() == 1:
        return float(value.item())
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    raise CheckFailed(f"`{name}` should return a single number, but returned a {type(value).__name__}.")


def expect_close(
    got: Tensor, want: Tensor, name: str, atol: float = 1e-4, rtol: float = 1e-3, hint: str = ""
) -> None:
    """Fail with the largest mismatch (and a hint for the likely mistake) unless `got` ≈ `want`."""
    __tracebackhide__ = True
    got, want = got.detach().float().cpu(), want.detach().float().cpu()
    if got.shape != want.shape:
        raise CheckFailed(f"`{name}` returned shape {tuple(got.shape)}, expected {tuple(want.shape)}.")
    if torch.isnan(got).any():
        raise CheckFailed(f"`{name}` returned NaN values.")
    if not torch.allclose(got, want, atol=atol, rtol=rtol):
        err = (got - want).abs()
        idx = tuple(int(i) for i in torch.unravel_index(err.argmax(), err.shape))
        where = f" at index {idx}" if got.dim() else ""
        raise CheckFailed(
            f"`{name}` differs from the reference by up to {err.max():.3g}{where} "
            f"(yours {got[idx].item():.4g}, expected {want[idx].item():.4g})"
            + (f"; {hint}" if hint else "")
            + "."
        )


def reject_known_mistakes(got: Tensor, wrongs: list[tuple[Tensor, str]], want: Tensor, atol: float = 1e-5) -> None:
    """Fail with the message of the first known mistake `got` reproduces (and the reference does not)."""
    __tracebackhide__ = True
    for wrong, message in wrongs:
        if got.shape == wrong.shape and torch.allclose(got, wrong, atol=atol) and not torch.allclose(got, want, atol=atol):
            raise CheckFailed(message)
