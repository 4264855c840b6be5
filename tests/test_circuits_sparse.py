"""mikit.circuits.sparse: the penalty makes attention sparser under the loss constraint, and the shipped model is it."""

import pytest
import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig

from mikit.circuits import Graph
from mikit.circuits.sparse import (
    SPARSE_DIR, attention_density, edges_for_faithfulness, effective_keys, faithfulness_curve, induction_prompts,
    lm_loss, load_sparse, repeat_logprob, sparsify,
)
from mikit.models import load_model
from mikit.storage import read_config
from mikit.zoo.recipes import held_out_text


@pytest.fixture(scope="module")
def tiny():
    cfg = HookedTransformerConfig(n_layers=1, d_model=32, n_heads=2, d_head=16, n_ctx=24, d_vocab=20, attn_only=True,
                                  normalization_type="LNPre", seed=0)
    return HookedTransformer(cfg).eval()


def random_rows(generator):
    return torch.randint(0, 20, (8, 24), generator=generator)


def test_density_counts_weights_above_the_threshold_on_causal_positions(tiny):
    tokens = random_rows(torch.Generator().manual_seed(0))
    with torch.no_grad():
        _, cache = tiny.run_with_cache(tokens)
    pattern = cache["pattern", 0]
    causal = torch.ones(24, 24, dtype=torch.bool).tril()
    assert attention_density(tiny, tokens, 0.02) == pytest.approx((pattern > 0.02)[..., causal].float().mean().item())
    uniform = torch.ones(24, 24).tril() / torch.arange(1, 25)[:, None]
    assert effective_keys(uniform[None, None]).item() == pytest.approx(1, abs=1e-3)
    one_hot = (1 / torch.arange(1, 25)).mean().item()
    assert effective_keys(torch.eye(24)[None, None]).item() == pytest.approx(one_hot, abs=1e-3)


def test_the_penalty_lowers_density_and_the_multiplier_holds_the_loss(tiny):
    before = tiny.state_dict()["blocks.0.attn.W_Q"].clone()
    history = []
    data = lambda g: random_rows(g)  # noqa: E731
    sparse = sparsify(tiny, steps=40, tolerance=0.05, lr=1e-2, rate=5.0, data=data, progress=False, history=history)
    assert torch.equal(tiny.blocks[0].attn.W_Q, before)  # the input model is left alone
    tokens = random_rows(torch.Generator().manual_seed(99))
    density = attention_density(tiny, tokens, 0.05), attention_density(sparse, tokens, 0.05)
    losses = lm_loss(tiny, tokens), lm_loss(sparse, tokens)
    print(f"\ntiny model: density {density[0]:.3f} -> {density[1]:.3f}, loss {losses[0]:.3f} -> {losses[1]:.3f}")
    assert density[1] < 0.8 * density[0]
    assert losses[1] < losses[0] + 0.1


def test_the_multiplier_rises_while_the_constraint_is_violated_and_falls_while_it_holds(tiny):
    violated, held = [], []
    # Adam steps of 1.0 wreck the model, so its loss rises above the original's at once
    sparsify(tiny, steps=8, tolerance=0.0, lr=1.0, rate=5.0, data=random_rows, progress=False, history=violated)
    sparsify(tiny, steps=8, tolerance=50.0, lr=1.0, rate=5.0, data=random_rows, progress=False, history=held)
    assert all(h["loss_increase"] > 0 for h in violated[1:])
    multipliers = [h["multiplier"] for h in violated]
    assert multipliers[1] > 0.5 and all(b > a for a, b in zip(multipliers[1:], multipliers[2:]))  # 0.5 to start with
    assert held[-1]["multiplier"] == 0 and all(h["loss_increase"] < 50 for h in held)


def test_bad_input_is_one_sentence(tiny):
    with pytest.raises(ValueError, match="tolerance .* cannot be negative"):
        sparsify(tiny, steps=5, tolerance=-0.1, data=random_rows)
    with pytest.raises(ValueError, match="steps must be at least 1, not 0"):
        sparsify(tiny, steps=0, data=random_rows)
    with pytest.raises(ValueError, match="not a zoo model"):
        sparsify(tiny, steps=1)
    with pytest.raises(ValueError, match="threshold must be between 0 and 1"):
        attention_density(tiny, random_rows(torch.Generator()), 1.5)


def test_faithfulness_curve_runs_from_0_to_1_over_edge_prefixes():
    model = load_model("attn-only-2l", "cpu")
    clean, corrupted = induction_prompts(model, 4, 10)
    graph, metric = Graph.of(model), repeat_logprob(clean)
    curve = faithfulness_curve(model, graph, torch.randn(graph.n_edges, generator=torch.Generator().manual_seed(0)),
                               clean, corrupted, metric)
    assert curve.shape == (graph.n_edges + 1,) and curve[0] == 0 and curve[-1] == pytest.approx(1)
    with pytest.raises(ValueError, match="the same with every edge patched"):
        faithfulness_curve(model, graph, torch.ones(graph.n_edges), clean, clean, metric)
    with pytest.raises(ValueError, match="target is a share"):
        edges_for_faithfulness(model, graph, clean, corrupted, metric, target=1.5)


def test_the_shipped_model_is_sparser_than_attn_only_2l_at_nearly_equal_loss():
    record = read_config(SPARSE_DIR)
    before, after = record["metrics"]["before"], record["metrics"]["after"]
    print(f"\nrecorded: {before} -> {after}")
    assert after["density"] < 0.75 * before["density"]
    # the constraint holds on the training mixture (75 % repeated strings); English alone may drift a little more
    assert after["text_loss"] < 1.05 * before["text_loss"]
    original, sparse = load_model("attn-only-2l", "cpu"), load_sparse()
    text = held_out_text(batch=4, seq_len=128)  # a quarter of the recorded batch: close, not equal
    density = attention_density(original, text), attention_density(sparse, text)
    losses = lm_loss(original, text), lm_loss(sparse, text)
    print(f"recomputed on 4 windows: density {density}, loss {losses}")
    assert density == pytest.approx((before["density"], after["density"]), rel=0.25)
    assert density[1] < 0.75 * density[0] and losses[1] < 1.05 * losses[0]
