"""Notebook 04's checks accept correct solutions and reject plausible wrong ones with a helpful message."""

import pytest
import torch

from mikit.checks import CheckFailed
from mikit.checks import sae as check
from mikit.sae import metrics


def fails(check_fn, *args, match):
    with pytest.raises(CheckFailed, match=match):
        check_fn(*args)


# ---- exercise 1: forward ------------------------------------------------------------------------


def forward(x, W_enc, b_enc, W_dec, b_dec):
    latents = ((x - b_dec) @ W_enc + b_enc).relu()
    return latents, latents @ W_dec + b_dec


def test_relu_sae_forward():
    check.relu_sae_forward(forward)
    fails(check.relu_sae_forward, lambda x, We, be, Wd, bd: ((x @ We + be).relu(), (x @ We + be).relu() @ Wd + bd),
          match="did not subtract b_dec")
    fails(check.relu_sae_forward, lambda x, We, be, Wd, bd: ((x - bd) @ We + be, ((x - bd) @ We + be) @ Wd + bd),
          match="apply the ReLU")
    fails(check.relu_sae_forward, lambda x, We, be, Wd, bd: (forward(x, We, be, Wd, bd)[0], forward(x, We, be, Wd, bd)[0] @ Wd),
          match="missing the decoder bias")
    fails(check.relu_sae_forward, lambda x, We, be, Wd, bd: forward(x, We, be, Wd, bd)[0], match="tuple")
    fails(check.relu_sae_forward, lambda *a: (_ for _ in ()).throw(NotImplementedError), match="NotImplementedError")


# ---- exercise 2: loss -----------------------------------------------------------------------------


def loss(x, latents, x_hat, W_dec, l1_coefficient):
    mse = (x_hat - x).pow(2).sum(-1).mean()
    return mse + l1_coefficient * (latents * W_dec.norm(dim=-1)).sum(-1).mean()


def test_relu_sae_loss():
    check.relu_sae_loss(loss)
    fails(check.relu_sae_loss, lambda x, f, xh, W, c: (xh - x).pow(2).mean() + c * (f * W.norm(dim=-1)).sum(-1).mean(),
          match="averaged over features")
    fails(check.relu_sae_loss, lambda x, f, xh, W, c: (xh - x).pow(2).sum(-1).mean() + c * f.sum(-1).mean(),
          match="ignores the decoder norms")
    fails(check.relu_sae_loss, lambda x, f, xh, W, c: (xh - x).pow(2).sum() + c * (f * W.norm(dim=-1)).sum(),
          match="summed over tokens")
    fails(check.relu_sae_loss, lambda x, f, xh, W, c: (xh - x).pow(2).sum(-1).mean(), match="sparsity term is missing")
    fails(check.relu_sae_loss, lambda x, f, xh, W, c: "0.5", match="single number")


# ---- exercise 3: TopK -------------------------------------------------------------------------------


def topk(pre, k):
    top = pre.topk(k, dim=-1)
    return torch.zeros_like(pre).scatter(-1, top.indices, top.values.relu())


def test_topk_activation():
    check.topk_activation(topk)
    # ReLU first, then top-k, keeps the same values: also correct.
    check.topk_activation(lambda pre, k: torch.zeros_like(pre).scatter(-1, pre.relu().topk(k).indices, pre.relu().topk(k).values))
    fails(check.topk_activation, lambda pre, k: torch.zeros_like(pre).scatter(-1, pre.topk(k).indices, pre.topk(k).values),
          match="negative values survive")
    fails(check.topk_activation, lambda pre, k: torch.zeros_like(pre).scatter(-1, pre.topk(k).indices, 1.0), match="0/1 mask")
    fails(check.topk_activation,
          lambda pre, k: torch.zeros_like(pre).scatter(-1, pre.topk(k, largest=False).indices, pre.topk(k, largest=False).values.relu()),
          match="k smallest")

    def batch_topk(pre, k):
        flat = pre.flatten()
        out = torch.zeros_like(flat)
        chosen = flat.topk(k * pre[..., 0].numel()).indices
        out[chosen] = flat[chosen].relu()
        return out.view(pre.shape)

    fails(check.topk_activation, batch_topk, match="BatchTopK")


# ---- exercise 4: AuxK -------------------------------------------------------------------------------


def auxk(x, x_hat, pre, dead, W_dec, k_aux):
    error = (x - x_hat).detach()
    top = pre.masked_fill(~dead, float("-inf")).topk(k_aux, dim=-1)
    error_hat = torch.zeros_like(pre).scatter(-1, top.indices, top.values.relu()) @ W_dec
    return (error_hat - error).pow(2).sum() / (error - error.mean(0)).pow(2).sum()


def test_auxk_loss():
    check.auxk_loss(auxk)
    fails(check.auxk_loss, lambda x, xh, pre, dead, W, k: auxk(x, xh, pre, torch.ones_like(dead), W, k), match="dead\\* latents only")

    def unnormalised(x, x_hat, pre, dead, W_dec, k_aux):
        error = (x - x_hat).detach()
        top = pre.masked_fill(~dead, float("-inf")).topk(k_aux, dim=-1)
        return (torch.zeros_like(pre).scatter(-1, top.indices, top.values.relu()) @ W_dec - error).pow(2).sum(-1).mean()

    fails(check.auxk_loss, unnormalised, match="error's own variance")

    def attached(x, x_hat, pre, dead, W_dec, k_aux):
        error = x - x_hat
        top = pre.masked_fill(~dead, float("-inf")).topk(k_aux, dim=-1)
        error_hat = torch.zeros_like(pre).scatter(-1, top.indices, top.values.relu()) @ W_dec
        return (error_hat - error).pow(2).sum() / (error - error.mean(0)).pow(2).sum()

    fails(check.auxk_loss, attached, match="must be detached")
    fails(check.auxk_loss, lambda *a: auxk(*a).item(), match="without a gradient")

    def no_relu(x, x_hat, pre, dead, W_dec, k_aux):
        error = (x - x_hat).detach()
        top = pre.masked_fill(~dead, float("-inf")).topk(k_aux, dim=-1)
        error_hat = torch.zeros_like(pre).scatter(-1, top.indices, top.values) @ W_dec
        return (error_hat - error).pow(2).sum() / (error - error.mean(0)).pow(2).sum()

    fails(check.auxk_loss, no_relu, match="apply ReLU")


# ---- exercise 5: decoder constraint ------------------------------------------------------------------


def normalize(W_dec):
    return W_dec / W_dec.norm(dim=-1, keepdim=True)


def remove_parallel(W_dec, grad):
    unit = normalize(W_dec)
    return grad - (grad * unit).sum(-1, keepdim=True) * unit


def test_decoder_constraint():
    check.decoder_constraint(normalize, remove_parallel)
    fails(check.decoder_constraint, lambda W: W / W.norm(dim=0, keepdim=True), remove_parallel, match="normalised columns")
    fails(check.decoder_constraint, lambda W: W / W.norm(), remove_parallel, match="whole matrix")
    fails(check.decoder_constraint, normalize, lambda W, g: g, match="unchanged")
    fails(check.decoder_constraint, normalize, lambda W, g: (g * W).sum(-1, keepdim=True) * W, match="kept the parallel")
    fails(check.decoder_constraint, normalize, lambda W, g: g - (g * W).sum(-1, keepdim=True) * W, match="not unit-norm")
    fails(check.decoder_constraint, normalize, lambda W, g: g - (g * W).sum(0, keepdim=True) * W, match="summed over latents")


# ---- exercise 6: metrics ------------------------------------------------------------------------------


def ce_recovered(clean, sae, zero):
    return (zero - sae) / (zero - clean)


def test_sae_metrics():
    check.sae_metrics(metrics.l0, metrics.fvu, ce_recovered)
    fails(check.sae_metrics, lambda f: (f != 0).sum().item(), metrics.fvu, ce_recovered, match="total count")
    fails(check.sae_metrics, lambda f: (f != 0).float().mean().item(), metrics.fvu, ce_recovered, match="fraction of latents")
    fails(check.sae_metrics, lambda f: f.sum(-1).mean(), metrics.fvu, ce_recovered, match="summed the activations")
    fails(check.sae_metrics, metrics.l0, lambda x, xh: ((x - xh).pow(2).sum() / x.pow(2).sum()).item(), ce_recovered,
          match="Σ‖x‖²")
    fails(check.sae_metrics, metrics.l0, metrics.explained_variance, ce_recovered, match="explained variance")
    fails(check.sae_metrics, metrics.l0, lambda x, xh: ((x - xh).pow(2).sum(0) / (x - x.mean(0)).pow(2).sum(0)).mean(),
          ce_recovered, match="per-feature ratios")
    fails(check.sae_metrics, metrics.l0, metrics.fvu, lambda c, s, z: (s - c) / (z - c), match="fraction \\*lost\\*")
    fails(check.sae_metrics, metrics.l0, metrics.fvu, lambda c, s, z: (z - s) / (s - c), match="whole gap")
    fails(check.sae_metrics, metrics.l0, metrics.fvu, lambda c, s, z: c / s, match="ratio of losses")


# ---- exercise 7: dead latents ----------------------------------------------------------------------------


def dead(sae, activations, batch_size):
    counts = torch.zeros(sae.d_sae, dtype=torch.long)
    for start in range(0, activations.shape[0], batch_size):
        counts += (sae.encode(activations[start : start + batch_size]) != 0).sum(0)
    return counts == 0


def test_dead_latents_case_separates_the_mistakes():
    sae, x = check._dead_case()
    with torch.no_grad():
        want = metrics.fire_counts(sae.encode(x)) == 0
        pre_positive = ~(sae.pre_activations(x) > 0).any(0)
        first_batch = metrics.fire_counts(sae.encode(x[:64])) == 0
    assert 0 < want.sum() < sae.d_sae and not want[0] and first_batch[0]
    assert not torch.equal(want, pre_positive) and not torch.equal(want, first_batch)


def test_dead_latents():
    check.dead_latents(dead)
    fails(check.dead_latents, lambda s, x, b: ~dead(s, x, b), match="inverted")
    fails(check.dead_latents, lambda s, x, b: ~(s.pre_activations(x) > 0).any(0), match="positive pre-activation")
    fails(check.dead_latents, lambda s, x, b: dead(s, x[:b], b), match="first batch only")
    fails(check.dead_latents, lambda s, x, b: metrics.fire_counts(s.encode(x)), match="boolean tensor")


# ---- exercise 8: max-activating examples -------------------------------------------------------------------


def examples(acts, k):
    top = acts.flatten().topk(k)
    n = acts.shape[1]
    return [(int(i) // n, int(i) % n, float(v)) for v, i in zip(top.values, top.indices)]


def test_max_activating_examples():
    check.max_activating_examples(examples)
    fails(check.max_activating_examples, lambda a, k: examples(a, k)[::-1], match="ascending")
    fails(check.max_activating_examples, lambda a, k: [(p, r, v) for r, p, v in examples(a, k)], match="swapped")

    def one_per_row(acts, k):
        best = acts.max(dim=1)
        rows = best.values.topk(k).indices
        return [(int(r), int(best.indices[r]), float(best.values[r])) for r in rows]

    fails(check.max_activating_examples, one_per_row, match="one example per row")
    fails(check.max_activating_examples, lambda a, k: examples(a, k - 1), match="should return k = 4")
    fails(check.max_activating_examples, lambda a, k: a.flatten().topk(k), match="list of \\(row, position, value\\)")


# ---- exercise 9: steering hook ------------------------------------------------------------------------------


def steer(activation, hook, direction, value):
    return activation + value * direction


def test_steering_hook():
    check.steering_hook(steer)

    def in_place(activation, hook, direction, value):
        activation += value * direction
        return activation

    check.steering_hook(in_place)
    fails(check.steering_hook, lambda a, h, d, v: a + v * d / d.norm(), match="normalised the direction")

    def last_only(activation, hook, direction, value):
        activation[:, -1] += value * direction
        return activation

    fails(check.steering_hook, last_only, match="only the last position")
    fails(check.steering_hook, lambda a, h, d, v: (v * d).expand_as(a), match="replaced the residual stream")
    fails(check.steering_hook, lambda a, h, d, v: a * (1 + v), match="scaled the stream")
