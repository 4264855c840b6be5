"""CrossAttentionStore during guided sampling, DAAM heatmaps, IoU."""

import pytest
import torch

from mikit.xattn.attention import CrossAttentionStore, iou, upsample, word_heatmap
from mikit.xattn.model import TinyT2I, TinyT2IConfig
from mikit.xattn.training import SceneData, empty_captions, sample


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    model = TinyT2I(TinyT2IConfig(d_model=32, n_heads=2, n_layers=2, d_mlp=64))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model.eval()


def test_store_keeps_the_conditional_half_of_every_step_and_layer(model):
    data = SceneData.generate(3, seed=0)
    with CrossAttentionStore(model, n_prompts=3) as store:
        sample(model, data.captions, steps=4, guidance=2.0)
    maps = store.stacked()
    assert maps.shape == (4, 2, 3, 2, 64, 16)  # step, layer, prompt, head, patch, word
    torch.testing.assert_close(maps.sum(-1), torch.ones(4, 2, 3, 2, 64))
    # The first step's maps are those of a plain conditional run at t = 0 on the same noise.
    noise = torch.randn((3, 3, 32, 32), generator=torch.Generator().manual_seed(0))
    _, cache = model.run_with_cache(noise, torch.zeros(3), data.captions)
    torch.testing.assert_close(maps[0, 1], cache["blocks.1.cross_attn.hook_pattern"])
    # The hooks are gone afterwards, and nothing is recorded outside the context.
    model(noise, torch.zeros(3), empty_captions(3, 16))
    assert len(store.maps) == 4
    with pytest.raises(ValueError, match="do not exist"):
        CrossAttentionStore(model, layers=[2])


def test_word_heatmap_averages_upsamples_and_normalises():
    maps = torch.zeros(2, 1, 1, 2, 64, 5)  # step, layer, prompt, head, patch, word
    maps[0, 0, 0, 0, 0, 3] = 1.0  # top-left patch, one head, one step
    maps[1, 0, 0, 1, 63, 3] = 3.0  # bottom-right patch, three times as strong
    heat = word_heatmap(maps, word=3)
    assert heat.shape == (1, 32, 32) and heat.max() == pytest.approx(1.0)
    assert heat[0, 31, 31] > heat[0, 0, 0] > heat[0, 16, 16] == 0
    assert word_heatmap(maps, word=3, steps=[0])[0, 0, 0] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="square number"):
        upsample(torch.zeros(2, 60))


def test_iou():
    a = torch.zeros(4, 4, dtype=torch.bool)
    b = torch.zeros(4, 4, dtype=torch.bool)
    a[:2], b[1:3] = True, True
    assert iou(a, b) == pytest.approx(4 / 12)
    assert iou(a, a) == 1.0 and iou(b & ~b, a & ~a) == 1.0
