"""The tiny text-to-image transformer: shapes, cross-attention hooks (TransformerLens and nnsight), patchify."""

import pytest
import torch

from mikit.xattn.model import TinyT2I, TinyT2IConfig
from mikit.xattn.scenes import VOCAB, make_scenes, tokenize

PATTERN = "blocks.{}.cross_attn.hook_pattern"


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    model = TinyT2I(TinyT2IConfig(d_model=32, n_heads=2, n_layers=2, d_mlp=64))
    with torch.no_grad():  # leave adaLN-Zero's identity start, so every path carries signal
        for p in model.parameters():
            if (p == 0).all():
                p.normal_(0, 0.05)
    return model.eval()


@pytest.fixture(scope="module")
def batch():
    scenes = make_scenes(4, seed=0)
    images = torch.stack([s.image for s in scenes])
    return images, torch.rand(4), torch.stack([tokenize(s.words) for s in scenes])


def test_patchify_round_trips_and_keeps_patches_contiguous(model, batch):
    images = batch[0]
    patches = model.patchify(images)
    assert patches.shape == (4, 64, 48)
    torch.testing.assert_close(patches[0, 9].view(3, 4, 4), images[0, :, 4:8, 4:8])  # row 1, column 1
    assert torch.equal(model.unpatchify(patches), images)


def test_cross_attention_patterns_are_distributions_over_real_caption_words(model, batch):
    images, t, ids = batch
    out, cache = model.run_with_cache(images, t, ids)
    assert out.shape == images.shape
    for layer in range(2):
        pattern = cache[PATTERN.format(layer)]
        assert pattern.shape == (4, 2, 64, 16)  # (batch, head, image patch, caption token)
        torch.testing.assert_close(pattern.sum(-1), torch.ones(4, 2, 64))
        assert (pattern[ids[:, None, None, :].expand_as(pattern) == VOCAB.index("<pad>")] == 0).all()
        assert cache[f"blocks.{layer}.self_attn.hook_pattern"].shape == (4, 2, 64, 64)


def test_a_hook_on_the_pattern_changes_the_output_and_nnsight_reads_the_same_pattern(model, batch):
    images, t, ids = batch
    with torch.no_grad():
        clean = model(images, t, ids)

        def uniform(pattern, hook):
            real = (ids != VOCAB.index("<pad>")).float()[:, None, None, :]
            return real.expand_as(pattern) / real.sum(-1, keepdim=True)

        edited = model.run_with_hooks(images, t, ids, fwd_hooks=[(PATTERN.format(1), uniform)])
    assert not torch.allclose(clean, edited)
    from nnsight import NNsight

    traced = NNsight(model)
    with torch.no_grad(), traced.trace(images, t, ids):
        pattern = traced.blocks[1].cross_attn.hook_pattern.output.save()
    _, cache = model.run_with_cache(images, t, ids, names_filter=PATTERN.format(1))
    torch.testing.assert_close(pattern, cache[PATTERN.format(1)])


def test_an_untrained_model_predicts_zero_velocity(batch):
    model = TinyT2I(TinyT2IConfig(d_model=32, n_heads=2, n_layers=1, d_mlp=64))
    assert torch.equal(model(*batch), torch.zeros_like(batch[0]))  # adaLN-Zero and a zero output layer


def test_a_causal_caption_encoder_keeps_earlier_words_blind_to_later_ones():
    captions = torch.stack([tokenize("a large red circle".split()), tokenize("a large red square".split())])
    for causal in (True, False):
        torch.manual_seed(0)
        model = TinyT2I(TinyT2IConfig(d_model=32, n_heads=2, n_layers=1, d_mlp=64, causal_text=causal)).eval()
        with torch.no_grad():
            words, _ = model.encode_caption(captions)
        same_prefix = torch.allclose(words[0, :4], words[1, :4], atol=1e-6)  # <bos> a large red
        assert same_prefix == causal
        assert not torch.allclose(words[0, 4], words[1, 4])  # circle vs square
