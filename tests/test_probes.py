"""Probes on planted directions, grouped splits, control tasks that expose memorisation, and the interventions."""

import math

import pytest
import torch

from mikit import probes


def _planted(n: int, d_model: int, separation: float, seed: int):
    """Isotropic Gaussian noise plus ±separation/2 along one unit direction, labels 0/1 half each. The Bayes
    classifier thresholds the projection at 0, so the Bayes rate is Φ(separation / 2)."""
    generator = torch.Generator().manual_seed(seed)
    direction = torch.randn(d_model, generator=generator)
    direction /= direction.norm()
    labels = torch.arange(n) % 2
    acts = torch.randn(n, d_model, generator=generator) + (labels[:, None] - 0.5) * separation * direction
    return acts, labels, direction


def _phi(x: float) -> float:
    return 0.5 * (1 + math.erf(x / math.sqrt(2)))


@pytest.mark.parametrize("kind", probes.KINDS)
def test_a_probe_finds_a_planted_direction_at_the_bayes_rate(kind):
    acts, labels, planted = _planted(4000, 32, separation=2.0, seed=0)
    train, test = slice(0, 2000), slice(2000, None)
    probe = probes.train_probe(acts[train], labels[train], kind)
    assert torch.cosine_similarity(probe.direction, planted, dim=0) > 0.9
    assert torch.cosine_similarity(probe.unit_direction(), planted, dim=0) > 0.9  # pointing towards class 1
    torch.testing.assert_close(probe.unit_direction().norm(), torch.tensor(1.0))
    bayes = _phi(1.0)  # 0.841
    assert abs(probe.accuracy(acts[test], labels[test]) - bayes) < 0.03
    assert probe.predict(acts[test]).dtype == torch.long and probe.scores(acts[test]).shape == (2000,)


def test_probes_classify_three_planted_classes():
    generator = torch.Generator().manual_seed(1)
    means = 2.0 * torch.eye(3, 16)
    labels = torch.arange(3000) % 3
    acts = means[labels] + torch.randn(3000, 16, generator=generator)
    bayes = (((acts[:, None] - means) ** 2).sum(-1).argmin(-1) == labels).double().mean().item()  # true nearest mean
    for kind in probes.KINDS:
        probe = probes.train_probe(acts[:1500], labels[:1500], kind)
        assert probe.n_classes == 3 and probe.direction.shape == (3, 16) and probe.bias.shape == (3,)
        assert probe.accuracy(acts[1500:], labels[1500:]) > bayes - 0.03
        with pytest.raises(ValueError, match="one direction per class"):
            probe.unit_direction()


def test_the_mean_difference_probe_is_the_hand_computation():
    acts = torch.tensor([[1.0, 0.0], [3.0, 2.0], [0.0, 4.0], [2.0, 6.0], [1.0, 5.0]])
    labels = torch.tensor([0, 0, 1, 1, 1])
    probe = probes.mean_difference_probe(acts, labels)
    mean0, mean1 = torch.tensor([2.0, 1.0]), torch.tensor([1.0, 5.0])
    torch.testing.assert_close(probe.direction, mean1 - mean0)
    torch.testing.assert_close(probe.bias, -(mean1 - mean0) @ (mean0 + mean1) / 2)  # threshold at the midpoint
    assert probe.scores((mean0 + mean1)[None] / 2).abs().item() < 1e-6
    assert probe.accuracy(acts, labels) == 1.0 and probe.kind == "mean_difference"


def test_the_linear_probe_is_deterministic_and_regularised():
    acts, labels, _ = _planted(200, 64, separation=6.0, seed=2)  # separable: without L2 the weights would diverge
    first, second = probes.linear_probe(acts, labels), probes.linear_probe(acts, labels)
    assert torch.equal(first.direction, second.direction) and torch.equal(first.bias, second.bias)
    assert first.direction.norm() < probes.linear_probe(acts, labels, l2=1e-4).direction.norm()
    assert first.direction.dtype == acts.dtype


def test_a_grouped_split_never_shares_a_group_and_keeps_every_label_on_both_sides():
    generator = torch.Generator().manual_seed(3)
    words = [f"w{i}" for i in torch.randint(0, 60, (500,), generator=generator).tolist()]
    labels = torch.tensor([int(w[1:]) % 3 for w in words])  # the label is a property of the word type
    train, test = probes.train_test_split(labels, groups=words, test_fraction=0.3, seed=0)
    assert not {words[i] for i in train.tolist()} & {words[i] for i in test.tolist()}
    assert sorted(train.tolist() + test.tolist()) == list(range(500))
    assert set(labels[train].tolist()) == set(labels[test].tolist()) == {0, 1, 2}
    assert 0.2 < len(test) / 500 < 0.4
    again = probes.train_test_split(labels, groups=words, test_fraction=0.3, seed=0)
    assert torch.equal(again[1], test) and not torch.equal(probes.train_test_split(
        labels, groups=words, test_fraction=0.3, seed=1)[1], test)
    # without groups: a stratified partition of the rows
    train, test = probes.train_test_split(labels, test_fraction=0.25)
    assert sorted(train.tolist() + test.tolist()) == list(range(500)) and abs(len(test) - 125) <= 3


def test_control_labels_are_fixed_per_type_and_follow_the_task_distribution():
    words = [f"w{i % 400}" for i in range(4000)]
    labels = (torch.arange(4000) % 4 == 0).long()  # a quarter of the rows are class 1
    control = probes.control_labels(labels, words, seed=0)
    by_word = {}
    for word, label in zip(words, control.tolist()):
        assert by_word.setdefault(word, label) == label
    assert abs(sum(by_word.values()) / 400 - 0.25) < 0.06
    assert torch.equal(control, probes.control_labels(labels, words, seed=0))
    assert probes.majority_rate(labels) == 0.75


def _typed_data(shared_signal: float):
    """80 word types, each a random point in a 128-d activation space (its 20 tokens scatter a little around
    it), with a label per type. With shared_signal > 0 the class-1 types also share a class direction."""
    generator = torch.Generator().manual_seed(0)
    n_types, d_model = 80, 128
    type_labels = torch.arange(n_types) % 2
    centres = 2.0 * torch.randn(n_types, d_model, generator=generator)
    centres[:, 0] += shared_signal * (type_labels - 0.5)
    types = torch.arange(1600) % n_types
    acts = centres[types] + 0.3 * torch.randn(1600, d_model, generator=generator)
    return acts, type_labels[types], [f"type{t}" for t in types.tolist()]


def test_the_control_task_exposes_probes_that_memorise_types():
    # Labels that depend only on the type identity: with types in both halves, the task is exactly as
    # learnable as its control, so selectivity sits at ~0 — the accuracy was memorisation.
    acts, labels, types = _typed_data(shared_signal=0.0)
    sweep = probes.probe_layers({0: acts}, labels, types, seed=0)
    linear, mean_difference = sweep.row(0, "linear"), sweep.row(0, "mean_difference")
    assert linear.task_accuracy > 0.95 and linear.control_accuracy > 0.95 and abs(linear.selectivity) < 0.05
    assert mean_difference.task_accuracy > 0.8 and mean_difference.control_accuracy > 0.75
    assert abs(mean_difference.selectivity) < 0.15
    # Holding the types out removes what memorising bought: the task falls towards chance.
    held = probes.probe_layers({0: acts}, labels, types, held_out_types=True, seed=0)
    assert all(row.task_accuracy < 0.75 for row in held.rows)
    # A class direction the types share is what a probe can carry to unseen types: selective there. With
    # types recurring, the linear probe still learns the control task by heart (H&L's point about capacity).
    acts, labels, types = _typed_data(shared_signal=16.0)
    held = probes.probe_layers({0: acts}, labels, types, held_out_types=True, seed=0)
    assert all(row.task_accuracy > 0.95 and row.selectivity > 0.25 for row in held.rows)
    assert probes.probe_layers({0: acts}, labels, types, kinds=["linear"]).row(0).control_accuracy > 0.95


def test_the_layer_sweep_takes_a_dict_or_a_stack_and_finds_the_informative_layer():
    acts, labels, _ = _planted(600, 24, separation=3.0, seed=4)
    noise = torch.randn(600, 24, generator=torch.Generator().manual_seed(5))
    words = [f"w{i % 150}" for i in range(600)]
    by_dict = probes.probe_layers({3: noise, 7: acts}, labels, words, held_out_types=True)
    by_stack = probes.probe_layers(torch.stack([noise, acts]), labels, words, layers=[3, 7], held_out_types=True)
    assert by_dict.to_dicts() == by_stack.to_dicts()
    assert [(r.layer, r.kind) for r in by_dict.rows] == [(3, "linear"), (3, "mean_difference"),
                                                          (7, "linear"), (7, "mean_difference")]
    for kind in probes.KINDS:
        assert by_dict.row(7, kind).selectivity > by_dict.row(3, kind).selectivity + 0.3
        assert by_dict.row(7, kind).task_accuracy > 0.85
    table = str(by_dict)
    assert "selectivity" in table and "word types held out" in table and len(table.splitlines()) == 6
    assert isinstance(by_dict.probes[(7, "linear")], probes.Probe)
    assert list(by_dict.to_pandas().columns) == ["layer", "kind", "task_accuracy", "control_accuracy", "selectivity"]
    layer_zero = probes.probe_layers(torch.stack([acts]), labels, words, kinds=["mean_difference"])
    assert [r.layer for r in layer_zero.rows] == [0]


def test_project_out_and_shift_along_move_only_the_direction():
    generator = torch.Generator().manual_seed(6)
    acts = torch.randn(2, 5, 8, generator=generator)  # batch pos d_model: any leading shape
    direction = 3.0 * torch.randn(8, generator=generator)
    unit = direction / direction.norm()
    removed = probes.project_out(acts, direction)
    torch.testing.assert_close(removed @ unit, torch.zeros(2, 5), atol=1e-6, rtol=0)
    torch.testing.assert_close(probes.project_out(removed, direction), removed)
    torch.testing.assert_close(acts - removed, (acts @ unit)[..., None] * unit)  # only the component went
    shifted = probes.shift_along(acts, direction, alpha=2.5)
    torch.testing.assert_close(shifted @ unit, acts @ unit + 2.5)
    torch.testing.assert_close(probes.project_out(shifted, direction), removed)
    assert shifted.shape == acts.shape and not torch.equal(shifted, acts)  # new tensors, acts untouched


def test_a_probe_direction_feeds_the_interventions():
    acts, labels, _ = _planted(1000, 16, separation=4.0, seed=7)
    probe = probes.mean_difference_probe(acts, labels)
    assert probe.accuracy(acts, labels) > 0.95
    assert probe.accuracy(probes.project_out(acts, probe.direction), labels) < 0.65  # the information is gone
    pushed = probes.shift_along(acts, probe.unit_direction(), alpha=20.0)
    assert (probe.predict(pushed) == 1).all()


@pytest.mark.parametrize("call, message", [
    (lambda: probes.linear_probe(torch.randn(4, 2, 3), torch.tensor([0, 1, 0, 1])), "flatten batch and pos"),
    (lambda: probes.linear_probe(torch.randn(4, 3), torch.tensor([0.0, 1, 0, 1])), "integer tensor"),
    (lambda: probes.linear_probe(torch.randn(4, 3), torch.tensor([0, 1, 0])), "give one per row"),
    (lambda: probes.linear_probe(torch.randn(4, 3), torch.tensor([1, 1, 1, 1])), "at least two classes"),
    (lambda: probes.mean_difference_probe(torch.randn(4, 3), torch.tensor([0, 2, 0, 2])), "every class"),
    (lambda: probes.linear_probe(torch.randn(4, 3), torch.tensor([0, 1, 0, 1]), l2=-1), "non-negative"),
    (lambda: probes.train_probe(torch.randn(4, 3), torch.tensor([0, 1, 0, 1]), "svm"), "kind must be one of"),
    (lambda: probes.mean_difference_probe(torch.randn(4, 3), torch.tensor([0, 1, 0, 1])).accuracy(
        torch.randn(4, 5), torch.tensor([0, 1, 0, 1])), "trained on 3"),
    (lambda: probes.train_test_split(torch.tensor([0, 1] * 4), test_fraction=1.0), "strictly between"),
    (lambda: probes.train_test_split(torch.tensor([0, 1] * 4), groups=list("ab") * 4), "only one group"),
    (lambda: probes.train_test_split(torch.tensor([0, 1] * 4), groups=list("ab")), "one group per row"),
    (lambda: probes.train_test_split(torch.tensor([0, 1]), test_fraction=0.1), "one half empty"),
    (lambda: probes.project_out(torch.randn(3, 4), torch.zeros(4)), "points nowhere"),
    (lambda: probes.shift_along(torch.randn(3, 4), torch.ones(5), 1.0), "length d_model = 4"),
    (lambda: probes.probe_layers(torch.randn(2, 8), torch.tensor([0, 1] * 4), list("abcdabcd")), "one (layer"),
    (lambda: probes.probe_layers(torch.randn(2, 8, 3), torch.tensor([0, 1] * 4), list("abcdabcd"), layers=[1]),
     "one name per layer"),
    (lambda: probes.probe_layers({0: torch.randn(7, 3)}, torch.tensor([0, 1] * 4), list("abcdabcd")),
     "one label per row"),
])
def test_bad_input_is_one_sentence(call, message):
    with pytest.raises((ValueError, KeyError)) as error:
        call()
    text = str(error.value).strip("'\"")
    assert message in text and text.endswith(".") and text.count(". ") == 0, text


def test_causal_test_moves_the_metric_along_the_direction_the_model_reads():
    """On a tiny model, the direction that the unembedding reads as token 7 (after the last block) raises token 7's
    logit with alpha, far more than random directions; the curve is the metric of add_vector at each alpha."""
    from test_language_model import _tiny  # tests/test_language_model.py: a tiny nnsight Qwen2

    from mikit.probes import causal_test
    from mikit.steering import add_vector

    model = _tiny("qwen2")
    direction = model._module.lm_head.weight[7].detach()  # what raises token 7's logit, read after the final norm
    metric = lambda logits: (logits[:, 7] - logits.mean(-1)).mean()  # noqa: E731
    result = causal_test(model, ["w1 w2 w3", "w4 w5"], direction, 1, metric, alphas=(-4, 0, 4), n_random=8)
    assert result.along_probe[0] < result.along_probe[1] < result.along_probe[2]
    probe_effect, random_effect = result.effect()
    assert probe_effect > 3 * abs(random_effect)
    unit = direction / direction.norm()
    assert result.along_probe[2] == pytest.approx(float(metric(add_vector(model, ["w1 w2 w3", "w4 w5"], unit, 1,
                                                                           scale=4, positions="last"))), abs=1e-5)
    with pytest.raises(ValueError, match="at least two alphas"):
        causal_test(model, ["w1"], direction, 1, metric, alphas=(1,))
