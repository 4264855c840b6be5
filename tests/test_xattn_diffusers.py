"""Cross-attention store for diffusers UNets, on a tiny random-init UNet (no Hub)."""

import time

import pytest
import torch

from mikit.xattn.attention import upsample
from mikit.xattn.diffusers_attention import (
    DiffusersCrossAttentionStore, StoreCrossAttention, attn2_probs_nnsight, load_stable_diffusion, tiny_unet, word_heatmap_sd,
)

torch.set_num_threads(1)
TOKENS = 7


@pytest.fixture(scope="module")
def unet():
    return tiny_unet(seed=0)


@pytest.fixture(scope="module")
def inputs():
    g = torch.Generator().manual_seed(1)
    latents = torch.randn(2, 4, 16, 16, generator=g)  # below the config's 32×32 to keep forwards fast
    text = torch.randn(2, TOKENS, 32, generator=g)  # row 0: "unconditional", row 1: the prompt
    return latents, text


def run(unet, latents, text):
    with torch.no_grad():
        return unet(latents, 10, text).sample


def cross_names(unet) -> set[str]:
    return {name.removesuffix(".processor") for name in unet.attn_processors if name.endswith("attn2.processor")}


def test_store_leaves_the_output_unchanged(unet, inputs):
    from diffusers.models.attention_processor import AttnProcessor

    default = run(unet, *inputs)
    with DiffusersCrossAttentionStore(unet, cfg=False):
        stored = run(unet, *inputs)
    assert torch.allclose(stored, default, atol=1e-5)
    # Against the non-SDPA processor everywhere, which computes attention the same way, agreement is tighter.
    originals = unet.attn_processors
    unet.set_attn_processor(AttnProcessor())
    try:
        classic = run(unet, *inputs)
        with DiffusersCrossAttentionStore(unet, cfg=False):
            stored = run(unet, *inputs)
    finally:
        unet.set_attn_processor(originals)
    assert torch.allclose(stored, classic, atol=1e-6)


def test_maps_are_cross_attention_probabilities_per_layer(unet, inputs):
    with DiffusersCrossAttentionStore(unet, cfg=False) as store:
        run(unet, *inputs)
        run(unet, *inputs)
    assert len(store.maps) == 2  # one step per UNet call
    step = store.maps[0]
    assert set(step) == cross_names(unet) and not any("attn1" in name for name in step)
    queries = set()
    for name, probs in step.items():
        heads = unet.get_submodule(name).heads
        assert probs.shape[:2] == (2, heads) and probs.shape[-1] == TOKENS
        queries.add(probs.shape[2])
        assert torch.allclose(probs.sum(-1), torch.ones(()), atol=1e-5)
    assert queries == {16 * 16, 8 * 8}  # full-resolution blocks and the mid block
    assert torch.equal(store.maps[0][name], store.maps[1][name])


def test_processor_records_only_cross_attention_calls(unet, inputs):
    recorded = []
    originals = unet.attn_processors
    unet.set_attn_processor({key: StoreCrossAttention(key, lambda name, probs: recorded.append(name)) for key in originals})
    try:
        run(unet, *inputs)
    finally:
        unet.set_attn_processor(originals)
    assert recorded and all(name.endswith("attn2.processor") for name in recorded)


def test_cfg_keeps_the_conditional_second_half(unet, inputs):
    latents, text = inputs
    cond_latents, cond_text = latents[1:], text[1:]
    with DiffusersCrossAttentionStore(unet, cfg=False) as alone:
        run(unet, cond_latents, cond_text)
    # Pipelines repeat the latents and put the unconditional embeddings first.
    with DiffusersCrossAttentionStore(unet, cfg=True) as guided:
        run(unet, torch.cat([cond_latents, cond_latents]), text)
    for name, probs in alone.maps[0].items():
        assert probs.shape[0] == 1
        assert guided.maps[0][name].shape == probs.shape
        assert torch.allclose(guided.maps[0][name], probs, atol=1e-6)
    with DiffusersCrossAttentionStore(unet, cfg=False) as unguided:
        run(unet, torch.cat([cond_latents, cond_latents]), text)
    assert not torch.allclose(unguided.maps[0][name][:1], probs, atol=1e-3)  # the unconditional row differs


def test_cfg_on_an_odd_batch_says_to_turn_it_off(unet, inputs):
    latents, text = inputs
    with pytest.raises(ValueError, match="cfg=False"), DiffusersCrossAttentionStore(unet, cfg=True):
        run(unet, latents[:1], text[:1])


def test_processors_are_restored_even_after_an_error(unet, inputs):
    before = unet.attn_processors
    with pytest.raises(KeyError), DiffusersCrossAttentionStore(unet, cfg=False) as store:
        assert any(type(p).__name__ == "StoreCrossAttention" for p in unet.attn_processors.values())
        raise KeyError("boom")
    after = unet.attn_processors
    assert after.keys() == before.keys() and all(after[k] is before[k] for k in before)
    run(unet, *inputs)
    assert store.maps == []  # the step hook is gone too


def test_only_chosen_layers_are_recorded_and_unknown_ones_are_named(unet, inputs):
    name = sorted(cross_names(unet))[0]
    with DiffusersCrossAttentionStore(unet, cfg=False, layers=[name]) as store:
        run(unet, *inputs)
    assert list(store.maps[0]) == [name]
    with pytest.raises(ValueError, match="not cross-attention layers"):
        DiffusersCrossAttentionStore(unet, cfg=False, layers=[name.replace("attn2", "attn1")])


def test_word_heatmap_sd_is_normalised(unet, inputs):
    with DiffusersCrossAttentionStore(unet, cfg=False) as store:
        run(unet, *inputs)
    heat = store.heatmap(token=3, size=48)
    assert heat.shape == (2, 48, 48)
    assert heat.min() >= 0 and torch.allclose(heat.flatten(1).amax(-1), torch.ones(2))


def test_word_heatmap_sd_averages_layers_of_different_resolutions():
    # Token 1 attends to the top-left corner at 16×16 and to the bottom-right one at 8×8, more strongly at 16×16.
    fine, coarse = torch.zeros(1, 2, 16, 16, 3), torch.zeros(1, 2, 8, 8, 3)
    fine[:, :, :6, :6, 1], coarse[:, :, 6:, 6:, 1] = 1.0, 0.5
    maps = [{"a": fine.flatten(2, 3), "b": coarse.flatten(2, 3)}]
    heat = word_heatmap_sd(maps, token=1, size=32)
    assert heat.shape == (1, 32, 32) and heat.max() == 1
    # Inside the corners: (1 + 0) / 2 top-left, the maximum, and (0 + 0.5) / 2 bottom-right; nothing top-right.
    assert heat[0, 4, 4] == 1 and torch.isclose(heat[0, 28, 28], torch.tensor(0.5)) and heat[0, 4, 28] == 0
    only_coarse = word_heatmap_sd(maps, token=1, size=32, layers=["b"])
    assert torch.allclose(only_coarse[0], upsample(coarse[0, 0, ..., 1].flatten(), 32) / 0.5)
    with pytest.raises(ValueError, match="nothing was recorded"):
        word_heatmap_sd([], token=1)


def test_nnsight_probabilities_match_the_processor(unet, inputs):
    name = "mid_block.attentions.0.transformer_blocks.0.attn2"
    with DiffusersCrossAttentionStore(unet, cfg=False) as store:
        run(unet, *inputs)
    probs = attn2_probs_nnsight(unet, inputs[0], 10, inputs[1], name)
    assert probs.shape == store.maps[0][name].shape
    assert torch.allclose(probs, store.maps[0][name], atol=1e-6)


def test_load_stable_diffusion_offline_fails_fast_with_a_sentence(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    with pytest.raises(RuntimeError, match="needs the Hugging Face Hub.*full mode on Colab"):
        load_stable_diffusion()
    assert time.perf_counter() - start < 1


def test_load_stable_diffusion_turns_a_failed_download_into_a_sentence(monkeypatch):
    import diffusers
    from huggingface_hub import constants

    class Unreachable:  # stands in for AutoPipelineForText2Image, whose import alone takes seconds
        @staticmethod
        def from_pretrained(*args, **kwargs):
            raise OSError("connection refused")

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setitem(vars(diffusers), "AutoPipelineForText2Image", Unreachable)  # setattr would import the real one first
    with pytest.raises(RuntimeError, match="could not load stabilityai/sd-turbo .*OSError"):
        load_stable_diffusion(device="cpu")
