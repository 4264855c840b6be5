"""mikit.circuits: the graph, edge patching and edge attribution, against computations done by hand."""

import pytest
import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig

from mikit.circuits import (
    Graph, ablated_outputs, acdc, attribute, circuit_nodes, circuit_size, completeness, faithfulness, kl_to_clean,
    minimality, node_scores, roc, roc_points, run_with_edges, source_outputs, tasks,
)
from mikit.models import load_model


@pytest.fixture(scope="module")
def toy():
    return load_model("attn-only-2l")


@pytest.fixture(scope="module")
def gqa():
    """A random 3-layer model with MLPs and grouped-query attention: 4 query heads share 2 key/value heads."""
    cfg = HookedTransformerConfig(n_layers=3, d_model=32, n_heads=4, d_head=8, n_key_value_heads=2, d_mlp=64,
                                  n_ctx=16, d_vocab=50, act_fn="gelu", normalization_type="LN", seed=3)
    return HookedTransformer(cfg).eval()


PLANTED = ["input->a0.h0<q>", "input->a0.h0<k>", "input->a0.h0<v>", "input->a1.h0<q>", "input->a1.h0<k>",
           "a0.h0->a1.h0<v>", "a0.h0->logits", "a1.h0->logits"]


@pytest.fixture(scope="module")
def planted():
    """A 2-layer attention-only model whose circuit is PLANTED, by subspaces of a 12-dimensional residual stream:
    the embeddings write to A; a0.h0 reads A and writes B; a1.h0 reads A for its query and key, B for its
    values, and writes C; the unembedding reads B and C. Head 1 of each layer reads everything, writes nothing.
    No layer norm and no biases, so an edge outside the circuit changes nothing beyond float rounding."""
    cfg = HookedTransformerConfig(n_layers=2, d_model=12, n_heads=2, d_head=4, n_ctx=16, d_vocab=20,
                                  attn_only=True, normalization_type=None, act_fn="relu", seed=0)
    model = HookedTransformer(cfg).eval()
    a, b, c = slice(0, 4), slice(4, 8), slice(8, 12)
    g = torch.Generator().manual_seed(0)

    def r(*shape):
        return torch.randn(*shape, generator=g)

    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        model.embed.W_E[:, a] = r(20, 4)
        for layer, reads, values, writes in [(0, a, a, b), (1, a, b, c)]:
            attn = model.blocks[layer].attn
            attn.W_Q[0][reads], attn.W_K[0][reads], attn.W_V[0][values] = r(4, 4), r(4, 4), r(4, 4)
            attn.W_O[0][:, writes] = r(4, 4)
            for weight in (attn.W_Q, attn.W_K, attn.W_V):
                weight[1] = r(12, 4)
        model.unembed.W_U[b], model.unembed.W_U[c] = r(4, 20), r(4, 20)
    return model


def prompts(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randint(0, model.cfg.d_vocab, (3, 10), generator=g),
            torch.randint(0, model.cfg.d_vocab, (3, 10), generator=g))


def answer_logprob(clean):
    """The clean prompts' last token, predicted at the position before it: a smooth metric of the logits."""
    def metric(logits):
        return logits[:, -2].log_softmax(-1)[torch.arange(len(logits)), clean[:, -1]].mean()
    return metric


def caches(model, *prompts):
    with torch.no_grad():
        return [model.run_with_cache(tokens)[1] for tokens in prompts]


def head_out(model, cache, layer, head):
    return cache["z", layer][:, :, head] @ model.W_O[layer, head]


def test_graph_of_attn_only_2l_names_every_edge_once(toy):
    graph = Graph.of(toy)
    assert graph.sources == ["input"] + [f"a{l}.h{h}" for l in range(2) for h in range(4)]
    # layer 0: 12 q/k/v receivers read the input; layer 1: 12 read 5 sources; the logits read all 9
    assert graph.n_edges == 12 * 1 + 12 * 5 + 9 == len(set(graph.edge_names))
    assert graph.edge_names[graph.edge_index("a0.h1", "a1.h2<k>")] == "a0.h1->a1.h2<k>"
    with pytest.raises(ValueError, match="there is no edge a1.h0 -> a1.h2<k>"):
        graph.edge_index("a1.h0", "a1.h2<k>")  # a head does not read its own layer


def test_graph_of_a_grouped_query_model_has_one_key_and_value_receiver_per_group(gqa):
    graph = Graph.of(gqa)
    assert "a1.kv1<k>" in graph.receiver_names and "a1.h1<k>" not in graph.receiver_names
    assert sum(name.startswith("a0.") and name.endswith("<v>") for name in graph.receiver_names) == 2
    assert graph.sources[:7] == ["input", "a0.h0", "a0.h1", "a0.h2", "a0.h3", "m0", "a1.h0"]
    assert graph.edge_index("a0.h3", "m0") < graph.edge_index("input", "a1.h0<q>")  # MLP 0 reads layer 0's heads
    # every source feeds the logits; the MLP of the last layer reads every head before it
    assert graph.receivers[-1].n_sources == len(graph.sources) == 1 + 3 * 5


@pytest.mark.parametrize("name", ["toy", "gqa"])
def test_every_edge_kept_is_the_clean_run_and_none_kept_the_corrupted_one(name, request):
    model = request.getfixturevalue(name)
    graph, (clean, corrupted) = Graph.of(model), prompts(model)
    metric = answer_logprob(clean)
    both = run_with_edges(model, graph, clean, source_outputs(model, graph, corrupted),
                          torch.stack([graph.mask(), ~graph.mask()]), metric)
    with torch.no_grad():
        assert both[0].item() == pytest.approx(metric(model(clean)).item(), abs=1e-4)
        assert both[1].item() == pytest.approx(metric(model(corrupted)).item(), abs=1e-4)
    assert not model.cfg.use_split_qkv_input  # the graph's hook points are off again


def test_one_edge_patched_equals_the_patch_by_hand(toy):
    graph, (clean, corrupted) = Graph.of(toy), prompts(toy)
    metric = answer_logprob(clean)
    clean_cache, corrupted_cache = caches(toy, clean, corrupted)
    with torch.no_grad():
        delta = head_out(toy, corrupted_cache, 0, 1) - head_out(toy, clean_cache, 0, 1)

        def into_key(resid, hook):  # only head 2 of layer 1 reads a0.h1's corrupted output, in its key
            return resid + torch.nn.functional.pad(delta[:, :, None], (0, 0, 2, 1))

        toy.set_use_split_qkv_input(True)
        try:
            by_hand_key = metric(toy.run_with_hooks(clean, fwd_hooks=[("blocks.1.hook_k_input", into_key)])).item()
        finally:
            toy.set_use_split_qkv_input(False)
        # a0.h1 -> logits: layer 1 still reads the clean output, the unembedding the corrupted one
        by_hand_logits = metric(toy.run_with_hooks(
            clean, fwd_hooks=[("blocks.1.hook_resid_post", lambda resid, hook: resid + delta)])).item()
    sets = torch.stack([graph.mask(), graph.mask(), graph.mask()])
    sets[0, graph.edge_index("a0.h1", "a1.h2<k>")] = False
    sets[1, graph.edge_index("a0.h1", "logits")] = False
    got = run_with_edges(toy, graph, clean, source_outputs(toy, graph, corrupted), sets, metric)
    assert got[0].item() == pytest.approx(by_hand_key, abs=1e-4)
    assert got[1].item() == pytest.approx(by_hand_logits, abs=1e-4)
    assert by_hand_key != pytest.approx(got[2].item(), abs=1e-3)  # the patch changed something
    alone = run_with_edges(toy, graph, clean, source_outputs(toy, graph, corrupted), sets[1], metric)
    assert alone.item() == pytest.approx(got[1].item(), abs=1e-5)  # a set does not depend on its batch mates


def test_a_key_value_edge_of_a_grouped_model_patches_the_whole_group(gqa):
    graph, (clean, corrupted) = Graph.of(gqa), prompts(gqa)
    metric = answer_logprob(clean)
    clean_cache, corrupted_cache = caches(gqa, clean, corrupted)
    with torch.no_grad():
        delta = corrupted_cache["mlp_out", 0] - clean_cache["mlp_out", 0]
        gqa.set_use_split_qkv_input(True)
        try:  # value head 1 of layer 2 (query heads 2 and 3 read it) gets MLP 0's corrupted output
            by_hand = metric(gqa.run_with_hooks(clean, fwd_hooks=[(
                "blocks.2.hook_v_input", lambda v, hook: v + torch.nn.functional.pad(delta[:, :, None], (0, 0, 1, 0)))])).item()
        finally:
            gqa.set_use_split_qkv_input(False)
    mask = graph.mask()
    mask[graph.edge_index("m0", "a2.kv1<v>")] = False
    got = run_with_edges(gqa, graph, clean, source_outputs(gqa, graph, corrupted), mask, metric)
    assert got.item() == pytest.approx(by_hand, abs=1e-4)


def hand_gradients(model, tokens, metric, hook, embed=None):
    """∂metric/∂(the activation at `hook`), with the graph's split inputs on; `embed` replaces the embeddings."""
    kept = {}

    def keep(activation, hook):
        activation.retain_grad()
        kept["x"] = activation

    hooks = [(hook, keep)]
    if embed is not None:
        hooks.insert(0, ("blocks.0.hook_resid_pre", lambda resid, hook: embed.clone().requires_grad_()))
    model.set_use_split_qkv_input(True)
    try:
        with torch.enable_grad():
            metric(model.run_with_hooks(tokens, fwd_hooks=hooks)).backward()
    finally:
        model.set_use_split_qkv_input(False)
        model.zero_grad(set_to_none=True)
    return kept["x"].grad


def test_eap_is_the_gradient_formula_and_eap_ig_averages_it_along_the_path(toy):
    graph, (clean, corrupted) = Graph.of(toy), prompts(toy)
    metric = answer_logprob(clean)
    clean_cache, corrupted_cache = caches(toy, clean, corrupted)
    delta = head_out(toy, corrupted_cache, 0, 3) - head_out(toy, clean_cache, 0, 3)
    edge = graph.edge_index("a0.h3", "a1.h0<q>")
    grad = hand_gradients(toy, clean, metric, "blocks.1.hook_q_input")[:, :, 0]
    eap = attribute(toy, graph, clean, corrupted, metric)
    assert eap[edge].item() == pytest.approx((delta * grad).sum().item(), rel=1e-4, abs=1e-6)
    # input -> logits: the gradient at the last residual stream, times the embeddings' difference
    embed_delta = corrupted_cache["resid_pre", 0] - clean_cache["resid_pre", 0]
    grad_end = hand_gradients(toy, clean, metric, "blocks.1.hook_resid_post")
    assert eap[graph.edge_index("input", "logits")].item() == pytest.approx(
        (embed_delta * grad_end).sum().item(), rel=1e-4, abs=1e-6)
    # EAP-IG, 2 steps: the mean of the gradients at the embeddings halfway and at the clean end
    halfway = corrupted_cache["resid_pre", 0] + 0.5 * (clean_cache["resid_pre", 0] - corrupted_cache["resid_pre", 0])
    grad_half = hand_gradients(toy, clean, metric, "blocks.1.hook_q_input", embed=halfway)[:, :, 0]
    ig = attribute(toy, graph, clean, corrupted, metric, steps=2)
    assert ig[edge].item() == pytest.approx((delta * (grad + grad_half) / 2).sum().item(), rel=1e-4, abs=1e-6)
    assert not torch.allclose(ig, eap)
    assert all(p.grad is None for p in toy.parameters())  # only activations were differentiated


def test_eap_ig_tracks_exact_edge_patching_better_than_eap_on_induction(toy):
    """Repeated random tokens; the corrupted prompts have another first half, so there is nothing to copy. Every
    one of the 81 edges patched alone (one batch) against the two estimates (as Hanna et al. 2024 find)."""
    g = torch.Generator().manual_seed(0)
    first, other = torch.randint(1, toy.cfg.d_vocab, (2, 8, 10), generator=g)
    clean, corrupted = torch.cat([first, first], 1), torch.cat([other, first], 1)

    def metric(logits):  # log-probability of the repeated half's next tokens
        return logits[:, 10:-1].log_softmax(-1).gather(-1, clean[:, 11:, None]).mean()

    graph = Graph.of(toy)
    with torch.no_grad():
        base = metric(toy(clean)).item()
    exact = run_with_edges(toy, graph, clean, source_outputs(toy, graph, corrupted),
                           ~torch.eye(graph.n_edges, dtype=torch.bool), metric) - base
    eap = attribute(toy, graph, clean, corrupted, metric)
    ig = attribute(toy, graph, clean, corrupted, metric, steps=10)
    r_eap, r_ig = (torch.corrcoef(torch.stack([s, exact]))[0, 1].item() for s in (eap, ig))
    assert r_ig > 0.6 and r_ig > r_eap + 0.1, (r_eap, r_ig)


def test_acdc_finds_exactly_the_planted_circuit(planted):
    graph, (clean, corrupted) = Graph.of(planted), prompts(planted)
    with torch.no_grad():
        metric = kl_to_clean(planted(clean))
    corrupted_out = ablated_outputs(planted, graph, corrupted)
    effects = run_with_edges(planted, graph, clean, corrupted_out, ~torch.eye(graph.n_edges, dtype=torch.bool), metric)
    # The fixture is what it says: edges outside the circuit change the metric by float rounding only (1e-8 on an
    # AVX2 CPU, exactly 0 on others), the planted ones by more than 1.
    assert [graph.edge_names[i] for i in (effects.abs() > 1e-6).nonzero().flatten()] == PLANTED
    kept = acdc(planted, graph, clean, corrupted_out, metric, threshold=1e-6, progress=False)
    assert [graph.edge_names[i] for i in kept.nonzero().flatten()] == PLANTED
    assert circuit_size(graph, kept) == {"edges": 8, "nodes": 4}  # input, a0.h0, a1.h0, logits
    # EAP scores every edge outside the circuit exactly 0: the gradients live in other subspaces
    eap = attribute(planted, graph, clean, corrupted, lambda logits: logits[:, -1].log_softmax(-1)[:, 0].mean())
    outside = ~graph.mask([tuple(name.split("->")) for name in PLANTED])
    assert eap[outside].abs().max() < 1e-6 and eap[~outside].abs().min() > 1e-4
    assert roc(eap.abs(), ~outside)[2] == 1.0


def test_the_planted_circuit_is_complete_and_minimal_and_a_cut_or_padded_one_is_not(planted):
    graph, (clean, corrupted) = Graph.of(planted), prompts(planted)
    metric, out = answer_logprob(clean), ablated_outputs(planted, graph, corrupted)
    truth = graph.mask([tuple(name.split("->")) for name in PLANTED])

    def measured(present):
        return run_with_edges(planted, graph, clean, out, present, metric).item()

    subsets = [[], ["a0.h0"], ["a1.h0"], ["a0.h1", "a1.h1"], ["input", "a1.h1"]]
    pairs = completeness(planted, graph, truth, clean, out, metric, subsets, chunk=3)
    assert pairs.shape == (5, 2)
    torch.testing.assert_close(pairs[:, 0], pairs[:, 1], atol=1e-5, rtol=0)  # complete: F(C \ K) = F(M \ K)
    assert pairs[2, 1].item() == pytest.approx(measured(~graph.edges_from(["a1.h0"])), abs=1e-6)
    assert len(set(pairs[:3, 0].tolist())) == 3  # the node sets do change the metric
    cut = truth & ~graph.mask([("a0.h0", "a1.h0<v>")])  # an edge of the circuit left out
    (with_cut, whole), = completeness(planted, graph, cut, clean, out, metric, [[]]).tolist()
    assert abs(with_cut - whole) > 1e-3

    padded = truth | graph.mask([("a0.h1", "a1.h0<q>")])  # a head that writes nothing
    scores = minimality(planted, graph, padded, clean, out, metric)
    assert list(scores) == circuit_nodes(graph, padded) == ["input", "a0.h0", "a0.h1", "a1.h0"]
    assert scores["a0.h1"] == pytest.approx(0, abs=1e-6) and min(abs(scores[v]) for v in PLANTED_NODES) > 1e-3
    assert scores["a0.h0"] == pytest.approx(measured(padded) - measured(padded & ~graph.edges_from(["a0.h0"])), abs=1e-6)
    given = minimality(planted, graph, truth, clean, out, metric, {"a0.h0": ["a1.h0"]})["a0.h0"]
    without_a1 = truth & ~graph.edges_from(["a1.h0"])
    assert given == pytest.approx(measured(without_a1) - measured(without_a1 & ~graph.edges_from(["a0.h0"])), abs=1e-6)
    assert given != pytest.approx(scores["a0.h0"], abs=1e-4)


PLANTED_NODES = ["input", "a0.h0", "a1.h0"]


def test_roc_area_is_the_trapezoid_area_and_ties_count_half():
    g = torch.Generator().manual_seed(0)
    scores, truth = torch.randn(200, generator=g), torch.rand(200, generator=g) < 0.3
    scores = scores + truth  # informative, not perfect
    fpr, tpr, auc = roc(scores, truth)
    assert auc == pytest.approx(torch.trapezoid(tpr, fpr).item(), abs=1e-6) and 0.6 < auc < 0.95
    assert (fpr[0], tpr[0], fpr[-1], tpr[-1]) == (0, 0, 1, 1) and (fpr.diff() >= 0).all() and (tpr.diff() >= 0).all()
    assert roc(-scores, truth)[2] == pytest.approx(1 - auc, abs=1e-6)
    assert roc(torch.ones(4), torch.tensor([True, False, True, False]))[2] == 0.5
    with pytest.raises(ValueError, match="must hold some edges and leave some out"):
        roc(scores, torch.ones(200, dtype=torch.bool))


def test_roc_points_of_a_threshold_sweep_by_hand(planted):
    truth = torch.tensor([True, True, False, False, False])
    circuits = torch.tensor([[True, False, False, False, False],   # tpr 1/2, fpr 0
                             [True, True, True, False, False],     # tpr 1, fpr 1/3
                             [True, False, True, True, False]])    # tpr 1/2, fpr 2/3: below the others
    fpr, tpr, auc = roc_points(circuits, truth)
    assert fpr.tolist() == pytest.approx([0, 0, 1 / 3, 2 / 3, 1]) and tpr.tolist() == [0, 0.5, 1, 0.5, 1]
    assert auc == pytest.approx(0.75)  # three trapezoids of width 1/3 and mean height 0.75
    # ACDC on the planted model: every threshold up to a point finds exactly the circuit, a large one less of it
    graph, (clean, corrupted) = Graph.of(planted), prompts(planted)
    with torch.no_grad():
        metric = kl_to_clean(planted(clean))
    out, true = ablated_outputs(planted, graph, corrupted), graph.mask([tuple(n.split("->")) for n in PLANTED])
    sweep = torch.stack([acdc(planted, graph, clean, out, metric, tau, progress=False) for tau in (1e-6, 1e-3, 10.0)])
    fpr, tpr, auc = roc_points(sweep, true)
    assert (0.0, 1.0) in list(zip(fpr.tolist(), tpr.tolist())) and auc == 1.0
    with pytest.raises(ValueError, match=f"one entry per edge \\({graph.n_edges}\\), got shape \\(3, 5\\)"):
        roc_points(circuits, true)


def sequential_acdc(model, graph, clean, corrupted_out, metric, threshold):
    """ACDC one question at a time, in acdc's order, without the dangling-node shortcut."""
    present = graph.mask()
    current = run_with_edges(model, graph, clean, corrupted_out, present, metric).item()
    for receiver in reversed(graph.receivers):
        for s in reversed(range(receiver.n_sources)):
            for i in range(receiver.n):
                edge = receiver.first_edge + s * receiver.n + i
                present[edge] = False
                value = run_with_edges(model, graph, clean, corrupted_out, present, metric).item()
                if value - current < threshold:
                    current = value
                else:
                    present[edge] = True
    return present


def test_acdc_asking_speculative_runs_answers_as_one_question_at_a_time(toy):
    g = torch.Generator().manual_seed(0)
    first, other = torch.randint(1, toy.cfg.d_vocab, (2, 4, 6), generator=g)
    clean, corrupted = torch.cat([first, first], 1), torch.cat([other, first], 1)
    graph = Graph.of(toy)
    with torch.no_grad():
        metric = kl_to_clean(toy(clean))
    corrupted_out = ablated_outputs(toy, graph, corrupted)
    one_by_one = sequential_acdc(toy, graph, clean, corrupted_out, metric, 0.05)
    assert 5 < int(one_by_one.sum()) < graph.n_edges - 5  # a threshold where both answers occur
    for batch_size in (1, 5, 32):
        kept = acdc(toy, graph, clean, corrupted_out, metric, 0.05, batch_size=batch_size, progress=False)
        # the dangling-node shortcut removes only edges that change nothing
        extra = one_by_one & ~kept
        assert not (kept & ~one_by_one).any()
        assert all(run_with_edges(toy, graph, clean, corrupted_out, one_by_one & ~graph.mask(
            [tuple(graph.edge_names[e].split("->"))]), metric).item() == pytest.approx(
            run_with_edges(toy, graph, clean, corrupted_out, one_by_one, metric).item(), abs=1e-5)
            for e in extra.nonzero().flatten().tolist())


def test_faithfulness_is_1_for_the_whole_graph_and_the_ablated_ratio_for_none(toy):
    graph, (clean, corrupted) = Graph.of(toy), prompts(toy)
    metric = answer_logprob(clean)
    for ablation in ("patch", "mean", "zero"):
        out = ablated_outputs(toy, graph, corrupted, ablation)
        assert faithfulness(toy, graph, graph.mask(), clean, out, metric) == pytest.approx(1.0, abs=1e-5)
        empty = run_with_edges(toy, graph, clean, out, ~graph.mask(), metric).item()
        with torch.no_grad():
            whole = metric(toy(clean)).item()
        assert faithfulness(toy, graph, ~graph.mask(), clean, out, metric) == pytest.approx(empty / whole, rel=1e-5)
    with torch.no_grad():  # the empty graph with patched edges is the corrupted run
        corrupted_value = metric(toy(corrupted)).item()
    patched = ablated_outputs(toy, graph, corrupted, "patch")
    assert faithfulness(toy, graph, ~graph.mask(), clean, patched, metric) == pytest.approx(
        corrupted_value / whole, rel=1e-4)


def test_bad_input_is_one_sentence(toy):
    graph, (clean, corrupted) = Graph.of(toy), prompts(toy)
    metric = answer_logprob(clean)
    with pytest.raises(ValueError, match="one entry per edge \\(81\\); it has 80"):
        run_with_edges(toy, graph, clean, source_outputs(toy, graph, corrupted), torch.ones(80, dtype=torch.bool), metric)
    with pytest.raises(ValueError, match="same shape"):
        attribute(toy, graph, clean, corrupted[:, :-1], metric)
    with pytest.raises(ValueError, match="'a9.h0' is not a source of this graph; sources are named like input, a0.h0"):
        graph.edges_from(["a0.h0", "a9.h0"])
    with pytest.raises(ValueError, match="steps must be at least 1"):
        attribute(toy, graph, clean, corrupted, metric, steps=0)
    with pytest.raises(ValueError, match="ablation must be 'patch', 'mean' or 'zero'"):
        ablated_outputs(toy, graph, corrupted, "resample")
    with pytest.raises(ValueError, match="threshold .* ≥ 0"):
        acdc(toy, graph, clean, source_outputs(toy, graph, corrupted), metric, -0.1)


def test_patching_without_gradients_equals_the_differentiable_form_and_ig_steps_batch_freely(gqa):
    """run_with_edges adds only the sources a receiver has a patched edge from; under autograd every receiver adds
    all of them in one product. Both give the same logits; EAP-IG gives the same scores whatever its batch_size."""
    from mikit.circuits.edges import patched_logits

    graph = Graph.of(gqa)
    clean, corrupted = prompts(gqa)
    out = source_outputs(gqa, graph, corrupted)
    present = torch.rand(3, graph.n_edges, generator=torch.Generator().manual_seed(0)) < 0.7
    with torch.no_grad():
        fast = patched_logits(gqa, graph, clean.repeat(3, 1), out, present)
    with torch.enable_grad():
        dense = patched_logits(gqa, graph, clean.repeat(3, 1), out, present)
    assert dense.requires_grad and not fast.requires_grad
    torch.testing.assert_close(fast, dense.detach(), atol=1e-5, rtol=1e-5)
    metric = answer_logprob(clean)
    scores = [attribute(gqa, graph, clean, corrupted, metric, steps=5, batch_size=b) for b in (1, 7, 64)]
    torch.testing.assert_close(scores[0], scores[1], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(scores[0], scores[2], atol=1e-5, rtol=1e-4)


def test_node_scores_are_the_attribution_estimate_of_patching_the_node(gqa):
    """The sum of a head's edge scores is (corrupted − clean z) · ∂metric/∂z, the head's own first-order estimate."""

    graph = Graph.of(gqa)
    clean, corrupted = prompts(gqa)
    metric = answer_logprob(clean)
    nodes = node_scores(graph, attribute(gqa, graph, clean, corrupted, metric))
    z = {}
    with torch.enable_grad():
        logits = gqa.run_with_hooks(clean, fwd_hooks=[("blocks.1.attn.hook_z", lambda act, hook: z.setdefault("z", act))])
        grad, = torch.autograd.grad(metric(logits), z["z"])
    corrupted_z = gqa.run_with_cache(corrupted)[1]["z", 1]
    by_hand = ((corrupted_z - z["z"].detach()) * grad).sum((0, 1, 3))
    torch.testing.assert_close(nodes[[graph.sources.index(f"a1.h{h}") for h in range(4)]], by_hand, atol=1e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="one score per edge"):
        node_scores(graph, torch.zeros(3))


@pytest.fixture(scope="module")
def smollm2():
    return load_model("smollm2-135m")


@pytest.mark.parametrize("name", ["ioi", "greater-than"])
def test_a_task_gives_aligned_prompts_the_model_solves_only_when_clean(name, smollm2):
    task = tasks.make(name, smollm2, n_prompts=8, seed=1)
    assert task.clean.shape == task.corrupted.shape and not torch.equal(task.clean, task.corrupted)
    with torch.no_grad():
        clean, corrupted = smollm2(task.clean), smollm2(task.corrupted)
    assert task.metric(clean) > task.metric(corrupted) + (3.0 if name == "ioi" else 0.5)  # measured: 4.9, 1.2
    kl = task.kl(smollm2)
    assert kl(clean) < 1e-5 and kl(corrupted) > 1.0


def test_ioi_reads_every_prompt_at_its_own_last_token_and_eap_ranks_notebook_02s_heads_first(smollm2):
    task = tasks.ioi(smollm2, n_prompts=8)
    ds = task.dataset
    assert (ds.lengths != ds.lengths.max()).any()  # padded rows, so reading position -1 would be wrong
    with torch.no_grad():
        batched = smollm2(task.clean)
        alone = torch.zeros_like(batched)  # each prompt run unpadded, its last logits put where the task reads
        for i, length in enumerate(ds.lengths.tolist()):
            alone[i, ds.word_idx["END"][i]] = smollm2(task.clean[i:i + 1, :length])[0, -1]
    assert torch.allclose(task.metric(alone), task.metric(batched), atol=1e-3)
    graph = Graph.of(smollm2)
    per_node = node_scores(graph, attribute(smollm2, graph, task.clean, task.corrupted, task.metric))
    heads = [i for i, name in enumerate(graph.sources) if ".h" in name]
    top = [graph.sources[heads[i]] for i in per_node[heads].abs().topk(5).indices]
    assert top[0] == "a23.h3"  # notebook 02's S suppressor, the largest head effect by activation patching
    assert {"a20.h0", "a29.h1"} <= set(top)  # its S-inhibition head and its second-largest direct effect


def test_a_task_by_name_and_an_unknown_name(toy):
    task = tasks.make("induction", toy, n_prompts=4, half=10)
    assert task.clean.shape == (4, 21) and torch.equal(task.clean[:, 1:11], task.clean[:, 11:])
    with torch.no_grad():
        assert task.metric(toy(task.clean)) > task.metric(toy(task.corrupted)) + 2
    with pytest.raises(ValueError, match="unknown task 'copying'; the circuit tasks are greater-than, ioi, induction"):
        tasks.make("copying", toy)


def test_the_timeseries_task_removes_the_deciding_feature_and_the_class_flips():
    classifier = load_model("timeseries-classifier")
    task = tasks.timeseries(classifier, n_prompts=8, feature="early_peak")
    assert task.dataset.present[:, 0].all() and len(task.clean) == 8  # every clean series has its early peak
    with torch.no_grad():
        clean, corrupted = task.metric(classifier(task.clean)), task.metric(classifier(task.corrupted))
    assert clean > 3 and corrupted < -3  # the clean class wins on clean series, the other class without the peak
    with pytest.raises(ValueError, match="one that decides the class"):
        tasks.timeseries(classifier, feature="late_peak")
