"""Checks for notebook 04 (sparse autoencoders): each compares a student function with `mikit.sae`.

They run on small random tensors and SAEs built here, so each takes milliseconds and holds in either
mode; the notebook then uses the student's functions on the real model's activations. As hidden tests
(`EXERCISES`) they draw other seeds and sizes; the one SAE a student's function receives is built by a
recipe, so the grader and the kernel hold the same weights.
"""

from __future__ import annotations

import copy
from functools import partial
from typing import Callable

import torch
from torch import Tensor

from mikit.checks import (
    CheckFailed, Exercise, call_student, expect_close, expect_number, expect_tensor, hidden, hook_point, passed,
    reject_known_mistakes, reveal, seeded, size,
)
from mikit.hidden import RemoteFunction, recipe
from mikit.sae import SAE, ReLUSAE, TopKSAE, metrics
from mikit.sae.training import train_step

D_IN, D_SAE = 8, 32  # the notebook's sizes; hidden tests add to them (`_dims`)


def _dims() -> tuple[int, int]:
    """(d_in, d_sae) of the check's SAEs."""
    return size(D_IN), size(D_SAE, 4)


def _seed(seed: int) -> int:
    """`seed` in the notebook; under the grader another integer, for a recipe (which takes data, not a generator)."""
    return seed if not hidden() else int(torch.randint(2**31 - 1, (1,), generator=seeded(seed)))


def _relu_sae(seed: int, l1_coefficient: float = 0.0) -> ReLUSAE:
    """A ReLU SAE with random weights, decoder rows of unequal norms and nonzero biases."""
    generator = seeded(seed)
    d_in, d_sae = _dims()
    sae = ReLUSAE(d_in, d_sae, l1_coefficient=l1_coefficient)
    with torch.no_grad():
        sae.W_enc.copy_(torch.randn(d_in, d_sae, generator=generator) * 0.5)
        sae.b_enc.copy_(torch.randn(d_sae, generator=generator) * 0.3)
        sae.W_dec.copy_(torch.randn(d_sae, d_in, generator=generator) * 0.4)
        sae.b_dec.copy_(torch.randn(d_in, generator=generator))
    return sae


def relu_sae_forward(fn: Callable) -> None:
    """Exercise 1: the ReLU SAE's forward pass, returning (latents, x_hat)."""
    __tracebackhide__ = True
    name = "relu_sae_forward"
    sae = _relu_sae(0)
    batch = size(6)
    x = torch.randn(batch, sae.d_in, generator=seeded(1)) + 1
    W_enc, b_enc, W_dec, b_dec = (p.detach() for p in (sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec))
    out = call_student(fn, name, x, W_enc, b_enc, W_dec, b_dec)
    if not (isinstance(out, tuple) and len(out) == 2):
        raise CheckFailed(f"`{name}` should return a tuple (latents, x_hat), but returned a {type(out).__name__}.")
    latents = expect_tensor(out[0], f"{name}(...)[0] (latents)", (batch, sae.d_sae), "batch d_sae")
    x_hat = expect_tensor(out[1], f"{name}(...)[1] (x_hat)", (batch, sae.d_in), "batch d_in")
    with torch.no_grad():
        want = sae.encode(x)
        reject_known_mistakes(latents, [
            ((x @ W_enc + b_enc).relu(), "you did not subtract b_dec from x before encoding: f = ReLU((x - b_dec) @ W_enc + b_enc)"),
            ((x - b_dec) @ W_enc + b_enc, "your latents go negative: apply the ReLU, f = ReLU((x - b_dec) @ W_enc + b_enc)"),
            (((x - b_dec) @ W_enc).relu(), "you left out the encoder bias b_enc"),
        ], want)
        expect_close(latents, want, f"{name} latents", hint="f = ReLU((x - b_dec) @ W_enc + b_enc)")
        reject_known_mistakes(x_hat, [
            (want @ W_dec, "x_hat is missing the decoder bias: x_hat = f @ W_dec + b_dec"),
            (want @ W_dec - b_dec, "x_hat should add b_dec back: x_hat = f @ W_dec + b_dec"),
        ], sae(x))
        expect_close(x_hat, sae(x), f"{name} x_hat", hint="x_hat = f @ W_dec + b_dec")
    passed(name)


def relu_sae_loss(fn: Callable) -> None:
    """Exercise 2: squared error summed over features + L1 weighted by decoder norms, both averaged over tokens."""
    __tracebackhide__ = True
    name = "relu_sae_loss"
    # Under the grader another coefficient: a solution that ignores its argument must not pass.
    l1_coefficient = 0.7 if not hidden() else round(0.2 + float(torch.rand((), generator=seeded(30))), 3)
    sae = _relu_sae(2, l1_coefficient)
    x = torch.randn(size(10), sae.d_in, generator=seeded(3)) + 1
    with torch.no_grad():
        out = sae.forward_with_loss(x)
    W_dec = sae.W_dec.detach()
    got = expect_number(call_student(fn, name, x, out.latents, out.x_hat, W_dec, l1_coefficient), name)
    error = (out.x_hat - x).pow(2)
    norms = W_dec.norm(dim=-1)
    l1_plain = out.latents.sum(-1).mean()
    l1_weighted = (out.latents * norms).sum(-1).mean()
    wrongs = [
        (error.mean() + l1_coefficient * l1_weighted,
         "your squared error is averaged over features too: sum it over the feature axis, then average over tokens"),
        (error.sum(-1).mean() + l1_coefficient * l1_plain,
         "your L1 term ignores the decoder norms: weight each latent by its decoder row's norm, Σ_i f_i ‖W_dec[i]‖"),
        (error.sum() + l1_coefficient * (out.latents * norms).sum(),
         "you summed over tokens: both terms are averages over the batch"),
        (error.sum(-1).mean() + l1_coefficient * (out.latents.pow(2) * norms).sum(-1).mean(),
         "that is an L2 penalty: the sparsity term is the L1 norm Σ_i f_i ‖W_dec[i]‖ (f is non-negative)"),
        (error.sum(-1).mean(), "the sparsity term is missing: add l1_coefficient · Σ_i f_i ‖W_dec[i]‖"),
    ]
    want = out.loss.item()
    reject_known_mistakes(torch.tensor(got), [(torch.tensor(float(w)), m) for w, m in wrongs], torch.tensor(want))
    expect_close(torch.tensor(got), torch.tensor(want), name,
                 hint="loss = mean over tokens of Σ_d (x̂ − x)² + l1_coefficient · Σ_i f_i ‖W_dec[i]‖")
    passed(name, reveal(f"{got:.4f}"))


def topk_sae_forward(fn: Callable) -> None:
    """Exercise 3: the TopK SAE's forward pass, returning (latents, x_hat), on inputs of shape (batch, pos, d_in)."""
    __tracebackhide__ = True
    name = "topk_sae_forward"
    generator = seeded(4)
    d_in, d_sae = _dims()
    W_enc = torch.randn(d_in, d_sae, generator=generator) * 0.5
    b_enc = -torch.rand(d_sae, generator=generator) * 0.5 - 0.1  # all negative: a token at b_dec has no positive latent
    W_dec = torch.randn(d_sae, d_in, generator=generator) * 0.4
    b_dec = torch.randn(d_in, generator=generator) + 1
    x = torch.randn(size(5), size(3), d_in, generator=generator) + b_dec
    x[0, 0] = b_dec  # its pre-activations are b_enc: every kept value is negative
    for k in (1, size(4)):
        out = call_student(fn, name, x.clone(), W_enc, b_enc, W_dec, b_dec, k)
        if not (isinstance(out, tuple) and len(out) == 2):
            raise CheckFailed(f"`{name}` should return a tuple (latents, x_hat), but returned a {type(out).__name__}.")
        latents = expect_tensor(out[0], f"{name}(...)[0] (latents)", x.shape[:-1] + (d_sae,), "batch pos d_sae")
        x_hat = expect_tensor(out[1], f"{name}(...)[1] (x_hat)", x.shape, "batch pos d_in")
        sae = TopKSAE(d_in, d_sae, k=k)
        with torch.no_grad():
            for parameter, value in zip((sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec), (W_enc, b_enc, W_dec, b_dec)):
                parameter.copy_(value)
            want, want_x_hat = sae.encode(x), sae(x)
            pre = sae.pre_activations(x)
        top = pre.topk(k, dim=-1)
        unrectified = torch.zeros_like(pre).scatter(-1, top.indices, top.values)
        mask = torch.zeros_like(pre).scatter(-1, top.indices, 1.0)
        smallest = pre.topk(k, dim=-1, largest=False)
        flat = pre.flatten(0, -2).flatten()
        batch_top = torch.zeros_like(flat)
        chosen = flat.topk(k * pre[..., 0].numel()).indices
        batch_top[chosen] = flat[chosen].relu()
        uncentred = x @ W_enc + b_enc
        top_uncentred = uncentred.topk(k, dim=-1)
        reject_known_mistakes(latents, [
            (unrectified, "negative values survive: apply ReLU to the kept values (a token may then use fewer than k)"),
            (mask, "your latents are a 0/1 mask: keep the pre-activation values of the top k"),
            (torch.zeros_like(pre).scatter(-1, smallest.indices, smallest.values.relu()),
             "you kept the k smallest: use topk's default largest=True"),
            (batch_top.view(pre.shape), "you chose the top k·n_tokens across the batch (that is BatchTopK): "
                                        "choose k per token, along the last axis"),
            (pre.relu(), "you kept every positive pre-activation: keep only each token's k largest"),
            (torch.zeros_like(pre).scatter(-1, top_uncentred.indices, top_uncentred.values.relu()),
             "you did not subtract b_dec from x before encoding: pre = (x - b_dec) @ W_enc + b_enc"),
        ], want)
        expect_close(latents, want, f"{name} latents",
                     hint="keep the top k of (x - b_dec) @ W_enc + b_enc along the last axis, ReLU'd, zeros elsewhere")
        reject_known_mistakes(x_hat, [
            (want @ W_dec, "x_hat is missing the decoder bias: x_hat = latents @ W_dec + b_dec"),
            (pre.relu() @ W_dec + b_dec, "x_hat decodes every positive latent: decode only the k you kept"),
            (want @ W_enc.T + b_dec, "decode with the decoder's rows W_dec, not the encoder's columns"),
        ], want_x_hat)
        expect_close(x_hat, want_x_hat, f"{name} x_hat",
                     hint="x_hat = Σ over the kept latents of value · W_dec[index], + b_dec")
    passed(name)


def auxk_loss(fn: Callable) -> None:
    """Exercise 4: the AuxK loss: dead latents' top-k_aux reconstruct the main reconstruction's error."""
    __tracebackhide__ = True
    name = "auxk_loss"
    generator = seeded(5)
    d_in, d_sae = _dims()
    k_aux, n_dead, tokens = size(3), size(10), size(7)
    sae = TopKSAE(d_in, d_sae, k=2, k_aux=k_aux, aux_coefficient=1.0)
    with torch.no_grad():
        sae.W_dec.copy_(torch.randn(d_sae, d_in, generator=generator))
        sae.normalize_decoder_()
    dead = torch.zeros(d_sae, dtype=torch.bool)
    dead[torch.randperm(d_sae, generator=generator)[:n_dead]] = True
    sae.steps_since_fired[dead] = sae.dead_steps_threshold + 1
    x = torch.randn(tokens, d_in, generator=generator)
    x_hat = (x + 0.5 * torch.randn(tokens, d_in, generator=generator)).requires_grad_(True)
    pre = torch.randn(tokens, d_sae, generator=generator)
    pre[:3, dead] = -pre[:3, dead].abs()  # tokens whose dead latents all have negative pre-activations
    W_dec = sae.W_dec.detach().clone().requires_grad_(True)
    got_loss = call_student(fn, name, x, x_hat, pre, dead, W_dec, k_aux)
    got = expect_number(got_loss, name)
    want = sae.aux_loss(x, x_hat.detach(), pre).item()
    error = (x - x_hat.detach())

    def variant(mask: Tensor, relu: bool = True, normalise: str = "centred") -> float:
        top = pre.masked_fill(~mask, float("-inf")).topk(k_aux, dim=-1)
        values = top.values.relu() if relu else top.values
        error_hat = torch.zeros_like(pre).scatter(-1, top.indices, values) @ W_dec.detach()
        squared = (error_hat - error).pow(2).sum()
        if normalise == "none":
            return (squared / x.shape[0]).item()
        baseline = error.pow(2).sum() if normalise == "uncentred" else (error - error.mean(0)).pow(2).sum()
        return (squared / baseline).item()

    everyone = torch.ones_like(dead)
    wrongs = [
        (variant(everyone), "you let every latent in: AuxK picks the top k_aux among the *dead* latents only "
                            "(fill the others' pre-activations with -inf before topk)"),
        (variant(dead, normalise="none"), "normalise the squared error by Σ‖e − mean(e)‖², the error's own variance, "
                                          "so the coefficient means the same at every scale"),
        (variant(dead, normalise="uncentred"), "normalise by the *centred* error, Σ‖e − mean(e)‖² over the batch"),
        (variant(dead, relu=False), "apply ReLU to the dead latents' top-k_aux values before decoding"),
    ]
    reject_known_mistakes(torch.tensor(got), [(torch.tensor(w), m) for w, m in wrongs], torch.tensor(want), atol=1e-5)
    expect_close(torch.tensor(got), torch.tensor(want), name,
                 hint="e = x − x̂ (detached); ê = ReLU(top-k_aux of the dead latents' pre) @ W_dec; ‖ê − e‖² / ‖e − ē‖²")
    if not isinstance(got_loss, Tensor) or not got_loss.requires_grad:
        raise CheckFailed(f"`{name}` returned a number without a gradient: return the loss tensor, so W_dec can learn from it.")
    got_loss.backward()
    if x_hat.grad is not None and x_hat.grad.abs().max() > 0:
        raise CheckFailed("the error e = x − x̂ must be detached: AuxK should train the dead latents, not push x̂ around")
    if W_dec.grad is None or W_dec.grad[dead].abs().max() == 0:
        raise CheckFailed("no gradient reaches the dead latents' decoder rows: decode the auxiliary latents with W_dec")
    passed(name, reveal(f"{got:.4f}"))


# Five calls: each loss is measured on what the previous calls left (rows off the sphere, gradients that pile
# up), so that the losses alone, all the grader sees, tell the mistakes below from the reference. The
# learning rate is large for the same reason.
TRAIN_STEPS, TRAIN_LR = 5, 0.1


@recipe
def training_case(seed: int, d_in: int, d_sae: int, architecture: str) -> tuple[SAE, torch.optim.Adam]:
    """An SAE in training mode (an untied encoder, nonzero biases) and its Adam optimiser.

    The decoder rows start at norms between 0.5 and 2, so that renormalising before or after the step, or not at
    all, already differ at the first call, and a projection that takes the rows for unit vectors shows. A TopK
    latent counts as dead after one step without firing, so AuxK joins the loss from the second step; the ReLU
    SAE's L1 penalty reads the decoder norms. Adam's eps is 1e-3 (not 1e-8): its first steps are then not
    sign(gradient), which rounding in two correct ways of projecting a near-zero gradient could flip.
    """
    generator = torch.Generator().manual_seed(seed)
    if architecture == "topk":
        sae: SAE = TopKSAE(d_in, d_sae, k=3, aux_coefficient=1.0, dead_steps_threshold=1)
    else:
        sae = ReLUSAE(d_in, d_sae, l1_coefficient=1.0)
    with torch.no_grad():
        W_dec = torch.randn(d_sae, d_in, generator=generator)
        norms = 0.5 + 1.5 * torch.rand(d_sae, 1, generator=generator)
        sae.W_dec.copy_(W_dec / W_dec.norm(dim=-1, keepdim=True) * norms)
        sae.W_enc.copy_(torch.randn(d_in, d_sae, generator=generator) * 0.5)
        sae.b_enc.copy_(torch.randn(d_sae, generator=generator) * 0.2)
        sae.b_dec.copy_(torch.randn(d_in, generator=generator))
    optimizer = torch.optim.Adam(sae.parameters(), lr=TRAIN_LR, eps=1e-3)
    return sae.train(), optimizer


def _training_batches(sae: SAE, seed: int) -> list[Tensor]:
    generator = seeded(seed)
    return [sae.b_dec.detach() + 2 * torch.randn(size(16), sae.d_in, generator=generator) for _ in range(TRAIN_STEPS)]


def _step_variant(
    sae: SAE, optimizer: torch.optim.Optimizer, x: Tensor, *, project: str = "rows", normalise: str = "rows",
    zero: bool = True, loss: str = "loss", report: str = "trained",
) -> float:
    """A training step with one known mistake (the keyword that differs from its default names it)."""
    W = sae.W_dec
    out = sae.forward_with_loss(x)
    (out.mse if loss == "mse" else out.loss).backward()
    with torch.no_grad():
        unit = W / W.norm(dim=-1, keepdim=True)
        if project == "rows":
            W.grad -= (W.grad * unit).sum(-1, keepdim=True) * unit
        elif project == "latents":  # the dot product summed over the latent axis
            W.grad -= (W.grad * unit).sum(0, keepdim=True) * unit
        elif project == "parallel":  # kept the parallel part instead of removing it
            W.grad.copy_((W.grad * unit).sum(-1, keepdim=True) * unit)
        elif project == "unnormalised":  # the rows taken for unit vectors
            W.grad -= (W.grad * W).sum(-1, keepdim=True) * W
        if normalise == "before_step":
            W.div_(W.norm(dim=-1, keepdim=True))
    optimizer.step()
    if zero:
        optimizer.zero_grad()
    with torch.no_grad():
        if normalise == "rows":
            W.div_(W.norm(dim=-1, keepdim=True))
        elif normalise == "columns":
            W.div_(W.norm(dim=0, keepdim=True))
        elif normalise == "matrix":
            W.div_(W.norm())
    if report == "after":
        with torch.no_grad():
            return sae.forward_with_loss(x).loss.item()
    return out.loss.item()


def _renormalise_first(sae: SAE, optimizer: torch.optim.Optimizer, x: Tensor) -> float:
    """The rows renormalised at the start of each step rather than after the optimiser's step."""
    sae.normalize_decoder_()
    return _step_variant(sae, optimizer, x, normalise="none")


def _without_zeroing(sae: SAE, optimizer: torch.optim.Optimizer, x: Tensor) -> float:
    """The gradients left in the SAE after the step (the next backward adds to them)."""
    return _step_variant(sae, optimizer, x, zero=False)


def _reference_step(sae: SAE, optimizer: torch.optim.Optimizer, x: Tensor) -> float:
    return train_step(sae, optimizer, x).loss.item()


_TRAINING_MISTAKES: list[tuple[Callable, str]] = [
    (partial(_step_variant, project="none"),
     "optimizer.step() saw W_dec.grad with its component along each row still in it: remove that component after "
     "loss.backward() and before optimizer.step() (once the step is taken, editing the gradient changes nothing)"),
    (partial(_step_variant, project="parallel"),
     "you kept only the gradient's component along each row: subtract it from W_dec.grad instead, g − (g · u) u"),
    (partial(_step_variant, project="unnormalised"),
     "your projection takes the rows for unit vectors: divide each row by its norm first, u = W_dec[i] / ‖W_dec[i]‖ "
     "(rows are off unit norm after every optimiser step, and here from the start)"),
    (partial(_step_variant, project="latents"),
     "your gradient projection sums over latents: take each row's dot product with its own unit row, over d_in (dim=-1)"),
    (partial(_step_variant, normalise="none"),
     "the decoder rows drift off unit norm: renormalise every row of W_dec after optimizer.step()"),
    (partial(_step_variant, normalise="before_step"),
     "you renormalised the rows before optimizer.step(), which moves them off the unit sphere again: renormalise after it"),
    (_renormalise_first,
     "the rows are not unit-norm when your step returns (you renormalised before the forward pass?): renormalise "
     "after optimizer.step(), so that the SAE the loop ends with has unit rows"),
    (partial(_step_variant, normalise="columns"),
     "you normalised the columns of W_dec: each row W_dec[i] is a latent's direction, so take the norm over d_in (dim=-1)"),
    (partial(_step_variant, normalise="matrix"),
     "you divided W_dec by the norm of the whole matrix: renormalise each row separately (the norm over dim=-1)"),
    (_without_zeroing,
     "the gradients pile up from one call to the next: zero them in every step (optimizer.zero_grad()), or each step "
     "also applies all the previous batches' gradients again"),
    (partial(_step_variant, loss="mse"),
     "you trained on the reconstruction error alone: backpropagate forward_with_loss(x).loss, which adds the "
     "architecture's sparsity or auxiliary term"),
    (partial(_step_variant, report="after"),
     "you returned the loss after the update: return the loss of the forward pass the step trained on"),
]


def _copy(state: tuple[SAE, torch.optim.Optimizer], gradients: bool = True) -> tuple[SAE, torch.optim.Optimizer]:
    """A copy of an SAE and its optimiser, with or without the gradients left in the SAE (deepcopy drops them)."""
    copied = copy.deepcopy(state)
    for parameter, original in zip(copied[0].parameters(), state[0].parameters()):
        parameter.grad = None if original.grad is None or not gradients else original.grad.clone()
    return copied


def _parameters(sae: SAE) -> Tensor:
    return torch.cat([p.detach().flatten() for p in sae.parameters()])


def _losses(step: Callable, start: tuple[SAE, torch.optim.Optimizer], xs: list[Tensor]) -> list[float]:
    """The losses `step` returns over the batches `xs`, run on a copy of `start`."""
    sae, optimizer = copy.deepcopy(start)
    return [float(step(sae, optimizer, x.clone())) for x in xs]


def _outcome(loss: float, sae: SAE) -> Tensor:
    """What a call leaves that the check can see in process: the loss it returned, then the SAE's parameters."""
    return torch.cat([torch.tensor([loss]), _parameters(sae)])


def training_step(fn: Callable) -> None:
    """Exercise 5: one SAE training step with unit-norm decoder rows; returns the loss as a float."""
    __tracebackhide__ = True
    name = "training_step"
    # Under the grader the student's SAE lives in their kernel and only the losses come back (each measured on
    # what the calls before left); in process the check also sees the SAE, and judges each call on its own.
    remote = isinstance(fn, RemoteFunction)
    cases = [("topk", 14, D_SAE)] + ([("relu", 15, D_SAE // 2)] if hidden() else [])
    for architecture, seed, d_sae in cases:
        start = training_case(_seed(seed), size(D_IN), size(d_sae, 4), architecture)
        # The student's function changes what it is given: in process it gets a copy, so the recipe's objects stay
        # as built; the grader sends the recipe itself, rebuilt in the kernel.
        sae, optimizer = start if remote else copy.deepcopy(start)
        xs = _training_batches(start[0], seed + 10)
        W_dec, losses = sae.W_dec, []
        for call, x in enumerate(xs, 1):
            before = None if remote else _copy((sae, optimizer))
            batch = x.clone()
            out = call_student(fn, name, sae, optimizer, batch)
            if not torch.equal(batch, x):
                raise CheckFailed(f"`{name}` changed x in place: the batch belongs to the training loop (it logs "
                                  "metrics on it); compute from x without writing into it")
            if isinstance(out, Tensor):
                raise CheckFailed(f"`{name}` returned a tensor: return the loss as a Python float, loss.item() (a loss "
                                  "tensor keeps the step's whole autograd graph alive in the loop's history)")
            if isinstance(out, bool) or not isinstance(out, (float, int)):
                raise CheckFailed(f"`{name}` should return the loss as a Python float (loss.item()), not a "
                                  f"{type(out).__name__}.")
            losses.append(float(out))
            if not remote:
                if sae.W_dec is not W_dec:
                    raise CheckFailed("you replaced sae.W_dec by a new tensor, which the optimiser does not hold: "
                                      "write the renormalised rows into it in place, under torch.no_grad()")
                _judge_call(name, call, before, x, losses[-1], sae)
        if remote:
            _judge_losses(name, start, xs, losses)
    passed(name)


def _judge_call(name: str, call: int, before: tuple[SAE, torch.optim.Optimizer], x: Tensor, loss: float, sae: SAE) -> None:
    """Compare one call with the reference step from the same state (so rounding cannot pile up over the calls)."""
    __tracebackhide__ = True
    # A step starts from no gradient, whether the call before zeroed them at its end or this one does at its start.
    reference_sae, reference_optimizer = _copy(before, gradients=False)
    want_loss = _reference_step(reference_sae, reference_optimizer, x.clone())
    want = _outcome(want_loss, reference_sae)
    mistakes = []
    for step, message in _TRAINING_MISTAKES:  # from the same state; gradients left by the call before only pile up
        wrong_sae, wrong_optimizer = _copy(before, gradients=step is _without_zeroing)
        wrong = _outcome(float(step(wrong_sae, wrong_optimizer, x.clone())), wrong_sae)
        if not torch.allclose(wrong, want, atol=1e-4, rtol=1e-3):  # a mistake the check cannot see is no mistake
            mistakes.append((wrong, message))
    reject_known_mistakes(_outcome(loss, sae), mistakes, want)
    expect_close(torch.tensor(loss), torch.tensor(want_loss), f"{name}'s loss at call {call}",
                 hint="return forward_with_loss(x).loss.item() of the forward pass the step trained on")
    for (pname, got), want_p in zip(sae.named_parameters(), reference_sae.parameters()):
        expect_close(got, want_p, f"{pname} after call {call}",
                     hint="backward, project W_dec.grad, optimizer.step(), renormalise the rows, zero the gradients")


def _judge_losses(name: str, start: tuple[SAE, torch.optim.Optimizer], xs: list[Tensor], losses: list[float]) -> None:
    """Compare the losses of the calls with the reference's, and with each mistake's, over the whole run from `start`."""
    __tracebackhide__ = True
    want_losses = _losses(_reference_step, start, xs)
    want = torch.tensor(want_losses)
    mistakes = []
    for step, message in _TRAINING_MISTAKES:
        wrong = torch.tensor(_losses(step, start, xs))
        if not torch.allclose(wrong, want, atol=1e-4, rtol=1e-3):
            mistakes.append((wrong, message))
    reject_known_mistakes(torch.tensor(losses), mistakes, want)
    for call, (got, want_loss) in enumerate(zip(losses, want_losses), 1):
        expect_close(torch.tensor(got), torch.tensor(want_loss), f"{name}'s loss at call {call}",
                     hint="return forward_with_loss(x).loss.item() of the forward pass the step trained on" if call == 1
                     else "each loss is measured on the parameters your previous calls left: check the step's order")


def sae_metrics(l0: Callable, fvu: Callable, ce_loss_recovered: Callable) -> None:
    """Exercise 6: L0, fraction of variance unexplained, CE loss recovered."""
    __tracebackhide__ = True
    generator = seeded(7)
    d_in, d_sae = _dims()
    shape = (size(4), size(5), d_sae)
    latents = torch.randn(shape, generator=generator).relu() * (torch.rand(shape, generator=generator) < 0.2)
    got = expect_number(call_student(l0, "l0", latents), "l0")
    want = metrics.l0(latents)
    nonzero = (latents != 0).float()
    reject_known_mistakes(torch.tensor(got), [
        (nonzero.sum(), "that is the total count over all tokens: L0 is the *mean* number of nonzero latents per token"),
        (nonzero.mean(), "that is the fraction of latents that are on: L0 counts them per token (sum over latents, mean over tokens)"),
        (latents.sum(-1).mean(), "you summed the activations: L0 counts nonzero latents, (latents != 0)"),
    ], torch.tensor(want))
    expect_close(torch.tensor(got), torch.tensor(want), "l0", hint="(latents != 0).sum(-1).float().mean()")

    x = torch.randn(size(50), d_in, generator=generator) * 2 + 3
    x_hat = x + torch.randn(x.shape, generator=generator)
    got = expect_number(call_student(fvu, "fvu", x, x_hat), "fvu")
    want = metrics.fvu(x, x_hat)
    residual = (x - x_hat).pow(2)
    reject_known_mistakes(torch.tensor(got), [
        (residual.sum() / x.pow(2).sum(), "you divided by Σ‖x‖²: the variance is about the mean, Σ‖x − mean(x)‖² (mean over tokens)"),
        ((residual.sum(0) / (x - x.mean(0)).pow(2).sum(0)).mean(), "you averaged per-feature ratios: divide the total squared error by the total variance"),
        (torch.tensor(1 - want), "that is the explained variance: FVU = 1 − explained variance"),
        (residual.sum() / (x - x.mean()).pow(2).sum(), "centre each feature by its own mean over tokens, x.mean(0), not one scalar mean"),
    ], torch.tensor(want))
    expect_close(torch.tensor(got), torch.tensor(want), "fvu", hint="Σ‖x − x̂‖² / Σ‖x − x.mean(0)‖²")

    for clean, sae_ce, zero in _ce_losses():
        got = expect_number(call_student(ce_loss_recovered, "ce_loss_recovered", clean, sae_ce, zero), "ce_loss_recovered")
        want = (zero - sae_ce) / (zero - clean)
        reject_known_mistakes(torch.tensor(got), [
            (torch.tensor(1 - want), "that is the fraction *lost*: recovered = (CE_zero − CE_sae) / (CE_zero − CE_clean)"),
            (torch.tensor((zero - sae_ce) / (sae_ce - clean)), "the denominator is the whole gap, CE_zero − CE_clean"),
            (torch.tensor(clean / sae_ce), "a ratio of losses ignores the zero-ablation baseline: (CE_zero − CE_sae) / (CE_zero − CE_clean)"),
        ], torch.tensor(want))
        expect_close(torch.tensor(got), torch.tensor(want), "ce_loss_recovered", hint="(CE_zero − CE_sae) / (CE_zero − CE_clean)")
    passed("metrics", "l0, fvu and ce_loss_recovered")


def _ce_losses() -> list[tuple[float, float, float]]:
    """(CE clean, CE with the SAE, CE zero-ablated) triples: the SAE's between clean and zero, once near each."""
    if not hidden():
        return [(3.0, 3.5, 8.0), (2.0, 6.0, 7.0)]
    cases = []
    for (a, b, c), (low, high) in zip(torch.rand(2, 3, generator=seeded(31)).tolist(), ((0.05, 0.3), (0.5, 0.9))):
        clean = round(1.5 + 2 * a, 3)
        zero = round(clean + 3 + 6 * c, 3)
        cases.append((clean, round(clean + (low + (high - low) * b) * (zero - clean), 3), zero))
    return cases


@recipe
def dead_latents_case(
    seed: int, d_in: int, d_sae: int, n_tokens: int, lone_rows: tuple[int, ...] = ()
) -> tuple[TopKSAE, Tensor]:
    """A TopK SAE and activations where some latents fire only late, and some are positive but never in the top k.

    Latent 1 + i fires on row `lone_rows[i]` alone (the first row, a batch's last row: a loop that skips
    one of them calls a live latent dead).

    The weights come from `seed` too: the grader and the kernel build the same SAE, and the case does not
    depend on what the notebook drew before (from torch's global generator latent 0 was sometimes dead).
    """
    generator = torch.Generator().manual_seed(seed)
    sae = TopKSAE(d_in, d_sae, k=2)
    with torch.no_grad():
        sae.W_dec.copy_(torch.randn(d_sae, d_in, generator=generator))
        sae.normalize_decoder_()
        sae.W_enc.copy_(sae.W_dec.T)
        sae.b_enc.copy_(torch.linspace(-4, 0.5, d_sae))
    x = torch.randn(n_tokens, d_in, generator=generator)
    # The last batch lights up latent 0, which otherwise never makes the top 2.
    x[-5:] = sae.b_dec + 12 * sae.W_enc[:, 0].detach()
    for i, row in enumerate(lone_rows):
        x[row] = sae.b_dec + 12 * sae.W_enc[:, 1 + i].detach()
    return sae.eval(), x


def _dead_case(batch_size: int) -> tuple[TopKSAE, Tensor]:
    """The dead-latents check's SAE and activations (built by the recipe, so the grader can send the SAE)."""
    d_in, d_sae = _dims()
    lone_rows = (0, batch_size - 1) if hidden() else ()  # the notebook's visible case stays as it was
    return dead_latents_case(_seed(8), d_in, d_sae, size(300, 10), lone_rows)


def dead_latents(fn: Callable) -> None:
    """Exercise 7: a boolean mask of latents that are zero on every one of the activations."""
    __tracebackhide__ = True
    name = "dead_latents"
    batch_size = size(64, 8)
    sae, x = _dead_case(batch_size)
    got = call_student(fn, name, sae, x, batch_size)
    if not isinstance(got, Tensor) or got.dtype != torch.bool:
        raise CheckFailed(f"`{name}` should return a boolean tensor (True = dead), not {type(got).__name__}"
                          f"{'' if not isinstance(got, Tensor) else ' of ' + str(got.dtype)}.")
    got = expect_tensor(got, name, (sae.d_sae,), "d_sae")
    with torch.no_grad():
        want = (metrics.fire_counts(sae.encode(x)) == 0).float()
        pre_positive = ~(sae.pre_activations(x) > 0).any(0)
        first_batch = metrics.fire_counts(sae.encode(x[:batch_size])) == 0
    reject_known_mistakes(got, [
        (1 - want, "your mask is inverted: True should mark latents that never fired"),
        (pre_positive.float(), "a positive pre-activation is not firing: a TopK latent fires only if it is kept, latents != 0"),
        (first_batch.float(), "you looked at the first batch only: accumulate fire counts over every batch"),
    ], want)
    expect_close(got, want, name, hint="count (sae.encode(batch) != 0) per latent over all batches; dead = count == 0")
    passed(name, reveal(f"{int(want.sum())} of {sae.d_sae} dead in the test case"))


def max_activating_examples(fn: Callable) -> None:
    """Exercise 8: the k largest activations of one latent over (row, position), as (row, position, value)."""
    __tracebackhide__ = True
    name = "max_activating_examples"
    generator = seeded(9)
    rows, positions = size(6), size(10)
    acts = torch.rand(rows, positions, generator=generator) * (torch.rand(rows, positions, generator=generator) < 0.4)
    row, (first, second) = 2, (3, 7)
    if hidden():
        row, (first, second) = int(torch.randint(rows, (), generator=generator)), torch.randperm(positions, generator=generator)[:2].tolist()
    acts[row, first], acts[row, second] = 5.0, 4.0  # two of the top examples in one row
    k = size(4)
    got = call_student(fn, name, acts.clone(), k)
    if not isinstance(got, list) or not all(isinstance(t, tuple) and len(t) == 3 for t in got):
        raise CheckFailed(f"`{name}` should return a list of (row, position, value) tuples, not {type(got).__name__}.")
    top = acts.flatten().topk(k)
    want = [(int(i) // acts.shape[1], int(i) % acts.shape[1], float(v)) for v, i in zip(top.values, top.indices)]
    as_tensor = lambda items: torch.tensor([[float(r), float(p), float(v)] for r, p, v in items])  # noqa: E731
    per_row = acts.max(dim=1)
    one_per_row = sorted(((r, int(per_row.indices[r]), float(per_row.values[r])) for r in range(acts.shape[0])),
                         key=lambda t: -t[2])[:k]
    if len(got) != k:
        raise CheckFailed(f"`{name}` returned {len(got)} examples; it should return k" + reveal(f" = {k}") + ".")
    reject_known_mistakes(as_tensor(got), [
        (as_tensor(want[::-1]), "your examples are in ascending order: strongest first"),
        (as_tensor([(p, r, v) for r, p, v in want]), "row and position are swapped: return (row, position, value)"),
        (as_tensor(one_per_row), "you took one example per row: a row can hold several top examples, take topk over all cells"),
    ], as_tensor(want))
    expect_close(as_tensor(got), as_tensor(want), name,
                 hint="top = acts.flatten().topk(k); row = index // n_positions, position = index % n_positions")
    passed(name)


@recipe
def clamp_sae(seed: int, d_in: int, d_sae: int, k: int) -> TopKSAE:
    """A TopK SAE with random weights: decoder rows of norms 1.5-3, an encoder not tied to them, nonzero biases."""
    generator = torch.Generator().manual_seed(seed)
    sae = TopKSAE(d_in, d_sae, k=k)
    with torch.no_grad():
        W_dec = torch.randn(d_sae, d_in, generator=generator)
        sae.W_dec.copy_(W_dec / W_dec.norm(dim=-1, keepdim=True) * (1.5 + 1.5 * torch.rand(d_sae, 1, generator=generator)))
        sae.W_enc.copy_(torch.randn(d_in, d_sae, generator=generator) * 0.5)
        sae.b_enc.copy_(torch.randn(d_sae, generator=generator) * 0.2)
        sae.b_dec.copy_(torch.randn(d_in, generator=generator) + 1)
    return sae.requires_grad_(False).eval()


def _clamp_case() -> tuple[TopKSAE, int, Tensor]:
    """The clamp check's SAE, latent and residual stream (batch, pos, d_in).

    Moving x along W_enc[:, latent] / ‖W_enc[:, latent]‖² raises the latent's pre-activation by the distance
    moved: positions 0 … pos-2 get raises from 0 to 8 (in a shuffled order), so the latent fires at some,
    reaching twice the clamp value, and at others is positive but outside the token's top k; at the last
    position it is pushed far below zero (it never fires there).
    """
    d_in, d_sae = _dims()
    sae = clamp_sae(_seed(11), d_in, d_sae, 3)
    generator = seeded(12)
    latent = 5 if not hidden() else int(torch.randint(d_sae, (), generator=generator))
    batch, pos = size(2), size(6)
    resid = sae.b_dec + torch.randn(batch, pos, d_in, generator=generator)
    reading = sae.W_enc[:, latent] / sae.W_enc[:, latent].norm() ** 2
    raises = torch.linspace(0, 8, batch * (pos - 1))[torch.randperm(batch * (pos - 1), generator=generator)]
    resid[:, :-1] += raises.view(batch, pos - 1, 1) * reading
    resid[:, -1] -= 6 * reading
    return sae, latent, resid


def clamp_latent_hook(fn: Callable) -> None:
    """Exercise 9: a hook that clamps one SAE latent to `value` at every position, keeping the SAE's error term."""
    __tracebackhide__ = True
    name = "clamp_latent_hook"
    sae, latent, resid = _clamp_case()
    value = 4.0 if not hidden() else round(2 + 4 * float(torch.rand((), generator=seeded(13))), 3)
    activation = resid.clone()
    out = call_student(fn, name, activation, hook_point("blocks.0.hook_resid_pre"), sae, latent, value)
    if out is None:  # TransformerLens keeps an activation the hook edited in place and returned nothing
        if torch.equal(activation, resid):
            raise CheckFailed(f"`{name}` returned None and left the activation unchanged: return the clamped activation")
        out = activation
    got = expect_tensor(out, name, resid.shape, "batch pos d_model")
    with torch.no_grad():
        direction = sae.W_dec[latent]
        latents = sae.encode(resid)
        current = latents[..., latent]
        want = resid + (value - current)[..., None] * direction
        no_topk = ((resid - sae.b_dec) @ sae.W_enc + sae.b_enc).relu()[..., latent]
        no_b_dec = sae.activation(resid @ sae.W_enc + sae.b_enc)[..., latent]
        no_b_dec_no_topk = (resid @ sae.W_enc + sae.b_enc).relu()[..., latent]
        clamped = latents.clone()
        clamped[..., latent] = value
        last, first = resid.clone(), resid.clone()
        last[:, -1] = want[:, -1]
        first[:, 0] = want[:, 0]
        only_where_fired = resid + torch.where(current > 0, value - current, 0.0)[..., None] * direction
    reject_known_mistakes(got, [
        (resid, "your hook returns the activation unchanged: add (value − f_latent(x)) · W_dec[latent] to it"),
        (resid + value * direction, "you added value · W_dec[latent] without subtracting what the latent already reads: "
                                    "add (value − f_latent(x)) · W_dec[latent], so the latent ends at `value` where it fired too"),
        (resid + (value - current)[..., None] * direction / direction.norm(),
         "you normalised the direction: use W_dec[latent] as it is (the SAE's reconstruction holds f_latent · W_dec[latent])"),
        (resid + (current - value)[..., None] * direction, "the correction has the wrong sign: add (value − f_latent(x)) · W_dec[latent]"),
        (sae.decode(clamped), "you replaced the activation by the SAE's reconstruction, which loses the SAE's error x − x̂: "
                              "add the change to the activation instead"),
        (resid + (value - no_topk)[..., None] * direction,
         "your f_latent(x) ignores the TopK: a latent outside a token's k largest reads 0; take it from sae.encode(activation)"),
        *((resid + (value - wrong)[..., None] * direction,
           "your f_latent(x) skips the SAE's pre-processing (subtracting b_dec): take it from sae.encode(activation)")
          for wrong in (no_b_dec, no_b_dec_no_topk)),
        (only_where_fired, "you clamped only where the latent already fired: clamp it at every position"),
        (last, "you clamped only the last position: clamp at every position"),
        (first, "you clamped only position 0: clamp at every position"),
    ], want)
    expect_close(got, want, name, hint="f = sae.encode(activation)[..., latent]; add (value − f) · W_dec[latent] at every position")
    passed(name)


EXERCISES = {
    "relu_sae_forward": Exercise(
        relu_sae_forward, ("relu_sae_forward",),
        forbidden=(SAE.pre_activations, SAE.encode, SAE.decode, SAE.forward, SAE.forward_with_loss),
    ),
    "relu_sae_loss": Exercise(relu_sae_loss, ("relu_sae_loss",), forbidden=(ReLUSAE.sparsity_loss, SAE.forward_with_loss)),
    "topk_sae_forward": Exercise(
        topk_sae_forward, ("topk_sae_forward",),
        forbidden=(TopKSAE.activation, TopKSAE._latents_and_reconstruction, SAE.pre_activations, SAE.encode, SAE.decode,
                   SAE.forward, SAE.forward_with_loss),
    ),
    "auxk_loss": Exercise(auxk_loss, ("auxk_loss",), forbidden=(TopKSAE.aux_loss,)),
    # forward_with_loss is the loss the text says to use; the decoder constraint is the student's to write.
    "training_step": Exercise(
        training_step, ("training_step",), forbidden=(train_step, SAE.normalize_decoder_, SAE.remove_parallel_gradient_),
    ),
    "metrics": Exercise(
        sae_metrics, ("l0", "fvu", "ce_loss_recovered"),
        forbidden=(metrics.l0, metrics.fvu, metrics.explained_variance, metrics.ce_loss_recovered),
    ),
    # The exercise tells students to use sae.encode; counting with metrics.fire_counts is a helper, not the answer.
    "dead_latents": Exercise(dead_latents, ("dead_latents",)),
    "max_activating_examples": Exercise(max_activating_examples, ("max_activating_examples",)),
    # sae.encode is the step the exercise asks for; the reference steering hooks add a fixed vector.
    "clamp_latent_hook": Exercise(clamp_latent_hook, ("clamp_latent_hook",)),
}
