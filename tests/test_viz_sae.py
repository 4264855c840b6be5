"""SAE figures and widgets (`mikit.viz.sae`): contexts, histogram, card, dashboard and steering table, on the
2-layer character zoo model with a random TopK SAE."""

import pytest

from mikit import viz
from mikit.sae.latents import LatentIndex
from sae_toy import HOOK, toy_rows, model, sae  # noqa: F401  (tests/sae_toy.py; fixtures)


@pytest.fixture(scope="module")
def index(sae, model):
    return LatentIndex.build(model, sae, HOOK, toy_rows(model), top_k=5, bins=8, batch_size=5, progress=False)


def test_contexts_shade_tokens_and_dead_latents_say_so(index, model, sae):
    live = int(index.fire_counts.argmax())
    page = viz.top_contexts_html(index, model, sae, HOOK, live, n=3)
    assert page.count("<div") == min(3, int(index.fire_counts[live])) and "border-bottom" in page
    dead = int((index.fire_counts == 0).nonzero()[0])
    assert "never fired" in viz.top_contexts_html(index, model, sae, HOOK, dead)


def test_histogram_bars_hold_every_nonzero_activation(index):
    live = int(index.fire_counts.argmax())
    fig = viz.activation_histogram(index, live)
    assert sum(fig.data[0].y) == int(index.fire_counts[live]) and len(fig.data[0].x) == index.histograms.shape[1]
    assert f"{index.n_tokens:,} tokens" in fig.layout.title.text
    with pytest.raises(ValueError, match="latent must be an integer"):
        viz.activation_histogram(index, index.d_sae)


def test_dashboard_rerenders_when_a_latent_is_picked_and_keeps_explanations(index, model, sae):
    live = int(index.fire_counts.argmax())
    board = viz.latent_dashboard(index, model, sae, latent=live)
    picker, contexts, note = board.children[0].children[0], board.children[1], board.children[3]
    first = contexts.value
    note.value = "fires on spaces"
    other = int(index.fire_counts.argsort(descending=True)[1])
    picker.value = other
    assert contexts.value != first and note.value == ""
    picker.value = live
    assert note.value == "fires on spaces" and board.explanations == {live: "fires on spaces"}


def test_steering_table_puts_plain_and_steered_continuations_side_by_side(model, sae):
    prompt = "The quick brown"
    table = viz.steering_table(model, sae, 5, 60.0, [prompt], max_new_tokens=12).data
    assert "without steering" in table and "latent 5 × 60" in table
    assert table.count("<td") == 2 and table.count(prompt) == 2
