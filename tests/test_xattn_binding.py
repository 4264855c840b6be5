"""Neglect and binding: peak attention per token, Prompt-to-Prompt reweighting, judging generated scenes."""

import pytest
import torch

from mikit.xattn.attention import CrossAttentionStore
from mikit.xattn.binding import (
    generate_and_judge, object_tokens, rates, reweight_pattern, reweighting_hooks, token_strength,
)
from mikit.xattn.training import SceneData, sample


@pytest.fixture(scope="module")
def model(tiny_t2i):
    return tiny_t2i


def test_token_strength_is_the_peak_of_the_averaged_map():
    maps = torch.zeros(2, 1, 2, 2, 64, 4)
    maps[0, 0, 0, 0, 5, 1] = 0.8  # one step, one head: averaged over 2 × 2 it peaks at 0.2
    maps[:, :, 1, :, :, 2] = 0.1  # spread everywhere: peak 0.1
    assert token_strength(maps, torch.tensor([1, 2])).tolist() == pytest.approx([0.2, 0.1])


def test_object_tokens_point_at_each_objects_words():
    for scene in SceneData.generate(10, seed=0).scenes:
        for kind, attribute in (("colour", "colour"), ("shape", "shape"), ("size", "size")):
            tokens = object_tokens(scene, kind)
            assert [scene.words[t - 1] for t in tokens] == [getattr(o, attribute) for o in scene.objects]
    with pytest.raises(ValueError, match="kind must be one of"):
        object_tokens(scene, "noun")


def test_reweight_pattern_scales_one_token_per_conditional_row_and_renormalises():
    pattern = torch.rand(4, 2, 3, 5).softmax(-1)
    out = reweight_pattern(pattern, torch.tensor([1, 3]), 4.0, n_prompts=2)
    torch.testing.assert_close(out.sum(-1), torch.ones(4, 2, 3))
    torch.testing.assert_close(out[2:], pattern[2:])
    ratio = out[0] / pattern[0]
    torch.testing.assert_close(ratio[..., 1], 4 * ratio[..., 0])
    torch.testing.assert_close(ratio[..., 2], ratio[..., 0])


def test_reweighting_hooks_change_what_the_model_draws(model):
    data = SceneData.generate(4, seed=1)
    tokens = torch.tensor([object_tokens(s)[0] for s in data.scenes])
    plain = sample(model, data.captions, steps=3)
    with model.hooks(fwd_hooks=reweighting_hooks(model, tokens, 5.0, n_prompts=4)):
        with CrossAttentionStore(model, n_prompts=4) as store:
            boosted = sample(model, data.captions, steps=3)
    assert not torch.allclose(plain, boosted)
    maps = store.stacked()  # the store sees the reweighted pattern of the token
    torch.testing.assert_close(maps.sum(-1), torch.ones_like(maps.sum(-1)))


def test_generate_and_judge_gives_a_verdict_per_caption_object(model):
    data = SceneData.generate(5, seed=2)
    images, verdicts, maps = generate_and_judge(model, data, store=True, steps=2)
    assert images.shape == (5, 3, 32, 32) and maps.shape[:3] == (2, 2, 5)
    assert [len(v) for v in verdicts] == [len(s.objects) for s in data.scenes]
    shares = rates(verdicts)
    assert sum(shares.values()) == pytest.approx(1.0)
    assert rates([["ok", "neglected"], ["leaked", "ok"]]) == {"ok": 0.5, "leaked": 0.25, "misshaped": 0.0, "neglected": 0.25}
