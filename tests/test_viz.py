"""Figure helpers: hover labels on head heatmaps, and the attention explorer's selectors."""

import pytest
import torch

from mikit import viz


def test_heads_heatmap_hover_names_each_head():
    fig = viz.heads_heatmap(torch.rand(3, 5), "scores")
    trace = fig.data[0]
    assert trace.z.shape == (3, 5)
    assert trace.customdata[2][4] == "L2H4" and "%{customdata}" in trace.hovertemplate
    assert fig.layout.coloraxis.colorscale[0][1] != fig.layout.coloraxis.colorscale[-1][1]


def test_heads_heatmap_diverges_around_zero_for_signed_scores():
    fig = viz.heads_heatmap(torch.randn(2, 2), "effects")
    assert fig.layout.coloraxis.cmid == 0.0


def test_attention_explorer_selects_layer_and_head():
    patterns = torch.rand(2, 3, 4, 4).softmax(-1)
    box = viz.attention_explorer(["<bos>", "a", "b", "a"], patterns, "toy")
    (layer, head), image = box.children[0].children, box.children[1]
    assert (layer.min, layer.max) == (0, 1)
    assert [value for _, value in head.options] == [0, 1, 2]
    first = image.value
    assert first[:4] == b"\x89PNG"
    layer.value, head.value = 1, 2
    assert image.value != first  # the selection re-renders the picture


def test_circuit_diagram_puts_each_class_in_its_own_column():
    classes = {"duplicate token": [(3, 0), (0, 1)], "S-inhibition": [], "name mover": [(9, 9)]}
    fig = viz.circuit_diagram(classes)
    # empty classes are dropped; the logits close the diagram
    assert [trace.name for trace in fig.data] == ["duplicate token", "name mover", "logits"]
    assert list(fig.data[0].text) == ["L3H0", "L0H1"] and set(fig.data[0].x) == {0}
    arrows = [a for a in fig.layout.annotations if a.showarrow]
    assert len(arrows) == 2 * 1 + 1 * 1  # every box of one column feeds every box of the next


def test_heads_heatmap_of_a_subset_of_layers_names_them():
    fig = viz.heads_heatmap(torch.rand(2, 3), "swept layers", layers=[23, 29])
    assert list(fig.data[0].y) == ["23", "29"] and fig.data[0].customdata[1][2] == "L29H2"
    with pytest.raises(ValueError, match="names 1 rows"):
        viz.heads_heatmap(torch.rand(2, 3), "bad", layers=[23])


def test_positions_heatmap_labels_every_position_even_repeated_tokens():
    fig = viz.positions_heatmap(torch.rand(3, 4) - 0.5, [" A", " B", " A", " to"], "t")
    assert list(fig.data[0].x) == [" A (0)", " B (1)", " A (2)", " to (3)"]
    assert fig.data[0].z.shape == (3, 4)
    with pytest.raises(ValueError, match="3 tokens, but scores has 4 positions"):
        viz.positions_heatmap(torch.rand(3, 4), [" A", " B", " C"], "t")


def test_t2i_explorer_generates_on_a_new_caption_and_rerenders_on_the_sliders():
    from mikit.xattn.model import TinyT2I, TinyT2IConfig

    torch.manual_seed(0)
    model = TinyT2I(TinyT2IConfig(d_model=32, n_heads=2, n_layers=2, d_mlp=64)).eval()
    box = viz.t2i_explorer(model, "a small red circle", steps=3)
    (text, seed), (layer, step) = box.children[0].children, box.children[1].children
    message, image = box.children[2], box.children[3]
    assert (layer.min, layer.max, step.max) == (-1, 1, 2) and image.value[:4] == b"\x89PNG"
    first = image.value
    layer.value = 0
    assert image.value != first
    text.value = "a small purple dragon"
    assert "not in the scene vocabulary" in message.value and "dragon" in message.value
    assert image.layout.display == "none"  # no stale picture under the message
    layer.value = 1
    assert image.layout.display == "none"  # and the sliders do not bring it back
    text.value = "a large green square above a small blue triangle"
    assert message.value == "" and image.value != first and image.layout.display is None


def test_circuit_graph_draws_each_edge_once_with_width_by_score():
    from mikit.circuits import Graph

    graph = Graph(n_layers=3, n_heads=4, n_kv_heads=2, attn_only=False)  # MLPs and grouped keys/values
    scores = torch.zeros(graph.n_edges)
    chosen = {("input", "a0.h1<q>"): 0.1, ("a0.h2", "a1.kv1<k>"): -0.4, ("m1", "a2.kv0<v>"): 0.8,
              ("a2.h3", "logits"): 2.0}
    for (source, receiver), score in chosen.items():
        scores[graph.edge_index(source, receiver)] = score
    fig = viz.circuit_graph(graph, scores, top=4)
    edges = [trace for trace in fig.data if trace.name == "edge"]
    assert sorted(trace.hovertext.split(":")[0] for trace in edges) == sorted(f"{s}->{r}" for s, r in chosen)
    widths = {trace.hovertext.split(":")[0]: trace.line.width for trace in edges}
    assert widths["input->a0.h1<q>"] < widths["a0.h2->a1.kv1<k>"] < widths["m1->a2.kv0<v>"] < widths["a2.h3->logits"]
    nodes = next(trace for trace in fig.data if trace.name == "node")
    dark = {name for name, colour in zip(nodes.text, nodes.marker.color) if colour != "#eeeeee"}
    # the sources and the nodes fed, a key/value group's edge feeding every head of the group
    assert dark == {"input", "a0.h1", "a0.h2", "a1.h2", "a1.h3", "m1", "a2.h0", "a2.h1", "a2.h3", "logits"}
    kept = torch.zeros(graph.n_edges, dtype=torch.bool)
    kept[graph.edge_index("m1", "a2.kv0<v>")] = True
    assert len([t for t in viz.circuit_graph(graph, scores, kept).data if t.name == "edge"]) == 1
    with pytest.raises(ValueError, match=f"one score per edge \\({graph.n_edges}\\), got 3"):
        viz.circuit_graph(graph, torch.ones(3))
