"""mikit.sae training and evaluation on a tiny random transformer: the loop learns, scaling folds, CE splices."""

import pytest
import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig

from mikit.sae import TopKSAE, metrics
from mikit.sae.evaluation import evaluate, splice_hook
from mikit.sae.training import (
    ActivationBuffer, CachedActivations, fold_input_scale_, input_scale, train_sae, train_step,
)

HOOK = "blocks.1.hook_resid_pre"


@pytest.fixture(scope="module")
def model():
    cfg = HookedTransformerConfig(n_layers=2, d_model=32, n_heads=4, d_head=8, d_mlp=64, d_vocab=60, n_ctx=32,
                                  act_fn="gelu", normalization_type="LN", seed=0, device="cpu")
    return HookedTransformer(cfg).eval()


@pytest.fixture(scope="module")
def rows():
    return torch.randint(1, 60, (64, 17), generator=torch.Generator().manual_seed(0)).index_fill_(1, torch.tensor([0]), 0)


def test_buffer_serves_every_non_bos_token_once_per_epoch(model, rows):
    buffer = ActivationBuffer(model, HOOK, rows, batch_size=64, rows_per_refill=16)
    batches = list(buffer)
    assert buffer.n_tokens == 64 * 16 and sum(b.shape[0] for b in batches) == buffer.n_tokens
    _, cache = model.run_with_cache(rows, names_filter=HOOK)
    want = cache[HOOK][:, 1:].flatten(0, 1)
    got = torch.cat(batches)
    # The same vectors, shuffled: compare sorted by their first coordinate.
    torch.testing.assert_close(got[got[:, 0].argsort()], want[want[:, 0].argsort()], atol=1e-5, rtol=0)
    assert not torch.equal(got, want)


def test_collect_returns_one_epoch_in_row_order_and_cached_batches_reshuffle(model, rows):
    buffer = ActivationBuffer(model, HOOK, rows, rows_per_refill=24)
    _, cache = model.run_with_cache(rows, names_filter=HOOK)
    collected = buffer.collect(progress=False)
    torch.testing.assert_close(collected, cache[HOOK][:, 1:].flatten(0, 1), atol=1e-5, rtol=0)
    cached = CachedActivations(collected, batch_size=128, seed=0)
    first, second = torch.cat(list(cached)), torch.cat(list(cached))
    assert not torch.equal(first, second)  # a new order each epoch, the same vectors
    for epoch in (first, second):
        torch.testing.assert_close(epoch[epoch[:, 0].argsort()], collected[collected[:, 0].argsort()])
    assert sum(b.shape[0] for b in CachedActivations(collected, batch_size=100)) == 1000  # partial batch dropped
    with pytest.raises(ValueError, match="at least batch_size=2048"):
        CachedActivations(collected, batch_size=2048)

def test_folding_the_input_scale_keeps_latents_and_reconstructs_raw_inputs():
    sae = TopKSAE(8, 32, k=4)
    x = torch.randn(100, 8) * 7 + 3
    scale = input_scale(x)
    assert (x * scale).pow(2).sum(-1).mean().item() == pytest.approx(8, rel=1e-4)
    latents, reconstruction = sae.encode(x * scale), sae(x * scale) / scale
    fold_input_scale_(sae, scale)
    torch.testing.assert_close(sae.encode(x), latents, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(sae(x), reconstruction, atol=1e-4, rtol=1e-4)


def test_train_step_is_the_constrained_adam_step():
    """Against the step written out with plain tensors: Adam on the loss's gradient with each decoder row's
    parallel component removed, then rows renormalised. Without the projection Adam lands elsewhere."""
    import copy

    torch.manual_seed(0)
    sae, x = TopKSAE(8, 16, k=4), torch.randn(32, 8)
    by_hand, unprojected = copy.deepcopy(sae), copy.deepcopy(sae)
    optimizer = torch.optim.Adam(sae.parameters(), lr=1e-2)
    for step in range(3):
        out = train_step(sae, optimizer, x)
        assert torch.allclose(sae.W_dec.norm(dim=-1), torch.ones(16), atol=1e-6)
        assert all(p.grad is None for p in sae.parameters())
    for model, project in ((by_hand, True), (unprojected, False)):
        adam = torch.optim.Adam(model.parameters(), lr=1e-2)
        for step in range(3):
            model.forward_with_loss(x).loss.backward()
            if project:
                unit = model.W_dec.detach() / model.W_dec.detach().norm(dim=-1, keepdim=True)
                model.W_dec.grad -= (model.W_dec.grad * unit).sum(-1, keepdim=True) * unit
            adam.step()
            adam.zero_grad()
            with torch.no_grad():
                model.W_dec /= model.W_dec.norm(dim=-1, keepdim=True)
    assert out.loss.item() > 0
    for name, weight in sae.state_dict().items():
        torch.testing.assert_close(weight, by_hand.state_dict()[name], msg=name)
    assert not torch.allclose(sae.W_dec, unprojected.W_dec, atol=1e-4)


def test_training_on_model_activations_explains_most_variance(model, rows):
    torch.manual_seed(0)
    sae = TopKSAE(32, 128, k=8)
    buffer = ActivationBuffer(model, HOOK, rows, batch_size=128)
    history = train_sae(sae, buffer, n_tokens=128 * 300, lr=3e-3, progress=False)
    assert history["explained_variance"][-1] > history["explained_variance"][0]
    x = torch.cat(list(buffer))
    assert metrics.explained_variance(x, sae(x)) > 0.8  # measured 0.9 on this random model's stream
    assert metrics.l0(sae.encode(x)) <= 8


def test_evaluate_splices_the_sae_into_the_forward_pass(model, rows):
    torch.manual_seed(0)
    sae = TopKSAE(32, 128, k=8)
    train_sae(sae, ActivationBuffer(model, HOOK, rows, batch_size=128), n_tokens=128 * 300, lr=3e-3, progress=False)
    report = evaluate(model, sae, HOOK, rows[:16], batch_size=8)
    spliced = model.run_with_hooks(rows[:16], return_type="loss", fwd_hooks=[(HOOK, splice_hook(sae))]).item()
    assert report["ce_sae"] == pytest.approx(spliced, rel=1e-5)
    assert report["ce_clean"] == pytest.approx(model(rows[:16], return_type="loss").item(), rel=1e-5)
    def zero(activation, hook):
        activation[:, 1:] = 0
        return activation

    zeroed = model.run_with_hooks(rows[:16], return_type="loss", fwd_hooks=[(HOOK, zero)]).item()
    assert report["ce_zero_ablation"] == pytest.approx(zeroed, rel=1e-5)
    # (A random model's loss barely depends on its residual stream, so only the formula is checked here;
    # on SmolLM2 the ordering clean < SAE < zero holds by a wide margin.)
    assert report["ce_loss_recovered"] == pytest.approx((zeroed - spliced) / (zeroed - report["ce_clean"]), rel=1e-4)
    clean = model(rows[:16], return_type="loss").item()
    assert report["ce_delta"] == pytest.approx(spliced - clean, abs=1e-4)  # ΔCE in nats: SAE minus clean, not minus zero
    assert report["ce_delta"] == report["ce_sae"] - report["ce_clean"]
    assert report["l0"] <= 8
    assert 0 <= report["dead_fraction"] < 1 and report["n_tokens"] == 16 * 16


def test_bad_input_gets_one_sentence(model, rows):
    with pytest.raises(ValueError, match="not a hook point"):
        ActivationBuffer(model, "blocks.9.hook_resid_pre", rows)
    with pytest.raises(ValueError, match="rows must be"):
        ActivationBuffer(model, HOOK, rows[0])
    with pytest.raises(ValueError, match="n_tokens must be positive"):
        train_sae(TopKSAE(32, 64, k=4), ActivationBuffer(model, HOOK, rows), n_tokens=0)
    with pytest.raises(ValueError, match="yielded no batch"):
        train_sae(TopKSAE(32, 64, k=4), ActivationBuffer(model, HOOK, rows[:2], batch_size=4096), n_tokens=10, progress=False)
