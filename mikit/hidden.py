"""Hidden tests: the grader calls a student's function in the student's kernel and judges the result itself.

The grader (`mikit grade`) runs each exercise's check in its own process, with fresh seeds and shapes,
and hands it a `RemoteFunction` in place of the student's function. Each call travels to the kernel as
data — tensors in safetensors, everything else as JSON, never pickle — runs the student's function
there, and comes back as data. Nothing the student's code does to the kernel (replacing a check,
`torch.allclose`, `print`, `showtraceback`) can reach the grader's comparison.

Objects too rich to send as data (a model, an activation cache, a hook point) are sent as the *recipe*
that built them: a function decorated with `@recipe` and its arguments, rebuilt on the other side.
While the student's function runs, a profiler watches for calls into the reference implementations the
exercise forbids; a call is reported to the grader, which scores the exercise 0.
"""

from __future__ import annotations

import builtins
import functools
import importlib
import inspect
import json
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import Tensor
from transformer_lens import HookedRootModule

REQUEST, REPLY = "request", "reply"  # file stems in a call's folder: NAME.json and NAME.safetensors
MAX_ERROR = 2000  # characters of a student's exception message sent back


class Unencodable(TypeError):
    """A value that has no data form (neither JSON, tensor nor recipe)."""


# --------------------------------------------------------------------------------------------------
# Recipes: objects rebuilt from the function that made them and its (data) arguments.

_active = False  # whether recipes are memoised and recorded (in the grader and in a hidden call)
_memo: dict[str, Any] = {}  # recipe key -> the object it built
_recipe_of: dict[int, tuple[Any, str]] = {}  # id(object) -> (object, recipe key); the object is kept alive


@contextmanager
def active() -> Iterator[None]:
    """Record and memoise recipes while the block runs (outside it a recipe is a plain function call)."""
    global _active
    before, _active = _active, True
    try:
        yield
    finally:
        _active = before


def reset() -> None:
    """Forget every object built so far."""
    _memo.clear()
    _recipe_of.clear()


def _qualified(fn: Callable) -> str:
    return f"{fn.__module__}:{fn.__qualname__}"


def _resolve(qualified: str) -> Any:
    module, _, qualname = qualified.partition(":")
    if not module.startswith("mikit"):
        raise Unencodable(f"only mikit's functions can be named in a hidden call, not {qualified!r}")
    obj = importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


def recipe(fn: Callable) -> Callable:
    """Mark `fn` as a recipe: what it returns can be sent to the other side as a call to `fn`.

    Its arguments must be data (JSON values, other recipes' objects). Inside `active()` results are
    memoised, so a model built twice is the same object, as in the grader.
    """

    @functools.wraps(fn)
    def build(*args: Any, **kwargs: Any) -> Any:
        if not _active:
            return fn(*args, **kwargs)
        tensors: dict[str, Tensor] = {}
        key = json.dumps({"fn": _qualified(build), "args": encode(list(args), tensors), "kwargs": encode(kwargs, tensors)})
        if tensors:
            raise Unencodable(f"recipe {fn.__qualname__} was given a tensor; recipes take data that JSON can hold")
        if key not in _memo:
            _memo[key] = built = fn(*args, **kwargs)
            _recipe_of[id(built)] = (built, key)
            if isinstance(built, tuple):
                for i, part in enumerate(built):
                    if not isinstance(part, (Tensor, int, float, str, bool, type(None))):
                        _recipe_of[id(part)] = (part, json.dumps({"item": i, "of": json.loads(key)}))
        return _memo[key]

    return build


def _rebuild(key: dict) -> Any:
    if "item" in key:
        return _rebuild(key["of"])[key["item"]]
    build = _resolve(key["fn"])
    return build(*decode(key["args"], {}), **decode(key["kwargs"], {}))


# --------------------------------------------------------------------------------------------------
# The codec: Python values <-> JSON + a dict of tensors.


class StudentRef:
    """A name in the student's notebook (a function or a value the check receives)."""

    def __init__(self, name: str):
        self.name = name


def encode(
    value: Any, tensors: dict[str, Tensor], students: Callable[[Any], str | None] = lambda v: None, grad: bool = False
) -> Any:
    """`value` as JSON, its tensors added to `tensors`; `students` names objects that live in the student's kernel.

    With `grad`, a tensor that requires grad arrives as a leaf that requires grad (a call's arguments, so
    that a student's loss can be differentiated in the kernel).
    """

    def enc(v: Any) -> Any:
        if isinstance(v, Tensor):
            key = f"t{len(tensors)}"
            tensors[key] = v.detach().to("cpu", copy=True).contiguous()
            return {"__leaf__" if grad and v.requires_grad else "__tensor__": key}
        if isinstance(v, np.ndarray):
            key = f"t{len(tensors)}"
            tensors[key] = torch.from_numpy(np.ascontiguousarray(v).copy())
            return {"__ndarray__": key}
        if isinstance(v, np.generic):
            return v.item()
        if v is None or isinstance(v, (bool, int, float, str)):
            return v
        if isinstance(v, (tuple, torch.Size)):
            return {"__tuple__": [enc(x) for x in v]}
        if isinstance(v, list):
            return [enc(x) for x in v]
        if isinstance(v, (set, frozenset)):
            return {"__set__": [enc(x) for x in v]}
        if isinstance(v, dict):
            return {"__dict__": [[enc(k), enc(x)] for k, x in v.items()]}
        if isinstance(v, torch.dtype):
            return {"__dtype__": str(v).removeprefix("torch.")}
        if id(v) in _recipe_of:
            return {"__recipe__": json.loads(_recipe_of[id(v)][1])}
        name = students(v)
        if name is not None:
            return {"__student__": name}
        if (inspect.isfunction(v) or inspect.isclass(v)) and v.__module__.startswith("mikit") and "<" not in v.__qualname__:
            return {"__function__": _qualified(v)}
        raise Unencodable(f"a {type(v).__name__} cannot be sent as data")

    return enc(value)


def decode(value: Any, tensors: dict[str, Tensor], students: Callable[[str], Any] = StudentRef) -> Any:
    """The inverse of `encode`."""

    def dec(v: Any) -> Any:
        if isinstance(v, list):
            return [dec(x) for x in v]
        if not isinstance(v, dict):
            return v
        (tag, body), = v.items()
        if tag == "__tensor__":
            return tensors[body]
        if tag == "__leaf__":
            return tensors[body].requires_grad_(True)
        if tag == "__ndarray__":
            return tensors[body].numpy()
        if tag == "__tuple__":
            return tuple(dec(x) for x in body)
        if tag == "__set__":
            return {dec(x) for x in body}
        if tag == "__dict__":
            return {_hashable(dec(k)): dec(x) for k, x in body}
        if tag == "__dtype__":
            return getattr(torch, body)
        if tag == "__recipe__":
            return _rebuild(body)
        if tag == "__student__":
            return students(body)
        if tag == "__function__":
            return _resolve(body)
        raise Unencodable(f"unknown tag {tag!r}")

    return dec(value)


def _hashable(key: Any) -> Any:
    return tuple(key) if isinstance(key, list) else key


def write(folder: Path, stem: str, payload: dict, tensors: dict[str, Tensor]) -> None:
    save_file(tensors, str(folder / f"{stem}.safetensors"))
    (folder / f"{stem}.json").write_text(json.dumps(payload))


def read(folder: Path, stem: str) -> tuple[dict, dict[str, Tensor]]:
    return json.loads((folder / f"{stem}.json").read_text()), load_file(str(folder / f"{stem}.safetensors"))


# --------------------------------------------------------------------------------------------------
# The kernel side: what the grader's snippets call in the student's kernel.

_stash: dict[str, Any] = {}  # what each solution cell defined, taken right after it ran


def _user_namespace() -> dict:
    try:
        return get_ipython().user_ns  # type: ignore[name-defined]  # noqa: F821 (IPython's builtin)
    except NameError:
        return vars(sys.modules["__main__"])


def stash(names: list[str]) -> None:
    """Keep the objects `names` refer to now, so a later cell that reuses a name cannot change what is graded."""
    namespace = _user_namespace()
    _stash.update({name: namespace[name] for name in names if name in namespace})


def _student(name: str) -> Any:
    if name in _stash:
        return _stash[name]
    namespace = _user_namespace()
    if name not in namespace:
        raise NameError(f"`{name}` is not defined in your notebook")
    return namespace[name]


class _Guard:
    """A profiler that notes calls into forbidden functions (however the student reached them)."""

    def __init__(self, forbidden: list[str]):
        self.codes = {}
        for qualified in forbidden:
            fn = inspect.unwrap(_resolve(qualified))
            self.codes[fn.__code__] = qualified.replace(":", ".")
        self.called: list[str] = []

    def __call__(self, frame: Any, event: str, arg: Any) -> None:
        if event == "call" and frame.f_code in self.codes and self.codes[frame.f_code] not in self.called:
            self.called.append(self.codes[frame.f_code])

    def __enter__(self) -> _Guard:
        self.previous = sys.getprofile()
        sys.setprofile(self)
        return self

    def __exit__(self, *exc: Any) -> None:
        if sys.getprofile() is not self:
            self.called.append("(the grader's guard was switched off)")
        sys.setprofile(self.previous)


def _gradients(result: Any, args: list) -> list[Tensor | None] | None:
    """The gradient of a one-number tensor `result` with respect to each argument that requires grad (None elsewhere)."""
    if not (isinstance(result, Tensor) and result.requires_grad and result.numel() == 1):
        return None
    leaves = [i for i, a in enumerate(args) if isinstance(a, Tensor) and a.requires_grad]
    if not leaves:
        return None
    found = torch.autograd.grad(result.sum(), [args[i] for i in leaves], allow_unused=True)
    grads: list[Tensor | None] = [None] * len(args)
    for i, g in zip(leaves, found):
        grads[i] = g
    return grads


def _kernel_reply(folder: Path) -> tuple[dict, dict[str, Tensor]]:
    request, tensors = read(folder, REQUEST)
    out: dict[str, Tensor] = {}
    students = {}

    def named(name: str) -> Any:
        students[name] = _student(name)
        return students[name]

    def student_name(value: Any) -> str | None:
        return next((n for n, v in students.items() if v is value), None)

    try:
        with active():
            if request["op"] == "resolve":
                values = {}
                for name in request["names"]:
                    value = _student(name)
                    values[name] = {"callable": True} if callable(value) else {"value": encode(value, out)}
                return {"values": values}, out
            fn = named(request["name"])
            args = decode(request["args"], tensors, named)
            kwargs = decode(request["kwargs"], tensors, named)
            guard = _Guard(request["forbidden"])
            with guard:
                result = fn(*args, **kwargs)
            same = next((i for i, a in enumerate(args) if isinstance(a, Tensor) and a is result), None)
            try:
                encoded = {"__arg__": same} if same is not None else encode(result, out, student_name)
            except Unencodable:
                return {"unreadable": type(result).__name__, "forbidden": guard.called}, {}
            after = [encode(a, out) if isinstance(a, Tensor) else None for a in args]
            grads = _gradients(result, args)
            if grads is not None:  # a loss of arguments that require grad: its gradient travels back with it
                reply_grads = [None if g is None else encode(g, out) for g in grads]
            reply = {"result": encoded, "args_after": after, "forbidden": guard.called}
            if grads is not None:
                reply["grads"] = reply_grads
            left = _take_students_hooks_off()
            if left:
                reply["hooks_left"] = left
            return reply, out
    except Exception as err:  # the student's exception, reported as data
        _take_students_hooks_off()
        return {"error": {"type": type(err).__name__, "message": str(err)[:MAX_ERROR]}}, {}


def _passing_hooks(point) -> set[int]:
    """The ids of the forward hooks on hook point `point` that are not permanent TransformerLens hooks: those
    added with `add_hook`/`hooks` without `is_permanent`, and those added with PyTorch's register_forward_hook."""
    permanent = {handle.hook.id for handle in point.fwd_hooks if handle.is_permanent}
    return set(point._forward_hooks) - permanent


def hooks_left(model: HookedRootModule) -> list[str]:
    """The hook points of `model` that still carry a hook other than a permanent one (which a model keeps by design)."""
    return [name for name, point in model.hook_dict.items() if _passing_hooks(point)]


def take_hooks_off(model: HookedRootModule) -> None:
    """Remove every hook but the permanent ones, including hooks added with PyTorch's own register_forward_hook."""
    model.reset_hooks()
    for point in model.hook_dict.values():
        for key in _passing_hooks(point):
            del point._forward_hooks[key]


def _take_students_hooks_off() -> list[str]:
    """In the kernel, after a call: the hook points left carrying a hook on the recipes' models, now taken off
    (a hook a student left behind must not reach the next call; the grader fails the call for it)."""
    left = []
    for obj, _ in _recipe_of.values():
        if isinstance(obj, HookedRootModule):
            left += hooks_left(obj)
            take_hooks_off(obj)
    return left


def serve(folder: str) -> None:
    """Answer the grader's request in `folder` (run in the student's kernel by the grader)."""
    reply, tensors = _kernel_reply(Path(folder))
    write(Path(folder), REPLY, reply, tensors)


# --------------------------------------------------------------------------------------------------
# The grader side.


class _KernelGradient(torch.autograd.Function):
    """A kernel's result in the grader, whose backward pass delivers the gradients computed in the kernel."""

    @staticmethod
    def forward(ctx: Any, value: Tensor, grads: list, *leaves: Tensor | None) -> Tensor:
        ctx.grads = [g if leaf is not None else None for g, leaf in zip(grads, leaves)]
        return value.clone()

    @staticmethod
    def backward(ctx: Any, out_grad: Tensor) -> tuple:
        return (None, None, *(None if g is None else (out_grad.sum() * g).to(g.dtype) for g in ctx.grads))


class StudentError(Exception):
    """The student's function raised; the message names the exception, as the student would see it."""


class RemoteFunction:
    """Stands in for a student's function in the grader: each call runs it in the student's kernel."""

    def __init__(self, name: str, run: Callable[[str], None], folder: Path, forbidden: list[str], known: dict):
        self.name, self._run, self._folder, self._forbidden, self._known = name, run, folder, forbidden, known

    def __repr__(self) -> str:
        return f"<your function {self.name}>"

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        tensors: dict[str, Tensor] = {}
        names = {id(v): n for n, v in self._known.items()}
        request = {
            "op": "call", "name": self.name, "forbidden": self._forbidden,
            "args": encode(list(args), tensors, lambda v: names.get(id(v)), grad=True),
            "kwargs": encode(kwargs, tensors, lambda v: names.get(id(v)), grad=True),
        }
        write(self._folder, REQUEST, request, tensors)
        reply, out = self._call()
        if reply.get("forbidden"):
            from mikit.checks import CheckFailed

            raise CheckFailed(
                f"`{self.name}` calls the reference `{reply['forbidden'][0]}`: the exercise asks you to write it yourself"
            )
        if "error" in reply:
            kind, message = reply["error"]["type"], reply["error"]["message"]
            error = getattr(builtins, kind, None)
            if isinstance(error, type) and issubclass(error, Exception) and kind != "StopIteration":
                raise error(message)  # a check may catch a builtin exception to explain it
            raise StudentError(f"`{self.name}` raised {kind}: {message}")
        if "unreadable" in reply:
            from mikit.checks import CheckFailed

            raise CheckFailed(f"`{self.name}` returned a {reply['unreadable']}, which is not a value a check can read")
        if reply.get("hooks_left"):
            from mikit.checks import hook_left

            raise hook_left(self.name, reply["hooks_left"][0])
        for arg, new in zip(args, decode(reply["args_after"], out)):
            if isinstance(arg, Tensor) and isinstance(new, Tensor) and arg.shape == new.shape and not torch.equal(arg, new):
                with torch.no_grad():
                    arg.copy_(new.to(arg.dtype))  # the student's hook edited its input in place
        result = reply["result"]
        if isinstance(result, dict) and "__arg__" in result:
            return args[result["__arg__"]]
        value = decode(result, out, lambda name: self._known[name])
        if "grads" in reply and isinstance(value, Tensor):
            grads = decode(reply["grads"], out)
            leaves = [a if isinstance(a, Tensor) and a.requires_grad and isinstance(g, Tensor) else None for a, g in zip(args, grads)]
            if any(a is not None for a in leaves):
                value = _KernelGradient.apply(value, grads, *leaves)
        return value

    def _call(self) -> tuple[dict, dict[str, Tensor]]:
        reply_file = self._folder / f"{REPLY}.json"
        reply_file.unlink(missing_ok=True)
        self._run(f"__import__('mikit.hidden', fromlist=['serve']).serve({str(self._folder)!r})")
        if not reply_file.exists():
            raise StudentError(f"`{self.name}` did not return (it was stopped, or it stopped the kernel)")
        return read(self._folder, REPLY)


def resolve(names: list[str], run: Callable[[str], None], folder: Path, forbidden: list[str]) -> dict[str, Any]:
    """The student's objects by name: a `RemoteFunction` for a function, the value itself (as data) otherwise."""
    write(folder, REQUEST, {"op": "resolve", "names": names}, {})
    (folder / f"{REPLY}.json").unlink(missing_ok=True)
    run(f"__import__('mikit.hidden', fromlist=['serve']).serve({str(folder)!r})")
    if not (folder / f"{REPLY}.json").exists():
        raise StudentError("the kernel did not answer")
    reply, tensors = read(folder, REPLY)
    if "error" in reply:
        raise StudentError(reply["error"]["message"])
    known: dict[str, Any] = {}
    for name, entry in reply["values"].items():
        known[name] = (
            RemoteFunction(name, run, folder, forbidden, known) if "callable" in entry else decode(entry["value"], tensors)
        )
    return known
