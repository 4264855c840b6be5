"""Sparse autoencoders: a shared base class and the ReLU, TopK, BatchTopK and JumpReLU architectures.

Every SAE maps an activation x (size d_in) to latents f (size d_sae) and back:

    pre  = (x - b_dec) @ W_enc + b_enc      # b_dec is subtracted only when apply_b_dec_to_input
    f    = activation(pre)                  # what differs between architectures
    x̂    = f @ W_dec + b_dec

Parameter names and layouts are SAELens's (W_enc: d_in × d_sae, W_dec: d_sae × d_in), so weights
move between the two libraries unchanged (see `mikit.sae.io`).

Losses. `mse` is the squared error summed over d_in and averaged over tokens (SAELens's and
Anthropic's convention); each architecture adds its own sparsity or auxiliary term. Training
statistics (TopK's steps since each latent fired, BatchTopK's threshold) are updated by
`forward_with_loss` in training mode only, like BatchNorm's running statistics.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor, nn

from mikit.sae.init import geometric_median


@dataclass
class SAEOutput:
    """What one forward pass with losses produces (scalars are 0-dim tensors, differentiable)."""

    x_hat: Float[Tensor, "*batch d_in"]
    latents: Float[Tensor, "*batch d_sae"]
    pre_activations: Float[Tensor, "*batch d_sae"]
    mse: Float[Tensor, ""]
    sparsity_loss: Float[Tensor, ""]  # already multiplied by its coefficient
    aux_loss: Float[Tensor, ""]  # already multiplied by its coefficient
    loss: Float[Tensor, ""]  # mse + sparsity_loss + aux_loss: what to call .backward() on


def _check_positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer; got {value!r}.")


def _check_k(k: Any, d_sae: int) -> None:
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= d_sae:
        raise ValueError(f"k must be an integer between 1 and d_sae = {d_sae}; got {k!r}.")


class SAE(nn.Module):
    """Base class: encoder and decoder weights, encode / decode / loss, and the decoder constraints."""

    architecture: ClassVar[str] = ""  # SAELens's name for the architecture, written to cfg.json

    def __init__(
        self,
        d_in: int,
        d_sae: int,
        *,
        apply_b_dec_to_input: bool = True,
        dtype: torch.dtype = torch.float32,
        device: str | torch.device | None = None,
        metadata: dict[str, Any] | None = None,
    ):
        super().__init__()
        _check_positive_int("d_in", d_in)
        _check_positive_int("d_sae", d_sae)
        self.d_in, self.d_sae = d_in, d_sae
        self.apply_b_dec_to_input = apply_b_dec_to_input
        # Free-form facts about where the SAE belongs (hook_name, model_name, ...), saved with it.
        self.metadata: dict[str, Any] = dict(metadata or {})
        factory = {"dtype": dtype, "device": device}
        self.W_enc = nn.Parameter(torch.empty(d_in, d_sae, **factory))
        self.b_enc = nn.Parameter(torch.zeros(d_sae, **factory))
        self.W_dec = nn.Parameter(torch.empty(d_sae, d_in, **factory))
        self.b_dec = nn.Parameter(torch.zeros(d_in, **factory))
        self.reset_parameters()

    # ---- initialisation -------------------------------------------------------------------------

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Random unit-norm decoder rows, encoder = decoderᵀ, zero biases."""
        nn.init.normal_(self.W_dec)
        self.normalize_decoder_()
        # Tied initialisation (Gao et al. 2024; Anthropic, April 2024): each latent starts out reading
        # the same direction it writes, which makes early reconstructions sensible and fewer latents die.
        self.W_enc.copy_(self.W_dec.T)
        self.b_enc.zero_()
        self.b_dec.zero_()

    @torch.no_grad()
    def initialize_b_dec_(self, activations: Float[Tensor, "batch d_in"], tol: float = 1e-6, max_iter: int = 200) -> None:
        """Set b_dec to the geometric median of a sample of activations."""
        self._check_input(activations)
        # The median, unlike the mean, is not dragged by the rare huge-norm activations (e.g. on BOS).
        self.b_dec.copy_(geometric_median(activations.reshape(-1, self.d_in), tol=tol, max_iter=max_iter))

    # ---- the decoder constraint used while training ------------------------------------------------

    @torch.no_grad()
    def normalize_decoder_(self) -> None:
        """Scale every decoder row (one latent's direction) to unit norm."""
        # Without this, the sparsity penalty could be dodged by shrinking latents and growing their rows.
        self.W_dec.div_(self.W_dec.norm(dim=-1, keepdim=True).clamp_min(1e-12))

    @torch.no_grad()
    def remove_parallel_gradient_(self) -> None:
        """Remove from W_dec.grad the component along each decoder row (call between backward and step)."""
        if self.W_dec.grad is None:
            raise ValueError("W_dec has no gradient yet: call loss.backward() before remove_parallel_gradient_().")
        # The parallel component would only change the row's norm, which normalize_decoder_ undoes anyway;
        # removing it keeps the optimiser's step (and Adam's statistics) on the sphere of unit rows.
        unit_rows = self.W_dec / self.W_dec.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        self.W_dec.grad -= (self.W_dec.grad * unit_rows).sum(dim=-1, keepdim=True) * unit_rows

    # ---- forward passes ----------------------------------------------------------------------------

    def _check_input(self, x: Tensor) -> None:
        if not isinstance(x, Tensor) or not x.is_floating_point():
            raise ValueError("x must be a floating-point tensor of activations.")
        if x.ndim == 0 or x.shape[-1] != self.d_in:
            raise ValueError(f"x has shape {tuple(x.shape)}, but this SAE reads activations of size d_in = {self.d_in} in the last dimension.")

    def pre_activations(self, x: Float[Tensor, "*batch d_in"]) -> Float[Tensor, "*batch d_sae"]:
        """The encoder's affine map, before the activation function."""
        self._check_input(x)
        x = x.to(self.W_enc.dtype)
        if self.apply_b_dec_to_input:
            # Centre the input on b_dec so the encoder sees deviations from a typical activation.
            x = x - self.b_dec
        return x @ self.W_enc + self.b_enc

    def activation(self, pre: Float[Tensor, "*batch d_sae"]) -> Float[Tensor, "*batch d_sae"]:
        """The architecture's activation function: pre-activations → sparse latents."""
        raise NotImplementedError

    def encode(self, x: Float[Tensor, "*batch d_in"]) -> Float[Tensor, "*batch d_sae"]:
        """Latents for each activation vector in x."""
        return self.activation(self.pre_activations(x))

    def decode(self, latents: Float[Tensor, "*batch d_sae"]) -> Float[Tensor, "*batch d_in"]:
        """Reconstruction of the activations from latents."""
        if latents.ndim == 0 or latents.shape[-1] != self.d_sae:
            raise ValueError(f"latents have shape {tuple(latents.shape)}, but this SAE has d_sae = {self.d_sae} latents in the last dimension.")
        return latents.to(self.W_dec.dtype) @ self.W_dec + self.b_dec

    def forward(self, x: Float[Tensor, "*batch d_in"]) -> Float[Tensor, "*batch d_in"]:
        """Reconstruction x̂ of x."""
        return self.decode(self.encode(x))

    def forward_with_loss(self, x: Float[Tensor, "*batch d_in"]) -> SAEOutput:
        """Reconstruction, latents and every loss term for one batch (one training step's forward pass)."""
        pre = self.pre_activations(x)
        latents, x_hat = self._latents_and_reconstruction(pre)
        if self.training:
            self._update_training_statistics(latents)
        mse = (x_hat - x.to(x_hat.dtype)).pow(2).sum(dim=-1).mean()
        sparsity = self.sparsity_loss(pre, latents)
        aux = self.aux_loss(x, x_hat, pre)
        return SAEOutput(x_hat, latents, pre, mse, sparsity, aux, mse + sparsity + aux)

    # Hooks the architectures override; by default there is no extra term.

    def _latents_and_reconstruction(self, pre: Float[Tensor, "*batch d_sae"]) -> tuple[Tensor, Tensor]:
        """Latents and x̂ from pre-activations (training's forward pass; TopK decodes sparsely)."""
        latents = self.activation(pre)
        return latents, self.decode(latents)

    def sparsity_loss(self, pre: Float[Tensor, "*batch d_sae"], latents: Float[Tensor, "*batch d_sae"]) -> Float[Tensor, ""]:
        """The architecture's sparsity penalty (times its coefficient)."""
        return latents.new_zeros(())

    def aux_loss(
        self, x: Float[Tensor, "*batch d_in"], x_hat: Float[Tensor, "*batch d_in"], pre: Float[Tensor, "*batch d_sae"]
    ) -> Float[Tensor, ""]:
        """The architecture's auxiliary loss (times its coefficient)."""
        return x_hat.new_zeros(())

    def _update_training_statistics(self, latents: Float[Tensor, "*batch d_sae"]) -> None:
        pass

    def hyperparameters(self) -> dict[str, Any]:
        """The constructor arguments beyond d_in and d_sae, as JSON-friendly values (saved in cfg.json)."""
        return {"apply_b_dec_to_input": self.apply_b_dec_to_input}

    def extra_repr(self) -> str:
        return f"d_in={self.d_in}, d_sae={self.d_sae}, " + ", ".join(f"{k}={v}" for k, v in self.hyperparameters().items())


class ReLUSAE(SAE):
    """The standard SAE: ReLU latents and an L1 penalty weighted by decoder norms.

    sparsity_loss = l1_coefficient · mean over tokens of Σ_i f_i · ||W_dec[i]||. Weighting by the decoder
    norm (Anthropic, "Towards Monosemanticity" April 2024 update) makes the penalty independent of how a
    latent's magnitude is split between f_i and its decoder row, so training need not force unit rows.
    """

    architecture = "standard"

    def __init__(self, d_in: int, d_sae: int, *, l1_coefficient: float = 1.0, **kwargs: Any):
        if l1_coefficient < 0:
            raise ValueError(f"l1_coefficient must be non-negative; got {l1_coefficient}.")
        self.l1_coefficient = float(l1_coefficient)
        super().__init__(d_in, d_sae, **kwargs)

    def activation(self, pre: Float[Tensor, "*batch d_sae"]) -> Float[Tensor, "*batch d_sae"]:
        return pre.relu()

    def sparsity_loss(self, pre: Float[Tensor, "*batch d_sae"], latents: Float[Tensor, "*batch d_sae"]) -> Float[Tensor, ""]:
        l1 = (latents * self.W_dec.norm(dim=-1)).sum(dim=-1).mean()
        return self.l1_coefficient * l1

    def hyperparameters(self) -> dict[str, Any]:
        return {**super().hyperparameters(), "l1_coefficient": self.l1_coefficient}


class TopKSAE(SAE):
    """TopK SAE (Gao et al. 2024): keep each token's k largest pre-activations, ReLU them, zero the rest.

    Sparsity is enforced by construction, so there is no sparsity penalty. Instead an auxiliary loss
    (AuxK) revives dead latents: the top-k_aux pre-activations among latents that have not fired for more
    than `dead_steps_threshold` training steps must reconstruct the main reconstruction's error.
    """

    architecture = "topk"

    def __init__(
        self,
        d_in: int,
        d_sae: int,
        *,
        k: int,
        k_aux: int | None = None,
        aux_coefficient: float = 1 / 32,
        dead_steps_threshold: int = 1000,
        **kwargs: Any,
    ):
        _check_positive_int("d_sae", d_sae)
        _check_k(k, d_sae)
        if k_aux is not None:
            _check_positive_int("k_aux", k_aux)
        if aux_coefficient < 0 or dead_steps_threshold < 0:
            raise ValueError(f"aux_coefficient and dead_steps_threshold must be non-negative; got {aux_coefficient} and {dead_steps_threshold}.")
        self.k = k
        self.k_aux = k_aux  # None: the paper's heuristic d_in // 2
        self.aux_coefficient = float(aux_coefficient)
        self.dead_steps_threshold = int(dead_steps_threshold)
        super().__init__(d_in, d_sae, **kwargs)
        # Training state, not a weight: kept out of state_dict and of the saved file.
        self.register_buffer("steps_since_fired", torch.zeros(d_sae, dtype=torch.long, device=self.W_enc.device), persistent=False)

    def activation(self, pre: Float[Tensor, "*batch d_sae"]) -> Float[Tensor, "*batch d_sae"]:
        top = pre.topk(self.k, dim=-1, sorted=False)
        # ReLU after TopK: a token whose k-th best pre-activation is negative gets fewer than k latents.
        return torch.zeros_like(pre).scatter(-1, top.indices, top.values.relu())

    def _latents_and_reconstruction(self, pre: Float[Tensor, "*batch d_sae"]) -> tuple[Tensor, Tensor]:
        top = pre.topk(self.k, dim=-1, sorted=False)
        values = top.values.relu()
        latents = torch.zeros_like(pre).scatter(-1, top.indices, values)
        # Decode from the k kept latents only: per token a weighted sum of k decoder rows (an embedding
        # bag), not a dense (tokens × d_sae) @ (d_sae × d_in) product that is mostly zeros. Training's
        # backward pass then also touches only those rows (as in Gao et al.'s and EleutherAI's kernels).
        x_hat = F.embedding_bag(
            top.indices.reshape(-1, self.k), self.W_dec, per_sample_weights=values.reshape(-1, self.k).to(self.W_dec.dtype),
            mode="sum",
        )
        return latents, x_hat.view(*pre.shape[:-1], self.d_in) + self.b_dec

    @torch.no_grad()
    def _update_training_statistics(self, latents: Float[Tensor, "*batch d_sae"]) -> None:
        fired = (latents.reshape(-1, self.d_sae) != 0).any(dim=0)
        self.steps_since_fired += 1
        self.steps_since_fired[fired] = 0

    def dead_latents(self) -> Tensor:
        """Boolean mask of latents that have not fired for more than dead_steps_threshold training steps."""
        return self.steps_since_fired > self.dead_steps_threshold

    def aux_loss(
        self, x: Float[Tensor, "*batch d_in"], x_hat: Float[Tensor, "*batch d_in"], pre: Float[Tensor, "*batch d_sae"]
    ) -> Float[Tensor, ""]:
        dead = self.dead_latents()
        n_dead = int(dead.sum())
        if n_dead == 0 or self.aux_coefficient == 0:
            return x_hat.new_zeros(())
        # The error the live latents left behind; detached so AuxK trains only the dead latents' weights.
        error = (x.to(x_hat.dtype) - x_hat).detach().reshape(-1, self.d_in)
        k_aux = min(self.k_aux or max(self.d_in // 2, 1), n_dead)
        dead_pre = pre.reshape(-1, self.d_sae).masked_fill(~dead, float("-inf"))
        top = dead_pre.topk(k_aux, dim=-1, sorted=False)
        aux_latents = torch.zeros_like(dead_pre).scatter(-1, top.indices, top.values.relu())
        # ê = W_dec z: no b_dec, since the error is already a difference of two points that include it.
        error_hat = aux_latents @ self.W_dec
        # Normalised MSE as in the paper: divided by the MSE of predicting the mean error, so the
        # coefficient means the same whatever the scale of the residual.
        baseline = (error - error.mean(dim=0)).pow(2).sum().clamp_min(1e-12)
        return self.aux_coefficient * (error_hat - error).pow(2).sum() / baseline

    def hyperparameters(self) -> dict[str, Any]:
        return {
            **super().hyperparameters(),
            "k": self.k,
            "k_aux": self.k_aux,
            "aux_coefficient": self.aux_coefficient,
            "dead_steps_threshold": self.dead_steps_threshold,
        }


class BatchTopKSAE(TopKSAE):
    """BatchTopK SAE (Bussmann et al. 2024): keep the k × n_tokens largest activations across the whole batch.

    Tokens may use more or fewer than k latents as long as the batch averages k. That batch-level choice
    cannot be made for a single token, so at inference (eval mode) each latent fires when its pre-activation
    exceeds one global `threshold`: a running average of the smallest activation kept in training batches.
    AuxK is inherited from TopKSAE.
    """

    architecture = "batchtopk"  # SAELens saves it in its inference form, a JumpReLU SAE (see mikit.sae.io)

    def __init__(self, d_in: int, d_sae: int, *, k: int, threshold_lr: float = 0.01, **kwargs: Any):
        if not 0 < threshold_lr <= 1:
            raise ValueError(f"threshold_lr must be in (0, 1]; got {threshold_lr}.")
        self.threshold_lr = float(threshold_lr)
        super().__init__(d_in, d_sae, k=k, **kwargs)
        self.register_buffer("threshold", torch.zeros((), dtype=self.W_enc.dtype, device=self.W_enc.device))
        self.register_buffer("threshold_updates", torch.zeros((), dtype=torch.long, device=self.W_enc.device), persistent=False)

    # Tokens keep different numbers of latents, so decode densely.
    _latents_and_reconstruction = SAE._latents_and_reconstruction

    def activation(self, pre: Float[Tensor, "*batch d_sae"]) -> Float[Tensor, "*batch d_sae"]:
        acts = pre.relu()
        if not self.training:
            return acts * (pre > self.threshold)
        flat = acts.flatten()
        n_tokens = flat.numel() // self.d_sae
        top = flat.topk(self.k * n_tokens, sorted=False)
        return torch.zeros_like(flat).scatter(-1, top.indices, top.values).reshape(pre.shape)

    @torch.no_grad()
    def _update_training_statistics(self, latents: Float[Tensor, "*batch d_sae"]) -> None:
        super()._update_training_statistics(latents)
        kept = latents[latents > 0]
        if kept.numel() == 0:
            return
        # The paper averages the minimum kept activation over batches. A plain running mean for the first
        # 1 / threshold_lr batches, then an exponential moving average, so early (untrained) batches fade out.
        self.threshold_updates += 1
        lr = max(self.threshold_lr, 1.0 / float(self.threshold_updates))
        self.threshold.mul_(1 - lr).add_(lr * kept.min())

    def hyperparameters(self) -> dict[str, Any]:
        return {**super().hyperparameters(), "threshold_lr": self.threshold_lr}


class _StepFunction(torch.autograd.Function):
    """Heaviside step H(pre − threshold) with a straight-through pseudo-derivative for the threshold."""

    @staticmethod
    def forward(ctx: Any, pre: Tensor, threshold: Tensor, bandwidth: float) -> Tensor:
        ctx.save_for_backward(pre, threshold)
        ctx.bandwidth = bandwidth
        return (pre > threshold).to(pre.dtype)

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[None, Tensor, None]:
        pre, threshold = ctx.saved_tensors
        eps = ctx.bandwidth
        # Rajamanoharan et al. 2024, eq. 11: ∂H/∂θ ≈ −(1/ε) K((pre − θ)/ε), K the rectangle on (−½, ½).
        # No gradient to pre: the step is flat almost everywhere, and the paper passes none.
        grad_threshold = -(1.0 / eps) * _rectangle((pre - threshold) / eps) * grad_out
        return None, grad_threshold.reshape(-1, pre.shape[-1]).sum(dim=0), None


class _JumpReLUFunction(torch.autograd.Function):
    """JumpReLU pre · H(pre − threshold), with a straight-through pseudo-derivative for the threshold."""

    @staticmethod
    def forward(ctx: Any, pre: Tensor, threshold: Tensor, bandwidth: float) -> Tensor:
        ctx.save_for_backward(pre, threshold)
        ctx.bandwidth = bandwidth
        return pre * (pre > threshold).to(pre.dtype)

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor, Tensor, None]:
        pre, threshold = ctx.saved_tensors
        eps = ctx.bandwidth
        grad_pre = (pre > threshold).to(pre.dtype) * grad_out
        # Rajamanoharan et al. 2024, eq. 12: ∂JumpReLU/∂θ ≈ −(θ/ε) K((pre − θ)/ε).
        grad_threshold = -(threshold / eps) * _rectangle((pre - threshold) / eps) * grad_out
        return grad_pre, grad_threshold.reshape(-1, pre.shape[-1]).sum(dim=0), None


def _rectangle(u: Tensor) -> Tensor:
    return ((u > -0.5) & (u < 0.5)).to(u.dtype)


class JumpReLUSAE(SAE):
    """JumpReLU SAE (Rajamanoharan et al. 2024): a latent passes its pre-activation only above its own threshold.

    sparsity_loss = l0_coefficient · mean over tokens of the number of active latents. L0 has zero gradient
    almost everywhere, so the threshold learns through straight-through estimators with a rectangle kernel of
    width `bandwidth`. The threshold is a parameter itself, as SAELens stores it (the paper trains its log);
    it is kept non-negative by clamping at each training forward pass.
    """

    architecture = "jumprelu"

    def __init__(
        self,
        d_in: int,
        d_sae: int,
        *,
        l0_coefficient: float = 1.0,
        bandwidth: float = 0.001,
        initial_threshold: float = 0.001,
        **kwargs: Any,
    ):
        if l0_coefficient < 0 or bandwidth <= 0 or initial_threshold < 0:
            raise ValueError(
                "need l0_coefficient >= 0, bandwidth > 0 and initial_threshold >= 0; "
                f"got {l0_coefficient}, {bandwidth}, {initial_threshold}."
            )
        self.l0_coefficient = float(l0_coefficient)
        self.bandwidth = float(bandwidth)
        self.initial_threshold = float(initial_threshold)
        super().__init__(d_in, d_sae, **kwargs)
        self.threshold = nn.Parameter(torch.full((d_sae,), self.initial_threshold, dtype=self.W_enc.dtype, device=self.W_enc.device))

    def activation(self, pre: Float[Tensor, "*batch d_sae"]) -> Float[Tensor, "*batch d_sae"]:
        return _JumpReLUFunction.apply(pre, self.threshold, self.bandwidth)

    def forward_with_loss(self, x: Float[Tensor, "*batch d_in"]) -> SAEOutput:
        if self.training:
            with torch.no_grad():
                # Projected on .data rather than clamped in the graph, which would cut the threshold's gradient
                # once it reached 0. Below 0 the gate would let negative pre-activations through.
                self.threshold.clamp_(min=0.0)
        return super().forward_with_loss(x)

    def sparsity_loss(self, pre: Float[Tensor, "*batch d_sae"], latents: Float[Tensor, "*batch d_sae"]) -> Float[Tensor, ""]:
        l0 = _StepFunction.apply(pre, self.threshold, self.bandwidth).sum(dim=-1).mean()
        return self.l0_coefficient * l0

    def hyperparameters(self) -> dict[str, Any]:
        return {
            **super().hyperparameters(),
            "l0_coefficient": self.l0_coefficient,
            "bandwidth": self.bandwidth,
            "initial_threshold": self.initial_threshold,
        }
