"""Install metadata stays consistent: pyproject, environment.yml and the CI constraints agree."""

import tomllib
from pathlib import Path

import yaml
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]


def pyproject_deps() -> list[str]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]


def pins() -> dict[str, str]:
    lines = (ROOT / "constraints.txt").read_text().splitlines()
    pairs = [ln.split("==") for ln in lines if "==" in ln and not ln.startswith("#")]
    return {Requirement(name).name.lower().replace("_", "-"): version for name, version in pairs}


def test_environment_yml_lists_the_pyproject_dependencies():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_sections = [d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d]
    assert len(pip_sections) == 1
    assert sorted(pip_sections[0]) == sorted(pyproject_deps())


def test_constraints_pin_every_dependency_within_its_range():
    pinned = pins()
    for dep in map(Requirement, pyproject_deps()):
        name = dep.name.lower().replace("_", "-")
        assert name in pinned, f"{name} has no exact version in constraints.txt"
        assert dep.specifier.contains(pinned[name], prereleases=True), f"{name}=={pinned[name]} violates {dep}"


def test_transformer_lens_is_pinned_to_3_9():
    # 4.x removed HookedTransformer, and sae_lens needs TL < 4.
    assert pins()["transformer-lens"] == "3.9.0"
    assert "transformer_lens==3.9.0" in pyproject_deps()


def test_data_is_lean_and_pickle_free():
    files = [p for p in (ROOT / "data").rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) < 50 * 2**20
    assert not [p for p in files if p.suffix in {".pt", ".pth", ".pkl", ".pickle", ".bin", ".ckpt"}]
