"""The synthetic time series (mikit.datasets.timeseries), the zoo's classifier on them (mikit.zoo.timeseries)
and the time-step analyses (mikit.timeseries)."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"  # everything here must work without the Hugging Face hub

import pytest
import torch

from mikit.datasets.timeseries import (
    BOS_ID,
    CLASSES,
    CLS_ID,
    D_VOCAB,
    DECISIVE,
    FEATURES,
    LENGTH,
    WINDOWS,
    detect_features,
    labels_from_features,
    make_timeseries,
    step_position,
    tokenize,
)
from mikit.storage import read_config
from mikit.timeseries import (
    class_logit_diff,
    last_position_attention,
    path_attention,
    share_in_steps,
    time_step_patching,
)
from mikit.zoo.timeseries import (
    CONFIG,
    TEST_SIZE,
    accuracy,
    evaluation_set,
    folder,
    load_timeseries_classifier,
    main,
    train_timeseries_classifier,
)


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def ds():
    return make_timeseries(2000, seed=3)


@pytest.fixture(scope="module")
def model():
    return load_timeseries_classifier()


# The generator


def test_shapes_and_vocabulary(ds):
    tokens = ds.tokens()
    assert ds.series.shape == (2000, LENGTH) and ds.labels.shape == (2000,)
    assert ds.present.shape == (2000, len(FEATURES)) and ds.feature_steps.shape == (2000, len(FEATURES), LENGTH)
    assert tokens.shape == (2000, LENGTH + 2)
    assert (tokens[:, 0] == BOS_ID).all() and (tokens[:, -1] == CLS_ID).all()
    assert tokens[:, 1:-1].min() >= 2 and tokens[:, 1:-1].max() < D_VOCAB
    assert step_position(0) == 1 and step_position(LENGTH - 1) == LENGTH


def test_same_seed_same_series_and_other_seeds_differ():
    a, b, c = make_timeseries(50, seed=7), make_timeseries(50, seed=7), make_timeseries(50, seed=8)
    assert torch.equal(a.series, b.series) and torch.equal(a.labels, b.labels) and torch.equal(a.tokens(), b.tokens())
    assert not torch.allclose(a.series, c.series)


def test_classes_are_balanced(ds):
    counts = torch.bincount(ds.labels, minlength=len(CLASSES))
    assert len(counts) == 4 and counts.min() > 400, counts


@pytest.mark.parametrize("bad", [0, -3, 2.5, "10", True])
def test_bad_sizes_say_so(bad):
    with pytest.raises(ValueError, match="n must be a positive integer"):
        make_timeseries(bad)


def test_other_bad_input_says_so(ds):
    with pytest.raises(ValueError, match="seed must be an integer"):
        make_timeseries(10, seed=1.5)
    with pytest.raises(ValueError, match="p_feature is a probability"):
        make_timeseries(10, p_feature=1.5)
    with pytest.raises(ValueError, match="no feature named 'spike'; the features are early_peak"):
        ds.with_feature("spike", True)
    with pytest.raises(ValueError, match=r"series must be a \(batch, step\) tensor"):
        tokenize(torch.zeros(LENGTH))
    with pytest.raises(ValueError, match="n_bins must be an integer of at least 2"):
        ds.tokens(n_bins=1)


# The truth: known features decide the class, each in its window


def test_the_decisive_features_decide_the_class(ds):
    assert torch.equal(labels_from_features(ds.present), ds.labels)
    early_peak, late_dip = (ds.present[:, FEATURES.index(name)] for name in DECISIVE)
    assert torch.equal(ds.labels, 2 * early_peak.long() + late_dip.long())
    # The distractors are independent of the class: each is present in about half of every class.
    for c in range(len(CLASSES)):
        share = ds.present[ds.labels == c][:, 2:].float().mean(0)
        assert ((share > 0.4) & (share < 0.6)).all(), (c, share)


def test_features_lie_in_their_windows_and_never_overlap(ds):
    steps = torch.arange(LENGTH)
    for i, name in enumerate(FEATURES):
        start, end = WINDOWS[name]
        covered = ds.feature_steps[:, i]
        width = 2 if name == "level_shift" else 3
        assert torch.equal(covered.sum(1), width * ds.present[:, i].long())
        inside = (steps >= start - 1) & (steps < end)  # a shift also marks the step just before it
        assert not (covered & ~inside).any(), name
    assert ds.feature_steps.sum(1).max() <= 1  # no step belongs to two features
    decisive = ds.feature_steps[:, [FEATURES.index(name) for name in DECISIVE]].any(1)
    assert torch.equal(ds.decisive_steps, decisive)
    assert not ds.decisive_steps[ds.labels == 0].any()


def test_a_hand_rule_on_the_values_recovers_the_class(ds):
    found = detect_features(ds.series)
    rule_accuracy = (labels_from_features(found) == ds.labels).float().mean().item()
    print(f"hand rule on the values: {rule_accuracy:.4f}")
    assert rule_accuracy >= 0.995  # 0.9995 on 100,000 series; the rest are spikes drowned by noise and drift


def test_with_feature_changes_only_that_feature(ds):
    without = ds.with_feature("early_peak", False)
    had = ds.present[:, 0]
    changed = (without.series != ds.series).any(1)
    assert torch.equal(changed, had)
    assert torch.equal(without.labels, ds.labels % 2)
    differing_steps = without.series != ds.series
    assert torch.equal(differing_steps, ds.feature_steps[:, 0])
    assert torch.equal(without.with_feature("early_peak", had).series, ds.series)
    subset = ds[ds.labels == 3]
    assert len(subset) == (ds.labels == 3).sum() and (subset.labels == 3).all()


# The shipped classifier


def test_shipped_model_reproduces_its_recorded_accuracy(model):
    record = read_config(folder())
    measured = accuracy(model, evaluation_set())
    print("recorded", record["metrics"], "measured", measured)
    assert record["metrics"]["test_size"] == TEST_SIZE
    assert abs(measured["accuracy"] - record["metrics"]["accuracy"]) <= 1 / TEST_SIZE
    for name in CLASSES:
        assert abs(measured["per_class_accuracy"][name] - record["metrics"]["per_class_accuracy"][name]) <= 0.002
    assert measured["accuracy"] >= 0.99


def test_shipped_folder_holds_no_pickles_and_its_config(model):
    assert {path.suffix for path in folder().iterdir()} <= {".safetensors", ".json"}
    assert read_config(folder())["config"] == CONFIG
    assert model.cfg.d_vocab == D_VOCAB and model.cfg.d_vocab_out == len(CLASSES) and not model.training


def test_accuracy_command_prints_the_shipped_figures(capsys):
    assert main(["accuracy"]) == 0
    assert '"accuracy": ' + str(read_config(folder())["metrics"]["accuracy"]) in capsys.readouterr().out


def test_hook_names_are_transformer_lens_ones(model, ds):
    logits, cache = model.run_with_cache(ds[:8].tokens())
    assert logits.shape == (8, LENGTH + 2, len(CLASSES))
    assert cache["blocks.0.attn.hook_pattern"].shape == (8, 4, LENGTH + 2, LENGTH + 2)
    for name in ("hook_embed", "hook_pos_embed", "blocks.1.hook_resid_pre", "blocks.1.mlp.hook_post",
                 "blocks.1.attn.hook_z", "blocks.1.hook_resid_post"):
        assert name in cache.cache_dict, name


def test_short_training_learns_and_reloads_exactly(tmp_path):
    trained = train_timeseries_classifier(tmp_path, steps=20, batch_size=64, progress=False)
    reloaded = load_timeseries_classifier(path=tmp_path)
    tokens = make_timeseries(16, seed=5).tokens()
    with torch.inference_mode():
        assert torch.equal(trained(tokens), reloaded(tokens))
    record = read_config(tmp_path)
    assert record["recipe"]["steps"] == 20 and record["config"] == CONFIG
    # 20 steps already beat chance (0.25) on the test set; the full 1200 reach 0.997.
    assert record["metrics"]["accuracy"] > 0.3, record["metrics"]
    with pytest.raises(FileNotFoundError, match="train it with `python -m mikit.zoo.timeseries train`"):
        load_timeseries_classifier(path=tmp_path / "missing")


# Time-step analyses


def test_patching_finds_the_removed_peak_where_it_was(model, ds):
    clean = ds[ds.labels == 2][:6]
    corrupted = clean.with_feature("early_peak", False)
    restored = time_step_patching(
        model, clean.tokens(), corrupted.tokens(), clean.labels, corrupted.labels, progress=False
    )
    assert restored.shape == (6, 2, LENGTH + 2)
    # Layer 0's residual stream is the embedding: only the positions whose tokens differ can restore anything.
    # Tokens differ off the peak too (each series is rescaled by its own mean and spread), but less.
    differing = clean.tokens() != corrupted.tokens()
    assert (restored[:, 0][~differing] == 0).all() and not restored[:, 1].isnan().any()
    share = share_in_steps(restored[:, 0], clean.decisive_steps)
    print("share of layer-0 restoration on the peak's 3 steps:", share)
    assert share.mean() > 0.8 and share.min() > 0.5  # chance: 3 of 48 steps, 0.06


def test_last_position_attention_rows_and_shares(model, ds):
    attention = last_position_attention(model, ds[:10].tokens())
    assert attention.shape == (10, 2, 4, LENGTH + 2)
    assert torch.allclose(attention.sum(-1), torch.ones(10, 2, 4), atol=1e-5)
    shares = share_in_steps(attention, ds[:10].decisive_steps)
    assert shares.shape == (10, 2, 4)
    assert torch.isnan(shares[ds[:10].labels == 0]).all() and not torch.isnan(shares[ds[:10].labels != 0]).any()
    with pytest.raises(ValueError, match="scores must run over the 50 token positions"):
        share_in_steps(attention[..., 1:], ds[:10].decisive_steps)


def test_path_attention_composes_the_patterns(model, ds):
    tokens = ds[:5].tokens()
    attention = last_position_attention(model, tokens)
    assert torch.allclose(path_attention(model, tokens, [(1, 2)]), attention[:, 1, 2])
    _, cache = model.run_with_cache(tokens)
    by_hand = torch.einsum("bk,bkj->bj", attention[:, 1, 1], cache["blocks.0.attn.hook_pattern"][:, 0])
    path = path_attention(model, tokens, [(0, 0), (1, 1)])
    assert torch.allclose(path, by_hand, atol=1e-6) and torch.allclose(path.sum(-1), torch.ones(5), atol=1e-5)
    with pytest.raises(ValueError, match="strictly increasing layers"):
        path_attention(model, tokens, [(1, 1), (0, 0)])


def test_class_logit_diff_reads_the_last_position():
    logits = torch.zeros(2, 3, 4)
    logits[:, -1] = torch.tensor([[1.0, 2.0, 3.0, 4.0], [4.0, 3.0, 2.0, 1.0]])
    metric = class_logit_diff(torch.tensor([3, 0]), torch.tensor([0, 3]), reduce=False)
    assert metric(logits).tolist() == [3.0, 3.0]
