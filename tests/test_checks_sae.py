"""Notebook 04's checks accept correct solutions and reject plausible wrong ones with a helpful message.

Every test of an exercise runs twice over: as the notebook runs the check (`variant` 0) and as the
grader runs it, on hidden inputs (`variant` 1-3, one of each size offset). The hidden tests are also run
through the wire (`mikit.hidden`, its kernel side in this process), with the reference, the correct
alternatives of tests/alternatives/sae.py, and functions that only return the visible check's answers.
"""

import functools
import pytest
import torch

from replay import assert_replayed_answers_fail  # tests/replay.py
from alternatives import sae as alternatives  # tests/alternatives/
from alternatives import assert_two_each, check_hidden_variants, listed
from mikit import hidden
from mikit.checks import CheckFailed, hidden_variant
from mikit.checks import sae as check
from mikit.sae import TopKSAE, metrics
from mikit.sae.training import train_step


def fails(check_fn, *args, match):
    with pytest.raises(CheckFailed, match=match):
        check_fn(*args)


# ---- exercise 1: forward ------------------------------------------------------------------------


def forward(x, W_enc, b_enc, W_dec, b_dec):
    latents = ((x - b_dec) @ W_enc + b_enc).relu()
    return latents, latents @ W_dec + b_dec


def test_relu_sae_forward(variant):
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


def test_relu_sae_loss(variant):
    check.relu_sae_loss(loss)
    fails(check.relu_sae_loss, lambda x, f, xh, W, c: (xh - x).pow(2).mean() + c * (f * W.norm(dim=-1)).sum(-1).mean(),
          match="averaged over features")
    fails(check.relu_sae_loss, lambda x, f, xh, W, c: (xh - x).pow(2).sum(-1).mean() + c * f.sum(-1).mean(),
          match="ignores the decoder norms")
    fails(check.relu_sae_loss, lambda x, f, xh, W, c: (xh - x).pow(2).sum() + c * (f * W.norm(dim=-1)).sum(),
          match="summed over tokens")
    fails(check.relu_sae_loss, lambda x, f, xh, W, c: (xh - x).pow(2).sum(-1).mean(), match="sparsity term is missing")
    fails(check.relu_sae_loss, lambda x, f, xh, W, c: "0.5", match="single number")


# ---- exercise 3: the TopK SAE forward pass ------------------------------------------------------------------


def topk(pre, k):
    top = pre.topk(k, dim=-1)
    return torch.zeros_like(pre).scatter(-1, top.indices, top.values.relu())


def topk_forward(x, W_enc, b_enc, W_dec, b_dec, k):
    latents = topk((x - b_dec) @ W_enc + b_enc, k)
    return latents, latents @ W_dec + b_dec


def with_activation(activation):
    """A forward pass built on `activation(pre, k)`, centred and decoded as it should be."""
    def forward(x, W_enc, b_enc, W_dec, b_dec, k):
        latents = activation((x - b_dec) @ W_enc + b_enc, k)
        return latents, latents @ W_dec + b_dec
    return forward


def test_topk_sae_forward(variant):
    check.topk_sae_forward(topk_forward)
    # ReLU first, then top-k, keeps the same values: also correct.
    check.topk_sae_forward(with_activation(lambda pre, k: torch.zeros_like(pre).scatter(-1, pre.relu().topk(k).indices,
                                                                                      pre.relu().topk(k).values)))
    fails(check.topk_sae_forward, with_activation(lambda pre, k: torch.zeros_like(pre).scatter(-1, pre.topk(k).indices, pre.topk(k).values)),
          match="negative values survive")
    fails(check.topk_sae_forward, with_activation(lambda pre, k: torch.zeros_like(pre).scatter(-1, pre.topk(k).indices, 1.0)),
          match="0/1 mask")
    fails(check.topk_sae_forward, with_activation(
        lambda pre, k: torch.zeros_like(pre).scatter(-1, pre.topk(k, largest=False).indices, pre.topk(k, largest=False).values.relu())),
          match="k smallest")

    def batch_topk(pre, k):
        flat = pre.flatten()
        out = torch.zeros_like(flat)
        chosen = flat.topk(k * pre[..., 0].numel()).indices
        out[chosen] = flat[chosen].relu()
        return out.view(pre.shape)

    fails(check.topk_sae_forward, with_activation(batch_topk), match="BatchTopK")
    fails(check.topk_sae_forward, with_activation(lambda pre, k: pre.relu()), match="every positive pre-activation")

    def uncentred(x, W_enc, b_enc, W_dec, b_dec, k):
        latents = topk(x @ W_enc + b_enc, k)
        return latents, latents @ W_dec + b_dec

    fails(check.topk_sae_forward, uncentred, match="did not subtract b_dec")
    fails(check.topk_sae_forward, lambda x, We, be, Wd, bd, k: (topk_forward(x, We, be, Wd, bd, k)[0], topk_forward(x, We, be, Wd, bd, k)[0] @ Wd),
          match="missing the decoder bias")

    def decodes_all(x, W_enc, b_enc, W_dec, b_dec, k):
        pre = (x - b_dec) @ W_enc + b_enc
        return topk(pre, k), pre.relu() @ W_dec + b_dec

    fails(check.topk_sae_forward, decodes_all, match="decode only the k you kept")
    fails(check.topk_sae_forward, lambda x, We, be, Wd, bd, k: (topk_forward(x, We, be, Wd, bd, k)[0], topk_forward(x, We, be, Wd, bd, k)[0] @ We.T + bd),
          match="not the encoder's columns")
    fails(check.topk_sae_forward, lambda x, We, be, Wd, bd, k: topk_forward(x, We, be, Wd, bd, k)[0], match="tuple")
    fails(check.topk_sae_forward, lambda x, We, be, Wd, bd, k: tuple(t.flatten(0, 1) for t in topk_forward(x, We, be, Wd, bd, k)),
          match="shape")


# ---- exercise 4: AuxK -------------------------------------------------------------------------------


def auxk(x, x_hat, pre, dead, W_dec, k_aux):
    error = (x - x_hat).detach()
    top = pre.masked_fill(~dead, float("-inf")).topk(k_aux, dim=-1)
    error_hat = torch.zeros_like(pre).scatter(-1, top.indices, top.values.relu()) @ W_dec
    return (error_hat - error).pow(2).sum() / (error - error.mean(0)).pow(2).sum()


def test_auxk_loss(variant):
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


# ---- exercise 5: the training step ------------------------------------------------------------------


def step(sae, optimizer, x):
    loss = sae.forward_with_loss(x).loss
    loss.backward()
    W_dec = sae.W_dec
    with torch.no_grad():
        unit = W_dec / W_dec.norm(dim=-1, keepdim=True)
        W_dec.grad -= (W_dec.grad * unit).sum(-1, keepdim=True) * unit
    optimizer.step()
    with torch.no_grad():
        W_dec /= W_dec.norm(dim=-1, keepdim=True)
    optimizer.zero_grad()
    return loss.item()


def step_with(*, project=True, project_after=False, project_dim=-1, keep_parallel=False, unit_rows=False, normalise="after",
              norm_dim=-1, zero=True, use_mse=False, returned="float", edit_x=False, replace_W_dec=False):
    """The step written with one mistake (each keyword says which)."""

    def project_grad(W_dec):
        with torch.no_grad():
            unit = W_dec if unit_rows else W_dec / W_dec.norm(dim=-1, keepdim=True)
            parallel = (W_dec.grad * unit).sum(project_dim, keepdim=True) * unit
            if keep_parallel:
                W_dec.grad.copy_(parallel)
            else:
                W_dec.grad -= parallel

    def renormalise(W_dec):
        with torch.no_grad():
            W_dec /= W_dec.norm() if norm_dim is None else W_dec.norm(dim=norm_dim, keepdim=True)

    def wrong(sae, optimizer, x):
        if normalise == "start":
            renormalise(sae.W_dec)
        if edit_x:  # centred in place, which centres the caller's batch too
            x -= sae.b_dec.detach()
            out = sae.forward_with_loss(x + sae.b_dec.detach())
        else:
            out = sae.forward_with_loss(x)
        loss = out.mse if use_mse else out.loss
        loss.backward()
        if project and not project_after:
            project_grad(sae.W_dec)
        if normalise == "before_step":
            renormalise(sae.W_dec)
        optimizer.step()
        if project and project_after:
            project_grad(sae.W_dec)
        if normalise == "after":
            if replace_W_dec:
                sae.W_dec = torch.nn.Parameter(sae.W_dec / sae.W_dec.norm(dim=-1, keepdim=True))
            else:
                renormalise(sae.W_dec)
        if zero:
            optimizer.zero_grad()
        if returned == "tensor":
            return out.loss
        if returned == "detached":
            return out.loss.detach()
        if returned == "after":
            with torch.no_grad():
                return sae.forward_with_loss(x).loss.item()
        return out.loss.item()

    return wrong


def test_training_step(variant):
    check.training_step(step)
    fails(check.training_step, step_with(project=False), match="component along each row still in it")
    fails(check.training_step, step_with(project_after=True), match="component along each row still in it")
    fails(check.training_step, step_with(keep_parallel=True), match="kept only the gradient's component")
    fails(check.training_step, step_with(project_dim=0), match="sums over latents")
    fails(check.training_step, step_with(unit_rows=True), match="takes the rows for unit vectors")
    fails(check.training_step, step_with(normalise="none"), match="drift off unit norm")
    fails(check.training_step, step_with(normalise="before_step"), match="before optimizer.step()")
    fails(check.training_step, step_with(normalise="start"), match="not unit-norm when your step returns")
    fails(check.training_step, step_with(norm_dim=0), match="normalised the columns")
    fails(check.training_step, step_with(norm_dim=None), match="norm of the whole matrix")
    fails(check.training_step, step_with(zero=False), match="pile up")
    fails(check.training_step, step_with(use_mse=True), match="reconstruction error alone")
    fails(check.training_step, step_with(returned="tensor"), match="returned a tensor")
    fails(check.training_step, step_with(returned="detached"), match="returned a tensor")
    fails(check.training_step, step_with(returned="after"), match="loss after the update")
    fails(check.training_step, step_with(edit_x=True), match="changed x in place")
    fails(check.training_step, step_with(replace_W_dec=True), match="replaced sae.W_dec")
    fails(check.training_step, lambda sae, optimizer, x: step(sae, optimizer, x) > 0, match="float")

    def renormalised_data_over_dim0(sae, optimizer, x):
        loss = sae.forward_with_loss(x).loss
        loss.backward()
        with torch.no_grad():
            unit = sae.W_dec / sae.W_dec.norm(dim=-1, keepdim=True)
            sae.W_dec.grad -= (sae.W_dec.grad * unit).sum(-1, keepdim=True) * unit
        optimizer.step()
        sae.W_dec.data = sae.W_dec.data / sae.W_dec.data.norm(dim=0, keepdim=True)
        optimizer.zero_grad()
        return loss.item()

    fails(check.training_step, renormalised_data_over_dim0, match="normalised the columns")


def test_the_training_case_separates_the_mistakes_through_the_losses_alone(variant):
    """All the grader sees are the losses: each mistake must move them well past the tolerance."""
    for architecture, seed, d_sae in [("topk", 14, check.D_SAE), ("relu", 15, check.D_SAE // 2)]:
        sae, optimizer = check.training_case(check._seed(seed), check.size(check.D_IN), check.size(d_sae, 4), architecture)
        xs = check._training_batches(sae, seed + 10)
        want = check._losses(check._reference_step, (sae, optimizer), xs)
        for mistake, message in check._TRAINING_MISTAKES:
            losses = check._losses(mistake, (sae, optimizer), xs)
            gap = max(abs(a - b) / (1e-4 + 1e-3 * abs(b)) for a, b in zip(losses, want))
            assert gap > 5, (architecture, message, gap)


# ---- exercise 6: metrics ------------------------------------------------------------------------------


def ce_recovered(clean, sae, zero):
    return (zero - sae) / (zero - clean)


def count_l0(latents):  # the notebook's solutions (mikit.sae.metrics' own are forbidden in the hidden test)
    return (latents != 0).sum(-1).float().mean().item()


def unexplained(x, x_hat):
    return ((x - x_hat).pow(2).sum() / (x - x.mean(0)).pow(2).sum()).item()


def test_sae_metrics(variant):
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


def test_dead_latents_case_separates_the_mistakes(variant):
    sae, x = check._dead_case(check.size(64, 8))
    with torch.no_grad():
        want = metrics.fire_counts(sae.encode(x)) == 0
        pre_positive = ~(sae.pre_activations(x) > 0).any(0)
        first_batch = metrics.fire_counts(sae.encode(x[: check.size(64, 8)])) == 0
    assert 0 < want.sum() < sae.d_sae and not want[0] and first_batch[0]
    assert not torch.equal(want, pre_positive) and not torch.equal(want, first_batch)


def test_dead_latents(variant):
    check.dead_latents(dead)
    fails(check.dead_latents, lambda s, x, b: ~dead(s, x, b), match="inverted")
    fails(check.dead_latents, lambda s, x, b: ~(s.pre_activations(x) > 0).any(0), match="positive pre-activation")
    fails(check.dead_latents, lambda s, x, b: dead(s, x[:b], b), match="first batch only")
    fails(check.dead_latents, lambda s, x, b: metrics.fire_counts(s.encode(x)), match="boolean tensor")


def test_dead_latents_hidden_case_catches_loops_that_skip_a_row():
    # Each batch's first or last row left out: a latent that fires there alone is called dead.
    skip_first = lambda s, x, b: dead(s, torch.cat([x[i + 1 : i + b] for i in range(0, len(x), b)]), b)  # noqa: E731
    skip_last = lambda s, x, b: dead(s, torch.cat([x[i : i + b - 1] for i in range(0, len(x), b)]), b)  # noqa: E731
    with hidden.active(), hidden_variant(3):
        check.dead_latents(dead)
        for wrong in (skip_first, skip_last):
            fails(check.dead_latents, wrong, match="differs from the reference")
    hidden.reset()


# ---- exercise 8: max-activating examples -------------------------------------------------------------------


def examples(acts, k):
    top = acts.flatten().topk(k)
    n = acts.shape[1]
    return [(int(i) // n, int(i) % n, float(v)) for v, i in zip(top.values, top.indices)]


def test_max_activating_examples(variant):
    check.max_activating_examples(examples)
    fails(check.max_activating_examples, lambda a, k: examples(a, k)[::-1], match="ascending")
    fails(check.max_activating_examples, lambda a, k: [(p, r, v) for r, p, v in examples(a, k)], match="swapped")

    def one_per_row(acts, k):
        best = acts.max(dim=1)
        rows = best.values.topk(k).indices
        return [(int(r), int(best.indices[r]), float(best.values[r])) for r in rows]

    fails(check.max_activating_examples, one_per_row, match="one example per row")
    fails(check.max_activating_examples, lambda a, k: examples(a, k - 1), match="should return k")
    fails(check.max_activating_examples, lambda a, k: a.flatten().topk(k), match="list of \\(row, position, value\\)")


# ---- exercise 9: clamping a latent -------------------------------------------------------------------------


def clamp(activation, hook, sae, latent, value):
    current = sae.encode(activation)[..., latent]
    return activation + (value - current)[..., None] * sae.W_dec[latent]


def with_latent(fn):
    """A hook built on a wrong reading of the latent, f = fn(sae, activation) of shape (batch, pos)."""
    return lambda a, h, s, l, v: a + (v - fn(s, a)[..., l])[..., None] * s.W_dec[l]


def test_clamp_case_separates_the_mistakes(variant):
    sae, latent, resid = check._clamp_case()
    with torch.no_grad():
        fired = sae.encode(resid)[..., latent] > 0
        positive = sae.pre_activations(resid)[..., latent] > 0
    assert fired.any() and not fired[:, -1].any()  # the latent fires somewhere, never at the last position
    assert (positive & ~fired).any()  # a positive pre-activation outside the top k
    assert not torch.isclose(sae.W_dec[latent].norm(), torch.tensor(1.0), atol=0.2)
    assert (sae.b_dec.abs() > 0.1).any()


def test_clamp_latent_hook(variant):
    check.clamp_latent_hook(clamp)

    def in_place(activation, hook, sae, latent, value):
        activation += (value - sae.encode(activation)[..., latent])[..., None] * sae.W_dec[latent]
        return activation

    check.clamp_latent_hook(in_place)
    fails(check.clamp_latent_hook, lambda a, h, s, l, v: a + v * s.W_dec[l], match="without subtracting what the latent already reads")
    fails(check.clamp_latent_hook, lambda a, h, s, l, v: a + (v - s.encode(a)[..., l])[..., None] * s.W_dec[l] / s.W_dec[l].norm(),
          match="normalised the direction")
    fails(check.clamp_latent_hook, lambda a, h, s, l, v: 2 * a - clamp(a, h, s, l, v), match="wrong sign")
    fails(check.clamp_latent_hook, lambda a, h, s, l, v: s.decode(s.encode(a).index_fill(-1, torch.tensor([l]), v)),
          match="loses the SAE's error")
    fails(check.clamp_latent_hook, with_latent(lambda s, a: s.pre_activations(a).relu()), match="ignores the TopK")
    fails(check.clamp_latent_hook, with_latent(lambda s, a: s.activation(a @ s.W_enc + s.b_enc)), match="pre-processing")
    fails(check.clamp_latent_hook, with_latent(lambda s, a: (a @ s.W_enc + s.b_enc).relu()), match="pre-processing")

    def where_fired(activation, hook, sae, latent, value):
        current = sae.encode(activation)[..., latent]
        return activation + ((value - current) * (current > 0))[..., None] * sae.W_dec[latent]

    fails(check.clamp_latent_hook, where_fired, match="only where the latent already fired")

    def last_only(activation, hook, sae, latent, value):
        activation[:, -1:] = clamp(activation[:, -1:], hook, sae, latent, value)
        return activation

    fails(check.clamp_latent_hook, last_only, match="only the last position")

    def first_only(activation, hook, sae, latent, value):
        activation[:, :1] = clamp(activation[:, :1], hook, sae, latent, value)

    fails(check.clamp_latent_hook, first_only, match="only position 0")  # in place, returning None
    fails(check.clamp_latent_hook, lambda a, h, s, l, v: None, match="returned None and left the activation unchanged")
    fails(check.clamp_latent_hook, lambda a, h, s, l, v: a, match="returns the activation unchanged")
    fails(check.clamp_latent_hook, lambda a, h, s, l, v: clamp(a, h, s, l, v)[:, :-1], match="shape")


def test_clamp_latent_hook_accepts_an_in_place_hook_that_returns_none(variant, capsys):
    check.clamp_latent_hook(alternatives.clamp_latent_hook__in_place_no_return)
    assert "✓ clamp_latent_hook" in capsys.readouterr().out


def test_clamp_latent_hook_receives_a_hook_point():
    def needs_a_name(activation, hook, sae, latent, value):
        assert hook.name.endswith("hook_resid_pre")
        return clamp(activation, hook, sae, latent, value)

    check.clamp_latent_hook(needs_a_name)


# ---- hidden tests -------------------------------------------------------------------------------------------

REFERENCE = {  # grade_id -> the reference implementation of each name the check receives
    "relu_sae_forward": (forward,),
    "relu_sae_loss": (loss,),
    "topk_sae_forward": (topk_forward,),
    "auxk_loss": (auxk,),
    "training_step": (step,),
    "metrics": (count_l0, unexplained, ce_recovered),
    "dead_latents": (dead,),
    "max_activating_examples": (examples,),
    "clamp_latent_hook": (clamp,),
}


@pytest.fixture
def wire(hidden_wire):
    """`wire(grade_id, *functions, seed=1)`: the exercise's hidden test through the wire (tests/conftest.py)."""
    return functools.partial(hidden_wire, check)


@pytest.mark.parametrize("gid", list(REFERENCE))
def test_the_reference_passes_the_hidden_test_through_the_wire(gid, wire, capsys):
    for seed in (1, 2, 3):
        wire(gid, *REFERENCE[gid], seed=seed)
    assert capsys.readouterr().out.count("✓") == 3


def test_auxk_gradients_cross_the_wire(wire):
    wire("auxk_loss", auxk)

    def attached(x, x_hat, pre, dead, W_dec, k_aux):  # the right value, but x_hat gets a gradient
        error = x - x_hat
        top = pre.masked_fill(~dead, float("-inf")).topk(k_aux, dim=-1)
        error_hat = torch.zeros_like(pre).scatter(-1, top.indices, top.values.relu()) @ W_dec
        return (error_hat - error).pow(2).sum() / (error - error.mean(0)).pow(2).sum()

    with pytest.raises(CheckFailed, match="must be detached"):
        wire("auxk_loss", attached)
    with pytest.raises(CheckFailed, match="without a gradient"):
        wire("auxk_loss", lambda *args: auxk(*args).item())
    with pytest.raises(CheckFailed, match="no gradient reaches"):
        wire("auxk_loss", lambda x, x_hat, pre, dead, W_dec, k: auxk(x, x_hat, pre, dead, W_dec.detach(), k) + 0 * W_dec.sum())


def test_an_in_place_clamp_hook_is_graded_through_the_wire(wire):
    wire("clamp_latent_hook", alternatives.clamp_latent_hook__in_place_no_return)
    wire("clamp_latent_hook", alternatives.clamp_latent_hook__in_place_no_return, kernel_grad=False)
    with pytest.raises(CheckFailed, match="returned None and left the activation unchanged"):
        wire("clamp_latent_hook", lambda activation, hook, sae, latent, value: None)


def test_training_steps_are_judged_through_the_wire_by_their_losses(wire):
    """Under the grader the student's SAE stays in their kernel: the losses each call returns carry the verdict."""
    wire("training_step", alternatives.training_step__zero_first_in_place_projection)
    for wrong, match in [(step_with(project=False), "component along each row still in it"),
                         (step_with(normalise="none"), "drift off unit norm"), (step_with(zero=False), "pile up"),
                         (step_with(norm_dim=0), "normalised the columns"), (step_with(returned="tensor"), "returned a tensor"),
                         (step_with(edit_x=True), "changed x in place"), (step_with(use_mse=True), "reconstruction error alone"),
                         (step_with(normalise="start"), "not unit-norm when your step returns"),
                         (step_with(normalise="before_step"), "before optimizer.step()")]:
        with pytest.raises(CheckFailed, match=match):
            wire("training_step", wrong)


def test_the_clamp_sae_is_rebuilt_identically():
    with hidden.active(), hidden_variant(2):
        sae, latent, x = check._clamp_case()
        hidden.reset()
        again, latent_again, x_again = check._clamp_case()
    hidden.reset()
    assert again is not sae and latent == latent_again and torch.equal(x, x_again) and sae.d_sae == check.D_SAE + 12
    for name, weight in sae.state_dict().items():
        assert torch.equal(weight, again.state_dict()[name]), name


def test_calling_the_reference_scores_zero(wire):
    with pytest.raises(CheckFailed, match="calls the reference `mikit.sae.metrics.l0`"):
        wire("metrics", lambda latents: metrics.l0(latents), unexplained, ce_recovered)  # noqa: PLW0108
    with pytest.raises(CheckFailed, match="calls the reference `mikit.sae.architectures.TopKSAE.activation`"):
        wire("topk_sae_forward", lambda x, We, be, Wd, bd, k: (
            TopKSAE(4, We.shape[1], k=k).activation((x - bd) @ We + be), topk_forward(x, We, be, Wd, bd, k)[1]))
    with pytest.raises(CheckFailed, match="calls the reference `mikit.sae.training.train_step`"):
        wire("training_step", lambda sae, optimizer, x: train_step(sae, optimizer, x).loss.item())
    with pytest.raises(CheckFailed, match="calls the reference `mikit.sae.architectures.SAE.normalize_decoder_`"):
        wire("training_step", lambda sae, optimizer, x: (step(sae, optimizer, x), sae.normalize_decoder_())[0])
    wire("dead_latents", lambda sae, x, b: metrics.fire_counts(sae.encode(x)) == 0)  # helpers the text allows
    wire("clamp_latent_hook", clamp)  # sae.encode is what the text asks for


def test_the_dead_latents_sae_is_rebuilt_identically():
    with hidden.active(), hidden_variant(2):
        sae, x = check._dead_case(72)
        hidden.reset()
        again, x_again = check._dead_case(72)
    hidden.reset()
    assert again is not sae and torch.equal(x, x_again) and sae.d_sae == check.D_SAE + 12
    for name, weight in sae.state_dict().items():
        assert torch.equal(weight, again.state_dict()[name]), name


@pytest.mark.parametrize("gid", list(REFERENCE))
def test_the_visible_answers_fail_the_hidden_test(gid, wire):
    assert_replayed_answers_fail(check.EXERCISES[gid], REFERENCE[gid], wire, gid)


ALTERNATIVES = listed(alternatives)


def test_every_exercise_has_two_alternatives():
    assert_two_each(alternatives, [name for exercise in check.EXERCISES.values() for name in exercise.students])


@pytest.mark.parametrize("name", ALTERNATIVES)
def test_alternative_passes_visible_and_hidden_checks(name, wire, capsys):
    function = name.split("__")[0]
    gid = next(gid for gid, exercise in check.EXERCISES.items() if function in exercise.students)
    exercise = check.EXERCISES[gid]
    functions = [getattr(alternatives, name) if student == function else reference
                 for student, reference in zip(exercise.students, REFERENCE[gid])]
    exercise.check(*functions)
    check_hidden_variants(exercise, functions)
    wire(gid, *functions, seed=5)
    assert capsys.readouterr().out.count("✓") == 5
