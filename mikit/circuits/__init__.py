"""Automated circuit discovery on a HookedTransformer's computational graph (notebook 06).

    from mikit.circuits import Graph, attribute, run_with_edges, source_outputs

    graph = Graph.of(model)                                          # sources, receivers, edges
    task = tasks.ioi(model)                 # clean/corrupted prompts + metric: tasks.greater_than, tasks.induction
    scores = attribute(model, graph, clean, corrupted, metric)       # EAP; steps=10 for EAP-IG
    node_scores(graph, scores)                                       # per node: a fast first pass
    patched = run_with_edges(model, graph, clean, source_outputs(model, graph, corrupted), masks, metric)
    kept = acdc(model, graph, clean, ablated_outputs(model, graph, corrupted), kl_to_clean(model(clean)), 0.01)
    faithfulness(model, graph, kept, clean, ablated_outputs(model, graph, corrupted), task_metric)
    completeness(...); minimality(...); roc(scores, true_edges)          # mikit.circuits.evaluation
    scrub(model, graph, tokens, circuit, metric)                         # causal scrubbing of "only these edges"
    sparse = sparsify(model, steps=400, tolerance=0.03)                 # sparse-attention post-training (a copy)
    attention_density(sparse, tokens); edges_for_faithfulness(sparse, graph, clean, corrupted, metric)
"""

from mikit.circuits.discovery import acdc, ablated_outputs, kl_to_clean
from mikit.circuits.edges import Metric, attribute, graph_hooks, node_scores, run_with_edges, source_outputs
from mikit.circuits.evaluation import circuit_nodes, circuit_size, completeness, faithfulness, minimality, roc, roc_points
from mikit.circuits.graph import Graph, Receiver
from mikit.circuits.scrubbing import scrub, scrubbed_input
from mikit.circuits.sparse import attention_density, edges_for_faithfulness, load_sparse, sparsify
from mikit.circuits import tasks
from mikit.circuits.tasks import Task

__all__ = [
    "Graph", "Metric", "Receiver", "Task", "ablated_outputs", "acdc", "attention_density", "attribute", "circuit_nodes",
    "circuit_size", "completeness", "edges_for_faithfulness", "faithfulness", "graph_hooks", "kl_to_clean", "load_sparse",
    "minimality", "node_scores", "roc", "roc_points", "run_with_edges", "scrub", "scrubbed_input", "source_outputs", "sparsify", "tasks",
]
