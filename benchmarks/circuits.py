"""Edge attribution on SmolLM2-135M: EAP and EAP-IG against exact edge patching, and against auto-circuit.

    python benchmarks/circuits.py                     # Greater-Than: 20 prompts, 10 IG steps, 96 random + 24 top edges
    python benchmarks/circuits.py --task ioi --prompts 16
    python benchmarks/circuits.py --prompts 10 --threads 1
    /tmp/peer-venv/bin/python benchmarks/circuits.py  # with the peer (auto-circuit installed there, not here)

Scores every edge of SmolLM2's graph with EAP (one forward and backward pass) and EAP-IG, patches edges one
at a time (`--sets` per forward pass): a random sample, whose effects are mostly tiny, and the `--top` edges of
largest |EAP-IG|, where ranking matters. Prints the time of each, the Pearson correlation of each estimate with
the exact effects on both samples, and the time per edge of exact patching against attribution. On IOI it
also ranks the heads by their node score (`node_scores`) and gives the ROC area against the 20-head circuit
that notebook 02's solution finds in SmolLM2 by hand (DLA, attention patterns and path patching).

The peer: auto-circuit (PyPI, 1.0.1) is not a mikit dependency. Where it imports (it needs two TransformerLens 2
names aliased, see `import_peer`), it scores every edge with EAP of the mean logit difference on the same model
and prompts, and the line printed is `name  ours  peer  ratio`. Its IG interpolates edge masks, not inputs, so
only EAP is compared.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import types
from importlib.metadata import version

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")  # auto-circuit draws a progress bar per IG sample

import torch

import mikit
from mikit.circuits import Graph, attribute, node_scores, roc, run_with_edges, source_outputs, tasks
from mikit.datasets.greater_than import GreaterThanDataset

# The circuit notebook 02's solution finds in SmolLM2 (its cell "20 heads: …"): duplicate-token, induction,
# S-inhibition and name-mover heads, kept if they hold 85 % of the logit difference on unseen prompts.
NOTEBOOK_02_CIRCUIT = ("a2.h4 a5.h6 a8.h0 a8.h1 a9.h2 a13.h7 a14.h3 a15.h6 a15.h7 a17.h4 a17.h5 a19.h2 a20.h0 "
                       "a23.h0 a23.h1 a23.h2 a23.h3 a23.h7 a28.h1 a29.h1").split()


def import_peer():
    """auto-circuit's EAP and dataset classes, or the reason they cannot be imported. auto-circuit 1.0.1 imports
    `HookedTransformerKeyValueCache`, which TransformerLens 3 renamed `TransformerLensKeyValueCache` (and moved
    out of `past_key_value_caching`): both names are aliased here, nothing else is changed."""
    try:
        import transformer_lens
        from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache

        transformer_lens.HookedTransformerKeyValueCache = TransformerLensKeyValueCache
        old = types.ModuleType("transformer_lens.past_key_value_caching")
        old.HookedTransformerKeyValueCache = TransformerLensKeyValueCache
        sys.modules.setdefault("transformer_lens.past_key_value_caching", old)
        from auto_circuit.data import PromptDataLoader, PromptDataset
        from auto_circuit.prune_algos.mask_gradient import mask_gradient_prune_scores
        from auto_circuit.utils.graph_utils import patchable_model
    except ImportError as error:
        return None, f"{type(error).__name__}: {error}"
    return (PromptDataLoader, PromptDataset, mask_gradient_prune_scores, patchable_model), None


def compare_with_peer(peer, graph: Graph, ds: GreaterThanDataset, corrupted: GreaterThanDataset) -> None:
    """EAP of the mean logit difference (tens digit + 1 against tens digit − 1, auto-circuit's "avg_diff" on
    logits) by mikit and by auto-circuit, on the same SmolLM2 and prompts. auto-circuit's graph has a key and a
    value receiver per query head, so it runs with TransformerLens's ungroup_grouped_query_attention (the same
    function) and its scores of the query heads sharing a key/value head are summed: that is mikit's group score."""
    PromptDataLoader, PromptDataset, mask_gradient_prune_scores, patchable_model = peer
    tens = torch.div(ds.yy, 10, rounding_mode="floor")
    answers, wrong = ds.answer_tokens[tens + 1], ds.answer_tokens[tens - 1]

    def logit_diff(logits):
        last = logits[:, -1]
        return (last.gather(1, answers[:, None]) - last.gather(1, wrong[:, None])).mean()

    model = mikit.load_model("smollm2-135m", device="cpu")
    start = time.perf_counter()
    ours = attribute(model, graph, ds.tokens, corrupted.tokens, logit_diff)
    ours_s = time.perf_counter() - start

    model.set_ungroup_grouped_query_attention(True)
    model.set_use_attn_result(True)
    model.set_use_split_qkv_input(True)
    model.set_use_hook_mlp_in(True)
    loader = PromptDataLoader(PromptDataset(ds.tokens, corrupted.tokens, list(answers[:, None]), list(wrong[:, None])),
                              seq_len=None, diverge_idx=0, batch_size=len(ds), shuffle=False)
    start = time.perf_counter()
    wrapped = patchable_model(model, factorized=True, slice_output="last_seq", separate_qkv=True,
                              device=torch.device("cpu"))
    build_s = time.perf_counter() - start
    start = time.perf_counter()
    found = mask_gradient_prune_scores(wrapped, loader, None, grad_function="logit", answer_function="avg_diff",
                                       mask_val=0.0)
    peer_s = time.perf_counter() - start
    theirs = torch.empty(graph.n_edges)
    for r in graph.receivers:
        piece = found[r.hook].detach().float()  # (query head, source) or (source,)
        if r.head_axis:
            piece = piece.unflatten(0, (r.n, -1)).sum(1).T  # query heads of one key/value group summed
        theirs[r.edges] = -piece.reshape(-1)  # auto-circuit's loss is minus the metric
    r_value = torch.corrcoef(torch.stack([ours, theirs]))[0, 1].item()
    gap = ((ours - theirs).abs().max() / theirs.abs().max()).item()
    print(f"auto-circuit {version('auto-circuit')}: EAP of the logit difference, Pearson r with mikit's {r_value:.5f}, "
          f"largest difference {gap:.1e} of the largest score; its graph took {build_s:.1f} s to build (not counted)")
    print(f"{'name':<34}{'ours':>9}{'peer':>9}{'ratio':>8}")
    print(f"{'EAP, every edge (s)':<34}{ours_s:>9.1f}{peer_s:>9.1f}{peer_s / ours_s:>7.1f}x")


def compare_with_notebook_02(graph: Graph, scores: dict[str, torch.Tensor]) -> None:
    """Rank the heads by |node score| and measure the ROC area against notebook 02's hand-found circuit."""
    heads = [i for i, name in enumerate(graph.sources) if ".h" in name]
    truth = torch.tensor([graph.sources[i] in NOTEBOOK_02_CIRCUIT for i in heads])
    for name, edge_scores in scores.items():
        per_head = node_scores(graph, edge_scores)[heads].abs()
        top = per_head.topk(20).indices
        found = [graph.sources[heads[i]] for i in top]
        print(f"{name:6s} heads against notebook 02's {int(truth.sum())}-head circuit: AUC {roc(per_head, truth)[2]:.3f}; "
              f"{int(truth[top].sum())} of its top 20 are in it: {' '.join(found)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", choices=["greater-than", "ioi"], default="greater-than")
    parser.add_argument("--prompts", type=int, default=20)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--sample", type=int, default=96, help="random edges patched exactly")
    parser.add_argument("--top", type=int, default=24, help="edges of largest |EAP-IG| patched exactly")
    parser.add_argument("--sets", type=int, default=8, help="edge sets per forward pass")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    model = mikit.load_model("smollm2-135m", device="cpu")
    task = tasks.make(args.task, model, n_prompts=args.prompts)
    clean, metric = task.clean, task.metric
    graph = Graph.of(model)
    print(f"SmolLM2-135M: {graph}; {task}")
    timings = {}
    start = time.perf_counter()
    eap = attribute(model, graph, clean, task.corrupted, metric)
    timings["EAP"] = time.perf_counter() - start
    start = time.perf_counter()
    ig = attribute(model, graph, clean, task.corrupted, metric, steps=args.steps)
    timings[f"EAP-IG ({args.steps} steps)"] = time.perf_counter() - start

    sample = torch.randperm(graph.n_edges, generator=torch.Generator().manual_seed(0))[: args.sample]
    top = ig.abs().topk(args.top).indices
    edges = torch.cat([sample, top])
    start = time.perf_counter()
    removed = source_outputs(model, graph, task.corrupted)
    with torch.no_grad():
        base = metric(model(clean)).item()
    exact = []
    for chunk in edges.split(args.sets):
        sets = graph.mask().repeat(len(chunk), 1)
        sets[torch.arange(len(chunk)), chunk] = False
        exact.append(run_with_edges(model, graph, clean, removed, sets, metric) - base)
    exact = torch.cat(exact)
    patch_seconds = time.perf_counter() - start
    timings[f"exact patching, {len(edges)} edges"] = patch_seconds

    for name, seconds in timings.items():
        print(f"{name:32s} {seconds:8.1f} s")
    per_edge = patch_seconds / len(edges)
    print(f"exact patching: {per_edge:.2f} s per edge; every edge would take about "
          f"{per_edge * graph.n_edges / 60:.0f} min "
          f"({per_edge * graph.n_edges / timings['EAP']:.0f}× EAP)")
    for name, scores in (("EAP", eap), ("EAP-IG", ig)):
        r = [torch.corrcoef(torch.stack([scores[part], effect]))[0, 1].item()
             for part, effect in ((sample, exact[: len(sample)]), (top, exact[len(sample):]))]
        print(f"Pearson r with exact patching: {name:6s} {r[0]:.3f} on {len(sample)} random edges, "
              f"{r[1]:.3f} on the {len(top)} of largest |EAP-IG|")
    print("largest EAP-IG edges:", ", ".join(f"{graph.edge_names[i]} {ig[i]:+.3f}" for i in top[:10]))
    if args.task == "ioi":
        compare_with_notebook_02(graph, {"EAP": eap, "EAP-IG": ig})
        return

    peer, why_not = import_peer()
    if peer is None:
        print(f"peer: auto-circuit cannot be imported here ({why_not}); install it in a scratch environment "
              "(pip install auto-circuit) and run this script with that environment's python")
    else:
        compare_with_peer(peer, graph, task.dataset, GreaterThanDataset.corrupted(task.dataset))


if __name__ == "__main__":
    main()
