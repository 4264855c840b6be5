"""The core layer: head ablation, hook names, shared metrics, one saved-model layout, and the layering itself."""

import ast
import re
from pathlib import Path

import pytest
import torch
from torch import nn

from mikit import core, storage

PACKAGE = Path(__file__).resolve().parents[1] / "mikit"
# Layers from the bottom; a module may import only from its own layer or below. `__main__` modules are
# command lines, on top of everything. The checks, grading and build sit above the techniques.
LAYERS = {
    "core": ["mikit.core", "mikit.paths"],
    "sources": ["mikit.storage", "mikit.models", "mikit.language_model", "mikit.zoo", "mikit.datasets", "mikit.session"],
    "techniques": ["mikit.induction", "mikit.ioi", "mikit.patching", "mikit.sae", "mikit.xattn", "mikit.circuits",
                   "mikit.toys", "mikit.probes", "mikit.steering", "mikit.lens"],
    "views": ["mikit.viz"],
}


# ---- ablate_head ----------------------------------------------------------------------------------


def test_ablate_head_zero_and_per_position_mean_change_one_head_only():
    z = torch.randn(3, 4, 5, 2) + torch.arange(4.0)[None, :, None, None]
    zeroed = core.ablate_head(z.clone(), None, 1, "zero")
    assert zeroed[:, :, 1].abs().sum() == 0 and torch.equal(zeroed[:, :, [0, 2, 3, 4]], z[:, :, [0, 2, 3, 4]])
    meaned = core.ablate_head(z.clone(), None, 1, "mean")
    # each position keeps its own mean over the batch: the positional signal stays
    torch.testing.assert_close(meaned[0, :, 1], z[:, :, 1].mean(0))
    assert not torch.allclose(meaned[0, 0, 1], meaned[0, 3, 1])
    assert torch.equal(meaned[:, :, [0, 2, 3, 4]], z[:, :, [0, 2, 3, 4]])


def test_ablate_head_with_reference_prompts_and_resampling():
    z = torch.arange(2 * 3 * 2 * 1, dtype=torch.float).view(2, 3, 2, 1)
    reference = torch.tensor([[1.0], [3.0], [5.0]]).view(3, 1, 1, 1).expand(3, 3, 2, 1)
    mean = core.ablate_head(z.clone(), None, 1, "mean", reference_z=reference)
    assert torch.equal(mean[:, :, 1], torch.full((2, 3, 1), 3.0)) and torch.equal(mean[:, :, 0], z[:, :, 0])
    resampled = core.ablate_head(z.clone(), None, 0, "resample", reference_z=reference, perm=torch.tensor([2, 0]))
    assert torch.equal(resampled[:, 0, 0, 0], torch.tensor([5.0, 1.0]))
    # without a reference, each prompt takes the next prompt's output
    rolled = core.ablate_head(z.clone(), None, 0, "resample")
    assert torch.equal(rolled[:, :, 0], z[[1, 0], :, 0]) and torch.equal(rolled[:, :, 1], z[:, :, 1])


def test_ablate_head_edits_in_place_and_refuses_bad_input():
    z = torch.ones(2, 3, 2, 1)
    assert core.ablate_head(z, None, 0) is z and z[:, :, 0].sum() == 0
    with pytest.raises(ValueError, match="method must be one of"):
        core.ablate_head(z, None, 0, "random")
    with pytest.raises(ValueError, match="at least two reference prompts"):
        core.ablate_head(torch.ones(1, 3, 2, 1), None, 0, "resample")


def test_ablate_head_runs_as_a_transformer_lens_hook():
    from mikit.models import load_model

    model = load_model("attn-only-2l")
    tokens = model.to_tokens("abcabcabc")
    logits = model.run_with_hooks(tokens, fwd_hooks=[("blocks.1.attn.hook_z", lambda z, hook: core.ablate_head(z, hook, 2))])
    assert not torch.allclose(logits, model(tokens))


# ---- hook names and metrics -----------------------------------------------------------------------


def test_hook_layer_and_module_at():
    assert core.hook_layer("blocks.11.attn.hook_z") == 11
    with pytest.raises(ValueError, match="per-layer hook name"):
        core.hook_layer("hook_embed")
    root = nn.Module()
    root.blocks = nn.ModuleList([nn.Module(), nn.Linear(2, 2)])
    assert core.module_at(root, "blocks.1") is root.blocks[1]


def test_normalised_metric():
    assert core.normalised_metric(torch.tensor([1.0, 3.0, 2.0]), clean=3.0, corrupted=1.0).tolist() == [0, 1, 0.5]
    with pytest.raises(ValueError, match="equal"):
        core.normalised_metric(1.0, 2.0, 2.0)


def test_logit_diff_reads_each_prompt_at_its_own_position():
    logits = torch.zeros(2, 3, 5)
    logits[0, 1, 4], logits[0, 1, 2] = 3.0, 1.0  # prompt 0 reads position 1
    logits[1, 2, 0], logits[1, 2, 1] = -1.0, 1.0  # prompt 1 reads position 2
    got = core.logit_diff(logits, torch.tensor([1, 2]), correct=torch.tensor([4, 0]), wrong=torch.tensor([2, 1]))
    assert got.tolist() == [2.0, -2.0]


def test_per_token_loss_is_the_next_token_cross_entropy():
    logits, tokens = torch.randn(2, 4, 7), torch.randint(0, 7, (2, 4))
    want = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, 7), tokens[:, 1:].reshape(-1), reduction="none")
    torch.testing.assert_close(core.per_token_loss(logits, tokens), want.view(2, 3))


# ---- storage --------------------------------------------------------------------------------------


def test_saved_model_round_trips_in_the_one_layout(tmp_path):
    model = nn.Linear(3, 2)
    storage.save_folder(model, tmp_path / "m", {"config": {"in": 3, "out": 2}, "metrics": {"loss": 1.0}})
    assert storage.is_saved(tmp_path / "m") and sorted(p.name for p in (tmp_path / "m").iterdir()) == [
        storage.CONFIG_FILE, storage.WEIGHTS_FILE]
    assert storage.read_config(tmp_path / "m")["config"] == {"in": 3, "out": 2}
    loaded = storage.load_weights(tmp_path / "m")
    assert all(torch.equal(loaded[k], v) for k, v in model.state_dict().items())
    with pytest.raises(ValueError, match="needs a 'config' entry"):
        storage.save_folder(model, tmp_path / "n", {"metrics": {}})


@pytest.mark.parametrize("folder", ["data/zoo/attn-only-2l", "data/xattn/tiny-t2i", "data/xattn/tiny-captioner"])
def test_every_shipped_model_uses_the_one_layout(folder):
    path = PACKAGE.parent / folder
    assert storage.is_saved(path) and isinstance(storage.read_config(path)["config"], dict)


# ---- layering -------------------------------------------------------------------------------------


def _module_name(path: Path, package: Path = PACKAGE) -> str:
    parts = path.relative_to(package.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every mikit module `path` imports, at any depth of its code (imports inside functions count)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
    return {name for name in found if name == "mikit" or name.startswith("mikit.")}


def _layer(module: str) -> int | None:
    for rank, prefixes in enumerate(LAYERS.values()):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return rank
    return None


def _layer_offences(package: Path) -> list[str]:
    """`module imports module` for every import from a layer above the importing module's own."""
    offences = []
    for path in sorted(package.rglob("*.py")):
        module = _module_name(path, package)
        own = _layer(module)
        if own is None or path.name == "__main__.py":
            continue
        offences += [f"{module} imports {imported}" for imported in sorted(_imports(path))
                     if (_layer(imported) or 0) > own]
    return offences


def test_no_module_imports_from_a_layer_above_its_own():
    offences = _layer_offences(PACKAGE)
    assert not offences, "imports from a higher layer:\n" + "\n".join(offences)


def test_the_layer_walk_reports_a_source_importing_a_technique(tmp_path):
    zoo = tmp_path / "mikit" / "zoo"
    zoo.mkdir(parents=True)
    (zoo / "recipes.py").write_text("def f():\n    from mikit.induction import top_heads\n")
    (zoo / "__main__.py").write_text("import mikit.induction\n")  # command lines sit on top: allowed
    assert _layer_offences(tmp_path / "mikit") == ["mikit.zoo.recipes imports mikit.induction",
                                                   "mikit.zoo.recipes imports mikit.induction.top_heads"]


def test_the_layer_walk_reports_a_technique_importing_the_views(tmp_path):
    sae = tmp_path / "mikit" / "sae"
    sae.mkdir(parents=True)
    (sae / "latents.py").write_text("from mikit import viz\n")
    (tmp_path / "mikit" / "viz").mkdir()
    (tmp_path / "mikit" / "viz" / "sae.py").write_text("from mikit.sae.latents import LatentIndex\n")  # views sit above
    assert _layer_offences(tmp_path / "mikit") == ["mikit.sae.latents imports mikit.viz"]


# ---- shared options -------------------------------------------------------------------------------


def _progress_offences(package: Path) -> list[str]:
    """Functions whose `progress` option is positional or has a default other than True."""
    offences = []
    for path in sorted(package.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            where = f"{_module_name(path, package)}.{node.name}"
            args = node.args
            if any(arg.arg == "progress" for arg in args.posonlyargs + args.args):
                offences.append(f"{where}: progress is positional")
            for arg, default in zip(args.kwonlyargs, args.kw_defaults):
                if arg.arg == "progress" and default is not None and not (
                        isinstance(default, ast.Constant) and default.value is True):
                    offences.append(f"{where}: progress defaults to {ast.unparse(default)}")
    return offences


def test_progress_is_keyword_only_and_on_by_default():
    offences = _progress_offences(PACKAGE)
    assert not offences, "\n".join(offences)


def test_the_progress_walk_reports_a_positional_or_silent_default(tmp_path):
    (tmp_path / "mikit").mkdir()
    (tmp_path / "mikit" / "m.py").write_text(
        "def a(x, progress=True): ...\ndef b(x, *, progress=False): ...\ndef c(x, *, progress=True): ...\n"
        "def _d(x, *, progress): ...\n")
    assert _progress_offences(tmp_path / "mikit") == ["mikit.m.a: progress is positional",
                                                      "mikit.m.b: progress defaults to False"]


# ---- one shape vocabulary -------------------------------------------------------------------------

# jaxtyping names say the same thing the same way everywhere: `batch pos d_model head d_head d_vocab layer`
# (q_pos / k_pos for attention's two position axes; d_in / d_sae in SAEs; patch / word / h / w in images).
SYNONYMS = {"b": "batch", "n": "batch", "prompt": "batch", "row": "batch", "token": "batch", "t": "pos",
            "context": "pos", "seq_len": "pos", "seq": "pos", "q": "q_pos", "k": "k_pos", "query": "q_pos",
            "key": "k_pos", "d": "d_model (d_in in an SAE)", "dim": "d_model", "vocab": "d_vocab", "comp": "component",
            "heads": "head", "layers": "layer", "size": "h w", "time": "step", "c": "word", "patches": "patch"}
ANNOTATION = re.compile(r'(?:Float|Int|Bool)\[[A-Za-z]+, "([^"]*)"\]')


def _synonyms_in(source: str) -> list[tuple[str, str]]:
    return [(dim, SYNONYMS[dim]) for names in ANNOTATION.findall(source) for dim in names.split() if dim in SYNONYMS]


def test_jaxtyping_annotations_use_the_one_shape_vocabulary():
    found = [f"{path.relative_to(PACKAGE.parent)}: {dim!r} (say {instead!r})"
             for path in sorted(PACKAGE.rglob("*.py")) for dim, instead in _synonyms_in(path.read_text())]
    assert not found, "shape names outside the vocabulary:\n" + "\n".join(found)


def test_the_vocabulary_scan_sees_a_synonym():
    assert _synonyms_in('def f(x: Float[Tensor, "b q d"]) -> Int[Tensor, "batch pos"]: ...') == [
        ("b", "batch"), ("q", "q_pos"), ("d", "d_model (d_in in an SAE)")]
