"""Every notebook-06 check passes a correct solution and rejects plausible wrong implementations.

The reference implementations are the solution notebook's own functions (read with mikit.dev.mutants). Each
exercise's test runs as the notebook runs the check (`variant` 0) and as the grader does (`variant` 1-3); the
hidden tests also run through the wire (`mikit.hidden`), with the reference, the correct alternatives of
tests/alternatives/circuits.py, and functions that only replay the visible check's answers.
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from functools import partial  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
from alternatives import solution_functions  # noqa: E402  (tests/alternatives/)
from alternatives import circuits as alternatives  # noqa: E402
from verdicts import accepts, grader_tests, rejects  # noqa: E402  (tests/verdicts.py)

from mikit.checks import CheckFailed, hidden_variant  # noqa: E402
from mikit.checks import circuits as checks  # noqa: E402
from mikit.circuits import Graph, attribute, completeness, graph_hooks, roc, run_with_edges, source_outputs  # noqa: E402


SOLUTION = solution_functions("06_circuit_discovery")


# --- exercise 1 ------------------------------------------------------------------------------------------------
def test_count_edges(capsys, variant):
    ref = SOLUTION["count_edges"]
    accepts(checks.count_edges, ref, capsys)
    rejects(checks.count_edges, lambda n_layers, n_heads, n_kv, attn_only: ref(n_layers, n_heads, n_heads, attn_only),
            "without grouped-query attention")
    rejects(checks.count_edges, lambda n_layers, n_heads, n_kv, attn_only:
            ref(n_layers, n_heads, n_kv, attn_only) - 1 - n_layers * (n_heads + (not attn_only)), "left out the logits")

    def mlp_misses_its_layer(n_layers, n_heads, n_kv, attn_only):
        return ref(n_layers, n_heads, n_kv, attn_only) - (0 if attn_only else n_layers * n_heads)

    rejects(checks.count_edges, mlp_misses_its_layer, "sources that come before it")


# --- exercise 2 ------------------------------------------------------------------------------------------------
def _patch(model, clean_tokens, corrupted_tokens, source, receiver, how):
    """An edge patch with a chosen mistake."""
    (sl, sh), (rl, kind, rh) = source, receiver
    with torch.no_grad(), graph_hooks(model):
        _, clean_cache = model.run_with_cache(clean_tokens)
        _, corrupted_cache = model.run_with_cache(corrupted_tokens)
        delta = (corrupted_cache["z", sl][:, :, sh] - clean_cache["z", sl][:, :, sh]) @ model.W_O[sl, sh]
        name = f"blocks.{rl}.hook_{kind}_input"
        if how == "node":
            def hook(z, hook):
                z[:, :, sh] = corrupted_cache["z", sl][:, :, sh]
            return model.run_with_hooks(clean_tokens, fwd_hooks=[(f"blocks.{sl}.attn.hook_z", hook)])
        if how == "receiver":
            def hook(x, hook):
                x[:, :, rh] = corrupted_cache[name][:, :, rh]
            return model.run_with_hooks(clean_tokens, fwd_hooks=[(name, hook)])
        sign = -1 if how == "flipped" else 1

        def hook(x, hook):
            x[:, :, rh] += sign * delta
        if how == "left":
            model.add_hook(name, hook)
            return model(clean_tokens)
        return model.run_with_hooks(clean_tokens, fwd_hooks=[(name, hook)])


def test_patch_edge(capsys, variant):
    accepts(checks.patch_edge, SOLUTION["patch_edge"], capsys)
    rejects(checks.patch_edge, partial(_patch, how="flipped"), "wrong way")
    rejects(checks.patch_edge, partial(_patch, how="node"), "a node patch")
    rejects(checks.patch_edge, partial(_patch, how="receiver"), "whole . input")
    rejects(checks.patch_edge, partial(_patch, how="left"), "a hook stayed on the model")
    accepts(checks.patch_edge, partial(_patch, how="right"), capsys)  # the model is clean again afterwards


# --- exercises 3 and 4 -----------------------------------------------------------------------------------------
def _scaled(fn, factor):
    return lambda *args: fn(*args) * factor


def _transposed(model, *args):
    scores = SOLUTION["eap_scores"](model, *args)
    return torch.cat([scores[r.edges].view(r.n_sources, r.n).T.flatten() for r in Graph.of(model).receivers])


def test_eap_scores(capsys, variant):
    ref = SOLUTION["eap_scores"]
    accepts(checks.eap_scores, ref, capsys)
    rejects(checks.eap_scores, _scaled(ref, -1), "sign is flipped")
    rejects(checks.eap_scores, lambda model, clean, corrupted, metric: ref(model, clean, corrupted, metric) / len(clean),
            "divided by the batch size")
    rejects(checks.eap_scores, _transposed, "wrong order inside a receiver hook")


def test_eap_ig_scores(capsys, variant):
    ref = SOLUTION["eap_ig_scores"]
    accepts(checks.eap_ig_scores, ref, capsys)
    rejects(checks.eap_ig_scores, lambda model, clean, corrupted, metric, steps:
            attribute(model, Graph.of(model), clean, corrupted, metric), "plain EAP")
    rejects(checks.eap_ig_scores, lambda model, clean, corrupted, metric, steps:
            ref(model, clean, corrupted, metric, steps) * steps, "summed the gradients over the steps")

    def from_zero(model, clean, corrupted, metric, steps):
        graph = Graph.of(model)
        with_ends = attribute(model, graph, clean, corrupted, metric, steps=steps) * steps
        return (with_ends - attribute(model, graph, clean, corrupted, metric)
                + checks._at_corrupted(model, graph, clean, corrupted)) / steps

    rejects(checks.eap_ig_scores, from_zero, "α values run 0")


def test_left_riemann_helper_is_the_sum_from_alpha_zero():
    """The check's model of the α-from-0 mistake equals that mistake computed directly, one α at a time."""
    model = checks._model()
    clean, corrupted = checks._tokens()
    graph = Graph.of(model)
    steps = 3
    got = checks._left_riemann(model, graph, clean, corrupted, steps)
    embed = "blocks.0.hook_resid_pre"
    with torch.no_grad():
        clean_embed = model.run_with_cache(clean, names_filter=embed)[1][embed]
        corrupted_embed = model.run_with_cache(corrupted, names_filter=embed)[1][embed]
    diff = source_outputs(model, graph, corrupted) - source_outputs(model, graph, clean)
    total = torch.zeros(graph.n_edges)
    for k in range(steps):
        point = (corrupted_embed + k / steps * (clean_embed - corrupted_embed)).requires_grad_()
        with torch.enable_grad(), graph_hooks(model):
            logits, acts = alternatives._receiver_activations(model, graph, clean, (embed, lambda r, hook: point))
            grads = torch.autograd.grad(checks._metric(logits), [acts[r.hook] for r in graph.receivers])
        total += torch.cat([torch.einsum("bpsd,bpnd->sn", diff[:, :, : r.n_sources],
                                         g if g.ndim == 4 else g[:, :, None]).flatten()
                            for r, g in zip(graph.receivers, grads)])
    torch.testing.assert_close(got, total / steps, atol=1e-5, rtol=1e-4)


# --- exercise 5 ------------------------------------------------------------------------------------------------
def test_acdc_pass(capsys, variant):
    accepts(checks.acdc_pass, SOLUTION["acdc_pass"], capsys)
    rejects(checks.acdc_pass, checks._never_updated, "update the current value")
    rejects(checks.acdc_pass, checks._each_alone, "tries each edge alone")
    rejects(checks.acdc_pass, lambda measure, present, candidates, threshold:
            SOLUTION["acdc_pass"](measure, present, candidates[::-1], threshold), "in reverse")

    def never_restores(measure, present, candidates, threshold):
        out = present.clone()
        out[candidates] = False
        return out

    rejects(checks.acdc_pass, never_restores, "removed every candidate")

    def touches_others(measure, present, candidates, threshold):
        out = SOLUTION["acdc_pass"](measure, present, candidates, threshold)
        out[[e for e in range(len(out)) if e not in candidates][0]] ^= True
        return out

    rejects(checks.acdc_pass, touches_others, "not candidates")
    rejects(checks.acdc_pass, lambda measure, present, candidates, threshold: present.float(), "boolean tensor")


def test_the_acdc_mistakes_differ_from_the_pass_on_the_checks_inputs():
    """Otherwise a check message could name the wrong mistake; under every variant the models of mistakes differ."""
    for seed in (0, 1, 2, 3):
        with hidden_variant(seed) if seed else torch.no_grad():
            for trial, threshold in enumerate((0.01, 0.03)):
                measure, present, candidates = checks._acdc_inputs(trial)
                want = checks._sequential_pass(measure, present, candidates, threshold)
                assert 0 < (present & ~want).sum() < len(candidates)  # some candidates go, some stay
                wrongs = [checks._never_updated(measure, present, candidates, threshold),
                          checks._each_alone(measure, present, candidates, threshold),
                          checks._sequential_pass(measure, present, candidates[::-1], threshold)]
                assert not any(torch.equal(wrong, want) for wrong in wrongs[:2])
                assert any(not torch.equal(wrong, want) for wrong in wrongs[2:])


# --- exercise 6 ------------------------------------------------------------------------------------------------
def test_incompleteness(capsys, variant):
    ref = SOLUTION["incompleteness"]
    accepts(checks.incompleteness, ref, capsys)

    def signed(model, circuit, clean, corrupted, metric, node_sets):
        rows = completeness(model, Graph.of(model), circuit, clean, corrupted, metric, node_sets)
        return rows[:, 0] - rows[:, 1]

    def against_the_circuit(model, circuit, clean, corrupted, metric, node_sets):
        graph = Graph.of(model)
        values = run_with_edges(model, graph, clean, corrupted, torch.stack(
            [circuit & ~graph.edges_from(k) for k in node_sets] + [circuit]), metric)
        return (values[:-1] - values[-1]).abs()

    def cuts_inputs_too(model, circuit, clean, corrupted, metric, node_sets):
        graph = Graph.of(model)
        sets = []
        for k in node_sets:
            cut = torch.tensor([any(part.split("<")[0] in k for part in name.split("->")) for name in graph.edge_names])
            sets += [circuit & ~cut, ~cut]
        values = run_with_edges(model, graph, clean, corrupted, torch.stack(sets), metric).view(-1, 2)
        return (values[:, 0] - values[:, 1]).abs()

    rejects(checks.incompleteness, signed, "absolute difference")
    rejects(checks.incompleteness, against_the_circuit, "compared F\\(C \\\\ K\\) with F\\(C\\)")
    accepts(checks.incompleteness, cuts_inputs_too, capsys)  # a node without outputs: its inputs change nothing


# --- exercise 7 ------------------------------------------------------------------------------------------------
def test_roc_auc(capsys, variant):
    accepts(checks.roc_auc, SOLUTION["roc_auc"], capsys)
    rejects(checks.roc_auc, lambda scores, truth: 1 - roc(scores, truth)[2], "1 − AUC")
    rejects(checks.roc_auc, lambda scores, truth: (scores[truth][:, None] > scores[~truth][None]).float().mean(),
            "counts half")
    rejects(checks.roc_auc, lambda scores, truth: float(torch.trapezoid(*roc(scores, truth)[1::-1])),
            "share of \\(true edge, false edge\\) pairs")  # ties drawn as a staircase, not a diagonal


# --- exercise 8 ------------------------------------------------------------------------------------------------
def test_scrubbed_input(capsys, variant):
    ref = SOLUTION["scrubbed_input"]
    accepts(checks.scrubbed_input, ref, capsys)
    rejects(checks.scrubbed_input, lambda b, c, r, d: ref(b, c, r, d[:, :1].expand_as(d)), "draws of the first one")
    rejects(checks.scrubbed_input, lambda b, c, r, d: ref(b, torch.zeros_like(c), r, d), "without taking away")
    rejects(checks.scrubbed_input, lambda b, c, r, d: ref(b, b, r, d), "unscrubbed output")
    rejects(checks.scrubbed_input, lambda b, c, r, d: ref(b, c, ~r, d), "resampled the circuit's edges")


# --- exercise 9 ------------------------------------------------------------------------------------------------
def test_effective_keys(capsys, variant):
    ref = SOLUTION["effective_keys"]
    accepts(checks.effective_keys, ref, capsys)
    visible = lambda p: torch.arange(1, p.shape[-1] + 1)  # noqa: E731
    rejects(checks.effective_keys, lambda p: (p.sqrt().sum(-1).square() / p.shape[-1]).mean(), "q \\+ 1 keys")
    rejects(checks.effective_keys, lambda p: p.sqrt().sum(-1).square().mean(), "without dividing")
    rejects(checks.effective_keys, lambda p: ((-(p * p.clamp_min(1e-30).log()).sum(-1)).exp() / visible(p)).mean(),
            "Shannon entropy")
    rejects(checks.effective_keys, lambda p: (p.sqrt().sum(-1) / visible(p)).mean(), "did not square")

# --- the grader ------------------------------------------------------------------------------------------------
globals().update(grader_tests(checks, SOLUTION, alternatives, kernel_grad=False))  # wire, and the tests of the wire and the alternatives


def test_calling_the_reference_scores_zero(wire):
    from mikit.circuits import scrubbed_input
    from mikit.circuits.edges import patched_logits

    def engine_patch(model, clean, corrupted, source, receiver):
        graph = Graph.of(model)
        present = graph.mask()
        present[graph.edge_index(f"a{source[0]}.h{source[1]}", f"a{receiver[0]}.h{receiver[2]}<{receiver[1]}>")] = False
        return patched_logits(model, graph, clean, source_outputs(model, graph, corrupted), present[None])

    cases = {
        "patch_edge": engine_patch,
        "eap_scores": lambda model, clean, corrupted, metric: attribute(model, Graph.of(model), clean, corrupted, metric),
        "roc_auc": lambda scores, truth: roc(scores, truth)[2],
        "scrubbed_input": scrubbed_input,
        "effective_keys": lambda pattern: checks.reference_effective_keys(pattern),
        "incompleteness": lambda model, circuit, clean, corrupted, metric, node_sets: (lambda rows: (
            rows[:, 0] - rows[:, 1]).abs())(completeness(model, Graph.of(model), circuit, clean, corrupted, metric,
                                                          node_sets)),
    }
    for gid, cheat in cases.items():
        with pytest.raises(CheckFailed, match=r"calls the reference `mikit\.circuits"):
            wire(gid, cheat)
