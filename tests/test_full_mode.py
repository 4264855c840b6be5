"""Every solution notebook runs to the end in full mode and earns full marks, on offline stand-ins.

Full mode (Colab: GPT-2 small, released SAELens SAEs, Stable Diffusion) needs the Hugging Face Hub; here
`tests/standins.py` replaces what it downloads with seeded random models of the same shapes, loaded through
mikit's real code paths. Each notebook gets a first cell that installs the stand-ins in its kernel (the grader's
process, where the hidden tests run, gets them too), and runs
through `mikit grade` with MIKIT_MODE=full. This proves full-mode code paths, shapes and loaders, not numbers.
The stand-in GPT-2 is built once, in this process; each notebook's kernel loads its weights from a cache.
Run with -s to see each notebook's time and its slowest cells.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path

import nbformat
import pytest
import standins  # tests/standins.py, next to this file
import torch

from mikit.build import NOTEBOOKS, SOLUTIONS
from mikit.grading import grade

REPO = Path(__file__).resolve().parents[1]
NAMES = sorted(p.name for p in SOLUTIONS.glob("*.ipynb"))

# Cells that compare with GPT-2 small's published results, which random weights cannot reproduce: there a
# check may fail, but only with its own sentence (CheckFailed), never with a crash.
PUBLISHED_RESULTS = {"02_ioi.ipynb": ("check.paper_comparison", "check.circuit")}
# Graded exercises whose bar is a number only a trained model reaches (02's circuit must keep 60 % of GPT-2's
# logit difference; a random model's difference is noise around zero): the grader may withhold their points, but
# only with the check's verdict.
NEEDS_TRAINED_WEIGHTS = {"02_ioi.ipynb": {"circuit": "of the logit difference on unseen prompts"}}

# Installs the stand-ins, then logs every cell's time and error (mikit grade keeps executing after an error).
PRELUDE = r'''
import json, sys, time
sys.path.insert(0, {repo!r})
from tests.standins import install

install()


def _log_cell(result, _path={log!r}, _clock=time.perf_counter, _started=[time.perf_counter()]):
    error = result.error_in_exec
    entry = {{"cell": " | ".join(result.info.raw_cell.strip().splitlines()[:2]), "seconds": round(_clock() - _started[0], 2)}}
    if error is not None:
        entry.update(error=type(error).__name__, message=str(error)[:500])
    with open(_path, "a") as log:
        log.write(json.dumps(entry) + "\n")
    _started[0] = _clock()


get_ipython().events.register("post_run_cell", _log_cell)
'''.strip()


def full_mode_copy(name: str, folder: Path, log: Path, finished: Path) -> Path:
    """The solution notebook with the stand-ins installed first and a last cell that writes `finished`."""
    nb = nbformat.read(SOLUTIONS / name, as_version=4)
    nb.cells.insert(0, nbformat.v4.new_code_cell(PRELUDE.format(repo=str(REPO), log=str(log))))
    nb.cells.append(nbformat.v4.new_code_cell(f"open({str(finished)!r}, 'w').write('ran to the end')"))
    path = folder / name
    nbformat.write(nb, path)
    return path


@pytest.fixture(scope="module")
def standin_cache():
    """A folder for the stand-ins' cache, shared by this process and the notebooks' kernels."""
    # Not pytest's tmp_path: a concurrent pytest session may prune it while a notebook runs.
    folder = tempfile.mkdtemp(prefix="mikit-standin-cache-")
    yield Path(folder)
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def standin_gpt2(standin_cache):
    """The stand-in GPT-2 small, built from scratch here; its processed weights go to the cache for the kernels."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(standins.CACHE_ENV, str(standin_cache))
        return standins.gpt2_small()


@pytest.mark.notebook
@pytest.mark.fullmode
@pytest.mark.parametrize("name", NAMES)
def test_solution_runs_in_full_mode_with_full_marks(name, monkeypatch, standin_cache, standin_gpt2):
    monkeypatch.setenv(standins.CACHE_ENV, str(standin_cache))  # the kernel loads the GPT-2 built above
    monkeypatch.setenv("MIKIT_MODE", "full")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the stand-ins need no Hub; nothing may hang on one
    for module, attribute, standin in standins.seams():  # the hidden tests run here, in the grader's process
        monkeypatch.setattr(module, attribute, standin)
    # Not pytest's tmp_path: a concurrent pytest session may prune it while the notebook runs.
    with tempfile.TemporaryDirectory(prefix="mikit-fullmode-") as folder:
        log, finished = Path(folder) / "cells.jsonl", Path(folder) / "finished"
        copy = full_mode_copy(name, Path(folder), log, finished)
        start = time.perf_counter()
        report = grade(copy, reference=NOTEBOOKS / name)
        seconds = time.perf_counter() - start
        cells = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
        ran_to_the_end = finished.exists()
    print(f"\n{name}: full mode on stand-ins in {seconds:.0f} s; slowest cells:")
    for cell in sorted(cells, key=lambda c: -c["seconds"])[:5]:
        print(f"  {cell['seconds']:6.1f} s  {cell['cell'][:100]}")
    expected = PUBLISHED_RESULTS.get(name, ())
    errors = [cell for cell in cells if "error" in cell
              and not (cell["error"] == "CheckFailed" and any(cell["cell"].startswith(e) for e in expected))]
    verdicts = NEEDS_TRAINED_WEIGHTS.get(name, {})
    failed = {gid: g.message for gid, g in report.exercises.items() if g.points < g.max_points
              and not (gid in verdicts and verdicts[gid] in g.message)}
    assert ran_to_the_end, f"the kernel stopped before the last cell; errors: {errors}"
    assert not errors and not failed, "cells that raised:\n" + "\n".join(
        f"{e['cell']!r}: {e['error']}: {e['message']}" for e in errors) + f"\nchecks failed: {failed}"
    assert report.total == report.max_total - sum(
        report.exercises[gid].max_points - report.exercises[gid].points for gid in verdicts) > 0


@pytest.mark.fullmode
def test_standin_gpt2_has_gpt2_smalls_config_tokenizer_and_folded_layernorm(standin_gpt2):
    cfg = standin_gpt2.cfg
    assert (cfg.n_layers, cfg.n_heads, cfg.d_model, cfg.d_head, cfg.d_mlp, cfg.d_vocab, cfg.n_ctx) == (
        12, 12, 768, 64, 3072, 50257, 1024)
    assert (cfg.act_fn, cfg.normalization_type, cfg.original_architecture) == ("gelu_new", "LNPre", "GPT2LMHeadModel")
    assert cfg.default_prepend_bos and cfg.positional_embedding_type == "standard"
    assert standin_gpt2.to_tokens(" Mary").tolist() == [[50256, 5335]]  # GPT-2's ids, BOS = <|endoftext|> prepended
    # center_unembed and center_writing_weights, as from_pretrained processes GPT-2
    assert standin_gpt2.W_U.mean(-1).abs().max() < 1e-5 and standin_gpt2.W_E.mean(-1).abs().max() < 1e-5
    with torch.no_grad():
        assert standin_gpt2(standin_gpt2.to_tokens("Hello world")).shape == (1, 3, 50257)


@pytest.mark.fullmode
def test_standin_gpt2_loaded_from_the_cache_is_the_model_built_from_scratch(standin_gpt2, standin_cache, monkeypatch):
    monkeypatch.setenv(standins.CACHE_ENV, str(standin_cache))
    assert list(standin_cache.glob("gpt2-small-*.safetensors")), "building the stand-in wrote no cache."
    rng = torch.random.get_rng_state()
    loaded = standins.gpt2_small()
    assert torch.equal(torch.random.get_rng_state(), rng), "loading the stand-in moved the notebook's random stream."
    assert loaded is not standin_gpt2 and loaded.cfg.to_dict() == standin_gpt2.cfg.to_dict()
    built = standin_gpt2.state_dict()
    assert loaded.state_dict().keys() == built.keys()
    assert all(torch.equal(value, built[key]) for key, value in loaded.state_dict().items())
    tokens = loaded.to_tokens("When Mary and John went to the store, John gave a drink to")
    with torch.no_grad():
        torch.testing.assert_close(loaded(tokens), standin_gpt2(tokens), rtol=0, atol=0)


@pytest.mark.fullmode
def test_load_model_reaches_the_hub_only_through_the_seam_the_standins_replace(standin_gpt2, monkeypatch):
    import mikit
    from mikit import models

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(models, "load_hub_model", lambda name, device: standin_gpt2.train())
    model = mikit.load_model("gpt2-small", device="cpu")
    assert model is standin_gpt2 and not model.training


@pytest.mark.fullmode
def test_standin_released_sae_is_written_by_saelens_and_read_from_disk(standin_gpt2, monkeypatch):
    from mikit.sae import io
    monkeypatch.setattr(io, "download_released", standins.released_sae_to_disk)
    sae = io.load_released("gpt2-small-res-jb", "blocks.7.hook_resid_pre")
    assert type(sae).__name__ == "ReLUSAE" and (sae.d_in, sae.d_sae) == (768, standins.STANDIN_D_SAE)
    assert sae.metadata["hook_name"] == "blocks.7.hook_resid_pre" and sae.metadata["release"] == "gpt2-small-res-jb"
    _, cache = standin_gpt2.run_with_cache(standin_gpt2.to_tokens("The quick brown fox jumps over the lazy dog"),
                                           names_filter="blocks.7.hook_resid_pre", stop_at_layer=8)
    l0 = (sae.encode(cache["blocks.7.hook_resid_pre"][0, 1:]) > 0).sum(-1).float().mean()
    assert 1 <= l0 <= 400  # sparse, as a trained SAE


@pytest.mark.fullmode
def test_standin_stable_diffusion_draws_and_records_cross_attention(monkeypatch):
    from mikit.xattn import diffusers_attention as da
    monkeypatch.setattr(da, "pipeline_from_hub", standins.tiny_stable_diffusion)
    pipe = da.load_stable_diffusion(device="cpu")
    prompt = "a red apple next to a blue cup on a wooden table"
    with da.DiffusersCrossAttentionStore(pipe.unet, cfg=False) as store:
        image = pipe(prompt, num_inference_steps=1, guidance_scale=0.0, generator=torch.Generator().manual_seed(0)).images[0]
    words = [pipe.tokenizer.decode([i]) for i in pipe.tokenizer(prompt).input_ids]
    assert words[1:-1] == prompt.split() and image.size == (64, 64)
    assert store.heatmap(words.index("apple"), size=64).shape == (1, 64, 64)
