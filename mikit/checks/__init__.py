"""Inline checks: compare a student's function or result with the reference, say what is wrong.

One module per notebook (`mikit.checks.induction_heads` for 01, ...). A check either prints
a line starting with ✓ or raises `CheckFailed` with one sentence.

The same checks are the hidden tests: `mikit grade` runs each one in its own process under
`hidden_variant(seed)`, which changes every seed (`seeded`) and shape (`size`) the check draws,
and gives it the student's function as a `mikit.hidden.RemoteFunction`. Each checks module
lists its exercises in `EXERCISES`: the names the check receives from the notebook, how the
grader builds the check's other arguments, and the reference functions a solution may not call.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

import torch
from torch import Tensor

from mikit.hidden import hooks_left, recipe, take_hooks_off

# notebook id (as `mikit build` writes it) -> its checks module
NOTEBOOK_CHECKS = {
    "01_induction_heads": "mikit.checks.induction_heads",
    "02_ioi": "mikit.checks.ioi",
    "03_activation_patching": "mikit.checks.patching",
    "04_sparse_autoencoders": "mikit.checks.sae",
    "05_cross_attention": "mikit.checks.cross_attention",
    "06_circuit_discovery": "mikit.checks.circuits",
    "07_toy_models": "mikit.checks.toys",
    "08_probes_and_steering": "mikit.checks.steering",
}


@dataclass(frozen=True)
class Exercise:
    """What the grader needs to run an exercise's check as a hidden test.

    `students`: the notebook names passed to the check first (functions, or a value such as a set of heads).
    `context`: builds the check's remaining arguments in the grader (models via `@recipe` functions).
    `forbidden`: reference functions the student's code may not call while it is graded.
    """

    check: Callable[..., None]
    students: tuple[str, ...]
    context: Callable[[], tuple] = tuple
    forbidden: tuple[Callable, ...] = ()


_variant = 0  # 0: the check as the notebook runs it; otherwise the grader's hidden seed


@contextmanager
def hidden_variant(seed: int) -> Iterator[None]:
    """Run checks with hidden inputs: other seeds, other shapes (`seed` > 0), and no values in messages."""
    global _variant
    if seed <= 0:
        raise ValueError(f"a hidden variant needs a positive seed, got {seed}.")
    before, _variant = _variant, seed
    try:
        yield
    finally:
        _variant = before


def hidden() -> bool:
    """Whether the check is running as a hidden test."""
    return _variant != 0


def seeded(seed: int) -> torch.Generator:
    """A generator for the check's `seed`; under the grader it is shifted by the hidden seed."""
    return torch.Generator().manual_seed(seed + 1_000_003 * _variant)


def size(n: int, step: int = 1) -> int:
    """`n` in the notebook; under the grader one of n + step, n + 2·step, n + 3·step (fixed per hidden seed)."""
    return n if not _variant else n + step * (1 + _variant % 3)


def reveal(text: str, instead: str = "") -> str:
    """`text` (values of the check's inputs or of the reference) in the notebook; `instead` under the grader."""
    return instead if _variant else text


@recipe
def offline_model(name: str) -> Any:
    """One of the kit's offline models (zoo or SmolLM2) on the CPU, as a hidden test's context."""
    from mikit.models import load_model

    return load_model(name, device="cpu")


@recipe
def hook_point(name: str) -> Any:
    """A `HookPoint` named `name`, as TransformerLens passes to a hook (checks call hooks with it)."""
    from transformer_lens.hook_points import HookPoint

    hook = HookPoint()
    hook.name = name
    return hook


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
        values = reveal(f" by up to {err.max():.3g}{where} (yours {got[idx].item():.4g}, expected {want[idx].item():.4g})")
        raise CheckFailed(f"`{name}` differs from the reference{values}" + (f"; {hint}" if hint else "") + ".")


def _gap(a: Tensor, b: Tensor, finite_only: bool = False) -> float:
    """Largest |a - b|; equal infinities count as 0, NaN as infinitely far (or, with `finite_only`, both ignored)."""
    gap = (a - b).abs().masked_fill(a == b, 0.0)
    if finite_only:
        gap = gap[gap.isfinite()]
        return float(gap.max()) if gap.numel() else 0.0
    return float(gap.nan_to_num(nan=float("inf")).max()) if gap.numel() else 0.0


def reject_known_mistakes(got: Tensor, wrongs: list[tuple[Tensor, str]], want: Tensor, atol: float = 1e-5) -> None:
    """Fail with the message of the first known mistake `got` reproduces (and the reference does not).

    `got` reproduces a mistake when it is within `atol` of it, or within 1 % of the mistake's own distance
    from the reference: float rounding of an equivalent wrong formula (`s / d` against `s * (1 / d)`) differs
    by more than 1e-5 on some CPUs, yet stays far closer to the mistake than the mistake is to the answer."""
    __tracebackhide__ = True
    if torch.allclose(got, want, atol=atol):
        return
    for wrong, message in wrongs:
        if got.shape == wrong.shape and _gap(got, wrong) <= max(atol, 0.01 * _gap(wrong, want, finite_only=True)):
            raise CheckFailed(message)


def expect_no_hooks_left(model, name: str) -> None:
    """Fail if the student's function left a hook on the model (and take it off, so later checks run clean).

    Under the grader the student's kernel does the same after each call and the grader raises `hook_left`."""
    __tracebackhide__ = True
    left = hooks_left(model)
    take_hooks_off(model)
    if left:
        raise hook_left(name, left[0])


def hook_left(name: str, point: str) -> CheckFailed:
    """The verdict on a function that returned with a hook still on the model (at hook point `point`)."""
    return CheckFailed(
        f"a hook stayed on the model after `{name}` returned (on {point}), so every later run would carry your "
        "patch too: attach it for one run only, with model.run_with_hooks(...) or `with model.hooks(...)`, or "
        "call model.reset_hooks() after the run"
    )
