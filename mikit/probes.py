"""Linear probing done properly, over cached activations: probes, word-type-held-out splits, control tasks.

    train, test = train_test_split(labels, groups=words, seed=0)       # no word type in both halves
    probe = linear_probe(acts[train], labels[train])                    # L2 logistic regression (LBFGS)
    probe.accuracy(acts[test], labels[test])
    mean_difference_probe(acts[train], labels[train]).unit_direction()  # the direction between class means
    control = control_labels(labels, words, seed=0)                     # Hewitt & Liang's control task
    sweep = probe_layers(cache_by_layer, labels, words)                 # task, control and selectivity per layer
    project_out(acts, direction); shift_along(acts, direction, alpha=4.0)
    causal_test(lm, prompts, probe.unit_direction(), layer, metric)    # does the model use it? (nnsight, remote=)

Everything but `causal_test` takes tensors, however they were cached (TransformerLens `run_with_cache`, nnsight,
a file); `causal_test` intervenes on an nnsight model with `mikit.steering.add_vector`.

A probe that reaches high accuracy has not shown that the model *represents* the property: with a few hundred
dimensions and a few hundred tokens a linear probe can memorise which word type each token is and the label
that type carries. Hewitt & Liang (2019) expose this with a control task: every word type gets a random label,
drawn once per type from the task's label distribution, so the control labels can only be learnt by memorising
types. Selectivity = task accuracy − control accuracy on held-out tokens, with the same probe and budget. A
stricter test holds word types out (`groups=` / `held_out_types=True`): then no type seen in training is
tested, the control task falls to chance, and task accuracy measures generalisation to new words.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
from jaxtyping import Float, Int
from torch import Tensor

KINDS = ("linear", "mean_difference")


# ---- probes ---------------------------------------------------------------------------------------


@dataclass
class Probe:
    """A linear classifier on activations. Binary: score = acts @ direction + bias, class 1 where > 0.
    Multiclass: one row of `direction` and one `bias` per class, the highest score wins."""

    direction: Float[Tensor, "*class d_model"]
    bias: Float[Tensor, "*class"]
    kind: str

    @property
    def n_classes(self) -> int:
        return 2 if self.direction.ndim == 1 else self.direction.shape[0]

    def scores(self, acts: Float[Tensor, "batch d_model"]) -> Float[Tensor, "batch *class"]:
        acts = _check_acts(acts, self.direction.shape[-1])
        weight = self.direction.T if self.direction.ndim == 2 else self.direction
        return acts.to(self.direction) @ weight + self.bias

    def predict(self, acts: Float[Tensor, "batch d_model"]) -> Int[Tensor, "batch"]:
        scores = self.scores(acts)
        return (scores > 0).long() if self.direction.ndim == 1 else scores.argmax(-1)

    def accuracy(self, acts: Float[Tensor, "batch d_model"], labels: Int[Tensor, "batch"]) -> float:
        """The share of `labels` this probe predicts on `acts`."""
        labels = _check_labels(labels, len(acts))
        return (self.predict(acts) == labels.to(self.direction.device)).double().mean().item()

    def unit_direction(self) -> Float[Tensor, "d_model"]:
        """The binary probe's direction scaled to length 1 (pointing towards class 1), for a causal test."""
        if self.direction.ndim != 1:
            raise ValueError(f"a {self.n_classes}-class probe has one direction per class; take a row of "
                             "probe.direction, or train a binary probe, for a single direction.")
        return self.direction / self.direction.norm()

    def __repr__(self) -> str:
        return f"Probe({self.kind}, {self.n_classes} classes, d_model={self.direction.shape[-1]})"


def linear_probe(
    acts: Float[Tensor, "batch d_model"], labels: Int[Tensor, "batch"], *, l2: float = 1e-2, max_iter: int = 500,
) -> Probe:
    """L2-regularised logistic regression (softmax for more than two classes), fit by full-batch LBFGS.

    Deterministic: float64, zero start, no sampling. The activations are centred and divided by one global
    scale (the per-coordinate RMS) before the fit, which keeps their geometry and makes `l2` mean the same thing
    at every layer; the loss is the mean cross-entropy + l2/2 · |w|² (no penalty on the bias). The returned
    direction and bias act on the raw activations.
    """
    acts = _check_acts(acts)
    labels = _check_labels(labels, len(acts))
    n_classes = _n_classes(labels)
    if l2 < 0:
        raise ValueError(f"l2 must be non-negative, not {l2}.")
    x = acts.detach().double()
    mean = x.mean(0)
    scale = (x - mean).pow(2).mean().sqrt().clamp_min(1e-12)
    x = (x - mean) / scale
    y = labels.to(x.device)
    outputs = 1 if n_classes == 2 else n_classes
    weight = torch.zeros(outputs, x.shape[1], dtype=x.dtype, device=x.device, requires_grad=True)
    bias = torch.zeros(outputs, dtype=x.dtype, device=x.device, requires_grad=True)
    optimiser = torch.optim.LBFGS([weight, bias], lr=1, max_iter=max_iter, history_size=20,
                                  tolerance_grad=1e-9, tolerance_change=1e-12, line_search_fn="strong_wolfe")

    def loss_fn() -> Tensor:
        optimiser.zero_grad()
        logits = x @ weight.T + bias
        if n_classes == 2:
            loss = torch.nn.functional.binary_cross_entropy_with_logits(logits[:, 0], y.double())
        else:
            loss = torch.nn.functional.cross_entropy(logits, y)
        loss = loss + l2 / 2 * weight.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimiser.step(loss_fn)
    weight, bias = weight.detach() / scale, bias.detach()
    bias = bias - weight @ mean  # undo the centring: w·(a − m)/s + b = (w/s)·a + (b − (w/s)·m)
    if n_classes == 2:
        weight, bias = weight[0], bias[0]
    return Probe(weight.to(acts.dtype), bias.to(acts.dtype), "linear")


def mean_difference_probe(acts: Float[Tensor, "batch d_model"], labels: Int[Tensor, "batch"]) -> Probe:
    """The direction between the class means, thresholded halfway between them (binary); nearest class mean
    (multiclass: each class scores mean_c · a − |mean_c|²/2)."""
    acts = _check_acts(acts)
    labels = _check_labels(labels, len(acts))
    n_classes = _n_classes(labels)
    x = acts.detach().double()
    means = torch.stack([x[labels.to(x.device) == c].mean(0) for c in range(n_classes)])
    if n_classes == 2:
        direction = means[1] - means[0]
        bias = -direction @ (means[0] + means[1]) / 2
    else:
        direction, bias = means, -means.pow(2).sum(-1) / 2
    return Probe(direction.to(acts.dtype), bias.to(acts.dtype), "mean_difference")


def train_probe(acts: Float[Tensor, "batch d_model"], labels: Int[Tensor, "batch"], kind: str, *,
                l2: float = 1e-2) -> Probe:
    """`linear_probe` or `mean_difference_probe` by name."""
    if kind == "linear":
        return linear_probe(acts, labels, l2=l2)
    if kind == "mean_difference":
        return mean_difference_probe(acts, labels)
    raise ValueError(f"kind must be one of {KINDS}, not {kind!r}.")


# ---- splits and control tasks ---------------------------------------------------------------------


def train_test_split(
    labels: Int[Tensor, "batch"], *, groups: Sequence | Tensor | None = None, test_fraction: float = 0.25,
    seed: int = 0,
) -> tuple[Int[Tensor, "train"], Int[Tensor, "test"]]:
    """Indices of a train and a test half, stratified by label; with `groups` (a word type or prompt id per
    row) every group lies wholly in one half, each label's groups split in `test_fraction` of its rows."""
    labels = _check_labels(labels)
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must lie strictly between 0 and 1, not {test_fraction}.")
    generator = torch.Generator().manual_seed(seed)
    group_ids = torch.arange(len(labels)) if groups is None else group_index(groups, len(labels))
    labels = labels.cpu()
    # Each group joins the stratum of its most common label, so a class whose words are all held out
    # cannot happen while the class has two groups or more.
    n_groups = int(group_ids.max()) + 1
    counts = torch.zeros(n_groups, int(labels.max()) + 1, dtype=torch.long)
    counts.index_put_((group_ids, labels), torch.ones_like(labels), accumulate=True)
    sizes, stratum = counts.sum(1), counts.argmax(1)
    test_groups = []
    for label in stratum.unique().tolist():
        members = (stratum == label).nonzero().flatten()
        if groups is not None and len(members) < 2:
            raise ValueError(f"label {label} has only one group, so it cannot lie in both the train and "
                             "the test half; add words of that label or split without groups.")
        members = members[torch.randperm(len(members), generator=generator)]
        before = sizes[members].cumsum(0) - sizes[members]  # rows already taken when a group comes up
        take = before < test_fraction * sizes[members].sum()
        take[-1] = False  # the last group always stays in training
        test_groups += members[take].tolist()
    in_test = torch.zeros(n_groups, dtype=torch.bool)
    in_test[test_groups] = True
    test = in_test[group_ids]
    if test.all() or not test.any():
        raise ValueError("the split left one half empty; give more rows or groups, or another test_fraction.")
    return (~test).nonzero().flatten(), test.nonzero().flatten()


def group_index(groups: Sequence | Tensor, n_rows: int | None = None) -> Int[Tensor, "batch"]:
    """Groups (strings, ints, a tensor) as ids 0, 1, … in order of first appearance."""
    keys = groups.tolist() if isinstance(groups, Tensor) else list(groups)
    if n_rows is not None and len(keys) != n_rows:
        raise ValueError(f"groups has {len(keys)} entries but there are {n_rows} rows; give one group per row.")
    ids: dict = {}
    return torch.tensor([ids.setdefault(key, len(ids)) for key in keys], dtype=torch.long)


def control_labels(labels: Int[Tensor, "batch"], types: Sequence | Tensor, *, seed: int = 0) -> Int[Tensor, "batch"]:
    """Hewitt & Liang's control task: each word type gets one random label, drawn from the task's label
    distribution over rows, and every row of that type carries it (every class the task has occurs)."""
    labels = _check_labels(labels)
    type_ids = group_index(types, len(labels))
    distribution = torch.bincount(labels.cpu()).double()
    n_types, n_classes = int(type_ids.max()) + 1, int((distribution > 0).sum())
    if n_types < n_classes:
        raise ValueError(f"there are {n_types} word types for {n_classes} classes, so a control task cannot "
                         "give every class a type.")
    generator = torch.Generator().manual_seed(seed)
    # With few types a draw can miss a class the task has; such a control task could not train the same
    # probe, so it is drawn again (the next draw of the same generator: still fixed by the seed).
    for _ in range(1000):
        per_type = torch.multinomial(distribution, n_types, replacement=True, generator=generator)
        if len(per_type.unique()) == n_classes:
            return per_type[type_ids].to(labels.device)
    raise ValueError("a thousand draws of the control task each missed a class; give more word types.")


def majority_rate(labels: Int[Tensor, "batch"]) -> float:
    """The accuracy of always guessing the most common label: the chance level a probe must beat."""
    labels = _check_labels(labels)
    return torch.bincount(labels.cpu()).max().item() / len(labels)


# ---- layer sweep ----------------------------------------------------------------------------------


@dataclass
class ProbeRow:
    layer: int
    kind: str
    task_accuracy: float
    control_accuracy: float
    selectivity: float


@dataclass
class ProbeSweep:
    """Task accuracy, control accuracy and selectivity per layer and probe kind, on held-out rows.
    `probes[(layer, kind)]` keeps the task probe trained at each cell (for a causal test)."""

    rows: list[ProbeRow]
    chance: float
    held_out_types: bool
    probes: dict[tuple[int, str], Probe] = field(default_factory=dict, repr=False)

    def row(self, layer: int, kind: str = "linear") -> ProbeRow:
        for row in self.rows:
            if row.layer == layer and row.kind == kind:
                return row
        raise KeyError(f"no row for layer {layer} and kind {kind!r} in this sweep.")

    def to_dicts(self) -> list[dict]:
        return [vars(row).copy() for row in self.rows]

    def to_pandas(self):
        """The rows as a pandas DataFrame (layer, kind, task_accuracy, control_accuracy, selectivity)."""
        import pandas as pd

        return pd.DataFrame(self.to_dicts())

    def __str__(self) -> str:
        split = "word types held out" if self.held_out_types else "tokens held out (types recur)"
        lines = [f"probe sweep, {split}; chance (majority) {self.chance:.3f}",
                 f"{'layer':>5}  {'kind':<15}  {'task':>6}  {'control':>7}  {'selectivity':>11}"]
        lines += [f"{r.layer:>5}  {r.kind:<15}  {r.task_accuracy:>6.3f}  {r.control_accuracy:>7.3f}  "
                  f"{r.selectivity:>11.3f}" for r in self.rows]
        return "\n".join(lines)

    __repr__ = __str__


def probe_layers(
    acts: Mapping[int, Float[Tensor, "batch d_model"]] | Float[Tensor, "layer batch d_model"],
    labels: Int[Tensor, "batch"],
    types: Sequence | Tensor,
    *,
    layers: Sequence[int] | None = None,
    kinds: Sequence[str] = KINDS,
    held_out_types: bool = False,
    test_fraction: float = 0.25,
    l2: float = 1e-2,
    seed: int = 0,
) -> ProbeSweep:
    """Per layer and probe kind: accuracy on the task and on its control task (same split, same probe), and
    selectivity = task − control, all on the held-out rows.

    `acts` is a dict layer → (batch, d_model) or one (layer, batch, d_model) tensor (layers then count from
    0, or name them with `layers=`). `types` is each row's word type; it fixes the control labels and, with
    `held_out_types=True`, keeps every type in one half of the split.
    """
    by_layer = _by_layer(acts, layers)
    labels = _check_labels(labels)
    for kind in kinds:
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, not {kind!r}.")
    control = control_labels(labels, types, seed=seed)
    train, test = train_test_split(labels, groups=types if held_out_types else None,
                                   test_fraction=test_fraction, seed=seed)
    rows, probes = [], {}
    for layer, layer_acts in by_layer.items():
        layer_acts = _check_acts(layer_acts)
        if len(layer_acts) != len(labels):
            raise ValueError(f"layer {layer} has {len(layer_acts)} rows of activations but there are "
                             f"{len(labels)} labels; give one label per row.")
        for kind in kinds:
            probe = train_probe(layer_acts[train], labels[train], kind, l2=l2)
            control_probe = train_probe(layer_acts[train], control[train], kind, l2=l2)
            task = probe.accuracy(layer_acts[test], labels[test])
            control_accuracy = control_probe.accuracy(layer_acts[test], control[test])
            rows.append(ProbeRow(layer, kind, task, control_accuracy, task - control_accuracy))
            probes[(layer, kind)] = probe
    return ProbeSweep(rows, majority_rate(labels[test]), held_out_types, probes)


# ---- interventions along a direction --------------------------------------------------------------


def project_out(
    acts: Float[Tensor, "... d_model"], direction: Float[Tensor, "d_model"],
) -> Float[Tensor, "... d_model"]:
    """`acts` with their component along `direction` removed (a new tensor; `direction` need not be unit)."""
    unit = _unit(direction, acts.shape[-1]).to(acts)
    return acts - (acts @ unit)[..., None] * unit


def shift_along(
    acts: Float[Tensor, "... d_model"], direction: Float[Tensor, "d_model"], alpha: float,
) -> Float[Tensor, "... d_model"]:
    """`acts` moved by `alpha` along the unit vector of `direction` (a new tensor)."""
    return acts + alpha * _unit(direction, acts.shape[-1]).to(acts)


@dataclass
class CausalTest:
    """The behaviour as the residual stream moves along a probe's direction, against random directions."""

    alphas: list[float]
    along_probe: Float[Tensor, "alpha"]  # the metric with alpha · (unit probe direction) added
    along_random: Float[Tensor, "alpha"]  # its mean over random unit directions: the control

    def effect(self) -> tuple[float, float]:
        """(probe, random): the metric's change from the smallest to the largest alpha."""
        return ((self.along_probe[-1] - self.along_probe[0]).item(), (self.along_random[-1] - self.along_random[0]).item())


def causal_test(
    model, prompts: str | list[str], direction: Float[Tensor, "d_model"], layer: int, metric, *,
    alphas: Sequence[float] = (-8.0, -4.0, 0.0, 4.0, 8.0), n_random: int = 4, positions: str = "last", seed: int = 0,
    remote: bool = False,
) -> CausalTest:
    """Does the model *use* the probe's direction? Add alpha · (unit direction) after `layer` (an nnsight model, see
    `mikit.language_model`) and read `metric(logits)` (the last position's logits -> one number), for each alpha;
    the same with `n_random` random unit directions is the control: a probe direction that matters moves the
    metric far more than a random one. Pick alphas on the scale of the activations along the direction (e.g. the
    distance between the class means)."""
    from mikit.steering import add_vector  # notebook 08's other technique: the model-side intervention

    alphas = [float(a) for a in alphas]
    if len(alphas) < 2 or n_random < 1:
        raise ValueError(f"causal_test needs at least two alphas and one random direction; got {alphas} and {n_random}.")
    generator = torch.Generator().manual_seed(seed)
    unit = _unit(direction.detach().float().cpu(), direction.shape[-1])
    randoms = torch.nn.functional.normalize(torch.randn(n_random, unit.shape[0], generator=generator), dim=-1)

    def curve(vector: Tensor) -> Tensor:
        return torch.tensor([float(metric(add_vector(model, prompts, vector, layer, scale=alpha, positions=positions,
                                                     remote=remote))) for alpha in alphas])

    return CausalTest(alphas, curve(unit), torch.stack([curve(r) for r in randoms]).mean(0))


# ---- checks ---------------------------------------------------------------------------------------


def _unit(direction: Tensor, d_model: int) -> Tensor:
    if direction.ndim != 1 or direction.shape[0] != d_model:
        raise ValueError(f"direction must be one vector of length d_model = {d_model}, "
                         f"not a tensor of shape {tuple(direction.shape)}.")
    norm = direction.norm()
    if not torch.isfinite(norm) or norm == 0:
        raise ValueError("direction has zero (or non-finite) length, so it points nowhere.")
    return direction / norm


def _check_acts(acts: Tensor, d_model: int | None = None) -> Tensor:
    if not isinstance(acts, Tensor) or acts.ndim != 2:
        shape = tuple(acts.shape) if isinstance(acts, Tensor) else type(acts).__name__
        raise ValueError(f"acts must be a (batch, d_model) tensor, one row per token, not {shape}; "
                         "flatten batch and pos first.")
    if d_model is not None and acts.shape[1] != d_model:
        raise ValueError(f"acts have d_model = {acts.shape[1]} but the probe was trained on {d_model}.")
    return acts


def _check_labels(labels: Tensor, n_rows: int | None = None) -> Tensor:
    if not isinstance(labels, Tensor) or labels.ndim != 1 or labels.is_floating_point() or labels.is_complex():
        raise ValueError("labels must be a 1-D integer tensor of class ids 0, 1, …, one per row.")
    if n_rows is not None and len(labels) != n_rows:
        raise ValueError(f"there are {len(labels)} labels for {n_rows} rows of activations; give one per row.")
    if len(labels) == 0 or labels.min() < 0:
        raise ValueError("labels must be class ids 0, 1, … and there must be at least one.")
    return labels.long()


def _n_classes(labels: Tensor) -> int:
    present = torch.bincount(labels.cpu())
    if len(present) < 2 or (present == 0).any():
        raise ValueError(f"a probe needs rows of every class 0 … {max(len(present) - 1, 1)} and at least two "
                         f"classes; these labels have counts {present.tolist()}.")
    return len(present)


def _by_layer(acts, layers) -> dict[int, Tensor]:
    if isinstance(acts, Mapping):
        if layers is not None:
            missing = [layer for layer in layers if layer not in acts]
            if missing:
                raise KeyError(f"layers {missing} are not among the cached layers {sorted(acts)}.")
            return {layer: acts[layer] for layer in layers}
        return dict(acts)
    if not isinstance(acts, Tensor) or acts.ndim != 3:
        raise ValueError("acts must be a dict layer → (batch, d_model) tensor or one (layer, batch, d_model) tensor.")
    names = list(range(acts.shape[0])) if layers is None else list(layers)
    if len(names) != acts.shape[0]:
        raise ValueError(f"layers names {len(names)} layers but acts stack {acts.shape[0]}; give one name per layer.")
    return dict(zip(names, acts))
