"""Grokking modular addition (Nanda et al. 2023, "Progress measures for grokking via mechanistic interpretability").

    model = mikit.load_model("modular-addition")             # the final model: 1 layer with an MLP, no LayerNorm, p = 59
    tokens, labels = modular_addition_data(P)                 # all P*P inputs "a b =", labels (a + b) mod P
    train, test = train_test_split(P)                         # the fixed split the recipe trained on
    embedding_fourier_norms(model)                            # (P,): W_E's norm along each cos/sin basis vector
    key_frequencies(model, k=5)                               # the frequencies the embedding uses most
    restricted_loss(model, freqs), excluded_loss(model, freqs)   # keep only / remove those frequencies
    checkpoint_steps("modular-addition")                      # mikit.zoo: the training run, 0 to the last step
    loss_curve()                                              # its train and test loss every 10 steps
    python -m mikit.zoo train modular-addition --checkpoints  # retrain it with its checkpoint series

The model reads [a, b, =] (the = token has id P) and predicts (a + b) mod P at the last position. Trained on a
fixed half of all pairs with full-batch AdamW and strong weight decay, it first memorises the training pairs
(train loss falls, test loss rises), then, long after, generalises (test loss falls): grokking. The general
algorithm works in the Fourier basis: the embedding keeps a few key frequencies, and the logits are sums of
cos(w(a + b - c)) over them. The restricted loss keeps only those frequencies' part of the logits, the excluded
loss removes it; both measured on the training pairs, they show the algorithm forming before the test loss falls.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm
from transformer_lens import HookedTransformer

from mikit.storage import read_config
from mikit.zoo import build_from_config, checkpoint_folder

# Nanda et al. trained p = 113, d_model 128, d_mlp 512 at a train fraction of 0.3 for 40,000 full-batch steps. On
# one thread of a shared 2-core CPU that size takes about 1 s a step, so the shipped run is scaled down: p = 59,
# d_model 64, d_mlp 256 (0.1 s a step), lr 3e-3. The train fraction sets how long grokking waits: at 0.3 the test
# loss still stood at 30 after 3,000 steps, at 0.4 at 9.5 after 1,700 (falling slowly); at 0.5 the model memorises
# by step ~130 and generalises by step ~450, so 1,200 steps show the whole transition in about 2 minutes.
P = 59
TRAINING = {"d_model": 64, "d_mlp": 256, "n_heads": 4, "steps": 1200, "lr": 3e-3, "weight_decay": 1.0,
            "betas": (0.9, 0.98), "train_fraction": 0.5, "seed": 0}


def modular_addition_config(
    p: int = P, d_model: int = TRAINING["d_model"], d_mlp: int = TRAINING["d_mlp"], n_heads: int = TRAINING["n_heads"],
) -> dict:
    """The `HookedTransformerConfig` arguments: 1 layer with a ReLU MLP, no LayerNorm, inputs [a, b, =]."""
    return {
        "model_name": "modular-addition",
        "n_layers": 1,
        "d_model": d_model,
        "n_heads": n_heads,
        "d_head": d_model // n_heads,
        "d_mlp": d_mlp,
        "act_fn": "relu",
        "n_ctx": 3,
        "d_vocab": p + 1,  # the numbers 0..p-1 and the = token
        "d_vocab_out": p,
        "normalization_type": None,
        "positional_embedding_type": "standard",
    }


def modular_addition_data(p: int = P) -> tuple[Int[Tensor, "batch 3"], Int[Tensor, "batch"]]:
    """All p * p inputs [a, b, =] in the order a * p + b, and their labels (a + b) mod p."""
    if p < 2:
        raise ValueError(f"p must be at least 2 (a modulus); got {p}.")
    a, b = torch.arange(p).repeat_interleave(p), torch.arange(p).repeat(p)
    return torch.stack([a, b, torch.full_like(a, p)], dim=1), (a + b) % p


def train_test_split(
    p: int = P, train_fraction: float = TRAINING["train_fraction"], seed: int = TRAINING["seed"],
) -> tuple[Int[Tensor, "train"], Int[Tensor, "test"]]:
    """Indices into `modular_addition_data(p)`: a random `train_fraction` of all pairs to train on, the rest to test.

    The defaults give the shipped model's split, which `restricted_loss` and `excluded_loss` use unless told otherwise.
    """
    if not 0 < train_fraction < 1:
        raise ValueError(f"train_fraction must lie strictly between 0 and 1; got {train_fraction}.")
    order = torch.randperm(p * p, generator=torch.Generator().manual_seed(seed))
    n_train = round(train_fraction * p * p)
    return order[:n_train].sort().values, order[n_train:].sort().values


def loss_from_logits(logits: Float[Tensor, "batch d_vocab_out"], labels: Int[Tensor, "batch"]) -> Float[Tensor, ""]:
    """Cross-entropy in float64, as in the paper: float32 rounding of tiny losses makes training unstable ("slingshots")."""
    return F.cross_entropy(logits.double(), labels)


def final_logits(model: HookedTransformer, tokens: Int[Tensor, "batch 3"]) -> Float[Tensor, "batch d_vocab_out"]:
    """The logits at the = position."""
    return model(tokens)[:, -1]


def fourier_basis(p: int = P) -> Float[Tensor, "p p"]:
    """The real Fourier basis of functions on 0..p-1, one unit vector per row: constant, then cos w, sin w for w = 1..

    Row 2w - 1 is cos(2πwx/p) and row 2w is sin(2πwx/p), normalised; the rows are orthonormal (p odd).
    """
    if p < 3 or p % 2 == 0:
        raise ValueError(f"fourier_basis needs an odd p >= 3 (every frequency then has a cos and a sin); got {p}.")
    x = torch.arange(p, dtype=torch.float64)
    rows = [torch.ones(p, dtype=torch.float64)]
    for w in range(1, (p - 1) // 2 + 1):
        rows += [torch.cos(2 * math.pi * w * x / p), torch.sin(2 * math.pi * w * x / p)]
    basis = torch.stack(rows)
    return (basis / basis.norm(dim=1, keepdim=True)).float()


def embedding_fourier_norms(model: HookedTransformer) -> Float[Tensor, "p"]:
    """The norm of W_E (the number tokens only) along each Fourier basis vector: few frequencies stand out after grokking."""
    p = model.cfg.d_vocab_out
    return (fourier_basis(p) @ model.W_E[:p].detach()).norm(dim=1)


def key_frequencies(model: HookedTransformer, k: int = 5) -> list[int]:
    """The `k` frequencies w (1..(p-1)/2) whose cos and sin together carry the most of W_E's norm, strongest first."""
    norms = embedding_fourier_norms(model)[1:] ** 2
    per_frequency = norms[0::2] + norms[1::2]  # cos w and sin w
    if not 1 <= k <= len(per_frequency):
        raise ValueError(
            f"k must lie between 1 and {len(per_frequency)} (the frequencies of p = {model.cfg.d_vocab_out}); got {k}."
        )
    return [int(w) + 1 for w in per_frequency.topk(k).indices]


def _frequency_part(logits: Float[Tensor, "operand_a operand_b d_vocab_out"], freqs: list[int]) -> Float[Tensor, "operand_a operand_b d_vocab_out"]:
    """The part of the logits, as functions of the inputs (a, b) for each output c, along cos and sin of w(a + b).

    The paper's projection: the algorithm's logits, sums of cos(w(a + b - c)), lie in these directions.
    """
    p = logits.shape[0]
    total = torch.arange(p, dtype=torch.float64)[:, None] + torch.arange(p, dtype=torch.float64)[None, :]
    part = torch.zeros_like(logits)
    for w in freqs:
        for direction in (torch.cos(2 * math.pi * w * total / p), torch.sin(2 * math.pi * w * total / p)):
            direction = direction / direction.norm()
            part += torch.einsum("abc,ab->c", logits, direction) * direction[..., None]
    return part


def _logits_and_part(model: HookedTransformer, freqs: list[int]):
    """The model's logits on every pair (a, b), (p, p, d_vocab_out) in float64, their key-frequency part, the labels."""
    p = model.cfg.d_vocab_out
    if not freqs or not all(1 <= w <= (p - 1) // 2 for w in freqs):
        raise ValueError(f"freqs must be frequencies between 1 and {(p - 1) // 2}; got {freqs}.")
    tokens, labels = modular_addition_data(p)
    with torch.inference_mode():
        logits = final_logits(model, tokens).double().reshape(p, p, p)
    return logits, _frequency_part(logits, freqs), labels


def restricted_loss(model: HookedTransformer, freqs: list[int], indices: Int[Tensor, "batch"] | None = None) -> float:
    """The loss with the logits cut down to the key frequencies' part (on the training pairs unless `indices`)."""
    indices = train_test_split(model.cfg.d_vocab_out)[0] if indices is None else indices
    _, part, labels = _logits_and_part(model, freqs)
    return loss_from_logits(part.flatten(0, 1)[indices], labels[indices]).item()


def excluded_loss(model: HookedTransformer, freqs: list[int], indices: Int[Tensor, "batch"] | None = None) -> float:
    """The loss with the key frequencies' part removed from the logits (on the training pairs unless `indices`)."""
    indices = train_test_split(model.cfg.d_vocab_out)[0] if indices is None else indices
    logits, part, labels = _logits_and_part(model, freqs)
    return loss_from_logits((logits - part).flatten(0, 1)[indices], labels[indices]).item()


@dataclass
class GrokkingRun:
    """A training run: the final model, the loss curves (every `log_every` steps) and the saved snapshots."""

    model: HookedTransformer
    logged_steps: list[int]
    train_loss: list[float]
    test_loss: list[float]
    snapshots: dict[int, dict[str, Tensor]]  # step -> parameters after that many optimizer steps


def train_modular_addition(
    config: dict | None = None, *, steps: int = TRAINING["steps"], lr: float = TRAINING["lr"],
    weight_decay: float = TRAINING["weight_decay"],
    train_fraction: float = TRAINING["train_fraction"], seed: int = TRAINING["seed"],
    snapshot_steps: list[int] | tuple[int, ...] = (), log_every: int = 10, progress: bool = True,
) -> GrokkingRun:
    """Full-batch AdamW on the training pairs for `steps` steps, logging train and test loss every `log_every` steps."""
    config = config or modular_addition_config()
    p = config["d_vocab_out"]
    if steps < 1 or any(not 0 <= step <= steps for step in snapshot_steps):
        raise ValueError(
            f"steps must be positive and snapshot_steps lie in 0..steps; got {steps} and {list(snapshot_steps)}."
        )
    tokens, labels = modular_addition_data(p)
    train, test = train_test_split(p, train_fraction, seed)
    torch.manual_seed(seed)
    model = build_from_config(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay, betas=TRAINING["betas"])
    run = GrokkingRun(model, [], [], [], {})
    bar = tqdm(range(steps + 1), desc="training modular-addition", disable=not progress)
    for step in bar:
        if step in snapshot_steps:
            run.snapshots[step] = {name: param.detach().clone() for name, param in model.named_parameters()}
        logged = step % log_every == 0 or step == steps
        if logged:
            with torch.inference_mode():
                run.logged_steps.append(step)
                run.test_loss.append(loss_from_logits(final_logits(model, tokens[test]), labels[test]).item())
        if step == steps:  # the last train loss is measured without another update
            with torch.inference_mode():
                run.train_loss.append(loss_from_logits(final_logits(model, tokens[train]), labels[train]).item())
            break
        loss = loss_from_logits(final_logits(model, tokens[train]), labels[train])
        if logged:
            run.train_loss.append(loss.item())
            bar.set_postfix(train=f"{loss.item():.3g}", test=f"{run.test_loss[-1]:.3g}", refresh=False)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    model.eval()
    return run


def loss_curve(name: str = "modular-addition") -> dict[str, list[float]]:
    """The shipped run's loss curve: `step`, `train_loss` and `test_loss`, every 10 steps (from its checkpoint series)."""
    return read_config(checkpoint_folder(name))["loss_curve"]
