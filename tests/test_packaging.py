"""Install metadata stays consistent: pyproject, environment.yml, the CI constraints and what the code imports."""

import ast
import importlib.metadata
import json
import tomllib
from pathlib import Path

import yaml
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
# The packages only transformers imports on our behalf (it reads the SmolLM2 GGUF file with gguf).
IMPORTED_BY_A_DEPENDENCY = {"gguf"}
# Instructor tools: the `grade` extra, imported lazily by the CLI.
# Modules that work on notebook files (nbformat, nbclient, nbconvert): `mikit build`/`grade` and `mikit project`.
# They come with the lab and grade extras (JupyterLab brings all three) and with Colab.
GRADE_MODULES = {"build.py", "grading.py", "project/starter.py", "project/run.py"}


def pyproject_deps() -> list[str]:
    return PYPROJECT["project"]["dependencies"]


def extra(name: str) -> list[Requirement]:
    return [Requirement(r) for r in PYPROJECT["project"]["optional-dependencies"][name]]


def normalised(name: str) -> str:
    return name.lower().replace("_", "-")


def pins() -> dict[str, str]:
    lines = (ROOT / "constraints.txt").read_text().splitlines()
    pairs = [ln.split("==") for ln in lines if "==" in ln and not ln.startswith("#")]
    return {normalised(Requirement(name).name): version for name, version in pairs}


def imported_distributions(paths) -> set[str]:
    """Distributions (normalised) that the top-level names imported by these Python files and notebooks come from."""
    names = set()
    for path in paths:
        if path.suffix == ".ipynb":
            cells = json.loads(path.read_text())["cells"]
            source = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")
            # IPython magics (the Colab cell's %pip) become `pass`, keeping the indentation.
            source = "\n".join(
                line[: len(line) - len(line.lstrip())] + "pass" if line.lstrip().startswith(("%", "!")) else line
                for line in source.splitlines()
            )
        else:
            source = path.read_text()
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.Import):
                names |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module.split(".")[0])
    owners = importlib.metadata.packages_distributions()
    return {normalised(dist) for name in names for dist in owners.get(name, []) if normalised(dist) != "mikit"}


def test_environment_yml_lists_the_dependencies_and_the_lab_and_grade_extras():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_sections = [d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d]
    assert len(pip_sections) == 1
    wanted = pyproject_deps() + [str(r) for r in extra("lab") + extra("grade")]
    assert sorted(pip_sections[0]) == sorted(set(wanted))


def test_constraints_pin_every_dependency_and_extra_within_its_range():
    pinned = pins()
    # pip freeze leaves setuptools out; the test extra needs it only to build the wheel.
    extras = [r for name in ("lab", "grade", "test") for r in extra(name) if r.name not in ("mikit", "setuptools")]
    for dep in list(map(Requirement, pyproject_deps())) + extras:
        name = normalised(dep.name)
        assert name in pinned, f"{name} has no exact version in constraints.txt"
        assert dep.specifier.contains(pinned[name], prereleases=True), f"{name}=={pinned[name]} violates {dep}"


def test_colab_extra_pins_what_ci_tested_except_torch():
    # Colab keeps its own torch; every other runtime dependency is installed at the version CI ran.
    colab = {normalised(r.name): r for r in extra("colab")}
    runtime = {normalised(Requirement(d).name) for d in pyproject_deps()}
    assert set(colab) == runtime - {"torch"}
    for name, req in colab.items():
        assert str(req.specifier) == f"=={pins()[name]}", f"colab extra has {req}, constraints.txt {pins()[name]}"


def test_transformer_lens_is_pinned_to_3_9():
    # 4.x removed HookedTransformer, and sae_lens needs TL < 4.
    assert pins()["transformer-lens"] == "3.9.0"
    assert "transformer_lens==3.9.0" in pyproject_deps()


def test_runtime_dependencies_are_exactly_what_the_library_and_notebooks_import():
    library = [p for p in (ROOT / "mikit").rglob("*.py") if p.relative_to(ROOT / "mikit").as_posix() not in GRADE_MODULES]
    used = imported_distributions(library + sorted((ROOT / "solutions").glob("*.ipynb")))
    runtime = {normalised(Requirement(d).name) for d in pyproject_deps()}
    # Imported but undeclared (transitive packages count: they arrive with a declared one).
    transitive = {normalised(r) for d in runtime for r in _requires(d)}
    assert used <= runtime | transitive, f"imported but not declared: {sorted(used - runtime - transitive)}"
    assert runtime - used - IMPORTED_BY_A_DEPENDENCY == set(), "declared but never imported"


def _requires(dist: str) -> set[str]:
    """Every distribution `dist` pulls in, recursively (installed ones only)."""
    seen, todo = set(), [dist]
    while todo:
        try:
            requirements = importlib.metadata.requires(todo.pop()) or []
        except importlib.metadata.PackageNotFoundError:
            continue
        for text in requirements:
            req = Requirement(text)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                if normalised(req.name) not in seen:
                    seen.add(normalised(req.name))
                    todo.append(req.name)
    return seen


def test_grading_tools_come_from_the_grade_extra():
    used = imported_distributions([ROOT / "mikit" / name for name in GRADE_MODULES])
    grade = {normalised(r.name) for r in extra("grade")}
    runtime = {normalised(Requirement(d).name) for d in pyproject_deps()}
    assert used & grade and used <= grade | runtime, sorted(used - grade - runtime)


def test_the_wheel_lists_every_package_and_maps_data():
    config = PYPROJECT["tool"]["setuptools"]
    packages = {str(p.parent.relative_to(ROOT)).replace("/", ".") for p in (ROOT / "mikit").rglob("__init__.py")}
    assert set(config["packages"]) == packages | {"mikit.data"}
    assert config["package-dir"] == {"mikit.data": "data"}
    shipped = {p.suffix for p in (ROOT / "data").rglob("*") if p.is_file()}
    assert shipped <= {pattern.removeprefix("**/*") for pattern in config["package-data"]["mikit.data"]}


def test_data_is_lean_and_pickle_free():
    files = [p for p in (ROOT / "data").rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) < 50 * 2**20
    assert not [p for p in files if p.suffix in {".pt", ".pth", ".pkl", ".pickle", ".bin", ".ckpt"}]
