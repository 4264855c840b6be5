"""Mutation testing of the checks: does each hidden test reject plausible mistakes in the solution?

    python -m mikit.dev.mutants [NOTEBOOK ...] [--sample N] [--seed S] [--list]

For every exercise in a checks module's `EXERCISES`, the solution cell that defines the exercise's
functions (solutions/<notebook>.ipynb, nbgrader `solution: true`, above the check cell) is parsed with
`ast` and changed in one place at a time, the way a student goes wrong: an integer or slice bound off by
one, the wrong dimension, mean for sum, softmax for log_softmax, max for min, a mask or a scale dropped, a
sign flipped, the wrong position read, `>` for `>=`, a constant output, the input returned unchanged.
Each mutant is run in a namespace prepared as the notebook's (its imports and light definitions; no
model is loaded) and graded in process by the exercise's hidden test, as `mikit grade` judges it:
killed when the check raises, survived when it passes. Mutants that behave exactly as the solution
(equivalent mutants) are listed with a reason in equivalent_mutants.json and left out of the kill rate.
Exit status 1 when a notebook's kill rate is under 90 % or a solution fails its own check.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import copy
import difflib
import functools
import hashlib
import importlib
import io
import json
import linecache
import random
import signal
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from mikit import hidden
from mikit.checks import NOTEBOOK_CHECKS, hidden_variant
from mikit.paths import PACKAGE

SOLUTIONS = PACKAGE.parent / "solutions"
EQUIVALENTS = Path(__file__).with_name("equivalent_mutants.json")
MIN_KILL_RATE = 0.9
DEFAULT_SEED = 7  # the hidden variant every mutant is graded under (one per run)
TIMEOUT_S = 120  # a mutant that runs longer is killed (the grader would stop it too)


# --------------------------------------------------------------------------------------------------
# The solutions: which cell defines an exercise's names, and what the notebook runs before it.


@dataclass(frozen=True)
class Target:
    """One exercise's solution cell, ready to mutate."""

    notebook: str
    exercise: str  # the check cell's grade_id (a key of EXERCISES)
    students: tuple[str, ...]
    source: str  # the solution cell (magics blanked, so it parses)
    regions: tuple[tuple[int, int], ...]  # first and last line of each BEGIN/END SOLUTION block
    prelude: tuple[str, ...]  # statements of earlier cells to run first (imports, definitions, constants)
    grad: bool  # whether the notebook leaves autograd on
    skipped: str = ""  # why the exercise cannot be mutated in process


def _cell_source(cell: dict) -> str:
    """A code cell's text with IPython magics replaced by `pass` (same line numbers)."""
    lines = "".join(cell["source"]).split("\n")
    out = []
    for line in lines:
        stripped = line.lstrip()
        out.append(line[: len(line) - len(stripped)] + "pass" if stripped.startswith(("%", "!")) else line)
    return "\n".join(out)


def _nbgrader(cell: dict) -> dict:
    return cell.get("metadata", {}).get("nbgrader", {}) or {}


def _regions(source: str) -> tuple[tuple[int, int], ...]:
    lines = source.split("\n")
    starts = [i + 2 for i, line in enumerate(lines) if "### BEGIN SOLUTION" in line]
    ends = [i for i, line in enumerate(lines) if "### END SOLUTION" in line]
    if not starts:
        return ((1, len(lines)),)
    return tuple(zip(starts, ends))


def _defined(tree: ast.Module) -> set[str]:
    names = set()
    for stmt in tree.body:
        if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(stmt.name)
        elif isinstance(stmt, (ast.Assign, ast.AnnAssign)):
            for target in stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]:
                names |= {n.id for n in ast.walk(target) if isinstance(n, ast.Name)}
    return names


def _light(stmt: ast.stmt, solution: bool) -> bool:
    """Whether an earlier cell's statement belongs in the prepared namespace (cheap, needs no notebook state)."""
    if isinstance(stmt, (ast.Import, ast.ImportFrom, ast.FunctionDef, ast.ClassDef)):
        return True
    if solution or not isinstance(stmt, ast.Assign):
        return False
    try:
        ast.literal_eval(stmt.value)
    except ValueError:
        return False
    return True


def _grad_off(stmt: ast.stmt) -> bool:
    """`torch.set_grad_enabled(False)`: the notebook runs the student's functions without autograd."""
    if not (isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Call) and stmt.value.args):
        return False
    call = stmt.value
    return ast.unparse(call.func).endswith("set_grad_enabled") and ast.unparse(call.args[0]) == "False"


def exercises_of(notebook: str) -> dict:
    """The `EXERCISES` of a notebook's checks module ({} when it has none yet)."""
    return getattr(importlib.import_module(NOTEBOOK_CHECKS[notebook]), "EXERCISES", {})


def targets(notebook: str) -> list[Target]:
    """Every exercise of `notebook` with its solution cell and the statements to run before it."""
    path = SOLUTIONS / f"{notebook}.ipynb"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: mutation testing runs in a checkout of the repository")
    cells = json.loads(path.read_text())["cells"]
    code = [(i, c) for i, c in enumerate(cells) if c["cell_type"] == "code"]
    check_cell = {_nbgrader(c).get("grade_id"): i for i, c in code if _nbgrader(c).get("grade")}
    found = []
    for exercise_id, exercise in exercises_of(notebook).items():
        if exercise_id not in check_cell:
            found.append(Target(notebook, exercise_id, exercise.students, "", (), (), True, "no check cell with this grade_id"))
            continue
        at = check_cell[exercise_id]
        solution_cells = [(i, c) for i, c in code if i < at and _nbgrader(c).get("solution")]
        cell_index, source = None, ""
        for i, c in reversed(solution_cells):
            src = _cell_source(c)
            try:
                names = _defined(ast.parse(src))
            except SyntaxError:
                continue
            if set(exercise.students) & names:
                cell_index, source = i, src
                break
        skipped = ""
        if cell_index is None:
            skipped = "no solution cell above the check defines " + ", ".join(exercise.students)
        else:  # the cell's student names must be functions; others come from earlier solution cells
            tree = ast.parse(source)
            functions = {s.name for s in tree.body if isinstance(s, ast.FunctionDef)}
            if not set(exercise.students) & _defined(tree) <= functions:
                skipped = "the exercise's answer is a value computed from the notebook's state (not a function)"
        prelude, grad = [], True
        for i, c in code:
            if i >= at or i == cell_index or _nbgrader(c).get("grade"):
                continue
            try:
                tree = ast.parse(_cell_source(c))
            except SyntaxError:
                continue
            for stmt in tree.body:
                if _grad_off(stmt):
                    grad = False
                elif _light(stmt, bool(_nbgrader(c).get("solution"))):
                    prelude.append(ast.unparse(stmt))
        found.append(
            Target(notebook, exercise_id, exercise.students, source, _regions(source) if source else (), tuple(prelude),
                   grad, skipped)
        )
    return found


# --------------------------------------------------------------------------------------------------
# Mutation operators. Each looks at one node (and its parent) and offers (operator, variant, make):
# `make(node)` gets the node's copy in a fresh tree and returns what replaces it.

DIM_KEYWORDS = {"dim", "axis", "dim0", "dim1", "dim2", "start_dim", "end_dim"}
# method -> positions of its dimension arguments when called on a tensor (x.softmax(-1), x.transpose(1, 2))
DIM_POSITIONS = {
    **dict.fromkeys(
        ["softmax", "log_softmax", "sum", "mean", "amax", "amin", "argmax", "argmin", "max", "min", "prod", "std",
         "var", "logsumexp", "cumsum", "gather", "unflatten", "squeeze", "unsqueeze", "nansum", "nanmean", "all",
         "any", "count_nonzero", "cummax", "cumprod", "sort", "argsort", "unbind", "split", "chunk"], (0,)
    ),
    "transpose": (0, 1), "swapaxes": (0, 1), "flatten": (0, 1), "topk": (1,), "diagonal": (1, 2),
    "index_select": (0,), "narrow": (0,), "scatter": (0,), "scatter_add": (0,), "repeat_interleave": (1,),
}
MODULE_FUNCTIONS = {"torch", "F", "functional", "einops", "np", "numpy"}  # torch.softmax(x, -1): dims one later
SEQUENCE_DIM = {"cat": 1, "stack": 1, "concat": 1, "concatenate": 1}  # torch.cat(tensors, dim)
DIM_CHOICES = (-1, -2, 0, 1)
SWAPS = {
    "mean": "sum", "sum": "mean", "nanmean": "nansum", "nansum": "nanmean",
    "softmax": "log_softmax", "log_softmax": "softmax",
    "max": "min", "min": "max", "amax": "amin", "amin": "amax", "argmax": "argmin", "argmin": "argmax",
    "maximum": "minimum", "minimum": "maximum", "cummax": "cummin", "cummin": "cummax",
}
SWAP_OPERATOR = {"mean": "reduce", "sum": "reduce", "nanmean": "reduce", "nansum": "reduce", "softmax": "softmax",
                 "log_softmax": "softmax"}
COMPARE_SWAPS = {ast.Gt: ast.GtE, ast.GtE: ast.Gt, ast.Lt: ast.LtE, ast.LtE: ast.Lt}
MASK_METHODS = {"masked_fill", "masked_fill_"}


def _int_value(node: ast.AST) -> int | None:
    """The value of an integer literal (`3`, `-1`), else None."""
    if isinstance(node, ast.Constant) and type(node.value) is int:
        return node.value
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        inner = _int_value(node.operand)
        return None if inner is None else -inner
    return None


def _int_node(value: int) -> ast.expr:
    return ast.UnaryOp(ast.USub(), ast.Constant(-value)) if value < 0 else ast.Constant(value)


def _call_name(call: ast.Call) -> tuple[str, bool]:
    """(function or method name, whether it is a module function such as torch.sum rather than x.sum)."""
    func = call.func
    if isinstance(func, ast.Attribute):
        base = func.value
        is_module = isinstance(base, ast.Name) and base.id in MODULE_FUNCTIONS or (
            isinstance(base, ast.Attribute) and base.attr in ("functional", "linalg")
        )
        return func.attr, is_module
    if isinstance(func, ast.Name):
        return func.id, True
    return "", False


def _dim_argument(node: ast.AST, parent: ast.AST | None) -> bool:
    """Whether `node` is a call's dimension argument (keyword dim=..., or a known positional slot)."""
    if isinstance(parent, ast.keyword):
        return parent.arg in DIM_KEYWORDS
    if isinstance(parent, ast.Call) and node in parent.args:
        name, is_module = _call_name(parent)
        index = parent.args.index(node)
        if name in SEQUENCE_DIM:
            return index == SEQUENCE_DIM[name]
        positions = DIM_POSITIONS.get(name, ())
        return index in tuple(p + is_module for p in positions)
    return False


def _offers(node: ast.AST, parents: dict) -> Iterator[tuple[str, str, Callable[[ast.AST], ast.AST]]]:
    parent = parents.get(node)
    grandparent = parents.get(parent)
    value = _int_value(node)

    if value is not None and not (isinstance(node, ast.Constant) and isinstance(parent, ast.UnaryOp)):
        in_index = isinstance(parent, ast.Subscript) and parent.slice is node or (
            isinstance(parent, ast.Tuple) and isinstance(grandparent, ast.Subscript) and grandparent.slice is parent
        )
        if in_index:  # wrong position read: x[..., -1] -> x[..., -2] or x[..., 0]
            for new in ([-2, 0] if value == -1 else [value + 1, value - 1]):
                yield "position", str(new), lambda n, new=new: _int_node(new)
        elif isinstance(parent, ast.Slice):
            for new in (value + 1, value - 1):
                yield "slice", str(new), lambda n, new=new: _int_node(new)
        elif _dim_argument(node, parent) or isinstance(parent, ast.Tuple) and _dim_argument(parent, grandparent):
            taken = {_int_value(e) for e in parent.elts} if isinstance(parent, ast.Tuple) else {value}
            for new in DIM_CHOICES:
                if new not in taken:
                    yield "dim", str(new), lambda n, new=new: _int_node(new)
        else:
            for new in (value + 1, value - 1):
                yield "off_by_one", str(new), lambda n, new=new: _int_node(new)

    if isinstance(node, ast.Tuple) and _dim_argument(node, parent) and len(node.elts) > 1:
        for i, element in enumerate(node.elts):  # mean over (0, -1) -> over -1 only
            yield "dim", f"drop{i}", lambda n, i=i: ast.Tuple([e for j, e in enumerate(n.elts) if j != i], ast.Load())

    if isinstance(node, ast.Slice):  # non-literal slice bounds: x[-n:] -> x[-n + 1:]
        for field_name in ("lower", "upper"):
            bound = getattr(node, field_name)
            if bound is not None and _int_value(bound) is None:
                for op, sign in ((ast.Add(), "+1"), (ast.Sub(), "-1")):
                    def make(n, field_name=field_name, op=op):
                        setattr(n, field_name, ast.BinOp(getattr(n, field_name), op, ast.Constant(1)))
                        return n
                    yield "slice", f"{field_name}{sign}", make

    if isinstance(node, ast.Attribute) and node.attr in SWAPS:  # x.mean -> x.sum, torch.softmax -> torch.log_softmax
        new = SWAPS[node.attr]
        yield SWAP_OPERATOR.get(node.attr, "minmax"), new, lambda n, new=new: ast.Attribute(n.value, new, n.ctx)
    if isinstance(node, ast.Name) and node.id in ("max", "min") and isinstance(parent, ast.Call) and parent.func is node:
        yield "minmax", SWAPS[node.id], lambda n: ast.Name(SWAPS[n.id], n.ctx)
    if isinstance(node, ast.keyword) and node.arg in ("largest", "descending", "reverse") and isinstance(
        node.value, ast.Constant
    ):
        yield "minmax", f"{node.arg}={not node.value.value}", lambda n: ast.keyword(n.arg, ast.Constant(not n.value.value))
    if isinstance(node, ast.Call):
        name, is_module = _call_name(node)
        if name == "topk" and not any(k.arg == "largest" for k in node.keywords):
            def smallest(n):
                n.keywords = [*n.keywords, ast.keyword("largest", ast.Constant(False))]
                return n
            yield "minmax", "largest=False", smallest
        if name in ("sort", "argsort", "sorted") and not any(k.arg in ("descending", "reverse") for k in node.keywords):
            def descending(n, arg="reverse" if name == "sorted" else "descending"):
                n.keywords = [*n.keywords, ast.keyword(arg, ast.Constant(True))]
                return n
            yield "minmax", "descending", descending

        # dropped mask: s.masked_fill(m, v) -> s, torch.where(c, a, b) -> a or b
        if name in MASK_METHODS and isinstance(node.func, ast.Attribute) and not is_module:
            yield "mask", "drop", lambda n: n.func.value
        if name in MASK_METHODS and is_module and node.args:
            yield "mask", "drop", lambda n: n.args[0]
        if name == "where" and len(node.args) == 3:
            yield "mask", "a", lambda n: n.args[1]
            yield "mask", "b", lambda n: n.args[2]

        # transposes: einsum output letters swapped, .transpose(...) dropped
        if name == "einsum" and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
            spec = node.args[0].value.replace(" ", "")
            if "->" in spec:
                inputs, output = spec.split("->")
                for i in range(len(output) - 1):
                    swapped = output[:i] + output[i + 1] + output[i] + output[i + 2 :]
                    def transpose(n, spec=f"{inputs}->{swapped}"):
                        n.args[0] = ast.Constant(spec)
                        return n
                    yield "transpose", swapped, transpose
        if name in ("transpose", "swapaxes", "permute", "t") and isinstance(node.func, ast.Attribute) and not is_module:
            yield "transpose", "drop", lambda n: n.func.value
    if isinstance(node, ast.Attribute) and node.attr in ("T", "mT", "mH") and isinstance(node.ctx, ast.Load):
        yield "transpose", "drop", lambda n: n.value

    # dropped scale: a / s -> a, a * s -> a or s, x ** 0.5 -> x, x *= s -> (nothing)
    if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Mult, ast.Div)):
        yield "scale", "left", lambda n: n.left
        if isinstance(node.op, ast.Mult):
            yield "scale", "right", lambda n: n.right
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Pow) and isinstance(node.right, ast.Constant) and (
        isinstance(node.right.value, float)
    ):
        yield "scale", "no_pow", lambda n: n.left
    if isinstance(node, ast.AugAssign) and isinstance(node.op, (ast.Mult, ast.Div)):
        yield "scale", "drop", lambda n: ast.Pass()

    # sign flips: -x -> x, a - b -> b - a, return x -> return -x
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub) and _int_value(node) is None and not (
        isinstance(node.operand, ast.Constant)
    ):
        yield "sign", "drop", lambda n: n.operand
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Sub):
        yield "sign", "swap", lambda n: ast.BinOp(n.right, ast.Sub(), n.left)
    if isinstance(node, ast.Return) and node.value is not None and not isinstance(
        node.value, (ast.Constant, ast.Tuple, ast.List, ast.Dict, ast.Set, ast.ListComp, ast.DictComp, ast.SetComp)
    ):
        yield "sign", "negate", lambda n: ast.Return(ast.UnaryOp(ast.USub(), n.value))

    if isinstance(node, ast.Compare):  # > <-> >=, < <-> <=
        for i, op in enumerate(node.ops):
            if type(op) in COMPARE_SWAPS:
                def compare(n, i=i):
                    n.ops = [COMPARE_SWAPS[type(o)]() if j == i else o for j, o in enumerate(n.ops)]
                    return n
                yield "compare", f"{i}", compare

    if isinstance(node, ast.Return) and node.value is not None:  # constant output
        yield "constant", "zero", lambda n: ast.Return(ast.Constant(0))
        yield "constant", "zeros_like", lambda n: ast.Return(
            ast.Call(ast.Attribute(ast.Name("torch", ast.Load()), "zeros_like", ast.Load()), [n.value], [])
        )


def _identity(function: ast.FunctionDef) -> Callable[[ast.AST], ast.AST] | None:
    """Return the first argument at once (a function that does nothing), after any docstring."""
    arguments = function.args.posonlyargs + function.args.args
    if not arguments:
        return None

    def make(n: ast.FunctionDef) -> ast.FunctionDef:
        docstring = 1 if n.body and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant) else 0
        n.body.insert(docstring, ast.Return(ast.Name(arguments[0].arg, ast.Load())))
        return n

    return make


@dataclass(frozen=True)
class Mutant:
    id: str  # exercise:operator:line:column:variant (line and column in the solution cell)
    exercise: str
    operator: str
    source: str
    diff: str  # the changed line, before → after


def _parents(tree: ast.AST) -> dict:
    parents = {}
    for node in ast.walk(tree):
        for child in ast.iter_child_nodes(node):
            parents[child] = node
    # keyword values and Call args have the Call (or keyword) as parent already
    return parents


def _replace(parents: dict, old: ast.AST, new: ast.AST) -> None:
    parent = parents[old]
    for name, value in ast.iter_fields(parent):
        if value is old:
            setattr(parent, name, new)
            return
        if isinstance(value, list):
            for i, item in enumerate(value):
                if item is old:
                    value[i] = new
                    return
    raise RuntimeError("node not found in its parent")


def _one_line_diff(before: str, after: str) -> str:
    a, b = before.split("\n"), after.split("\n")
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(a=a, b=b, autojunk=False).get_opcodes():
        if tag == "replace":
            return f"{a[i1].strip()}  →  {b[j1].strip()}"
        if tag == "insert":
            return f"+ {b[j1].strip()}"
        if tag == "delete":
            return f"- {a[i1].strip()}"
    return "(no change)"


def mutants(target: Target) -> list[Mutant]:
    """Every distinct mutant of the target's solution cell that compiles, in a stable order."""
    if target.skipped:
        return []
    tree = ast.parse(target.source)
    original = ast.unparse(tree)
    inside = lambda line: any(first <= line <= last for first, last in target.regions)  # noqa: E731
    parents = _parents(tree)
    nodes = list(ast.walk(tree))
    sites = []
    for index, node in enumerate(nodes):
        if isinstance(node, ast.FunctionDef):
            body = [s for s in node.body if not (isinstance(s, ast.Expr) and isinstance(s.value, ast.Constant))]
            make = _identity(node)
            if body and make and inside(body[0].lineno):
                sites.append((index, node, "identity", node.args.args[0].arg if node.args.args else "", make))
            continue
        line = getattr(node, "lineno", None)
        if line is None:  # keywords carry positions; operators and contexts do not
            continue
        if not inside(line):
            continue
        for operator, variant, make in _offers(node, parents):
            sites.append((index, node, operator, variant, make))

    found, seen = [], {original}
    for index, node, operator, variant, make in sites:
        copy_tree = copy.deepcopy(tree)
        copy_nodes = list(ast.walk(copy_tree))
        target_node = copy_nodes[index]
        copy_parents = _parents(copy_tree)
        new = make(target_node)
        if new is not target_node:
            _replace(copy_parents, target_node, new)
        ast.fix_missing_locations(copy_tree)
        try:
            source = ast.unparse(copy_tree)
            compile(source, "<mutant>", "exec")
        except (SyntaxError, ValueError, TypeError):
            continue
        if source in seen:
            continue
        seen.add(source)
        mutant_id = f"{target.exercise}:{operator}:{node.lineno}:{node.col_offset}:{variant}"
        found.append(Mutant(mutant_id, target.exercise, operator, source, _one_line_diff(original, source)))
    return found


# --------------------------------------------------------------------------------------------------
# Grading a mutant in process, as the grader's hidden test judges it.


class _Timeout(Exception):
    pass


@contextlib.contextmanager
def _time_limit(seconds: int) -> Iterator[None]:
    if not hasattr(signal, "SIGALRM"):
        yield
        return

    def stop(signum, frame):
        raise _Timeout(f"ran over {seconds} s")

    before = signal.signal(signal.SIGALRM, stop)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, before)


def _fingerprint(value: Any) -> Any:
    """What a call returned, small enough to keep: tensors by value up to 1M elements, else by statistics."""
    if isinstance(value, torch.Tensor):
        v = value.detach().cpu()
        if v.numel() <= 1_000_000:
            return ("tensor", v.clone())
        f = v.double()
        return ("big", tuple(v.shape), f.sum().item(), f.abs().sum().item(), f.pow(2).sum().item())
    if isinstance(value, (list, tuple)):
        return (type(value).__name__, [_fingerprint(v) for v in value])
    if isinstance(value, dict):
        return ("dict", [(k, _fingerprint(v)) for k, v in value.items()])
    if isinstance(value, (int, float, str, bool, type(None))):
        return value
    return ("object", type(value).__name__)


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, tuple) and a and a[0] == "tensor" and isinstance(b, tuple) and b and b[0] == "tensor":
        x, y = a[1], b[1]
        if x.shape != y.shape or x.dtype != y.dtype:
            return False
        if x.is_floating_point():
            return bool(torch.allclose(x, y, rtol=1e-5, atol=1e-6, equal_nan=True))
        return bool(torch.equal(x, y))
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):
        return type(a) is type(b) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, float) and isinstance(b, float):
        return abs(a - b) <= 1e-6 + 1e-5 * abs(b)
    return a == b


def _student(fn: Any, grad: bool, calls: list) -> Any:
    """The student's function as the kernel runs it (the notebook's autograd mode), its outputs recorded."""
    if not callable(fn):
        return fn

    @functools.wraps(fn)
    def call(*args: Any, **kwargs: Any) -> Any:
        with torch.set_grad_enabled(grad):
            result = fn(*args, **kwargs)
        calls.append((_fingerprint(result), [_fingerprint(a) for a in args if isinstance(a, torch.Tensor)]))
        return result

    return call


def _module_fingerprints() -> dict[int, tuple]:
    prints = {}
    for built in list(hidden._memo.values()):
        for part in built if isinstance(built, tuple) else (built,):
            if isinstance(part, torch.nn.Module):
                with torch.no_grad():
                    prints[id(part)] = tuple(
                        (p.double().sum().item(), p.double().abs().sum().item()) for p in part.parameters()
                    )
    return prints


@dataclass
class Prepared:
    """A target with its namespace prepared once."""

    target: Target
    exercise: Any
    base: dict


def prepare(target: Target) -> Prepared:
    """Run the statements the notebook runs before the exercise (imports, definitions, constants)."""
    base: dict[str, Any] = {"__name__": "__mutant__", "torch": torch}
    for i, statement in enumerate(target.prelude):
        filename = f"<notebook statement {i} before {target.exercise}>"
        linecache.cache[filename] = (len(statement), None, statement.splitlines(True), filename)  # for nnsight
        try:
            with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                exec(compile(statement, filename, "exec"), base)
        except Exception:  # a cell that needs notebook state; the exercise rarely does
            pass
    return Prepared(target, exercises_of(target.notebook)[target.exercise], base)


def grade(prepared: Prepared, source: str, seed: int, calls: list | None = None) -> str | None:
    """None when the exercise's hidden test (hidden seed `seed`) passes `source`, else why it failed."""
    calls = [] if calls is None else calls
    namespace = dict(prepared.base)
    exercise, target = prepared.exercise, prepared.target
    before = _module_fingerprints()
    try:
        with _time_limit(TIMEOUT_S), contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            filename = f"<mutant of {target.exercise} {hashlib.sha1(source.encode()).hexdigest()[:12]}>"
            # tracers that read their `with` block back (nnsight) find the source as in a notebook cell
            linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
            exec(compile(source, filename, "exec"), namespace)
            students = [_student(namespace[name], target.grad, calls) for name in exercise.students]
            with hidden.active(), hidden_variant(seed):
                exercise.check(*students, *exercise.context())
    except BaseException as error:  # noqa: BLE001 — any failure kills the mutant, as in the grader
        if isinstance(error, KeyboardInterrupt):
            raise
        return f"{type(error).__name__}: {str(error).strip().splitlines()[0] if str(error).strip() else ''}"
    finally:
        after = _module_fingerprints()
        if any(after.get(key) != value for key, value in before.items()):
            hidden.reset()  # the mutant edited a shared model in place: rebuild it for the next one
    return None


# --------------------------------------------------------------------------------------------------
# Runs and reports.


@dataclass
class Report:
    notebook: str
    seed: int
    mutants: int = 0
    killed: int = 0
    equivalent: int = 0
    survivors: list[tuple[Mutant, bool]] = field(default_factory=list)  # (mutant, same outputs as the solution)
    errors: list[str] = field(default_factory=list)  # solutions that fail their own check
    skipped: list[str] = field(default_factory=list)
    stale: list[str] = field(default_factory=list)  # equivalents listed that no longer exist
    sampled_from: int | None = None
    seconds: float = 0.0

    @property
    def rate(self) -> float:
        judged = self.mutants - self.equivalent
        return self.killed / judged if judged else 1.0

    @property
    def ok(self) -> bool:
        return not self.errors and self.rate >= MIN_KILL_RATE

    def text(self) -> str:
        sample = f" (a sample of {self.mutants} of {self.sampled_from} non-equivalent)" if self.sampled_from is not None else ""
        lines = [
            f"{self.notebook}: {self.mutants} mutants{sample}, {self.killed} killed, {self.equivalent} equivalent, "
            f"{len(self.survivors)} survivors, kill rate {self.rate:.1%} "
            f"[{'ERROR' if self.errors else 'ok' if self.ok else f'UNDER {MIN_KILL_RATE:.0%}'}] "
            f"({self.seconds:.0f} s, hidden seed {self.seed})"
        ]
        lines += [f"  ERROR {e}" for e in self.errors]
        lines += [f"  skipped {s}" for s in self.skipped]
        for mutant, same in self.survivors:
            lines.append(f"  survivor {mutant.id}  {mutant.diff}" + ("  [same outputs as the solution]" if same else ""))
        lines += [f"  stale equivalent (no such mutant): {s}" for s in self.stale]
        return "\n".join(lines)


def equivalents() -> dict[str, dict[str, str]]:
    return json.loads(EQUIVALENTS.read_text()) if EQUIVALENTS.exists() else {}


def all_mutants(notebook: str) -> list[tuple[Target, Mutant]]:
    return [(t, m) for t in targets(notebook) for m in mutants(t)]


def run(notebook: str, *, sample: int | None = None, seed: int = DEFAULT_SEED, log: Callable[[str], None] = lambda s: None) -> Report:
    """Generate `notebook`'s mutants (or a deterministic sample of the non-equivalent ones) and grade each."""
    start = time.perf_counter()
    report = Report(notebook, seed)
    listed = equivalents().get(notebook, {})
    found = targets(notebook)
    report.skipped = [f"{t.exercise}: {t.skipped}" for t in found if t.skipped]
    pairs = [(t, m) for t in found for m in mutants(t)]
    ids = {m.id for _, m in pairs}
    report.stale = sorted(set(listed) - ids)
    if sample is not None:
        pool = [(t, m) for t, m in pairs if m.id not in listed]
        report.sampled_from = len(pool)
        chosen = set(random.Random(f"{seed}:{notebook}").sample(range(len(pool)), min(sample, len(pool))))
        pairs = [p for i, p in enumerate(pool) if i in chosen]
    prepared: dict[str, Prepared] = {}
    solution_calls: dict[str, list] = {}
    for target in {t.exercise: t for t, _ in pairs}.values():
        prepared[target.exercise] = ready = prepare(target)
        solution_calls[target.exercise] = calls = []
        failure = grade(ready, target.source, seed, calls)
        if failure:
            report.errors.append(f"{target.exercise}: the unmutated solution fails its hidden test: {failure}")
    broken = {e.split(":")[0] for e in report.errors}
    for target, mutant in pairs:
        if target.exercise in broken:
            continue
        report.mutants += 1
        if mutant.id in listed:
            report.equivalent += 1
            continue
        calls: list = []
        failure = grade(prepared[target.exercise], mutant.source, seed, calls)
        if failure:
            report.killed += 1
        else:
            report.survivors.append((mutant, _same(calls, solution_calls[target.exercise])))
        log(f"{mutant.id}: {'killed (' + failure[:80] + ')' if failure else 'SURVIVED'}")
    report.seconds = time.perf_counter() - start
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mikit.dev.mutants", description=__doc__.split("\n\n")[0])
    parser.add_argument("notebooks", nargs="*", help="notebook ids (default: every notebook whose checks have EXERCISES)")
    parser.add_argument("--sample", type=int, help="grade a deterministic sample of N non-equivalent mutants per notebook")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help="the hidden seed (and the sample's seed)")
    parser.add_argument("--list", action="store_true", help="list the mutants without grading them")
    parser.add_argument("-v", "--verbose", action="store_true", help="print each mutant's verdict")
    args = parser.parse_args(argv)
    if args.seed <= 0:
        parser.error("--seed must be positive (it is the hidden variant's seed)")
    from mikit.session import choose_mode

    if choose_mode() == "offline":
        import os

        os.environ.setdefault("HF_HUB_OFFLINE", "1")
    notebooks = args.notebooks or [nb for nb in NOTEBOOK_CHECKS if exercises_of(nb)]
    unknown = [nb for nb in notebooks if nb not in NOTEBOOK_CHECKS]
    if unknown:
        parser.error(f"unknown notebook {unknown[0]!r}; choose from {', '.join(NOTEBOOK_CHECKS)}")
    if args.list:
        for notebook in notebooks:
            listed = equivalents().get(notebook, {})
            pairs = all_mutants(notebook)
            print(f"{notebook}: {len(pairs)} mutants")
            for _, mutant in pairs:
                mark = "  [equivalent]" if mutant.id in listed else ""
                print(f"  {mutant.id}  {mutant.diff}{mark}")
        return 0
    status = 0
    for notebook in notebooks:
        report = run(notebook, sample=args.sample, seed=args.seed, log=print if args.verbose else lambda s: None)
        print(report.text(), flush=True)
        status |= not report.ok
    return int(status)


if __name__ == "__main__":
    sys.exit(main())
