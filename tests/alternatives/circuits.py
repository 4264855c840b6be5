"""Correct alternatives to notebook 06's exercises, written from the exercise text as a student would.

Each function is named `<exercise function>__<variant>`; the checks must accept every one of them, visibly,
under hidden variants and through the wire (tests/test_checks_circuits.py).
"""

import torch
from scipy.stats import rankdata

from mikit.circuits import Graph, graph_hooks, run_with_edges, source_outputs


# --- exercise 1: count_edges(n_layers, n_heads, n_kv_heads, attn_only) ----------------------------------------
def count_edges__closed_form(n_layers, n_heads, n_kv_heads, attn_only):
    per_layer = n_heads + (0 if attn_only else 1)
    attention = (n_heads + 2 * n_kv_heads) * sum(1 + layer * per_layer for layer in range(n_layers))
    mlps = 0 if attn_only else sum(1 + layer * per_layer + n_heads for layer in range(n_layers))
    return attention + mlps + 1 + n_layers * per_layer


def count_edges__list_the_edges(n_layers, n_heads, n_kv_heads, attn_only):
    sources, edges = ["input"], []
    for layer in range(n_layers):
        readers = [f"q{h}" for h in range(n_heads)] + [f"{kind}{g}" for g in range(n_kv_heads) for kind in "kv"]
        edges += [(s, f"{layer}.{r}") for r in readers for s in sources]
        sources = sources + [f"a{layer}.h{h}" for h in range(n_heads)]
        if not attn_only:
            edges += [(s, f"m{layer}") for s in sources]
            sources = sources + [f"m{layer}"]
    edges += [(s, "logits") for s in sources]
    return len(edges)


# --- exercise 2: patch_edge(model, clean_tokens, corrupted_tokens, source, receiver) ---------------------------
def patch_edge__in_place_hook_and_reset(model, clean_tokens, corrupted_tokens, source, receiver):
    (sl, sh), (rl, kind, rh) = source, receiver
    _, clean_cache = model.run_with_cache(clean_tokens)
    _, corrupted_cache = model.run_with_cache(corrupted_tokens)
    delta = torch.einsum("bpd,dm->bpm", corrupted_cache["z", sl][:, :, sh] - clean_cache["z", sl][:, :, sh],
                         model.W_O[sl, sh])

    def hook(x, hook):
        x[:, :, rh] += delta  # returns None: the edit in place is what counts

    model.set_use_split_qkv_input(True)
    model.add_hook(f"blocks.{rl}.hook_{kind}_input", hook)
    try:
        return model(clean_tokens).detach()
    finally:
        model.reset_hooks()
        model.set_use_split_qkv_input(False)


def patch_edge__one_hot_head(model, clean_tokens, corrupted_tokens, source, receiver):
    (sl, sh), (rl, kind, rh) = source, receiver
    with torch.no_grad(), graph_hooks(model):
        outputs = [source_outputs(model, Graph.of(model), tokens) for tokens in (clean_tokens, corrupted_tokens)]
    index = Graph.of(model).sources.index(f"a{sl}.h{sh}")
    delta = outputs[1][:, :, index] - outputs[0][:, :, index]
    head = torch.nn.functional.one_hot(torch.tensor(rh), model.cfg.n_heads).to(delta.dtype)
    with torch.no_grad(), graph_hooks(model):
        return model.run_with_hooks(clean_tokens, fwd_hooks=[(
            f"blocks.{rl}.hook_{kind}_input", lambda x, hook: x + head[None, None, :, None] * delta[:, :, None])])


# --- exercise 3: eap_scores(model, clean_tokens, corrupted_tokens, metric) -------------------------------------
def _receiver_activations(model, graph, tokens, embed_hook=None):
    """The metric's inputs: the receivers' activations of one run (with an optional hook on the embeddings)."""
    kept = {}

    def keep(activation, hook):
        kept[hook.name] = activation

    hooks = ([embed_hook] if embed_hook else []) + [(r.hook, keep) for r in graph.receivers]
    logits = model.run_with_hooks(tokens, fwd_hooks=hooks)
    return logits, kept


def eap_scores__autograd_grad(model, clean_tokens, corrupted_tokens, metric):
    graph = Graph.of(model)
    diff = source_outputs(model, graph, corrupted_tokens) - source_outputs(model, graph, clean_tokens)
    with torch.enable_grad(), graph_hooks(model):
        logits, acts = _receiver_activations(model, graph, clean_tokens)
        grads = torch.autograd.grad(metric(logits), [acts[r.hook] for r in graph.receivers])
    out = []
    for r, g in zip(graph.receivers, grads):
        g = g.unsqueeze(2) if g.ndim == 3 else g
        out.append((diff[:, :, : r.n_sources, None] * g[:, :, None]).sum((0, 1, 4)).reshape(-1))
    return torch.cat(out)


def eap_scores__by_edge_name(model, clean_tokens, corrupted_tokens, metric):
    graph = Graph.of(model)
    diff = source_outputs(model, graph, corrupted_tokens) - source_outputs(model, graph, clean_tokens)
    with torch.enable_grad(), graph_hooks(model):
        logits, acts = _receiver_activations(model, graph, clean_tokens)
        grads = dict(zip(acts, torch.autograd.grad(metric(logits), list(acts.values()))))
    by_name = {}
    for r in graph.receivers:
        g = grads[r.hook] if grads[r.hook].ndim == 4 else grads[r.hook][:, :, None]
        for s in range(r.n_sources):
            for i, name in enumerate(r.names):
                by_name[f"{graph.sources[s]}->{name}"] = (diff[:, :, s] * g[:, :, i]).sum()
    return torch.stack([by_name[name] for name in graph.edge_names])


# --- exercise 4: eap_ig_scores(model, clean_tokens, corrupted_tokens, metric, steps) ---------------------------
def eap_ig_scores__all_steps_in_one_batch(model, clean_tokens, corrupted_tokens, metric, steps):
    graph = Graph.of(model)
    batch = len(clean_tokens)
    diff = source_outputs(model, graph, corrupted_tokens) - source_outputs(model, graph, clean_tokens)
    with torch.no_grad():
        _, cache = model.run_with_cache(corrupted_tokens, names_filter="blocks.0.hook_resid_pre")
    start = cache["blocks.0.hook_resid_pre"].repeat(steps, 1, 1)
    alphas = torch.arange(1, steps + 1).repeat_interleave(batch)[:, None, None] / steps

    def interpolate(resid, hook):
        return start + alphas * (resid - start)

    with torch.enable_grad(), graph_hooks(model):
        logits, acts = _receiver_activations(model, graph, clean_tokens.repeat(steps, 1),
                                             ("blocks.0.hook_resid_pre", interpolate))
        value = sum(metric(chunk) for chunk in logits.split(batch))  # the metric of each step, added up
        grads = torch.autograd.grad(value, [acts[r.hook] for r in graph.receivers])
    out = []
    for r, g in zip(graph.receivers, grads):
        g = (g if g.ndim == 4 else g[:, :, None]).unflatten(0, (steps, batch)).mean(0)
        out.append(torch.einsum("bpsd,bpnd->sn", diff[:, :, : r.n_sources], g).flatten())
    return torch.cat(out)


def eap_ig_scores__gradient_at_each_alpha(model, clean_tokens, corrupted_tokens, metric, steps):
    graph = Graph.of(model)
    diff = source_outputs(model, graph, corrupted_tokens) - source_outputs(model, graph, clean_tokens)
    embed = "blocks.0.hook_resid_pre"
    with torch.no_grad():
        clean_embed = model.run_with_cache(clean_tokens, names_filter=embed)[1][embed]
        corrupted_embed = model.run_with_cache(corrupted_tokens, names_filter=embed)[1][embed]
    per_step = []
    for alpha in torch.linspace(1 / steps, 1, steps):
        point = ((1 - alpha) * corrupted_embed + alpha * clean_embed).requires_grad_()
        with torch.enable_grad(), graph_hooks(model):
            logits, acts = _receiver_activations(model, graph, clean_tokens, (embed, lambda resid, hook: point))
            per_step.append(torch.autograd.grad(metric(logits), [acts[r.hook] for r in graph.receivers]))
    out = []
    for i, r in enumerate(graph.receivers):
        g = torch.stack([grads[i] for grads in per_step]).mean(0)
        g = g if g.ndim == 4 else g[:, :, None]
        out.append(torch.einsum("bpsd,bpnd->sn", diff[:, :, : r.n_sources], g).flatten())
    return torch.cat(out)


# --- exercise 5: acdc_pass(measure, present, candidates, threshold) --------------------------------------------
def acdc_pass__recursive(measure, present, candidates, threshold):
    def visit(mask, current, rest):
        if not rest:
            return mask
        trial = mask.clone()
        trial[rest[0]] = False
        value = measure(trial)
        return visit(trial, value, rest[1:]) if value < current + threshold else visit(mask, current, rest[1:])

    return visit(present.clone(), measure(present), list(candidates))


def acdc_pass__list_of_removed(measure, present, candidates, threshold):
    removed = []

    def mask(extra):
        out = present.clone()
        out[removed + extra] = False
        return out

    current = measure(mask([]))
    for edge in candidates:
        value = measure(mask([edge]))
        if not value - current >= threshold:
            removed.append(edge)
            current = value
    return mask([])


# --- exercise 6: incompleteness(model, circuit, clean_tokens, corrupted, metric, node_sets) --------------------
def incompleteness__source_indices(model, circuit, clean_tokens, corrupted, metric, node_sets):
    graph = Graph.of(model)
    edge_source = graph.source_of(torch.arange(graph.n_edges))
    rows = []
    for nodes in node_sets:
        cut = torch.isin(edge_source, torch.tensor([graph.sources.index(n) for n in nodes], dtype=torch.long))
        rows += [circuit & ~cut, ~cut]
    values = run_with_edges(model, graph, clean_tokens, corrupted, torch.stack(rows), metric)
    return (values[0::2] - values[1::2]).abs()


def incompleteness__one_call_per_set(model, circuit, clean_tokens, corrupted, metric, node_sets):
    graph = Graph.of(model)
    out = []
    for nodes in node_sets:
        cut = torch.tensor([name.split("->")[0] in set(nodes) for name in graph.edge_names], dtype=torch.bool)
        without_circuit = run_with_edges(model, graph, clean_tokens, corrupted, circuit & ~cut, metric)
        without_model = run_with_edges(model, graph, clean_tokens, corrupted, ~cut, metric)
        out.append(float((without_circuit - without_model).abs()))
    return torch.tensor(out)


# --- exercise 7: roc_auc(scores, truth) ------------------------------------------------------------------------
def roc_auc__scipy_ranks(scores, truth):
    ranks = torch.tensor(rankdata(scores.numpy()))  # ties get their average rank
    n_true, n_false = int(truth.sum()), int((~truth).sum())
    return float((ranks[truth].sum() - n_true * (n_true + 1) / 2) / (n_true * n_false))


def roc_auc__trapezoids(scores, truth):
    values = torch.unique(scores, sorted=True).flip(0)  # each distinct score is one cut, from the top
    tpr, fpr = [0.0], [0.0]
    for v in values:
        tpr.append(float((truth & (scores >= v)).sum() / truth.sum()))
        fpr.append(float((~truth & (scores >= v)).sum() / (~truth).sum()))
    return float(torch.trapezoid(torch.tensor(tpr), torch.tensor(fpr)))


# --- exercise 8: scrubbed_input(by_source, current, resampled, draws) ------------------------------------------
def scrubbed_input__einsum(by_source, current, resampled, draws):
    n_sources, n_receivers, batch = draws.shape
    drawn = torch.stack([by_source[s][draws[s]] for s in range(n_sources)])  # (source, receiver, batch, pos, d)
    change = drawn - current[:, None]
    return torch.einsum("snbpd,sn->bpnd", change, resampled.to(change.dtype))


def scrubbed_input__per_receiver(by_source, current, resampled, draws):
    columns = []
    for n in range(draws.shape[1]):
        column = torch.zeros_like(current[0])
        for s in range(draws.shape[0]):
            if resampled[s, n]:
                column = column + by_source[s].index_select(0, draws[s, n]) - current[s]
        columns.append(column)
    return torch.stack(columns, dim=2)


# --- exercise 9: effective_keys(pattern) -------------------------------------------------------------------------
def effective_keys__renyi_entropy(pattern):
    n = pattern.shape[-1]
    renyi = 2 * torch.log(torch.sqrt(pattern).sum(-1))  # the Rényi entropy of order 1/2
    return (renyi.exp() / torch.arange(1, n + 1)).mean()


def effective_keys__loop_over_queries(pattern):
    rows = []
    for q in range(pattern.shape[-1]):
        seen = pattern[..., q, : q + 1]  # the keys query q may attend
        rows.append(seen.sqrt().sum(-1) ** 2 / (q + 1))
    return torch.stack(rows, -1).mean().item()
