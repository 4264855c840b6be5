"""mikit.circuits.planted: the shipped model's circuit is where training put it, and the methods recover it."""

import pytest
import torch

from mikit.circuits import (
    Graph, ablated_outputs, acdc, attribute, roc, roc_points, run_with_edges, scrub, source_outputs,
)
from mikit.circuits.planted import (
    CIRCUIT, PLANTED_DIR, TRUTH, induction_rows, load_planted, measure, repeat_loss, train_planted,
)
from mikit.storage import read_config


@pytest.fixture(scope="module")
def planted():
    return load_planted()


def test_rows_repeat_a_string_and_mark_what_a_repeat_predicts():
    tokens, predictable = induction_rows(50, torch.Generator().manual_seed(0))
    assert tokens.shape == (50, 25) and (tokens[:, 0] == 0).all() and (tokens[:, 1:] > 0).all()
    for row, mask in zip(tokens[:, 1:].tolist(), predictable.tolist()):
        period = mask.index(True)
        assert 4 <= period <= 12 and all(mask[period:])
        assert all(row[i] == row[i - period] for i in range(period, 24))


def test_shipped_model_matches_its_record_and_only_the_truth_matters(planted):
    recorded = read_config(PLANTED_DIR)["metrics"]
    measured = measure(planted)
    print(f"\nplanted model, every edge patched alone: {measured}")
    assert measured == pytest.approx(recorded, abs=2e-3)
    assert measured["loss"] < 0.5 and measured["circuit_loss"] < measured["loss"] + 0.15
    assert measured["min_truth_effect"] > 20 * measured["max_other_effect"]


def test_eap_eap_ig_and_acdc_recover_the_planted_circuit(planted):
    graph = Graph.of(planted)
    g = torch.Generator().manual_seed(2)
    (clean, predictable), (corrupted, _) = induction_rows(32, g), induction_rows(32, g)
    truth = graph.mask(TRUTH)

    def metric(logits):
        return -repeat_loss(logits, clean, predictable)

    aucs = {f"EAP-IG ({steps} steps)" if steps > 1 else "EAP": roc(attribute(planted, graph, clean, corrupted, metric,
                                                                             steps=steps).abs(), truth)[2]
            for steps in (1, 10)}
    with torch.no_grad():
        clean_logprobs = planted(clean)[:, :-1].log_softmax(-1)

    def kl(logits):  # the KL to the model at every predictable position
        got = logits[:, :-1].log_softmax(-1)
        return (clean_logprobs.exp() * (clean_logprobs - got)).sum(-1)[predictable].mean()

    out = ablated_outputs(planted, graph, corrupted)
    sweep = torch.stack([acdc(planted, graph, clean, out, kl, tau, progress=False) for tau in (1e-3, 1e-2, 0.1, 1.0)])
    aucs["ACDC"] = roc_points(sweep, truth)[2]
    print(f"\nAUC against the planted circuit ({len(TRUTH)} of {graph.n_edges} edges): "
          + ", ".join(f"{name} {auc:.3f}" for name, auc in aucs.items()), "· ACDC sizes", sweep.sum(1).tolist())
    assert min(aucs.values()) > 0.9


def test_training_never_shows_the_other_heads_the_row(tmp_path):
    model = train_planted(tmp_path, steps=3, weight_decay=0.0, progress=False)
    start = train_planted(None, steps=0, progress=False)  # the same seed: the initial weights
    used = {f"a{layer}.h{head}" for s, r in CIRCUIT for layer in (0, 1) for head in range(4)
            if f"a{layer}.h{head}" in (s, r.split("<")[0])}
    assert used == {"a0.h0", "a1.h0"}
    for layer in range(2):
        for head in range(4):
            same = all(torch.equal(getattr(model.blocks[layer].attn, w)[head], getattr(start.blocks[layer].attn, w)[head])
                       for w in ("W_Q", "W_K", "W_V", "W_O"))
            assert same == (f"a{layer}.h{head}" not in used), f"a{layer}.h{head}"  # no gradient ever reaches the others
    assert torch.equal(load_planted(folder=tmp_path).W_E, model.W_E)  # saved as safetensors + JSON and reloaded


def test_scrubbing_with_one_draw_for_every_edge_is_edge_patching_from_those_prompts(planted):
    graph = Graph.of(planted)
    tokens, predictable = induction_rows(16, torch.Generator().manual_seed(3))
    circuit = graph.mask(CIRCUIT)

    def metric(logits):
        return -repeat_loss(logits, tokens, predictable)

    order = torch.randperm(16, generator=torch.Generator().manual_seed(4))
    same = scrub(planted, graph, tokens, circuit, metric, draws=order.repeat(graph.n_edges, 1))
    patched = run_with_edges(planted, graph, tokens, source_outputs(planted, graph, tokens[order]), circuit, metric)
    assert same == pytest.approx(patched.item(), abs=1e-5)
    with torch.no_grad():
        assert scrub(planted, graph, tokens, graph.mask(), metric) == pytest.approx(metric(planted(tokens)).item(), abs=1e-6)
    with pytest.raises(ValueError, match="shape \\(81, 16\\), not \\(81, 15\\)"):
        scrub(planted, graph, tokens, circuit, metric, draws=order[:15].repeat(graph.n_edges, 1))


def test_scrubbing_keeps_the_planted_hypothesis_and_rejects_a_wrong_one(planted):
    graph = Graph.of(planted)
    tokens, predictable = induction_rows(64, torch.Generator().manual_seed(5))

    def metric(logits):
        return -repeat_loss(logits, tokens, predictable)

    with torch.no_grad():
        model_value = metric(planted(tokens)).item()
    nothing = scrub(planted, graph, tokens, ~graph.mask(), metric)

    def recovered(edges):
        return (scrub(planted, graph, tokens, graph.mask(edges), metric) - nothing) / (model_value - nothing)

    wrong = [(s.replace("a1.h0", "a1.h1"), r.replace("a1.h0", "a1.h1")) for s, r in CIRCUIT]  # another head
    shares = {"planted": recovered(CIRCUIT), "truth only": recovered(TRUTH), "wrong head": recovered(wrong)}
    print(f"\nloss recovered by scrubbing (model {-model_value:.3f}, all resampled {-nothing:.3f}):",
          {name: round(share, 3) for name, share in shares.items()})
    assert shares["planted"] > 0.9 and shares["truth only"] > 0.9 and shares["wrong head"] < 0.1
