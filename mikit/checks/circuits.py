"""Checks for notebook 06 (automated circuit discovery): each compares a student function with `mikit.circuits`.

The model checks run on tiny random transformers built here (attention-only, and one with MLPs; grouped-query
attention for the attribution checks), so each takes a second; the notebook then runs the student's functions
on the planted-circuit model and on real ones. Under the grader (`hidden_variant`) the transformers have other
weights, layers and heads, the prompts other tokens, and the synthetic inputs other values.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Callable

import torch
from torch import Tensor
from transformer_lens import HookedTransformer, HookedTransformerConfig

from mikit.checks import (
    CheckFailed, Exercise, call_student, expect_close, expect_no_hooks_left, expect_number, expect_tensor, hidden,
    passed, reject_known_mistakes, reveal, seeded, size,
)
from mikit.circuits import Graph, attribute, completeness, roc, roc_points, run_with_edges, scrub
from mikit.circuits import scrubbed_input as reference_scrubbed_input
from mikit.circuits.edges import _frozen, graph_hooks, patched_logits, source_outputs
from mikit.circuits.sparse import effective_keys as reference_effective_keys
from mikit.hidden import recipe

D_VOCAB = 30


def _seed(seed: int) -> int:
    return seeded(seed).initial_seed() % 2**31


@recipe
@lru_cache(maxsize=8)
def _tiny(attn_only: bool = True, n_key_value_heads: int | None = None, seed: int = 5, n_layers: int = 2,
          n_heads: int = 4) -> HookedTransformer:
    """A random transformer with sharp attention (weights at 0.5), so every edge moves the logits."""
    cfg = HookedTransformerConfig(
        n_layers=n_layers, d_model=32, n_heads=n_heads, d_head=8, d_mlp=None if attn_only else 64, d_vocab=D_VOCAB,
        n_ctx=16, act_fn="gelu", normalization_type="LN", attn_only=attn_only, n_key_value_heads=n_key_value_heads,
        seed=seed, device="cpu", initializer_range=0.5,
    )
    return HookedTransformer(cfg).eval()


def _model(attn_only: bool = True, grouped: bool = False) -> HookedTransformer:
    """2 layers × 4 heads in the notebook; other weights and sizes under the grader."""
    if not hidden():
        return _tiny(attn_only, 2 if grouped else None, seed=5)
    return _tiny(attn_only, 2 if grouped else None, seed=_seed(5), n_layers=size(2), n_heads=size(4, 2))


def _tokens(batch: int = 3, pos: int = 7) -> tuple[Tensor, Tensor]:
    """Clean and corrupted prompts that differ at two positions."""
    generator = seeded(11)
    batch, pos = size(batch), size(pos)
    clean = torch.randint(0, D_VOCAB, (batch, pos), generator=generator)
    corrupted = clean.clone()
    corrupted[:, 1] = (clean[:, 1] + 3) % D_VOCAB
    corrupted[:, pos - 3] = (clean[:, pos - 3] + 7) % D_VOCAB
    return clean, corrupted


def _metric(logits: Tensor) -> Tensor:
    """The checks' task metric: a logit difference at the last position, averaged over prompts."""
    return (logits[:, -1, 7] - logits[:, -1, 3]).mean()


def _reversed_metric(logits: Tensor) -> Tensor:
    """The other logit difference (a metric whose differences have the other sign)."""
    return -_metric(logits)


# --- exercise 1 --------------------------------------------------------------------------------------------
def count_edges(fn: Callable) -> None:
    """Exercise 1: the number of edges of a model's graph, grouped-query attention and MLPs included."""
    __tracebackhide__ = True
    name = "count_edges"
    configs = [(2, 4, 4, True), (3, 4, 2, False), (30, 9, 3, False), (1, 1, 1, True), (12, 12, 12, False)]
    if hidden():
        generator = seeded(1)
        configs = [(int(torch.randint(1, 20, (1,), generator=generator)), 2 * h, kv, bool(a))
                   for h, kv, a in [(6, 3, 0), (4, 4, 1), (5, 1, 0), (3, 3, 0), (8, 2, 1)]]
    for n_layers, n_heads, n_kv_heads, attn_only in configs:
        got = expect_number(call_student(fn, name, n_layers, n_heads, n_kv_heads, attn_only), name)
        want = Graph(n_layers, n_heads, n_kv_heads, attn_only).n_edges
        if got == want:
            continue
        shape = reveal(f" for {n_layers} layers × {n_heads} heads ({n_kv_heads} key/value heads), "
                       f"{'attention only' if attn_only else 'with MLPs'}")
        if got == Graph(n_layers, n_heads, n_heads, attn_only).n_edges:
            raise CheckFailed(f"`{name}` gave {got:g}{shape}, the count without grouped-query attention: a key or "
                              "value receiver belongs to a key/value head, shared by n_heads / n_kv_heads query heads")
        if got == want - (1 + n_layers * (n_heads + (not attn_only))):
            raise CheckFailed(f"`{name}` gave {got:g}{shape}: you left out the logits, a receiver that reads "
                              "every source")
        raise CheckFailed(f"`{name}` gave {got:g}{shape}" + reveal(f", expected {want}") + "; count, for each "
                          "receiver, the sources that come before it in the forward pass")
    passed(name)


# --- exercise 2 --------------------------------------------------------------------------------------------
def _edge_mask(graph: Graph, source: tuple[int, int], receiver: tuple[int, str, int]) -> Tensor:
    layer, kind, head = receiver
    present = graph.mask()
    present[graph.edge_index(f"a{source[0]}.h{source[1]}", f"a{layer}.h{head}<{kind}>")] = False
    return present


def patch_edge(fn: Callable) -> None:
    """Exercise 2: patch one edge (a head's output into one later head's q, k or v input) by hand."""
    __tracebackhide__ = True
    name = "patch_edge"
    generator = seeded(3)
    for attn_only, kinds in ((True, ("q", "k", "v")), (False, ("qkv"[int(torch.randint(0, 3, (1,), generator=generator))],))):
        model = _model(attn_only)
        graph = Graph.of(model)
        clean, corrupted = _tokens()
        last = model.cfg.n_layers - 1
        for kind in kinds:
            source = (int(torch.randint(0, last, (1,), generator=generator)),
                      int(torch.randint(0, model.cfg.n_heads, (1,), generator=generator)))
            receiver = (last, kind, int(torch.randint(0, model.cfg.n_heads, (1,), generator=generator)))
            got = expect_tensor(call_student(fn, name, model, clean, corrupted, source, receiver), name,
                                (*clean.shape, D_VOCAB), "batch pos d_vocab")
            expect_no_hooks_left(model, name)
            with torch.no_grad():
                corrupted_out = source_outputs(model, graph, corrupted)
                want = patched_logits(model, graph, clean, corrupted_out, _edge_mask(graph, source, receiver)[None])
                flipped = patched_logits(model, graph, clean, 2 * source_outputs(model, graph, clean) - corrupted_out,
                                         _edge_mask(graph, source, receiver)[None])
                node = graph.mask() & ~graph.edges_from([f"a{source[0]}.h{source[1]}"])
                node_patch = patched_logits(model, graph, clean, corrupted_out, node[None])
                into = f"->a{last}.h{receiver[2]}<{kind}>"
                whole = torch.tensor([not edge.endswith(into) for edge in graph.edge_names])  # all into the receiver
                receiver_patch = patched_logits(model, graph, clean, corrupted_out, whole[None])
            reject_known_mistakes(got, [
                (flipped, "your patch goes the wrong way: the receiver gets (corrupted − clean) output of the source "
                          "added to its input, not (clean − corrupted)"),
                (node_patch, "you patched the source head's output for every receiver (a node patch): only the "
                             "one receiver's input may change; the source still writes its clean output everywhere else"),
                (receiver_patch, f"you patched the receiver's whole {kind} input (every source into it): only "
                                 "the one source's share of it changes"),
            ], want)
            expect_close(got, want, name, atol=1e-4, hint=f"add (corrupted − clean) output of the source head, its z "
                         f"times its W_O slice, to blocks.L.hook_{kind}_input[:, :, head] only")
    passed(name)


# --- exercises 3 and 4 -------------------------------------------------------------------------------------
def _edge_scores(fn: Callable, name: str, steps: int | None) -> None:
    __tracebackhide__ = True
    for attn_only, grouped in ((True, False), (False, True)):
        model = _model(attn_only, grouped)
        graph = Graph.of(model)
        clean, corrupted = _tokens()
        args = (model, clean, corrupted, _metric) + ((steps,) if steps else ())
        got = expect_tensor(call_student(fn, name, *args), name, (graph.n_edges,), "edge")
        expect_no_hooks_left(model, name)
        model.zero_grad(set_to_none=True)
        want = attribute(model, graph, clean, corrupted, _metric, steps=steps or 1)
        eap = attribute(model, graph, clean, corrupted, _metric) if steps else want
        # the receiver-major order (n before s inside each hook), a common slip when flattening (source, receiver)
        transposed = torch.cat([want[r.edges].view(r.n_sources, r.n).T.flatten() for r in graph.receivers])
        wrongs = [
            (-want, "your sign is flipped: the difference is (corrupted − clean) source output, times the gradient "
                    "at the receiver"),
            (want * len(clean), "your scores are a batch-size multiple of the reference: the metric is already a "
                                "mean over prompts, so sum (do not average or rescale) over prompts and positions"),
            (want / len(clean), "your scores are divided by the batch size: the metric is already a mean over "
                                "prompts, so sum over prompts and positions"),
            (transposed, "your scores are in the wrong order inside a receiver hook: edges go source-major "
                         "(for each source, every receiver at that hook), as graph.edge_names lists them"),
        ]
        if steps:
            wrongs += [
                (_left_riemann(model, graph, clean, corrupted, steps), "your α values run 0, 1/steps, …, "
                 "(steps − 1)/steps: EAP-IG uses 1/steps, 2/steps, …, 1, so that one step is EAP"),
                (want * steps, "you summed the gradients over the steps: average them (divide by steps)"),
            ]
            if not torch.allclose(want, eap, atol=1e-4):
                wrongs.append((eap, "these are the plain EAP scores: the gradient must be taken at every "
                                    "interpolated input, not only at the clean one"))
        reject_known_mistakes(got, wrongs, want, atol=1e-4)
        expect_close(got, want, name, atol=2e-4, rtol=2e-3, hint="for each receiver hook, sum over prompts, "
                     "positions and d_model of (corrupted − clean) source output times the gradient at the receiver")
    passed(name)


def _left_riemann(model: HookedTransformer, graph: Graph, clean: Tensor, corrupted: Tensor, steps: int) -> Tensor:
    """EAP-IG with α = 0, 1/steps, …: (steps + 1)·IG(steps + 1 points) minus the clean endpoint, over steps."""
    with_ends = attribute(model, graph, clean, corrupted, _metric, steps=steps) * steps
    at_clean = attribute(model, graph, clean, corrupted, _metric)
    at_corrupted = _at_corrupted(model, graph, clean, corrupted)
    return (with_ends - at_clean + at_corrupted) / steps


def _at_corrupted(model: HookedTransformer, graph: Graph, clean: Tensor, corrupted: Tensor) -> Tensor:
    """The EAP formula with every gradient taken at α = 0 (the corrupted embeddings, the clean run otherwise)."""
    difference = source_outputs(model, graph, corrupted) - source_outputs(model, graph, clean)
    with torch.no_grad():
        corrupted_embed = model.run_with_cache(corrupted, names_filter="blocks.0.hook_resid_pre",
                                               stop_at_layer=1)[1]["blocks.0.hook_resid_pre"]
    grads: dict[str, Tensor] = {}

    def keep(activation: Tensor, hook) -> None:
        activation.register_hook(lambda grad: grads.__setitem__(hook.name, grad if grad.ndim == 4 else grad[:, :, None]))

    hooks = [("blocks.0.hook_resid_pre", lambda resid, hook: corrupted_embed.clone().requires_grad_())]
    with torch.enable_grad(), graph_hooks(model), _frozen(model):
        _metric(model.run_with_hooks(clean, fwd_hooks=hooks + [(r.hook, keep) for r in graph.receivers])).backward()
    return torch.cat([torch.einsum("bpsd,bpnd->sn", difference[:, :, : r.n_sources], grads[r.hook]).flatten()
                      for r in graph.receivers])


def eap_scores(fn: Callable) -> None:
    """Exercise 3: edge attribution patching, every edge from one forward and one backward pass."""
    _edge_scores(fn, "eap_scores", None)


def eap_ig_scores(fn: Callable) -> None:
    """Exercise 4: EAP with integrated gradients (steps interpolated inputs)."""
    _edge_scores(fn, "eap_ig_scores", size(4))


# --- exercise 5 --------------------------------------------------------------------------------------------
@recipe
def synthetic_measure(n_edges: int, seed: int) -> "SyntheticMeasure":
    """A stand-in for `run_with_edges`: a distance that grows with the edges removed, with interactions."""
    return SyntheticMeasure(n_edges, seed)


class SyntheticMeasure:
    """metric(present) = Σ w_e·removed_e + Σ pairs v_ef·removed_e·removed_f; some edges matter only with others."""

    def __init__(self, n_edges: int, seed: int):
        generator = torch.Generator().manual_seed(seed)
        self.weights = torch.rand(n_edges, generator=generator) ** 3 * 0.06
        self.pairs = torch.rand(n_edges, n_edges, generator=generator).triu(1) ** 8 * 0.08
        self.calls = 0

    def __call__(self, present: Tensor) -> float:
        self.calls += 1
        removed = (~torch.as_tensor(present, dtype=torch.bool)).float()
        return float(removed @ self.weights + removed @ self.pairs @ removed)


def _sequential_pass(measure: Callable, present: Tensor, candidates: list[int], threshold: float) -> Tensor:
    """ACDC's pass over one receiver, one question at a time (what `mikit.circuits.acdc` batches)."""
    present, current = present.clone(), measure(present)
    for edge in candidates:
        present[edge] = False
        value = measure(present)
        if value - current < threshold:
            current = value
        else:
            present[edge] = True
    return present


def _never_updated(measure: Callable, present: Tensor, candidates: list[int], threshold: float) -> Tensor:
    present, base = present.clone(), measure(present)
    for edge in candidates:
        present[edge] = False
        if measure(present) - base >= threshold:
            present[edge] = True
    return present


def _each_alone(measure: Callable, present: Tensor, candidates: list[int], threshold: float) -> Tensor:
    base, out = measure(present), present.clone()
    for edge in candidates:
        trial = present.clone()
        trial[edge] = False
        if measure(trial) - base < threshold:
            out[edge] = False
    return out


def _acdc_inputs(trial: int) -> tuple[SyntheticMeasure, Tensor, list[int]]:
    """The check's measure, the mask before the pass (3 edges gone already) and the candidates, in order."""
    n_edges = size(24, 4)
    measure = synthetic_measure(n_edges, _seed(20 + trial))
    present = torch.ones(n_edges, dtype=torch.bool)
    present[torch.randperm(n_edges, generator=seeded(30 + trial))[:3]] = False  # removed by earlier passes
    candidates = [e for e in torch.randperm(n_edges, generator=seeded(40 + trial))[: n_edges - 6].tolist()
                  if present[e]]
    return measure, present, candidates


def acdc_pass(fn: Callable) -> None:
    """Exercise 5: ACDC's pass over the edges into one receiver."""
    __tracebackhide__ = True
    name = "acdc_pass"
    for trial, threshold in enumerate((0.01, 0.03)):
        measure, present, candidates = _acdc_inputs(trial)
        n_edges = len(present)
        given = present.clone()
        out = call_student(fn, name, measure, present, list(candidates), threshold)
        if not isinstance(out, Tensor) or out.dtype != torch.bool or out.shape != (n_edges,):
            raise CheckFailed(f"`{name}` should return a boolean tensor with one entry per edge ({n_edges}), "
                              f"got {type(out).__name__}" + (f" {out.dtype} of shape {tuple(out.shape)}"
                                                              if isinstance(out, Tensor) else ""))
        want = _sequential_pass(measure, given, candidates, threshold)
        if torch.equal(out, want):
            continue
        others = [e for e in range(n_edges) if e not in candidates]
        if not torch.equal(out[others], given[others]):
            raise CheckFailed(f"`{name}` changed edges that are not candidates: only the edges in `candidates` "
                              "may be removed in this pass")
        if out.sum() == given.sum() - len(candidates):
            raise CheckFailed(f"`{name}` removed every candidate: when an edge's removal grows the metric by "
                              "threshold or more, put the edge back")
        if torch.equal(out, _never_updated(measure, given, candidates, threshold)):
            raise CheckFailed(f"`{name}` compares every removal with the metric before the pass: after removing an "
                              "edge, the next question is asked of the smaller graph, so update the current value")
        if torch.equal(out, _each_alone(measure, given, candidates, threshold)):
            raise CheckFailed(f"`{name}` tries each edge alone on the unchanged graph: ACDC's questions are "
                              "sequential, each asked with the earlier removals in place")
        if torch.equal(out, _sequential_pass(measure, given, candidates[::-1], threshold)):
            raise CheckFailed(f"`{name}` visits the candidates in reverse: ask about them in the order given")
        raise CheckFailed(f"`{name}` kept {int(out.sum())} edges" + reveal(f", the sequential pass keeps "
                          f"{int(want.sum())}") + "; remove each candidate in turn, keep it removed if the metric "
                          "grew by less than threshold, and measure the next one from there")
    passed(name)


# --- exercise 6 --------------------------------------------------------------------------------------------
def incompleteness(fn: Callable) -> None:
    """Exercise 6: |F(C \\ K) − F(M \\ K)| for node sets K."""
    __tracebackhide__ = True
    name = "incompleteness"
    model = _model(attn_only=False)
    graph = Graph.of(model)
    clean, corrupted_tokens = _tokens()
    corrupted = source_outputs(model, graph, corrupted_tokens)
    generator = seeded(6)
    circuit = torch.rand(graph.n_edges, generator=generator) < 0.5
    nodes = graph.sources[1:]
    picks = [torch.randperm(len(nodes), generator=generator)[:k].tolist() for k in (1, 2, 3)]
    node_sets = [[nodes[i] for i in pick] for pick in picks] + [[]]
    metric = _metric
    rows = completeness(model, graph, circuit, clean, corrupted, metric, node_sets)
    if (rows[:, 0] >= rows[:, 1]).all():  # a metric under which some difference is negative, so |·| matters
        metric = _reversed_metric
        rows = completeness(model, graph, circuit, clean, corrupted, metric, node_sets)
    got = expect_tensor(call_student(fn, name, model, circuit, clean, corrupted, metric, node_sets), name,
                        (len(node_sets),), "node_set")
    want = (rows[:, 0] - rows[:, 1]).abs()
    only_c = run_with_edges(model, graph, clean, corrupted, torch.stack(
        [circuit & ~graph.edges_from(k) for k in node_sets] + [circuit]), metric)
    reject_known_mistakes(got, [
        (rows[:, 0] - rows[:, 1], "some of your values are negative: the incompleteness score is the absolute "
                                  "difference |F(C \\ K) − F(M \\ K)|"),
        ((only_c[:-1] - only_c[-1]).abs(), "you compared F(C \\ K) with F(C): the score compares the circuit "
         "without K with the whole model without K, F(M \\ K)"),
    ], want, atol=1e-5)
    expect_close(got, want, name, atol=1e-4, hint="for each K, two edge sets: the circuit without the edges out "
                 "of K's nodes, and every edge but those; run both with run_with_edges")
    passed(name)


# --- exercise 7 --------------------------------------------------------------------------------------------
def roc_auc(fn: Callable) -> None:
    """Exercise 7: the area under the ROC curve of edge scores against a known circuit, ties counted half."""
    __tracebackhide__ = True
    name = "roc_auc"
    generator = seeded(7)
    n = size(40, 5)
    truth = torch.zeros(n, dtype=torch.bool)
    truth[torch.randperm(n, generator=generator)[: n // 4]] = True
    scores = torch.randn(n, generator=generator) + 1.2 * truth
    tied = (scores * 2).round() / 2  # many ties between true and false edges
    for values in (scores, tied, -scores, torch.zeros(n)):
        got = expect_number(call_student(fn, name, values.clone(), truth.clone()), name)
        want = roc(values, truth)[2]
        if abs(got - want) < 1e-5:
            continue
        strict = float((values[truth][:, None] > values[~truth][None]).float().mean())
        loose = float((values[truth][:, None] >= values[~truth][None]).float().mean())
        if abs(got - (1 - want)) < 1e-5:
            raise CheckFailed(f"`{name}` gave 1 − AUC: a larger score should mean 'more likely in the circuit', so "
                              "rank true edges above false ones")
        if abs(got - strict) < 1e-5 or abs(got - loose) < 1e-5:
            raise CheckFailed(f"`{name}` gave {got:.3f}" + reveal(f" where the reference gives {want:.3f}") +
                              ": a tie between a true and a false edge counts half (ties are common: EAP gives many "
                              "edges the same score, 0 in the planted model)")
        raise CheckFailed(f"`{name}` gave {got:.3f}" + reveal(f", expected {want:.3f}") + "; the AUC is the share of "
                          "(true edge, false edge) pairs in which the true edge scores higher, ties counting half")
    passed(name)


# --- exercise 8 --------------------------------------------------------------------------------------------
def scrubbed_input(fn: Callable) -> None:
    """Exercise 8: what causal scrubbing adds to the inputs of the receivers at one hook."""
    __tracebackhide__ = True
    name = "scrubbed_input"
    generator = seeded(8)
    n_sources, n_receivers, batch, pos, d = size(5), size(3), size(4), size(3), 6
    by_source = torch.randn(n_sources, batch, pos, d, generator=generator)
    current = by_source + 0.5 * torch.randn(n_sources, batch, pos, d, generator=generator)  # earlier scrubbing
    resampled = torch.rand(n_sources, n_receivers, generator=generator) < 0.6
    resampled[0, 0], resampled[1, 0] = True, False
    draws = torch.stack([torch.stack([torch.randperm(batch, generator=generator) for _ in range(n_receivers)])
                         for _ in range(n_sources)])
    got = expect_tensor(call_student(fn, name, by_source.clone(), current.clone(), resampled.clone(), draws.clone()),
                        name, (batch, pos, n_receivers, d), "batch pos receiver d_model")
    want = reference_scrubbed_input(by_source, current, resampled, draws)
    first_draw = reference_scrubbed_input(by_source, current, resampled, draws[:, :1].expand_as(draws))
    no_subtract = reference_scrubbed_input(by_source, torch.zeros_like(current), resampled, draws)
    clean_subtract = reference_scrubbed_input(by_source, by_source, resampled, draws)
    inverted = reference_scrubbed_input(by_source, current, ~resampled, draws)
    reject_known_mistakes(got, [
        (first_draw, "every receiver got the draws of the first one: each edge has its own draw (treeified), "
                     "draws[s, n] for edge s -> n"),
        (no_subtract, "you added the drawn output without taking away what the source wrote in this run: the "
                      "residual stream already holds current[s], so add by_source[s, drawn] − current[s]"),
        (clean_subtract, "you subtracted the source's unscrubbed output on the prompt (by_source[s, i]): this run's "
                         "source may itself be scrubbed, so subtract current[s, i]"),
        (inverted, "you resampled the circuit's edges and kept the others: `resampled` is True for the edges the "
                   "hypothesis says do not matter"),
    ], want, atol=1e-5)
    expect_close(got, want, name, atol=1e-5, hint="for each resampled edge s -> n and prompt i, add "
                 "by_source[s, draws[s, n, i]] − current[s, i] to receiver n's input")
    passed(name)


# --- exercise 9 --------------------------------------------------------------------------------------------
def effective_keys(fn: Callable) -> None:
    """Exercise 9: the smooth edge count of causal attention patterns that sparse-attention training lowers."""
    __tracebackhide__ = True
    name = "effective_keys"
    generator = seeded(9)
    batch, heads, pos = size(2), size(3), size(6)
    scores = torch.randn(batch, heads, pos, pos, generator=generator) * torch.rand(heads, 1, 1, generator=generator) * 4
    future = torch.triu(torch.ones(pos, pos, dtype=torch.bool), diagonal=1)
    pattern = scores.masked_fill(future, float("-inf")).softmax(-1)
    got = expect_number(call_student(fn, name, pattern.clone()), name)
    want = float(reference_effective_keys(pattern))
    root_count = pattern.sqrt().sum(-1).square()
    shannon = (-(pattern * pattern.clamp_min(1e-30).log()).sum(-1)).exp()
    visible = torch.arange(1, pos + 1)
    wrongs = {
        "you divided every row by all the positions: query q may only attend q + 1 keys, so divide by those":
            float((root_count / pos).mean()),
        "you returned the count without dividing by the keys each query may attend":
            float(root_count.mean()),
        "you took the exponential of the Shannon entropy: the count here is (Σ √a)², the Rényi entropy of order ½, "
        "which counts many small weights more": float((shannon / visible).mean()),
        "you did not square the sum of square roots: (Σ √a)² is 1 for one-hot attention and the number of keys "
        "for uniform": float((pattern.sqrt().sum(-1) / visible).mean()),
    }
    if abs(got - want) > 1e-5:
        for message, value in wrongs.items():
            if abs(got - value) < 1e-5:
                raise CheckFailed(message)
        raise CheckFailed(f"`{name}` gave {got:.4f}" + reveal(f", expected {want:.4f}") + "; per query row: "
                          "(Σ over keys of √a)² divided by the keys the query may attend, then the mean over rows")
    passed(name)


EXERCISES = {
    "count_edges": Exercise(count_edges, ("count_edges",)),
    "patch_edge": Exercise(patch_edge, ("patch_edge",), forbidden=(patched_logits, run_with_edges)),
    "eap_scores": Exercise(eap_scores, ("eap_scores",), forbidden=(attribute,)),
    "eap_ig_scores": Exercise(eap_ig_scores, ("eap_ig_scores",), forbidden=(attribute,)),
    "acdc_pass": Exercise(acdc_pass, ("acdc_pass",)),
    "incompleteness": Exercise(incompleteness, ("incompleteness",), forbidden=(completeness, Graph.edges_from)),
    "roc_auc": Exercise(roc_auc, ("roc_auc",), forbidden=(roc, roc_points)),
    "scrubbed_input": Exercise(scrubbed_input, ("scrubbed_input",), forbidden=(reference_scrubbed_input, scrub)),
    "effective_keys": Exercise(effective_keys, ("effective_keys",), forbidden=(reference_effective_keys,)),
}
