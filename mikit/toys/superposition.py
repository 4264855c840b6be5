"""The toy model of superposition (Elhage et al. 2022): n sparse features squeezed through m < n hidden dimensions.

    model = SuperpositionToy(n_features=5, n_hidden=2, sparsity=[0.0, 0.7, 0.9, 0.97, 0.99], importance=0.9)
    losses = train_toy(model)                  # Adam, 5,000 steps: about 10 s on one CPU thread
    feature_norms(model.W)                     # (instance, feature): which features each instance represents
    dimensionality(model.W)                    # Elhage's D_i: 1 for a dedicated dimension, 1/2 antipodal, 2/5 pentagon
    phase_diagram([0.0, 0.9, 0.99], [0.3, 1.0, 3.0])      # 2 features into 1 dimension: which regime each cell lands in
    true_feature_recovery(sae.W_dec, model.W[0])           # the share of the toy's features an SAE found

The model reconstructs x from h = W x as x' = ReLU(Wᵀ h + b), with W of shape (m, n) and a bias b per feature.
`n_instances` independent models train at once, as in the paper: each has its own feature sparsity (every
feature is absent with that probability, else uniform in [0, 1]) and its own feature importances, which weight
the squared error (`importance_loss`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor, nn

REGIMES = ("not represented", "dedicated", "superposed")
REPRESENTED_NORM = 0.5  # a feature whose column of W is at least this long counts as represented


def _per_instance(value: float | Sequence[float] | Tensor, n_instances: int, name: str) -> Float[Tensor, "instance"]:
    """`value` as one float per instance: a number is repeated, a sequence must have `n_instances` entries."""
    tensor = torch.as_tensor(value, dtype=torch.float32)
    if tensor.ndim == 0:
        return tensor.repeat(n_instances)
    if tensor.shape != (n_instances,):
        raise ValueError(
            f"{name} must be a number or {n_instances} numbers (one per instance); got shape {tuple(tensor.shape)}."
        )
    return tensor


class SuperpositionToy(nn.Module):
    """`n_instances` independent toy models x' = ReLU(Wᵀ W x + b), each with W of shape (n_hidden, n_features).

    Args:
        sparsity: the probability that a feature is absent (zero) in a sample; one number, or one per instance.
        importance: the weight of each feature's squared error: a number r gives the paper's r**i for feature i,
            else a (n_features,) or (n_instances, n_features) tensor.
    """

    def __init__(
        self, n_features: int, n_hidden: int, n_instances: int | None = None, *,
        sparsity: float | Sequence[float] | Tensor = 0.0, importance: float | Tensor = 1.0,
    ):
        super().__init__()
        if not 0 < n_hidden < n_features:
            raise ValueError(
                "n_hidden must lie between 1 and n_features - 1 (fewer dimensions than features); "
                f"got {n_hidden} and {n_features}."
            )
        if n_instances is None:  # one instance per sparsity given
            n_instances = torch.as_tensor(sparsity).numel() if torch.as_tensor(sparsity).ndim else 1
        sparsity = _per_instance(sparsity, n_instances, "sparsity")
        if ((sparsity < 0) | (sparsity >= 1)).any():
            raise ValueError(
                f"sparsity must lie in [0, 1) (a feature's probability of being absent); got {sparsity.tolist()}."
            )
        importance = torch.as_tensor(importance, dtype=torch.float32)
        if importance.ndim == 0:
            importance = importance ** torch.arange(n_features, dtype=torch.float32)
        if importance.shape not in {(n_features,), (n_instances, n_features)}:
            raise ValueError(
                f"importance must be a number, ({n_features},) or ({n_instances}, {n_features}); "
                f"got shape {tuple(importance.shape)}."
            )
        importance = importance.expand(n_instances, n_features).clone()
        self.n_features, self.n_hidden, self.n_instances = n_features, n_hidden, n_instances
        self.W = nn.Parameter(nn.init.xavier_normal_(torch.empty(n_instances, n_hidden, n_features)))
        self.b_final = nn.Parameter(torch.zeros(n_instances, n_features))
        self.register_buffer("sparsity", sparsity)  # (instance,)
        self.register_buffer("importance", importance)  # (instance, feature)

    def hidden(self, x: Float[Tensor, "batch instance feature"]) -> Float[Tensor, "batch instance hidden"]:
        """The hidden activations h = W x: what an SAE on this toy reads."""
        return torch.einsum("ihf,bif->bih", self.W, x)

    def forward(self, x: Float[Tensor, "batch instance feature"]) -> Float[Tensor, "batch instance feature"]:
        return torch.relu(torch.einsum("ihf,bih->bif", self.W, self.hidden(x)) + self.b_final)

    def generate_batch(self, batch: int, generator: torch.Generator | None = None) -> Float[Tensor, "batch instance feature"]:
        """A batch of inputs with each instance's sparsity (see `generate_features`)."""
        return generate_features(batch, self.n_features, self.sparsity, generator=generator)


def generate_features(
    batch: int, n_features: int, sparsity: Float[Tensor, "instance"], *, generator: torch.Generator | None = None,
) -> Float[Tensor, "batch instance feature"]:
    """Random inputs: each feature is present with probability 1 - sparsity (of its instance), then uniform in [0, 1]."""
    shape = (batch, len(sparsity), n_features)
    present = torch.rand(shape, generator=generator) >= sparsity[:, None]
    return torch.rand(shape, generator=generator) * present


def importance_loss(
    out: Float[Tensor, "batch instance feature"], x: Float[Tensor, "batch instance feature"],
    importance: Float[Tensor, "instance feature"],
) -> Float[Tensor, ""]:
    """The paper's loss: importance-weighted squared error, averaged over batch and features, summed over instances."""
    if out.shape != x.shape or out.ndim != 3:
        raise ValueError(
            f"out and x must both have shape (batch, instance, feature); got {tuple(out.shape)} and {tuple(x.shape)}."
        )
    return (importance * (x - out) ** 2).mean(dim=(0, 2)).sum()


def train_toy(
    model: SuperpositionToy, *, steps: int = 5000, batch_size: int = 1024, lr: float = 1e-3, seed: int = 0,
    log_every: int = 100, loss_fn: Callable[[Tensor, Tensor, Tensor], Tensor] = importance_loss,
) -> list[float]:
    """Train every instance at once with Adam on fresh batches; return the loss every `log_every` steps.

    `loss_fn(out, x, importance)` is the loss to minimise (notebook 07 trains with the student's own).
    """
    if steps < 1 or batch_size < 1:
        raise ValueError(f"steps and batch_size must be positive; got {steps} and {batch_size}.")
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    losses = []
    model.train()
    for step in range(steps):
        x = model.generate_batch(batch_size, generator)
        loss = loss_fn(model(x), x, model.importance)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step % log_every == 0 or step == steps - 1:
            losses.append(loss.item())
    return losses


def feature_norms(W: Float[Tensor, "*instance hidden feature"]) -> Float[Tensor, "*instance feature"]:
    """||W_i||: how strongly each feature is represented (about 1 if it is, about 0 if not)."""
    return W.norm(dim=-2)


def _overlaps(W: Float[Tensor, "*instance hidden feature"]) -> Float[Tensor, "*instance feature feature"]:
    """(Ŵ_i · W_j)^2 for every pair, with Ŵ_i the unit vector along W_i (zero where W_i is zero)."""
    unit = W / feature_norms(W).clamp_min(1e-12).unsqueeze(-2)
    return (unit.transpose(-1, -2) @ W) ** 2


def interference(W: Float[Tensor, "*instance hidden feature"]) -> Float[Tensor, "*instance feature"]:
    """Σ_{j≠i} (Ŵ_i · W_j)^2: how much the other features leak into feature i's direction."""
    overlaps = _overlaps(W)
    return overlaps.sum(-1) - overlaps.diagonal(dim1=-2, dim2=-1)


def dimensionality(W: Float[Tensor, "*instance hidden feature"]) -> Float[Tensor, "*instance feature"]:
    """Elhage's feature dimensionality D_i = ||W_i||^2 / Σ_j (Ŵ_i · W_j)^2: the share of a dimension feature i gets.

    1 for a feature with a dimension of its own, 1/2 for an antipodal pair, 2/5 in a pentagon, 0 if not represented.
    """
    return feature_norms(W) ** 2 / _overlaps(W).sum(-1).clamp_min(1e-12)


@dataclass
class PhaseDiagram:
    """Where 2 features in 1 dimension land: `regimes[s][r]` for sparsity s and relative importance r."""

    sparsities: list[float]
    importances: list[float]
    regimes: list[list[str]]  # one of REGIMES for the second (varied) feature
    W: Float[Tensor, "sparsity importance feature"]  # the trained 1-dimensional W of each cell


def classify_regime(W: Float[Tensor, "1 2"]) -> str:
    """The regime of the second feature in a trained (1, 2) W: not represented, dedicated (alone) or superposed."""
    represented = (feature_norms(W) >= REPRESENTED_NORM).tolist()
    if not represented[1]:
        return REGIMES[0]
    return REGIMES[2] if represented[0] else REGIMES[1]


def phase_diagram(
    sparsities: Sequence[float], importances: Sequence[float], *, steps: int = 3000, batch_size: int = 1024,
    lr: float = 1e-2, seed: int = 0,
) -> PhaseDiagram:
    """Train 2 features into 1 hidden dimension for each (sparsity, relative importance) cell; keep the better of two starts.

    The first feature has importance 1, the second each of `importances`; both have the cell's sparsity.
    Dense features favour the more important one alone; sparse ones fit both, antipodally, in superposition.
    Each cell trains from two starts, one with the two weights of the same sign and one with opposite signs:
    training rarely moves a weight through zero, so a start of the same sign stays out of the antipodal
    arrangement even where that has a 6x lower loss (measured at sparsity 0.9; 6 of 8 random starts missed it).
    The diagram keeps the start with the lower loss, as the paper's diagram shows the best arrangement.
    """
    if not sparsities or not importances or min(importances) <= 0:
        raise ValueError(
            f"phase_diagram needs sparsities and positive importances; got {list(sparsities)} and {list(importances)}."
        )
    cells = [(s, r) for s in sparsities for r in importances]
    torch.manual_seed(seed)
    model = SuperpositionToy(
        2, 1, 2 * len(cells), sparsity=[s for s, _ in cells] * 2,
        importance=torch.tensor([[1.0, r] for _, r in cells] * 2),
    )
    with torch.no_grad():  # the first copy of each cell starts with aligned weights, the second with opposed ones
        first, second = model.W[:, 0, 0], model.W[:, 0, 1]
        sign = torch.tensor([1.0] * len(cells) + [-1.0] * len(cells))
        model.W[:, 0, 1] = sign * first.sign() * second.abs()
    train_toy(model, steps=steps, batch_size=batch_size, lr=lr, seed=seed)
    with torch.no_grad():  # each start's loss on one large batch
        x = model.generate_batch(100_000, torch.Generator().manual_seed(seed + 1))
        losses = (model.importance * (x - model(x)) ** 2).mean(dim=(0, 2)).view(2, len(cells))
    W = model.W.detach().view(2, len(cells), 1, 2)[losses.argmin(0), torch.arange(len(cells))]
    regimes = [classify_regime(w) for w in W]
    shape = (len(sparsities), len(importances))
    return PhaseDiagram(
        list(sparsities), list(importances),
        [regimes[i * shape[1] : (i + 1) * shape[1]] for i in range(shape[0])], W.reshape(*shape, 2),
    )


def true_feature_recovery(
    decoder_directions: Float[Tensor, "latent hidden"], W: Float[Tensor, "hidden feature"], threshold: float = 0.9,
) -> float:
    """The share of the toy's features (columns of W) that some learned direction matches with cosine >= threshold.

    `decoder_directions` is one row per dictionary latent, e.g. an SAE's `W_dec`; W is one instance's (hidden, feature).
    A feature the toy does not represent (a zero column) can never be recovered.
    """
    if decoder_directions.ndim != 2 or W.ndim != 2 or decoder_directions.shape[1] != W.shape[0]:
        raise ValueError(
            f"decoder_directions must be (latent, hidden) and W (hidden, feature) with the same hidden size; "
            f"got {tuple(decoder_directions.shape)} and {tuple(W.shape)}."
        )
    directions = nn.functional.normalize(decoder_directions.detach().float(), dim=1)
    features = nn.functional.normalize(W.detach().float(), dim=0)
    best = (directions @ features).max(dim=0).values  # (feature,): the best cosine each feature gets
    return (best >= threshold).float().mean().item()
