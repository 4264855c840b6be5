"""Flow-matching training and guided sampling of the tiny text-to-image model (reduced sizes)."""

import torch

from mikit.xattn.model import TinyT2I, TinyT2IConfig
from mikit.xattn.scenes import VOCAB
from mikit.xattn.training import SceneData, empty_captions, sample, train_t2i

CFG = TinyT2IConfig(d_model=32, n_heads=2, n_layers=1, d_mlp=64)


def test_training_lowers_the_velocity_error():
    data = SceneData.generate(256, seed=0)
    assert data.images.min() >= -1 and data.images.max() <= 1 and data.captions.shape == (256, 16)
    torch.manual_seed(0)
    model = TinyT2I(CFG)
    history = train_t2i(model, data, steps=150, batch_size=32, lr=3e-3, log_every=50, progress=False)
    # Predicting zero velocity costs E‖x₁ − x₀‖² per pixel ≈ 1 + E[x₁²] ≈ 1.8 here; the model must beat it.
    assert history["loss"][-1] < 0.8 * history["loss"][0] and history["loss"][-1] < 1.2
    assert not model.training


def test_guided_sampling_mixes_conditional_and_unconditional_velocities():
    torch.manual_seed(0)
    model = TinyT2I(CFG)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    data = SceneData.generate(2, seed=1)
    noise = torch.randn(2, 3, 32, 32)
    t = torch.zeros(2)
    v_cond, v_uncond = model(noise, t, data.captions), model(noise, t, empty_captions(2, 16))
    one_step = sample(model, data.captions, steps=1, guidance=2.5, noise=noise)
    want = ((noise + v_uncond + 2.5 * (v_cond - v_uncond) + 1) / 2).clamp(0, 1)
    torch.testing.assert_close(one_step, want, atol=1e-5, rtol=1e-5)
    conditional = sample(model, data.captions, steps=1, guidance=1.0, noise=noise)
    torch.testing.assert_close(conditional, ((noise + v_cond + 1) / 2).clamp(0, 1), atol=1e-5, rtol=1e-5)
    assert (empty_captions(2, 16)[:, 1:] == VOCAB.index("<pad>")).all()
