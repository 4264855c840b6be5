"""Flow-matching training and guided sampling of the tiny text-to-image model (reduced sizes)."""

import pytest
import torch

from mikit.xattn.model import TinyT2I, TinyT2IConfig
from mikit.xattn.scenes import COLOURS, RADII, SHAPES, VOCAB
from mikit.xattn.training import SceneData, empty_captions, omit_words, sample, train_t2i

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


def test_omit_words_drops_only_the_named_kinds_and_closes_the_caption_up():
    data = SceneData.generate(400, seed=0)
    omitted = omit_words(data.captions, {"colour": 0.5}, torch.Generator().manual_seed(0))
    count = lambda ids, words: torch.isin(ids, torch.tensor([VOCAB.index(w) for w in words])).sum(1)  # noqa: E731
    colours_before, colours_after = count(data.captions, COLOURS).sum(), count(omitted, COLOURS).sum()
    assert 0.4 < colours_after / colours_before < 0.6  # about half the colour words are gone
    assert torch.equal(count(omitted, SHAPES), count(data.captions, SHAPES))  # no shape or size word is
    assert torch.equal(count(omitted, RADII), count(data.captions, RADII))
    for before, after in zip(data.captions[:50], omitted[:50]):
        words = [VOCAB[i] for i in after]
        n = len(words) - words.count("<pad>")
        assert "<pad>" not in words[:n]  # the kept words come first, in their order
        others = lambda ws: [w for w in ws if w not in COLOURS and w != "<pad>"]  # noqa: E731
        assert others(VOCAB[i] for i in before) == others(words[:n])  # and only colour words went
    assert torch.equal(omit_words(data.captions, {"colour": 0.0, "size": 0.0}), data.captions)
    with pytest.raises(ValueError, match="may name the word kinds"):
        omit_words(data.captions, {"relation": 0.5})
