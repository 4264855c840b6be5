"""Student research projects: a runnable starting point, saved results that can be re-checked, and a report.

    mikit project new my-project --model smollm2-135m --technique patching   # a folder that runs as created
    mikit project report my-project      # report.md filled with the saved results → report/report.{md,html}
    mikit project check my-project       # re-run the notebook from a clean kernel: do the results reproduce?
    mikit projects --technique circuits  # the catalogue of project ideas

Inside the project's notebook:

    from mikit.project import Project
    project = Project.here()          # reads project.toml: model, technique, task, seeds, device
    model = project.model()
    task = project.task(model)        # clean/corrupted prompts and the metric (mikit.circuits.tasks)
    project.save("baseline", {"clean": 4.8}, caption="…")   # into results/, with the seed and code version
"""

from __future__ import annotations

import hashlib
import json
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CONFIG = "project.toml"
NOTEBOOK = "project.ipynb"
RESULTS = "results"


@dataclass
class Project:
    """A project folder's settings (project.toml) and its results folder."""

    folder: Path
    name: str
    model_name: str
    technique: str
    task_name: str
    seeds: list[int]
    device: str = "auto"
    n_prompts: int = 8
    data: dict[str, str] = field(default_factory=dict)
    current_seed: int = 0

    @classmethod
    def here(cls, start: str | Path | None = None) -> Project:
        """The project whose project.toml is in `start` (default: the working directory) or a folder above it."""
        start = Path(start or Path.cwd()).resolve()
        for folder in (start, *start.parents):
            if (folder / CONFIG).exists():
                return cls.read(folder)
        raise FileNotFoundError(f"no {CONFIG} in {start} or any folder above it: run the notebook from its project "
                                "folder, or make one with `mikit project new NAME`.")

    @classmethod
    def read(cls, folder: str | Path) -> Project:
        """The project in `folder`, with a one-sentence error for a missing or malformed project.toml."""
        folder = Path(folder)
        try:
            config = tomllib.loads((folder / CONFIG).read_text())
        except FileNotFoundError:
            raise FileNotFoundError(f"{folder} has no {CONFIG}: is it a project folder made by `mikit project new`?") from None
        except tomllib.TOMLDecodeError as error:
            raise ValueError(f"{folder / CONFIG} is not valid TOML ({error}).") from None
        missing = [key for key in ("name", "model", "technique", "task", "seeds") if key not in config]
        if missing:
            raise ValueError(f"{folder / CONFIG} lacks {', '.join(missing)}; `mikit project new` writes every key.")
        seeds = config["seeds"]
        if not seeds or not all(isinstance(s, int) for s in seeds):
            raise ValueError(f"seeds in {folder / CONFIG} must be a non-empty list of integers, not {seeds!r}.")
        return cls(folder.resolve(), config["name"], config["model"], config["technique"], config["task"],
                   list(seeds), config.get("device", "auto"), config.get("n_prompts", 8), config.get("data", {}),
                   seeds[0])

    @property
    def results(self) -> Path:
        return self.folder / RESULTS

    def seed(self, index: int = 0) -> int:
        """Seed Python, NumPy and torch with the `index`-th seed of project.toml; results saved next record it."""
        from mikit.session import seed_everything

        if not 0 <= index < len(self.seeds):
            raise ValueError(f"project.toml lists {len(self.seeds)} seeds, so index must be 0–{len(self.seeds) - 1}, "
                             f"not {index}.")
        self.current_seed = self.seeds[index]
        seed_everything(self.current_seed)
        return self.current_seed

    def model(self):
        """The project's model (`mikit.load_model`) on its device ("auto": CUDA when there is one, else the CPU)."""
        from mikit.models import load_model
        from mikit.session import choose_device

        return load_model(self.model_name, device=choose_device(None if self.device == "auto" else self.device))

    def task(self, model, seed: int | None = None, **options: Any):
        """The project's task on `model` (`mikit.circuits.tasks`), drawn with `seed` (default: the current seed)."""
        from mikit.project.starter import make_task

        return make_task(self.task_name, model, n_prompts=self.n_prompts,
                         seed=self.current_seed if seed is None else seed, **options)

    def code_version(self) -> str:
        """A short hash of the code cells of the project's notebook as saved on disk (save before you run)."""
        path = self.folder / NOTEBOOK
        if not path.exists():
            return ""
        cells = json.loads(path.read_text()).get("cells", [])
        code = "\n".join("".join(c["source"]) for c in cells if c.get("cell_type") == "code")
        return hashlib.sha256(code.encode()).hexdigest()[:12]

    def save(self, name: str, value: Any, caption: str = "") -> Path:
        """Save a figure or table as results/`name` with the current seed and code version (see `results`)."""
        from mikit.project import results

        record = results.save(self.results, name, value, caption=caption, seed=self.current_seed,
                              code_version=self.code_version(), extra={"model": self.model_name})
        return self.results / record["files"][0]


__all__ = ["CONFIG", "NOTEBOOK", "RESULTS", "Project"]
