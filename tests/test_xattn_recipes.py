"""The text-to-image recipe in a reduced form: trains, judges held-out captions, saves, loads."""

import dataclasses
import json

import pytest
import torch

from mikit.xattn import __main__ as cli
from mikit.xattn.recipes import RECIPE, judge, load_t2i, train_recipe
from mikit.xattn.training import SceneData

TINY = dataclasses.replace(RECIPE, d_model=32, n_heads=2, n_layers=1, d_mlp=64, n_scenes=200, steps=20,
                           batch_size=16, eval_scenes=10, sample_steps=4)


def test_recipe_saves_a_model_that_loads_back_with_its_report(tmp_path):
    model, report = train_recipe(TINY, tmp_path, progress=False)
    assert sum(report[k] for k in ("ok", "leaked", "misshaped", "neglected")) == pytest.approx(1.0)
    loaded = load_t2i(tmp_path)
    data = SceneData.generate(2, seed=9)
    t = torch.full((2,), 0.5)
    torch.testing.assert_close(loaded(data.images, t, data.captions), model(data.images, t, data.captions))
    info = json.loads((tmp_path / "config.json").read_text())
    assert info["recipe"] == dataclasses.asdict(TINY) and info["metrics"]["ok"] == round(report["ok"], 4)
    with pytest.raises(FileNotFoundError, match="python -m mikit.xattn train"):
        load_t2i(tmp_path / "nothing")


def test_judge_counts_every_caption_object(tmp_path):
    model, _ = train_recipe(TINY, tmp_path, progress=False)
    data = SceneData.generate(6, seed=3)
    shares = judge(model, data, steps=2, batch_size=4)
    n_objects = sum(len(s.objects) for s in data.scenes)
    assert all(abs(v * n_objects - round(v * n_objects)) < 1e-6 for v in shares.values())


def test_cli_trains_the_recipe_with_fewer_steps(monkeypatch, tmp_path):
    monkeypatch.setattr(cli, "RECIPE", TINY)
    assert cli.main(["train", "--steps", "5", "--out", str(tmp_path)]) == 0
    assert json.loads((tmp_path / "config.json").read_text())["recipe"]["steps"] == 5


def test_the_shipped_models_were_made_by_the_current_recipes():
    from mikit.xattn.captioner_recipe import RECIPE as CAPTIONER_RECIPE
    from mikit.xattn.captioner_recipe import load_captioner

    for model, recipe in ((load_t2i(), RECIPE), (load_captioner(), CAPTIONER_RECIPE)):
        assert model.info["recipe"] == dataclasses.asdict(recipe), f"retrain {recipe.name}: its recipe changed"
