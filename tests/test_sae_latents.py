"""The latent index, lookup by token and logit effects, on the 2-layer character zoo model with a random TopK SAE."""

import pytest
import torch

from mikit.sae.latents import LatentIndex, latents_for_token, logit_effects
from sae_toy import HOOK, model, sae, rows  # noqa: F401  (tests/sae_toy.py; fixtures)


@pytest.fixture(scope="module")
def index(sae, model, rows):
    return LatentIndex.build(model, sae, HOOK, rows, top_k=5, bins=8, batch_size=5, progress=False)


@pytest.fixture(scope="module")
def dense(sae, model, rows):
    _, cache = model.run_with_cache(rows, names_filter=HOOK)
    return sae.encode(cache[HOOK][:, 1:])  # (row, position - 1, latent)


def test_index_keeps_each_latents_largest_activations_and_where_they_are(index, dense, rows):
    flat = dense.flatten(0, 1)
    torch.testing.assert_close(index.top_values, flat.T.topk(5, dim=1).values)
    for latent in range(dense.shape[-1]):
        for row, position, value in index.examples(latent):
            assert dense[row, position - 1, latent].item() == pytest.approx(value)
    assert index.n_tokens == rows.shape[0] * (rows.shape[1] - 1)


def test_index_counts_firing_and_histograms_every_nonzero_activation(index, dense):
    counts = (dense != 0).flatten(0, 1).sum(0)
    assert torch.equal(index.fire_counts, counts)
    assert torch.equal(index.histograms.sum(1), counts)
    assert 0 < (counts > 0).sum() < dense.shape[-1], "the fixture should have both live and dead latents"
    assert index.fire_frequency().sum().item() == pytest.approx(4.0)  # k = 4 latents per token


def test_index_round_trips_through_safetensors(index, tmp_path):
    loaded = LatentIndex.load(index.save(tmp_path).parent)
    assert torch.equal(loaded.tokens, index.tokens) and torch.equal(loaded.histograms, index.histograms)
    assert torch.equal(loaded.top_rows, index.top_rows) and torch.equal(loaded.top_positions, index.top_positions)
    torch.testing.assert_close(loaded.top_values, index.top_values, atol=1e-2, rtol=1e-3)  # stored as float16
    with pytest.raises(FileNotFoundError, match="LatentIndex.build"):
        LatentIndex.load(tmp_path / "elsewhere")


def test_index_rejects_bad_input(sae, model, rows, index):
    with pytest.raises(ValueError, match="not a hook point"):
        LatentIndex.build(model, sae, "blocks.9.hook_resid_pre", rows)
    with pytest.raises(ValueError, match="n_rows, context"):
        LatentIndex.build(model, sae, HOOK, rows[0])
    with pytest.raises(ValueError, match=r"latent must be an integer in \[0, 64\)"):
        index.examples(64)


def test_building_an_index_shows_progress_unless_told_not_to(sae, model, rows, capsys):
    LatentIndex.build(model, sae, HOOK, rows[:2])
    assert "indexing latents" in capsys.readouterr().err
    LatentIndex.build(model, sae, HOOK, rows[:2], progress=False)
    assert "indexing latents" not in capsys.readouterr().err


def test_latents_for_token_ranks_latents_by_top_examples_on_that_token(index, model):
    char = " "  # the character tokenizer: every token is one character
    found = latents_for_token(index, model.tokenizer, char, n=64)
    hits = lambda latent: sum(model.tokenizer.decode([int(index.tokens[r, p])]) == char  # noqa: E731
                              for r, p, _ in index.examples(latent, 10))
    expected = sorted((latent for latent in range(index.d_sae) if hits(latent)), key=lambda l: (-hits(l), -index.top_values[l, 0]))
    assert found == expected and found
    assert latents_for_token(index, model.tokenizer, "#") == []  # not in the text


def test_logit_effects_are_the_unit_decoder_direction_through_the_unembedding(sae, model):
    boosted, suppressed = logit_effects(model, sae, 3, k=4)
    effects = (sae.W_dec[3] / sae.W_dec[3].norm()) @ model.W_U
    assert [v for _, v in boosted] == pytest.approx(effects.topk(4).values.tolist(), abs=1e-5)
    assert [v for _, v in suppressed] == pytest.approx(effects.topk(4, largest=False).values.tolist(), abs=1e-5)
    assert boosted[0][0] == model.tokenizer.decode([int(effects.argmax())])
