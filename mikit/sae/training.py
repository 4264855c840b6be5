"""Train an SAE on a model's activations: a shuffling activation buffer and a plain Adam training loop.

    buffer = ActivationBuffer(model, "blocks.15.hook_resid_pre", rows)     # rows: (n, ctx) tokens
    sae = TopKSAE(model.cfg.d_model, 2304, k=32)
    history = train_sae(sae, buffer, n_tokens=500_000)

The loop is the one the SAE papers describe: geometric-median `b_dec` from the first batch; each
step (`train_step`) backpropagates the loss, removes the decoder gradient parallel to each row,
clips the gradient norm at 1, steps Adam and renormalises the rows; the learning rate decays
linearly to 0 over the last 20 % of steps (Anthropic, April 2024). Inputs are scaled so that
their mean squared norm is d_in, which makes one set of hyperparameters work at every layer; the
scale is folded into the weights at the end, so the trained SAE reads the model's raw activations.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Iterable, Iterator

import torch
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm
from transformer_lens import HookedTransformer

from mikit.sae.architectures import SAE, SAEOutput
from mikit.sae.metrics import explained_variance


class ActivationBuffer:
    """Activations of one hook point over rows of tokens, served as shuffled batches of token vectors.

    Runs the model on `rows_per_refill` rows at a time (stopping after the hooked layer), drops the
    first position of every row (BOS: its activations are outliers an SAE should not model), shuffles
    the tokens and yields `batch_size` of them at a time. One pass over the rows is one epoch;
    iterating again starts another, in a new order.
    """

    def __init__(
        self, model: HookedTransformer, hook_name: str, rows: Int[Tensor, "batch pos"], batch_size: int = 4096,
        rows_per_refill: int = 256, model_batch: int = 32, seed: int = 0,
    ):
        if rows.ndim != 2 or rows.shape[1] < 2:
            raise ValueError(f"rows must be (n_rows, context >= 2) token ids, not shape {tuple(rows.shape)}.")
        if hook_name not in model.hook_dict:
            raise ValueError(f"{hook_name!r} is not a hook point of this model (e.g. 'blocks.0.hook_resid_pre').")
        self.model, self.hook_name, self.rows = model, hook_name, rows
        self.batch_size, self.rows_per_refill, self.model_batch = batch_size, rows_per_refill, model_batch
        self.generator = torch.Generator().manual_seed(seed)
        self.layer = model.hook_dict[hook_name].layer() if hook_name.startswith("blocks.") else 0

    @property
    def n_tokens(self) -> int:
        """Tokens per epoch (every position but the first of each row)."""
        return self.rows.shape[0] * (self.rows.shape[1] - 1)

    @torch.no_grad()
    def activations(self, rows: Int[Tensor, "batch pos"]) -> Float[Tensor, "batch d_in"]:
        """The hook's activations on `rows`, every position but the first, flattened to token vectors."""
        out = []
        for start in range(0, rows.shape[0], self.model_batch):
            _, cache = self.model.run_with_cache(
                rows[start : start + self.model_batch], names_filter=self.hook_name, stop_at_layer=self.layer + 1
            )
            out.append(cache[self.hook_name][:, 1:].flatten(0, 1).float())
        return torch.cat(out)

    def collect(self, *, progress: bool = True) -> Float[Tensor, "batch d_in"]:
        """One epoch's activations in row order, to keep in memory: `CachedActivations(buffer.collect())`."""
        starts = range(0, self.rows.shape[0], self.rows_per_refill)
        chunks = [self.activations(self.rows[start : start + self.rows_per_refill])
                  for start in tqdm(starts, desc=f"caching {self.hook_name}", disable=not progress)]
        return torch.cat(chunks)

    def __iter__(self) -> Iterator[Float[Tensor, "batch d_in"]]:
        order = torch.randperm(self.rows.shape[0], generator=self.generator)
        for start in range(0, len(order), self.rows_per_refill):
            acts = self.activations(self.rows[order[start : start + self.rows_per_refill]])
            acts = acts[torch.randperm(acts.shape[0], generator=self.generator)]
            for i in range(0, acts.shape[0] - self.batch_size + 1, self.batch_size):
                yield acts[i : i + self.batch_size]


class CachedActivations:
    """Activations held in memory, served as shuffled batches; each iteration is a new epoch in a new order.

    Use it to train for several epochs (the model runs once) or to train two SAEs on the same data.
    """

    def __init__(self, activations: Float[Tensor, "batch d_in"], batch_size: int = 4096, seed: int = 0):
        if activations.ndim != 2 or activations.shape[0] < batch_size:
            raise ValueError(
                f"activations must be (n_tokens, d) with at least batch_size={batch_size} tokens, "
                f"not shape {tuple(activations.shape)}."
            )
        self.activations, self.batch_size = activations, batch_size
        self.generator = torch.Generator().manual_seed(seed)

    @property
    def n_tokens(self) -> int:
        """Tokens per epoch."""
        return self.activations.shape[0]

    def __iter__(self) -> Iterator[Float[Tensor, "batch d_in"]]:
        order = torch.randperm(self.n_tokens, generator=self.generator)
        for i in range(0, self.n_tokens - self.batch_size + 1, self.batch_size):
            yield self.activations[order[i : i + self.batch_size]]


def input_scale(activations: Float[Tensor, "batch d_in"]) -> float:
    """The factor that makes the mean squared norm of `activations` equal to their dimension."""
    return float((activations.shape[-1] / activations.pow(2).sum(-1).mean()).sqrt())


@torch.no_grad()
def fold_input_scale_(sae: SAE, scale: float) -> None:
    """Make an SAE trained on `scale · x` read and reconstruct `x` itself (same latents)."""
    sae.W_enc.mul_(scale)
    sae.W_dec.div_(scale)
    sae.b_dec.div_(scale)


def _batches(data: Iterable[Tensor]) -> Iterator[Tensor]:
    while True:
        empty = True
        for batch in data:
            empty = False
            yield batch
        if empty:
            raise ValueError("the activation source yielded no batch: give it more tokens than one batch.")


def train_step(
    sae: SAE, optimizer: torch.optim.Optimizer, x: Float[Tensor, "batch d_in"], *, max_grad_norm: float | None = None,
) -> SAEOutput:
    """One training step with unit-norm decoder rows; returns the forward pass it trained on (`out.loss` is its loss).

    Backpropagates the SAE's loss, removes from W_dec's gradient the component along each row, optionally
    clips the gradient norm, steps the optimiser, zeroes the gradients and renormalises the rows.
    """
    out = sae.forward_with_loss(x)
    out.loss.backward()
    sae.remove_parallel_gradient_()
    if max_grad_norm is not None:
        torch.nn.utils.clip_grad_norm_(sae.parameters(), max_grad_norm)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    sae.normalize_decoder_()
    return out


def train_sae(
    sae: SAE, data: Iterable[Float[Tensor, "batch d_in"]], n_tokens: int, lr: float = 4e-4,
    decay_fraction: float = 0.2, log_every: int = 50, *, progress: bool = True,
) -> dict[str, list[float]]:
    """Train `sae` on batches from `data` (repeated as needed) for `n_tokens` tokens; return the logged history.

    The history holds, every `log_every` steps, the step, tokens seen, loss, explained variance and L0.
    """
    if n_tokens <= 0:
        raise ValueError(f"n_tokens must be positive, not {n_tokens}.")
    batches = _batches(data)
    first = next(batches)
    scale = input_scale(first)
    sae.initialize_b_dec_(first * scale)
    n_steps = max(1, n_tokens // first.shape[0])
    optimizer = torch.optim.Adam(sae.parameters(), lr=lr, betas=(0.9, 0.999))
    decay_start = int(n_steps * (1 - decay_fraction))
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 1.0 if step < decay_start else max(0.0, (n_steps - step) / max(1, n_steps - decay_start))
    )
    history: dict[str, list[float]] = defaultdict(list)
    sae.train()
    batch, seen = first, 0
    bar = tqdm(range(n_steps), desc="training SAE", disable=not progress)
    for step in bar:
        x = batch * scale
        out = train_step(sae, optimizer, x, max_grad_norm=1.0)
        schedule.step()
        seen += x.shape[0]
        if step % log_every == 0 or step == n_steps - 1:
            with torch.no_grad():
                ev = explained_variance(x, out.x_hat)
                l0 = float((out.latents != 0).sum(-1).float().mean())
            for key, value in (("step", step), ("tokens", seen), ("loss", out.loss.item()),
                               ("explained_variance", ev), ("l0", l0)):
                history[key].append(float(value))
            bar.set_postfix(loss=f"{out.loss.item():.3g}", ev=f"{ev:.3f}", l0=f"{l0:.1f}")
        if step < n_steps - 1:
            batch = next(batches)
    sae.eval()
    fold_input_scale_(sae, scale)
    return dict(history)
