"""The latent index, the dashboard and steering, on the 2-layer character zoo model with a random TopK SAE."""

import pytest
import torch

import mikit
from mikit.sae import TopKSAE
from mikit.sae.dashboard import LatentIndex, latent_dashboard, latents_for_token, logit_effects, top_contexts_html
from mikit.sae.steering import generate_steered, steering_hook, steering_table

HOOK = "blocks.1.hook_resid_pre"


@pytest.fixture(scope="module")
def model():
    return mikit.load_model("attn-only-2l", device="cpu")


@pytest.fixture(scope="module")
def sae(model):
    torch.manual_seed(0)
    sae = TopKSAE(model.cfg.d_model, 64, k=4, metadata={"hook_name": HOOK})
    # A random SAE with b_dec at the data's median, so latents fire on some tokens and not others.
    rows = model.to_tokens(["the cat sat on the mat", "induction heads copy the next token"])
    _, cache = model.run_with_cache(rows, names_filter=HOOK)
    sae.initialize_b_dec_(cache[HOOK][:, 1:].flatten(0, 1))
    return sae.eval()


@pytest.fixture(scope="module")
def rows(model):
    text = "The quick brown fox jumps over the lazy dog. " * 3
    return model.to_tokens([text[i : i + 40] for i in range(0, 60, 5)])  # (12, 41), BOS first


@pytest.fixture(scope="module")
def index(sae, model, rows):
    return LatentIndex.build(model, sae, HOOK, rows, top_k=5, bins=8, batch_size=5)


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


def test_contexts_shade_tokens_and_dead_latents_say_so(index, model, sae):
    live = int(index.fire_counts.argmax())
    page = top_contexts_html(index, model, sae, HOOK, live, n=3)
    assert page.count("<div") == min(3, int(index.fire_counts[live])) and "border-bottom" in page
    dead = int((index.fire_counts == 0).nonzero()[0])
    assert "never fired" in top_contexts_html(index, model, sae, HOOK, dead)


def test_dashboard_rerenders_when_a_latent_is_picked_and_keeps_explanations(index, model, sae):
    live = int(index.fire_counts.argmax())
    board = latent_dashboard(index, model, sae, latent=live)
    picker, contexts, note = board.children[0].children[0], board.children[1], board.children[3]
    first = contexts.value
    note.value = "fires on spaces"
    other = int(index.fire_counts.argsort(descending=True)[1])
    picker.value = other
    assert contexts.value != first and note.value == ""
    picker.value = live
    assert note.value == "fires on spaces" and board.explanations == {live: "fires on spaces"}


def test_steering_adds_the_scaled_direction_and_changes_generation_only_while_on(model, sae):
    x = torch.zeros(1, 3, model.cfg.d_model)
    torch.testing.assert_close(steering_hook(sae.W_dec[5], 2.5)(x, None)[0, 2], 2.5 * sae.W_dec[5])
    prompt = "The quick brown"
    plain = model.generate(prompt, max_new_tokens=12, do_sample=False, verbose=False)
    assert generate_steered(model, sae, 5, 0.0, prompt, max_new_tokens=12) == plain
    steered = generate_steered(model, sae, 5, 60.0, prompt, max_new_tokens=12)
    assert steered.startswith(prompt) and steered != plain
    assert model.generate(prompt, max_new_tokens=12, do_sample=False, verbose=False) == plain  # hook removed
    table = steering_table(model, sae, 5, 60.0, [prompt], max_new_tokens=12).data
    assert "without steering" in table and "latent 5 × 60" in table
    with pytest.raises(ValueError, match="not a hook point"):
        generate_steered(model, sae, 5, 1.0, prompt, hook_name="blocks.7.hook_resid_pre")
