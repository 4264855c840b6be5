"""The zoo: the shipped attn-only-2l model, its tokenizer, and a shortened run of its recipe."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"  # everything here must work without the Hugging Face hub

import dataclasses

import pytest
import torch

from mikit.zoo import (
    RECIPES,
    ZOO_MODELS,
    held_out_text,
    load_zoo_model,
    model_folder,
    read_config,
    train,
)
from mikit.induction import model_induction_scores, model_previous_token_scores, repeated_sequence_losses, summarize_model
from mikit.zoo.__main__ import main

NAME = "attn-only-2l"
# The recipe on shorter rows, more of them per step, which gets through the induction plateau
# in fewer steps: it reaches the bar in ~30 s on 2 cores (0.88 with seed 0; 0.85-0.87 over seeds 1-3).
SHORT_RECIPE = dataclasses.replace(
    RECIPES[NAME], seq_len=48, min_repeat_len=4, max_repeat_len=23, eval_repeat_len=20, batch_size=40, steps=500
)
SHIPPED_SUFFIXES = {".safetensors", ".json"}


@pytest.fixture(scope="module")
def model():
    return load_zoo_model(NAME)


def test_shipped_model_has_induction_and_previous_token_heads(model):
    assert model_induction_scores(model, seq_len=50, batch=16).max() >= 0.8
    assert model_previous_token_scores(model, held_out_text(seq_len=model.cfg.n_ctx))[0].max() >= 0.7
    first, second = repeated_sequence_losses(model, seq_len=50, batch=16)
    assert second < first / 5


def test_shipped_folder_holds_no_pickles_and_records_its_recipe():
    folder = model_folder(NAME)
    assert {path.suffix for path in folder.iterdir()} <= SHIPPED_SUFFIXES
    record = read_config(folder)
    assert record["recipe"]["name"] == NAME and record["recipe"]["steps"] == RECIPES[NAME].steps
    assert record["config"] == RECIPES[NAME].hooked_config()
    assert record["metrics"]["induction_score"] >= 0.8 and record["metrics"]["prev_token_score"] >= 0.7


def test_load_is_ready_for_analysis():
    model = load_zoo_model(NAME)
    assert not model.training and model.cfg.device == "cpu" and model.cfg.attn_only


def test_tokenizer_is_one_token_per_character(model):
    assert model.to_str_tokens("Hello world") == ["<|bos|>", "H", "e", "l", "l", "o", " ", "w", "o", "r", "l", "d"]
    text = "def f(x):\n    return {'a': x ** 2}  # ~!"
    tokens = model.to_tokens(text)
    assert tokens[0, 0].item() == model.tokenizer.bos_token_id == 0
    assert tokens.shape[1] == len(text) + 1
    assert model.to_string(tokens[0, 1:]) == text
    assert model.to_tokens("é", prepend_bos=False).tolist() == [[model.tokenizer.unk_token_id]]


def test_unknown_name_lists_the_zoo():
    with pytest.raises(ValueError, match=rf"^No zoo model named 'gpt-5'; available: {NAME}\.$"):
        load_zoo_model("gpt-5")


def test_list_command(capsys):
    assert main(["list"]) == 0
    assert all(name in capsys.readouterr().out for name in ZOO_MODELS)


def test_short_recipe_reaches_the_induction_bar_and_reloads_exactly(tmp_path, monkeypatch):
    measure = lambda model, text: summarize_model(model, text, seq_len=SHORT_RECIPE.eval_repeat_len)  # noqa: E731
    trained = train(SHORT_RECIPE, tmp_path / NAME, progress=False, measure=measure)
    assert read_config(tmp_path / NAME)["metrics"]["induction_score"] >= 0.8
    assert {path.suffix for path in (tmp_path / NAME).iterdir()} <= SHIPPED_SUFFIXES

    monkeypatch.setenv("MIKIT_ZOO_DIR", str(tmp_path))
    reloaded = load_zoo_model(NAME)
    tokens = held_out_text(batch=4, seq_len=SHORT_RECIPE.seq_len)
    with torch.inference_mode():
        assert torch.equal(trained(tokens), reloaded(tokens))
