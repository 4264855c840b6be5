"""The tiny captioner: prefix-LM mask seen through hook_pattern, greedy decoding, hallucination labels,
the image-share gap, a reduced training run that learns, and the shipped model's captions."""

import dataclasses
import json

import pytest
import torch
from torch import nn

from mikit.xattn import __main__ as cli
from mikit.xattn.captioner import (END, TinyCaptioner, TinyCaptionerConfig, attention_gap, generated_word_shares,
                                   greedy_caption, image_attention_share, label_words, prefix_lm_mask,
                                   word_image_shares)
from mikit.xattn.captioner_recipe import (RECIPE, caption_data, caption_quality, load_captioner, next_word_targets,
                                          train_captioner, train_recipe)
from mikit.xattn.scenes import VOCAB, SceneObject, tokenize

torch.set_num_threads(1)
N_IMAGE = 64
TINY = dataclasses.replace(RECIPE, d_model=32, n_heads=2, n_layers=1, d_mlp=64, n_scenes=64, steps=3, batch_size=8,
                           eval_scenes=8)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return TinyCaptioner(TinyCaptionerConfig(d_model=32, n_heads=2, n_layers=2, d_mlp=64)).eval()


@pytest.fixture(scope="module")
def batch():
    images, ids, scenes = caption_data(3, seed=5)
    return images, ids, scenes


def test_patterns_follow_the_prefix_lm_mask_and_sum_to_one(model, batch):
    images, ids, _ = batch
    _, cache = model.run_with_cache(images, ids, names_filter=lambda n: n.endswith("hook_pattern"))
    n_text = ids.shape[1]
    allowed = prefix_lm_mask(N_IMAGE, n_text)
    for layer in range(2):
        pattern = cache[f"blocks.{layer}.attn.hook_pattern"]
        assert pattern.shape == (3, 2, N_IMAGE + n_text, N_IMAGE + n_text)
        assert (pattern[:, :, :N_IMAGE, N_IMAGE:] == 0).all(), "image tokens must not attend to words"
        later = torch.triu(torch.ones(n_text, n_text, dtype=torch.bool), diagonal=1)
        assert (pattern[:, :, N_IMAGE:, N_IMAGE:][..., later] == 0).all(), "a word must not attend to later words"
        assert (pattern[..., ~allowed] == 0).all() and (pattern[..., allowed] > 0).all()
        torch.testing.assert_close(pattern.sum(-1), torch.ones(pattern.shape[:-1]))


def test_changing_later_words_leaves_earlier_predictions_alone(model, batch):
    images, ids, _ = batch
    changed = ids.clone()
    changed[:, 6:] = VOCAB.index("square")
    torch.testing.assert_close(model(images, changed)[:, :6], model(images, ids)[:, :6])


def test_image_attention_share_sums_the_image_keys():
    pattern = torch.tensor([[0.5, 0.25, 0.25, 0.0], [0.1, 0.2, 0.3, 0.4]])[None, None]  # (1, 1, 2 queries, 4 keys)
    torch.testing.assert_close(image_attention_share(pattern, n_image=2), torch.tensor([[[0.75, 0.3]]]))
    with pytest.raises(ValueError, match="n_image"):
        image_attention_share(pattern, n_image=5)


def test_word_image_shares_reads_the_query_before_each_word_and_averages_heads():
    # 2 image tokens, then <bos>, w0, w1: word p was chosen at query 2 + p. Two layers, two captions, two heads.
    n_image, n = 2, 5
    patterns = torch.zeros(2, 2, 2, n, n)
    patterns[..., 2:] = 1.0  # all attention on the text unless set below
    patterns[1, 0, 0, 2] = torch.tensor([0.3, 0.3, 0.4, 0.0, 0.0])  # layer 1, caption 0, head 0, <bos>: 0.6 on the image
    patterns[1, 0, 1, 2] = torch.tensor([0.1, 0.1, 0.8, 0.0, 0.0])  # head 1: 0.2 on the image
    patterns[0, 1, :, 3] = torch.tensor([0.5, 0.0, 0.25, 0.25, 0.0])  # layer 0, caption 1, query of w0: 0.5
    shares = word_image_shares(patterns, n_image, torch.tensor([0, 1, 1]), torch.tensor([0, 1, 0]))
    assert shares.shape == (3, 2)  # (word, layer)
    torch.testing.assert_close(shares, torch.tensor([[0.0, 0.4], [0.5, 0.0], [0.0, 0.0]]))
    with pytest.raises(ValueError, match="between 0 and 1"):
        word_image_shares(patterns, n_image, torch.tensor([0]), torch.tensor([2]))  # w2 is not in the sequence
    with pytest.raises(ValueError, match="one entry per word"):
        word_image_shares(patterns, n_image, torch.tensor([0, 1]), torch.tensor([0]))


class Scripted(nn.Module):
    """A stand-in captioner that always predicts the same next token."""

    def __init__(self, token: str):
        super().__init__()
        self.cfg, self.token = TinyCaptionerConfig(), VOCAB.index(token)

    def forward(self, images, ids):
        logits = torch.zeros(ids.shape[0], ids.shape[1], len(VOCAB))
        logits[..., self.token] = 1.0
        return logits


def test_greedy_caption_stops_at_the_end_token_and_at_max_len(model, batch):
    images = batch[0]
    captions = greedy_caption(model, images, max_len=5)
    assert len(captions) == 3 and all(len(c) <= 5 and set(c) <= set(VOCAB) - {"<pad>", "<bos>"} for c in captions)
    assert greedy_caption(Scripted("<pad>"), images) == [[], [], []]
    assert greedy_caption(Scripted("red"), images, max_len=4) == [["red"] * 4] * 3
    assert greedy_caption(Scripted("<bos>"), images[:1], max_len=2) != [["<bos>", "<bos>"]]  # <bos> is never generated
    with pytest.raises(ValueError, match="max_len"):
        greedy_caption(model, images, max_len=16)


RED_CIRCLE = SceneObject("circle", "red", "large", 8, 8)
BLUE_SQUARE = SceneObject("square", "blue", "small", 24, 8)


@pytest.mark.parametrize("caption, expected", [
    ("a large red circle left of a small blue square", [None, None, "g", "g", None, None, None, None, "g", "g"]),
    ("a large red square left of a small blue circle", [None, None, "h", "h", None, None, None, None, "h", "h"]),
    ("a small red circle", [None, None, "g", "g"]),  # a wrong size is not judged
    ("a large green circle", [None, None, "h", "h"]),
    ("a large circle , a red blue square", [None, None, "g", None, None, "h", "h", "h"]),
])
def test_label_words_grounds_phrases_by_colour_and_shape(caption, expected):
    names = {"g": "grounded", "h": "hallucinated", None: None}
    assert label_words(caption.split(), [RED_CIRCLE, BLUE_SQUARE]) == [names[e] for e in expected]


def test_generated_word_shares_reads_the_predicting_query(model, batch):
    images, _, scenes = batch
    captions = [["a", "large", "red", "circle"], ["a", "small", "blue", "square", "and"], []]
    shares = generated_word_shares(model, images, captions, [[RED_CIRCLE], [RED_CIRCLE], []])
    assert shares.words == ["red", "circle", "blue", "square"]
    assert shares.hallucinated.tolist() == [False, False, True, True]
    assert shares.caption.tolist() == [0, 0, 1, 1] and shares.position.tolist() == [2, 3, 2, 3]
    ids = tokenize(captions[0])[None]
    _, cache = model.run_with_cache(images[:1], ids, names_filter=lambda n: n.endswith("pattern"))
    expected = cache["blocks.1.attn.hook_pattern"][0, :, N_IMAGE + 2, :N_IMAGE].sum(-1).mean()  # "large" predicts "red"
    torch.testing.assert_close(shares.shares[0, 1], expected)


def test_attention_gap_recovers_a_known_difference():
    generator = torch.Generator().manual_seed(0)
    hallucinated = 0.3 + 0.05 * torch.randn(200, generator=generator)
    grounded = 0.5 + 0.05 * torch.randn(800, generator=generator)
    gap = attention_gap(hallucinated, grounded, n_boot=500)
    assert gap.gap.item() == pytest.approx((hallucinated.mean() - grounded.mean()).item(), abs=1e-6)
    assert gap.low < -0.2 < gap.high and gap.high - gap.low < 0.03
    same = attention_gap(grounded[:400], grounded[400:], n_boot=500)
    assert same.low < 0 < same.high
    per_layer = attention_gap(torch.stack([hallucinated] * 3, 1), torch.stack([grounded] * 3, 1), n_boot=100)
    assert per_layer.gap.shape == per_layer.low.shape == (3,)
    with pytest.raises(ValueError, match="at least 2"):
        attention_gap(hallucinated[:1], grounded)


def test_next_word_targets_end_with_one_pad():
    ids = tokenize(["a", "large", "red", "circle"])[None]
    inputs, targets = next_word_targets(ids)
    assert inputs.shape == targets.shape == (1, 15)
    assert targets[0, :5].tolist() == [VOCAB.index(w) for w in ["a", "large", "red", "circle"]] + [END]
    assert (targets[0, 5:] == -100).all()


def test_reduced_training_learns_to_caption():
    # 300 steps of a one-layer model on 1000 scenes: the loss starts near ln(20) ≈ 3.0 and must fall below 0.7
    images, ids, scenes = caption_data(1000, seed=0)
    torch.manual_seed(0)
    model = TinyCaptioner(TinyCaptionerConfig(d_model=32, n_heads=2, n_layers=1, d_mlp=64))
    history = train_captioner(model, images, ids, steps=300, batch_size=32, lr=3e-3, log_every=50, progress=False)
    assert history["loss"][0] > 1.5 and history["loss"][-1] < 0.7, history["loss"]


def test_recipe_saves_a_captioner_that_loads_back(tmp_path):
    model, report = train_recipe(TINY, tmp_path, progress=False)
    loaded = load_captioner(tmp_path)
    images, ids, _ = caption_data(2, seed=9)
    torch.testing.assert_close(loaded(images, ids), model(images, ids))
    info = json.loads((tmp_path / "config.json").read_text())
    assert info["recipe"] == dataclasses.asdict(TINY) and info["threads"] == torch.get_num_threads()
    assert set(report) >= {"exact", "object_recall", "phrase_precision", "hallucination_study"}
    with pytest.raises(FileNotFoundError, match="train-captioner"):
        load_captioner(tmp_path / "nothing")


def test_cli_trains_the_captioner_and_keeps_train(monkeypatch, tmp_path):
    monkeypatch.setattr(cli, "CAPTIONER_RECIPE", TINY)
    assert cli.main(["train-captioner", "--steps", "2", "--threads", "1", "--out", str(tmp_path)]) == 0
    assert json.loads((tmp_path / "config.json").read_text())["recipe"]["steps"] == 2
    with pytest.raises(SystemExit):
        cli.main(["nonsense"])


def test_shipped_captioner_captions_held_out_scenes():
    model = load_captioner()
    images, _, scenes = caption_data(20, seed=1234)
    quality = caption_quality(greedy_caption(model, images), scenes)
    assert quality["object_recall"] >= 0.8 and quality["phrase_precision"] >= 0.8, quality


def test_attention_gap_within_strata_removes_a_confounder():
    # later positions attend less to the image and hold most hallucinations; within a position there is no gap
    position_h = torch.tensor([0] * 10 + [1] * 90)
    position_g = torch.tensor([0] * 90 + [1] * 10)
    base = torch.tensor([0.9, 0.5])
    raw = attention_gap(base[position_h], base[position_g], n_boot=200)
    matched = attention_gap(base[position_h], base[position_g], n_boot=200, strata=(position_h, position_g))
    assert raw.gap.item() == pytest.approx(0.1 * 0.9 + 0.9 * 0.5 - (0.9 * 0.9 + 0.1 * 0.5))
    assert matched.gap.item() == pytest.approx(0.0, abs=1e-6) and matched.low <= 0 <= matched.high
    with pytest.raises(ValueError, match="one label per word"):
        attention_gap(base[position_h], base[position_g], strata=(position_h[:5], position_g))
