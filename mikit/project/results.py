"""A project's results folder: every figure and table saved with the code version and seed that made it.

    save(folder, "baseline", {"clean": 4.8, "corrupted": 0.1}, caption=..., seed=0, code_version="3f2a…")
    load_index(folder)          # {name: record}: kind, files, caption, seed, code version, mikit version, time
    compare(saved, fresh)       # per result: "reproduced", or how it differs

What can be saved, and what is compared when `mikit project check` re-runs a project:
- a number, a dict of numbers, a list of dicts (rows), a tensor / array, or a pandas DataFrame: a *table*,
  stored as JSON and compared number by number (relative tolerance 1e-3);
- a plotly figure: stored as its JSON (every trace's data) and a standalone HTML file, compared on the
  numbers in its traces;
- a matplotlib figure: stored as a PNG, compared pixel by pixel (mean absolute difference < 1 %).
"""

from __future__ import annotations

import base64
import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

INDEX = "index.json"
RTOL, ATOL = 1e-3, 1e-6


def _table(value: Any) -> Any:
    """`value` as plain JSON data (numbers, strings, lists, dicts), or a ValueError naming what is accepted."""
    if hasattr(value, "to_dict") and hasattr(value, "columns"):  # pandas DataFrame
        return {"columns": [str(c) for c in value.columns], "rows": _table(value.to_numpy().tolist())}
    if hasattr(value, "detach"):  # torch tensor
        value = value.detach().cpu().numpy()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):
        return {str(k): _table(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_table(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise ValueError(f"cannot save a {type(value).__name__}: save a number, a dict, a list of rows, a tensor, a "
                     "DataFrame, a plotly figure or a matplotlib figure.")


def _kind(value: Any) -> str:
    module = type(value).__module__
    if module.startswith("plotly"):
        return "plotly"
    if module.startswith("matplotlib"):
        return "matplotlib"
    return "table"


def save(folder: Path, name: str, value: Any, *, caption: str = "", seed: int | None = None,
         code_version: str = "", extra: dict | None = None) -> dict:
    """Write result `name` into `folder` and record it in the folder's index; returns its record."""
    if not name or not all(c.isalnum() or c in "-_" for c in name):
        raise ValueError(f"a result's name is used as a file name: letters, digits, - and _ only, not {name!r}.")
    from mikit import __version__

    folder.mkdir(parents=True, exist_ok=True)
    kind = _kind(value)
    if kind == "plotly":
        value.write_html(folder / f"{name}.html", include_plotlyjs="directory")  # one plotly.min.js beside them
        (folder / f"{name}.json").write_text(value.to_json())
        files = [f"{name}.json", f"{name}.html"]
    elif kind == "matplotlib":
        value.savefig(folder / f"{name}.png", dpi=100, bbox_inches="tight", metadata={"Software": None})
        files = [f"{name}.png"]
    else:
        (folder / f"{name}.json").write_text(json.dumps(_table(value), indent=1))
        files = [f"{name}.json"]
    record = {"kind": kind, "files": files, "caption": caption, "seed": seed, "code_version": code_version,
              "mikit_version": __version__, "saved": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              **(extra or {})}
    index = load_index(folder)
    index[name] = record
    (folder / INDEX).write_text(json.dumps(index, indent=1))
    return record


def load_index(folder: Path) -> dict[str, dict]:
    """The records of every result saved in `folder` (empty if none)."""
    path = folder / INDEX
    return json.loads(path.read_text()) if path.exists() else {}


def _numbers(data: Any, out: list) -> list:
    """Every number in nested JSON data, in order (strings are compared separately)."""
    if isinstance(data, bool):
        out.append(float(data))
    elif isinstance(data, (int, float)):
        out.append(float(data))
    elif isinstance(data, dict):
        for key in sorted(data):
            _numbers(data[key], out)
    elif isinstance(data, list):
        for item in data:
            _numbers(item, out)
    return out


def _strings(data: Any) -> list[str]:
    if isinstance(data, str):
        return [data]
    if isinstance(data, dict):
        return [s for key in sorted(data) for s in [key, *_strings(data[key])]]
    if isinstance(data, list):
        return [s for item in data for s in _strings(item)]
    return []


def _decoded(data: Any) -> Any:
    """Plotly's JSON with its base64-encoded arrays ({"dtype", "bdata", "shape"}) turned back into lists."""
    if isinstance(data, dict) and "bdata" in data and "dtype" in data:
        array = np.frombuffer(base64.b64decode(data["bdata"]), dtype=data["dtype"])
        shape = data.get("shape")
        return array.reshape([int(n) for n in str(shape).split(",")] if shape else -1).tolist()
    if isinstance(data, dict):
        return {key: _decoded(value) for key, value in data.items()}
    if isinstance(data, list):
        return [_decoded(item) for item in data]
    return data


def _trace_data(path: Path) -> list:
    """The data of a saved plotly figure's traces (its layout, with titles and colours, is not compared)."""
    return _decoded(json.loads(path.read_text()).get("data", []))


def compare_one(saved: Path, fresh: Path, name: str, record: dict) -> str:
    """"reproduced", or one sentence saying how the fresh result `name` differs from the saved one."""
    if record["kind"] == "matplotlib":
        import matplotlib.image

        a, b = matplotlib.image.imread(saved / f"{name}.png"), matplotlib.image.imread(fresh / f"{name}.png")
        if a.shape != b.shape:
            return f"differs: the figure is {b.shape[1]}×{b.shape[0]} pixels now, {a.shape[1]}×{a.shape[0]} saved"
        gap = float(np.abs(a - b).mean())
        return "reproduced" if gap < 0.01 else f"differs: pixels differ by {gap:.1%} on average"
    load = _trace_data if record["kind"] == "plotly" else (lambda p: json.loads(p.read_text()))
    old, new = load(saved / f"{name}.json"), load(fresh / f"{name}.json")
    if _strings(old) != _strings(new):
        return "differs: its labels or keys changed"
    x, y = np.array(_numbers(old, []), dtype=float), np.array(_numbers(new, []), dtype=float)
    if x.shape != y.shape:
        return f"differs: {len(y)} numbers now, {len(x)} saved"
    close = np.isclose(x, y, rtol=RTOL, atol=ATOL, equal_nan=True)
    if close.all():
        return "reproduced"
    worst = int(np.argmax(np.where(close, 0, np.abs(x - y))))
    return (f"differs: {int((~close).sum())} of {len(x)} numbers changed, the largest from {x[worst]:.6g} "
            f"to {y[worst]:.6g}")


def compare(saved: Path, fresh: Path) -> dict[str, str]:
    """For every result saved in `saved`: how the one in `fresh` compares ("reproduced", "missing", "differs: …")."""
    old, new = load_index(saved), load_index(fresh)
    verdicts = {}
    for name, record in old.items():
        if name not in new:
            verdicts[name] = "missing: the notebook no longer saves it"
            continue
        verdict = compare_one(saved, fresh, name, record)
        if record.get("code_version") and record["code_version"] != new[name].get("code_version"):
            verdict += " (saved from another version of the notebook's code)"
        verdicts[name] = verdict
    for name in new.keys() - old.keys():
        verdicts[name] = "new: not saved before"
    return verdicts
