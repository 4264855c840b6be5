"""mikit.sae: the architectures, their losses and constraints, the metrics, and SAELens-format files."""

import json
import re

import pytest
import torch

from mikit import sae
from mikit.sae import metrics
from mikit.sae.architectures import _JumpReLUFunction, _StepFunction

D_IN, D_SAE, K = 16, 48, 4


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # Matrices this small run ~10x faster on one thread than fighting another process for two cores.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def make(name: str, seed: int = 0, **kwargs) -> sae.SAE:
    """A small SAE of each architecture, with non-zero biases (and thresholds) so every term matters."""
    torch.manual_seed(seed)
    cls = {"relu": sae.ReLUSAE, "topk": sae.TopKSAE, "batchtopk": sae.BatchTopKSAE, "jumprelu": sae.JumpReLUSAE}[name]
    if name in ("topk", "batchtopk"):
        kwargs.setdefault("k", K)
    model = cls(D_IN, D_SAE, **kwargs)
    with torch.no_grad():
        model.b_enc.normal_(0, 0.1)
        model.b_dec.normal_(0, 0.1)
        if name == "jumprelu":
            model.threshold.uniform_(0.05, 0.5)
        if name == "batchtopk":
            model.threshold.fill_(0.3)
    return model


ARCHS = ["relu", "topk", "batchtopk", "jumprelu"]


@pytest.mark.parametrize("name", ARCHS)
def test_shapes_layout_and_tied_unit_norm_init(name):
    model = make(name)
    assert model.W_enc.shape == (D_IN, D_SAE) and model.W_dec.shape == (D_SAE, D_IN)
    assert model.b_enc.shape == (D_SAE,) and model.b_dec.shape == (D_IN,)
    torch.testing.assert_close(model.W_dec.norm(dim=-1), torch.ones(D_SAE))
    torch.testing.assert_close(model.W_enc, model.W_dec.T)
    x = torch.randn(3, 5, D_IN)  # (batch, pos, d_in): any leading dimensions
    latents = model.encode(x)
    assert latents.shape == (3, 5, D_SAE) and model.decode(latents).shape == x.shape == model(x).shape
    out = model.forward_with_loss(x)
    assert out.x_hat.shape == x.shape and out.latents.shape == latents.shape and out.loss.ndim == 0
    torch.testing.assert_close(out.loss, out.mse + out.sparsity_loss + out.aux_loss)
    torch.testing.assert_close(out.mse, (out.x_hat - x).pow(2).sum(-1).mean())


def test_relu_sae_l1_is_weighted_by_decoder_norms():
    model = make("relu", l1_coefficient=0.5)
    with torch.no_grad():
        model.W_dec[0] *= 3.0
    x = torch.randn(8, D_IN)
    out = model.forward_with_loss(x)
    assert (out.latents >= 0).all() and (out.latents == 0).any()
    norms = model.W_dec.norm(dim=-1).detach()
    expected = 0.5 * sum((out.latents[t] * norms).sum() for t in range(8)) / 8
    torch.testing.assert_close(out.sparsity_loss, expected)


def test_topk_keeps_at_most_k_per_token_and_exactly_k_when_all_positive():
    model = make("topk")
    x = torch.randn(64, D_IN)
    latents = model.encode(x)
    assert ((latents != 0).sum(-1) <= K).all() and (latents >= 0).all()
    pre = model.pre_activations(x)
    kept = latents != 0
    # every kept pre-activation is at least as large as every dropped one of the same token
    assert (pre.masked_fill(~kept, float("inf")).min(-1).values >= pre.masked_fill(kept, float("-inf")).max(-1).values).all()
    with torch.no_grad():
        model.b_enc.fill_(100.0)  # every pre-activation positive: ReLU removes none of the top k
    assert ((model.encode(x) != 0).sum(-1) == K).all()


def test_batchtopk_keeps_k_times_batch_in_training_and_thresholds_per_token_in_eval():
    model = make("batchtopk", threshold_lr=0.5)
    x = torch.randn(8, 5, D_IN)
    model.train()
    out = model.forward_with_loss(x)
    assert int((out.latents != 0).sum()) == K * 40
    per_token = (out.latents != 0).sum(-1)
    assert per_token.min() < per_token.max()  # tokens share the budget unevenly
    # the first update sets the threshold to the batch's smallest kept activation (a plain average of one)
    assert model.threshold.item() == pytest.approx(out.latents[out.latents > 0].min().item())
    model.eval()
    pre = model.pre_activations(x)
    latents = model.encode(x)
    torch.testing.assert_close(latents, pre * (pre > model.threshold))
    # per token: encoding one token alone gives the same latents as in the batch
    torch.testing.assert_close(model.encode(x[0, 0]), latents[0, 0])


def test_batchtopk_threshold_is_a_running_average_of_the_minimum_kept_activation():
    model = make("batchtopk", threshold_lr=0.25).train()
    minima = []
    for step in range(6):
        out = model.forward_with_loss(torch.randn(16, D_IN))
        minima.append(out.latents[out.latents > 0].min().item())
    expected = 0.0
    for n, m in enumerate(minima, start=1):
        lr = max(0.25, 1 / n)
        expected = (1 - lr) * expected + lr * m
    assert model.threshold.item() == pytest.approx(expected, rel=1e-5)


def test_jumprelu_zeroes_pre_activations_at_or_below_each_threshold():
    model = make("jumprelu")
    x = torch.randn(32, D_IN)
    pre, latents = model.pre_activations(x), model.encode(x)
    above = pre > model.threshold
    assert (latents[~above] == 0).all()
    torch.testing.assert_close(latents[above], pre[above])
    assert (~above & (pre > 0)).any()  # some positive pre-activations were cut: not just a ReLU


def test_jumprelu_pseudo_derivatives_match_the_paper():
    eps = 0.1
    pre = torch.tensor([[0.26, 0.5, -1.0], [0.33, 0.1, 0.02]])
    threshold = torch.tensor([0.3, 0.3, 0.0], requires_grad=True)
    # Step: dH/dθ = -(1/ε) · 1[|pre − θ| < ε/2], summed over tokens
    _StepFunction.apply(pre, threshold, eps).sum().backward()
    torch.testing.assert_close(threshold.grad, torch.tensor([-20.0, 0.0, -10.0]))
    threshold.grad = None
    pre_leaf = pre.clone().requires_grad_(True)
    _JumpReLUFunction.apply(pre_leaf, threshold, eps).sum().backward()
    # JumpReLU: d/dθ = -(θ/ε) · 1[|pre − θ| < ε/2]; d/dpre = 1[pre > θ]
    torch.testing.assert_close(threshold.grad, torch.tensor([-6.0, 0.0, 0.0]))
    torch.testing.assert_close(pre_leaf.grad, torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 1.0]]))


def test_jumprelu_threshold_learns_from_the_l0_loss():
    model = make("jumprelu", bandwidth=0.2, l0_coefficient=1.0)
    out = model.forward_with_loss(torch.randn(64, D_IN))
    out.sparsity_loss.backward()
    assert out.sparsity_loss.item() == pytest.approx(metrics.l0(out.latents))
    grad = model.threshold.grad
    assert grad is not None and (grad != 0).any()
    assert (grad <= 0).all()  # raising a threshold can only lower L0, so descent raises it
    assert model.W_enc.grad is None or (model.W_enc.grad == 0).all()  # the paper's L0 trains thresholds only


def test_topk_auxk_loss_is_zero_without_dead_latents_and_positive_with_them():
    model = make("topk", k=1, dead_steps_threshold=1000).train()
    x = torch.randn(8, D_IN)
    assert model.forward_with_loss(x).aux_loss.item() == 0.0
    assert not model.dead_latents().any()
    model.dead_steps_threshold = 0
    out = model.forward_with_loss(x)  # at most 8 of 48 latents fired this step: the rest are now dead
    dead = model.dead_latents()
    assert 40 <= int(dead.sum()) < D_SAE and not dead[out.latents.reshape(-1, D_SAE).ne(0).any(0)].any()
    assert out.aux_loss.item() > 0
    out.aux_loss.backward()
    # AuxK trains dead latents' encoders only; the residual it reconstructs is a fixed target
    assert (model.W_enc.grad[:, ~dead] == 0).all() and (model.W_enc.grad[:, dead] != 0).any()
    model.eval()
    steps = model.steps_since_fired.clone()
    model.forward_with_loss(x)
    assert torch.equal(model.steps_since_fired, steps)  # eval passes leave the training statistics alone


def test_normalize_decoder_and_remove_parallel_gradient():
    model = make("relu")
    with torch.no_grad():
        model.W_dec.mul_(torch.rand(D_SAE, 1) * 5 + 0.1)
    model.W_dec.grad = torch.randn(D_SAE, D_IN)
    before = model.W_dec.grad.clone()
    model.remove_parallel_gradient_()
    unit = model.W_dec / model.W_dec.norm(dim=-1, keepdim=True)
    torch.testing.assert_close((model.W_dec.grad * model.W_dec).sum(-1), torch.zeros(D_SAE), atol=1e-5, rtol=0)
    # only the parallel part went: what is left is the old gradient's perpendicular component
    torch.testing.assert_close(model.W_dec.grad, before - (before * unit).sum(-1, keepdim=True) * unit)
    model.normalize_decoder_()
    torch.testing.assert_close(model.W_dec.norm(dim=-1), torch.ones(D_SAE))


def test_geometric_median_on_hand_cases():
    square = torch.tensor([[0.0, 0.0], [2.0, 0.0], [0.0, 2.0], [2.0, 2.0]])
    torch.testing.assert_close(sae.geometric_median(square), torch.tensor([1.0, 1.0]))
    # in one dimension the geometric median is the ordinary median
    line = torch.tensor([[0.0], [1.0], [10.0]])
    torch.testing.assert_close(sae.geometric_median(line), torch.tensor([1.0]), atol=1e-4, rtol=0)
    # one far outlier drags the mean but barely moves the median
    torch.manual_seed(0)
    cloud = torch.cat([torch.randn(50, 8) * 0.1, torch.full((1, 8), 1000.0)])
    assert cloud.mean(0).norm() > 50
    assert sae.geometric_median(cloud).norm() < 0.2


def test_initialize_b_dec_uses_the_geometric_median():
    model = make("relu")
    acts = torch.randn(100, D_IN) + 3.0
    model.initialize_b_dec_(acts)
    torch.testing.assert_close(model.b_dec.detach(), sae.geometric_median(acts))


def test_metrics_on_hand_cases():
    latents = torch.tensor([[0.0, 1.0, 2.0], [0.0, 0.0, 3.0]])
    assert metrics.l0(latents) == 1.5
    counts = metrics.fire_counts(latents)
    assert counts.tolist() == [0, 1, 2]
    assert metrics.dead_fraction(counts) == pytest.approx(1 / 3)
    assert metrics.dense_fraction(counts / 2, threshold=0.6) == pytest.approx(1 / 3)
    x = torch.tensor([[1.0, 0.0], [3.0, 2.0]])  # mean (2, 1): total variance 4
    assert metrics.fvu(x, x) == 0.0
    assert metrics.fvu(x, x.mean(0).expand_as(x)) == pytest.approx(1.0)
    assert metrics.fvu(x, x + torch.tensor([[1.0, 0.0], [0.0, 0.0]])) == pytest.approx(0.25)
    assert metrics.explained_variance(x, x) == 1.0
    assert metrics.ce_loss_recovered(ce_clean=2.0, ce_sae=2.5, ce_zero_ablation=6.0) == pytest.approx(0.875)
    assert metrics.ce_loss_recovered(2.0, 6.0, 6.0) == 0.0


def test_a_topk_sae_learns_synthetic_sparse_features():
    gen = torch.Generator().manual_seed(0)
    directions = torch.randn(32, 64, generator=gen)
    directions /= directions.norm(dim=-1, keepdim=True)

    def batch(n):  # each activation: ~3 of 32 directions with random positive weights
        active = torch.rand(n, 32, generator=gen) < 3 / 32
        return (torch.rand(n, 32, generator=gen) * active) @ directions

    torch.manual_seed(0)
    model = sae.TopKSAE(64, 64, k=4)
    model.initialize_b_dec_(batch(512))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(200):
        out = model.forward_with_loss(batch(256))
        opt.zero_grad()
        out.loss.backward()
        model.remove_parallel_gradient_()
        opt.step()
        model.normalize_decoder_()
    x = batch(2048)
    with torch.inference_mode():
        assert metrics.explained_variance(x, model.eval()(x)) > 0.9


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda: sae.TopKSAE(D_IN, D_SAE, k=D_SAE + 1), "k must be an integer between 1 and d_sae = 48"),
        (lambda: sae.TopKSAE(D_IN, D_SAE, k=0), "k must be an integer between 1"),
        (lambda: sae.BatchTopKSAE(D_IN, D_SAE, k=2.5), "k must be an integer"),
        (lambda: sae.ReLUSAE(0, D_SAE), "d_in must be a positive integer"),
        (lambda: sae.ReLUSAE(D_IN, 8.0), "d_sae must be a positive integer"),
        (lambda: sae.ReLUSAE(D_IN, D_SAE, l1_coefficient=-1), "l1_coefficient must be non-negative"),
        (lambda: sae.JumpReLUSAE(D_IN, D_SAE, bandwidth=0), "bandwidth > 0"),
        (lambda: make("relu").encode(torch.randn(4, D_IN + 1)), "d_in = 16"),
        (lambda: make("topk").forward_with_loss(torch.randn(D_IN + 1)), "d_in = 16"),
        (lambda: make("relu").encode(torch.ones(4, D_IN, dtype=torch.long)), "floating-point"),
        (lambda: make("relu").decode(torch.randn(4, D_SAE - 1)), "d_sae = 48"),
        (lambda: make("relu").remove_parallel_gradient_(), "call loss.backward()"),
        (lambda: sae.geometric_median(torch.zeros(0, 3)), "non-empty (n, d)"),
        (lambda: metrics.fvu(torch.ones(4, 2), torch.ones(4, 2)), "zero variance"),
        (lambda: metrics.fvu(torch.ones(4, 2), torch.ones(4, 3)), "same shape"),
        (lambda: metrics.dense_fraction(torch.tensor([3.0, 0.0])), "frequencies in [0, 1]"),
        (lambda: metrics.ce_loss_recovered(3.0, 3.5, 3.0), "no loss gap"),
    ],
)
def test_bad_input_gets_one_clear_sentence(build, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        build()


# ---- files ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ARCHS)
def test_save_and_load_round_trip(name, tmp_path):
    model = make(name, metadata={"hook_name": "blocks.0.hook_resid_post", "model_name": "attn-only-2l"}).eval()
    sae.save(model, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cfg.json", "sae_weights.safetensors"]
    loaded = sae.load(tmp_path)
    assert type(loaded) is type(model) and not loaded.training
    assert loaded.hyperparameters() == model.hyperparameters()
    assert loaded.metadata["hook_name"] == "blocks.0.hook_resid_post"
    x = torch.randn(10, D_IN)
    torch.testing.assert_close(loaded.encode(x), model.encode(x))
    torch.testing.assert_close(loaded(x), model(x))


def test_a_loaded_batchtopk_threshold_keeps_its_running_average(tmp_path):
    model = make("batchtopk", threshold_lr=0.1)
    sae.save(model, tmp_path)
    loaded = sae.load(tmp_path).train()
    out = loaded.forward_with_loss(torch.randn(16, D_IN))
    expected = 0.9 * 0.3 + 0.1 * out.latents[out.latents > 0].min().item()
    assert loaded.threshold.item() == pytest.approx(expected)


def test_cfg_json_follows_saelens_6(tmp_path):
    sae.save(make("topk"), tmp_path / "topk")
    cfg = json.loads((tmp_path / "topk" / "cfg.json").read_text())
    assert {k: cfg[k] for k in ("architecture", "d_in", "d_sae", "dtype", "device", "k")} == {
        "architecture": "topk", "d_in": D_IN, "d_sae": D_SAE, "dtype": "float32", "device": "cpu", "k": K,
    }
    assert cfg["apply_b_dec_to_input"] is True and cfg["normalize_activations"] == "none"
    assert cfg["rescale_acts_by_decoder_norm"] is False and cfg["metadata"]["sae_lens_version"].startswith("6.")
    sae.save(make("batchtopk"), tmp_path / "batchtopk")
    cfg = json.loads((tmp_path / "batchtopk" / "cfg.json").read_text())
    assert cfg["architecture"] == "jumprelu" and cfg["metadata"]["training_architecture"] == "batchtopk"
    assert cfg["metadata"]["training_architecture_details"]["k"] == K


def test_load_refuses_what_it_cannot_represent(tmp_path):
    sae.save(make("relu"), tmp_path)
    cfg = json.loads((tmp_path / "cfg.json").read_text())
    for change, message in [
        ({"architecture": "gated"}, "architecture 'gated'"),
        ({"normalize_activations": "layer_norm"}, "normalize_activations = 'layer_norm'"),
        ({"d_in": D_IN + 1}, "W_dec in .* has shape"),
    ]:
        (tmp_path / "cfg.json").write_text(json.dumps({**cfg, **change}))
        with pytest.raises(ValueError, match=message):
            sae.load(tmp_path)
    with pytest.raises(ValueError, match="is not a saved SAE"):
        sae.load(tmp_path / "missing")


# ---- SAELens interoperability (runs where sae_lens is installed) -----------------------------------


def _randomize_(module):
    with torch.no_grad():
        for name, p in module.named_parameters():
            p.copy_(torch.randn_like(p) * (0.3 if name.startswith("b_") else 1.0))
            if name == "threshold":
                p.abs_()


@pytest.mark.parametrize("name", ARCHS)
def test_saelens_loads_what_mikit_saves(name, tmp_path):
    sae_lens = pytest.importorskip("sae_lens")
    model = make(name).eval()
    sae.save(model, tmp_path)
    theirs = sae_lens.SAE.load_from_disk(tmp_path)
    expected_class = {"relu": "StandardSAE", "topk": "TopKSAE", "batchtopk": "JumpReLUSAE", "jumprelu": "JumpReLUSAE"}
    assert type(theirs).__name__ == expected_class[name]
    x = torch.randn(32, D_IN)
    with torch.no_grad():
        ours_latents, their_latents = model.encode(x), theirs.encode(x)
        assert (ours_latents != 0).any()
        torch.testing.assert_close(their_latents, ours_latents, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(theirs.decode(ours_latents), model.decode(ours_latents), atol=1e-5, rtol=1e-5)


def _saelens_saes():
    """label → (build, how SAELens saves it, the mikit class that should load it)."""
    from sae_lens import (
        BatchTopKTrainingSAE,
        BatchTopKTrainingSAEConfig,
        JumpReLUSAE,
        JumpReLUSAEConfig,
        StandardSAE,
        StandardSAEConfig,
        TopKSAE,
        TopKSAEConfig,
        TopKTrainingSAE,
        TopKTrainingSAEConfig,
    )

    def batchtopk():
        model = BatchTopKTrainingSAE(BatchTopKTrainingSAEConfig(d_in=D_IN, d_sae=D_SAE, k=K))
        model.topk_threshold.fill_(0.7)
        return model

    return {
        "standard": (lambda: StandardSAE(StandardSAEConfig(d_in=D_IN, d_sae=D_SAE)), "save_model", sae.ReLUSAE),
        "topk": (lambda: TopKSAE(TopKSAEConfig(d_in=D_IN, d_sae=D_SAE, k=K)), "save_model", sae.TopKSAE),
        "jumprelu": (lambda: JumpReLUSAE(JumpReLUSAEConfig(d_in=D_IN, d_sae=D_SAE, apply_b_dec_to_input=False)), "save_model", sae.JumpReLUSAE),
        # training SAEs that rescale latents by decoder norms: mikit folds the norms in on load
        "topk-training": (lambda: TopKTrainingSAE(TopKTrainingSAEConfig(d_in=D_IN, d_sae=D_SAE, k=K)), "save_model", sae.TopKSAE),
        "batchtopk-training": (batchtopk, "save_model", sae.BatchTopKSAE),
        "batchtopk-inference": (batchtopk, "save_inference_model", sae.BatchTopKSAE),
    }


@pytest.mark.parametrize("label", ["standard", "topk", "jumprelu", "topk-training", "batchtopk-training", "batchtopk-inference"])
def test_mikit_loads_what_saelens_saves(label, tmp_path):
    sae_lens = pytest.importorskip("sae_lens")
    build, save_kind, expected_class = _saelens_saes()[label]
    torch.manual_seed(0)
    theirs = build()
    _randomize_(theirs)
    getattr(theirs, save_kind)(tmp_path)
    ours = sae.load(tmp_path)
    assert type(ours) is expected_class, label
    x = torch.randn(32, D_IN)
    with torch.no_grad():
        if label == "batchtopk-inference":  # compare with the JumpReLU SAE SAELens itself reads back
            theirs = sae_lens.SAE.load_from_disk(tmp_path)
        their_latents = theirs.encode(x)
        if label == "batchtopk-training":
            # SAELens's training class always takes the batch top-k; at inference it thresholds like this
            pre = (theirs.process_sae_in(x) @ theirs.W_enc + theirs.b_enc) * theirs.W_dec.norm(dim=-1)
            their_latents = pre.relu() * (pre > theirs.topk_threshold)
        ours_latents = ours.encode(x)
        assert (ours_latents != 0).any(), label
        torch.testing.assert_close(ours_latents, their_latents.float(), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(ours.decode(ours_latents), theirs.decode(their_latents.float()), atol=1e-5, rtol=1e-5)


def test_load_released_converts_what_saelens_downloads(monkeypatch):
    sae_lens = pytest.importorskip("sae_lens")
    torch.manual_seed(0)
    theirs = sae_lens.StandardSAE(sae_lens.StandardSAEConfig(d_in=D_IN, d_sae=D_SAE))
    _randomize_(theirs)
    asked = []

    def from_pretrained(release, sae_id, device="cpu"):  # the hub is unreachable here: hand back a local SAE
        asked.append((release, sae_id, device))
        return theirs

    monkeypatch.setattr(sae_lens.SAE, "from_pretrained", from_pretrained)
    ours = sae.load_released("gpt2-small-res-jb", "blocks.7.hook_resid_pre")
    assert asked == [("gpt2-small-res-jb", "blocks.7.hook_resid_pre", "cpu")]
    assert type(ours) is sae.ReLUSAE and ours.metadata["release"] == "gpt2-small-res-jb"
    x = torch.randn(16, D_IN)
    with torch.no_grad():
        torch.testing.assert_close(ours.encode(x), theirs.encode(x), atol=1e-5, rtol=1e-5)


def test_topk_training_pass_decodes_sparsely_with_the_dense_pass_values_and_gradients():
    torch.manual_seed(0)
    topk = sae.TopKSAE(D_IN, D_SAE, k=K)
    with torch.no_grad():
        topk.b_dec.normal_()
    x = torch.randn(3, 5, D_IN)
    out = topk.forward_with_loss(x)  # embedding-bag decode
    torch.testing.assert_close(out.x_hat, topk(x), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.latents, topk.encode(x))
    out.mse.backward()
    sparse_grads = [p.grad.clone() for p in topk.parameters()]
    topk.zero_grad()
    (topk(x) - x).pow(2).sum(-1).mean().backward()  # the dense path
    for sparse, param in zip(sparse_grads, topk.parameters()):
        torch.testing.assert_close(sparse, param.grad, atol=1e-5, rtol=1e-4)
