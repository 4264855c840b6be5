"""CrossAttentionStore during guided sampling, DAAM heatmaps, IoU."""

import pytest
import torch

from mikit.xattn.attention import (
    CrossAttentionStore, iou, mean_iou, miou_report, noised_attention, object_word_heatmaps, upsample, word_heatmap,
)
from mikit.xattn.training import SceneData, empty_captions, sample


@pytest.fixture(scope="module")
def model(tiny_t2i):
    return tiny_t2i


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


def test_store_keeps_copies_that_later_in_place_edits_do_not_reach(model):
    data = SceneData.generate(2, seed=1)

    def overwrite(pattern, hook):  # a hook after the store's, editing the pattern in place (as a reweighting may)
        pattern.zero_()

    with CrossAttentionStore(model, n_prompts=2) as store, model.hooks(
            fwd_hooks=[(f"blocks.{layer}.cross_attn.hook_pattern", overwrite) for layer in range(2)]):
        sample(model, data.captions, steps=2, guidance=2.0)
    torch.testing.assert_close(store.stacked().sum(-1), torch.ones(2, 2, 2, 2, 64))


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


def test_noised_attention_reads_real_images_at_each_time(model):
    data = SceneData.generate(2, seed=4)
    maps = noised_attention(model, data.images, data.captions, [0.3, 0.9], seed=1)
    assert maps.shape == (2, 2, 2, 2, 64, 16)
    noise = torch.randn(data.images.shape, generator=torch.Generator().manual_seed(1))
    _, cache = model.run_with_cache(0.1 * noise + 0.9 * data.images, torch.full((2,), 0.9), data.captions)
    torch.testing.assert_close(maps[1, 0], cache["blocks.0.cross_attn.hook_pattern"])


def test_miou_scores_maps_that_sit_on_the_objects_masks():
    scenes = SceneData.generate(3, seed=5).scenes
    maps = torch.zeros(1, 2, 3, 1, 64, 16)  # step, layer, prompt, head, patch, word
    for p, scene in enumerate(scenes):
        for w, owner in enumerate(scene.word_object):
            if owner >= 0:  # layer 0: each object word attends to its object's patches; layer 1: to the corner
                patches = scene.masks[owner].reshape(8, 4, 8, 4).float().mean(dim=(1, 3)).flatten()
                maps[0, 0, p, 0, :, w + 1] = patches
                maps[0, 1, p, 0, 0, w + 1] = 1.0
    heats, masks, kinds = object_word_heatmaps(maps, scenes)
    assert heats.shape == (len(kinds), 1, 2, 32, 32) and set(kinds) == {"size", "colour", "shape"}
    report = miou_report(maps[:, :1], scenes)
    assert report["overall"] > 0.6 and report["per_kind"]["shape"] == pytest.approx(report["overall"])
    assert miou_report(maps[:, 1:], scenes)["overall"] < 0.1
    both = miou_report(maps, scenes)
    assert both["per_layer"][0] > 0.6 > 0.1 > both["per_layer"][1] and len(both["per_step"]) == 1
    assert mean_iou(heats[:, 0, 0], masks) == pytest.approx(report["overall"])
