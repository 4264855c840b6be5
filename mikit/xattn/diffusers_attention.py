"""Cross-attention maps of a diffusers UNet (Stable Diffusion, full mode), as `attention.py` does for our toy model.

    pipe = load_stable_diffusion()                                    # sd-turbo, float16 on CUDA
    with DiffusersCrossAttentionStore(pipe.unet, cfg=False) as store: # guidance_scale=0.0: no CFG
        image = pipe("a red cube on a blue ball", num_inference_steps=1, guidance_scale=0.0).images[0]
    heat = store.heatmap(token=2)                                     # (prompt, 64, 64) in [0, 1]

diffusers' default processor (`AttnProcessor2_0`) calls `scaled_dot_product_attention`, which never
materialises the attention probabilities, so `StoreCrossAttention` recomputes attention explicitly in
every cross-attention layer (`attn2`) and records the probabilities on the way; self-attention (`attn1`)
keeps its own processor. Token indices count CLIP's start-of-text token: the prompt's first word is 1.

Classifier-free guidance: diffusers pipelines run [unconditional; conditional] batches, unconditional
FIRST (`torch.cat([negative_prompt_embeds, prompt_embeds])` and `noise_pred.chunk(2)` in
`StableDiffusionPipeline`), the opposite of our toy model's [conditional; unconditional]. With `cfg=True`
the store keeps the second half of each batch. Pipelines only run CFG when `guidance_scale > 1`; turbo
models run with `guidance_scale=0.0`, every row is a prompt, and `cfg=False` keeps them all.
"""

from __future__ import annotations

import os

import torch
from jaxtyping import Float
from torch import Tensor

from mikit.xattn.attention import upsample

# One model call (one denoising step): layer name → (prompt, head, query pixel, text token).
StepMaps = dict[str, Tensor]


def tiny_unet(seed: int = 0):
    """A random-init two-level UNet2DConditionModel with cross-attention, small enough for CPU tests."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    return UNet2DConditionModel(
        sample_size=32, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=(32, 64), norm_num_groups=32,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        mid_block_type="UNetMidBlock2DCrossAttn",
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        # As in SD's configs, `attention_head_dim` is really the number of heads (diffusers issue 2011): 8 heads.
        cross_attention_dim=32, attention_head_dim=8,
    ).eval()


class StoreCrossAttention:
    """A diffusers attention processor that computes attention explicitly and hands cross-attention probabilities to `record`.

    Its output equals `AttnProcessor`'s (and `AttnProcessor2_0`'s up to float rounding).
    """

    def __init__(self, name: str, record):
        self.name, self.record = name, record

    def __call__(self, attn, hidden_states: Tensor, encoder_hidden_states: Tensor | None = None,
                 attention_mask: Tensor | None = None, temb: Tensor | None = None, *args, **kwargs) -> Tensor:
        is_cross = encoder_hidden_states is not None
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch_size, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch_size, channel, height * width).transpose(1, 2)
        batch_size, sequence_length, _ = (hidden_states if encoder_hidden_states is None else encoder_hidden_states).shape
        attention_mask = attn.prepare_attention_mask(attention_mask, sequence_length, batch_size)
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)

        query = attn.to_q(hidden_states)
        if encoder_hidden_states is None:
            encoder_hidden_states = hidden_states
        elif attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        key, value = attn.to_k(encoder_hidden_states), attn.to_v(encoder_hidden_states)

        query, key = attn.head_to_batch_dim(query, out_dim=4), attn.head_to_batch_dim(key, out_dim=4)  # (B, H, T, d)
        # AttnProcessor2_0 applies the optional per-head q/k norms; AttnProcessor ignores them.
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        heads, head_dim = query.shape[1], query.shape[-1]
        query, key = query.flatten(0, 1), key.flatten(0, 1)  # (B*H, T, d), batch-major as head_to_batch_dim
        probs = attn.get_attention_scores(query, key, attention_mask)  # (B*H, Q, K): scale, upcast, mask
        if is_cross:
            self.record(self.name, probs.unflatten(0, (batch_size, heads)))
        hidden_states = attn.batch_to_head_dim(torch.bmm(probs, attn.head_to_batch_dim(value)))

        hidden_states = attn.to_out[1](attn.to_out[0](hidden_states))  # linear, then dropout
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch_size, channel, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor


class DiffusersCrossAttentionStore:
    """Records every cross-attention (`attn2`) layer of a diffusers UNet while active (a context manager).

    `maps[step][layer]` is (prompt, head, query pixel, text token) on the CPU; one step per UNet call.
    `cfg=True` for batches [unconditional; conditional] (pipelines with `guidance_scale > 1`): keeps the
    conditional second half; `cfg=False` keeps every row.
    """

    def __init__(self, unet, *, cfg: bool, layers: list[str] | None = None):
        self.unet, self.cfg = unet, cfg
        cross = [key.removesuffix(".processor") for key in unet.attn_processors if key.endswith("attn2.processor")]
        if not cross:
            raise ValueError("this UNet has no cross-attention (attn2) layers to record.")
        self.layers = cross if layers is None else list(layers)
        unknown = sorted(set(self.layers) - set(cross))
        if unknown:
            raise ValueError(f"{unknown} are not cross-attention layers of this UNet; they are {cross}.")
        self.maps: list[StepMaps] = []
        self._originals = None
        self._hook = None

    def _record(self, name: str, probs: Float[Tensor, "batch head q_pos k_pos"]) -> None:
        if self.cfg:
            if probs.shape[0] % 2:
                raise ValueError(f"cfg=True needs [unconditional; conditional] batches of even size, not {probs.shape[0]}: pass cfg=False when guidance_scale <= 1.")
            probs = probs[probs.shape[0] // 2:]
        if not self.maps:  # an attention layer called on its own, outside a UNet call
            self.maps.append({})
        self.maps[-1][name] = probs.detach().cpu()

    def __enter__(self) -> DiffusersCrossAttentionStore:
        self.maps = []
        self._originals = self.unet.attn_processors
        processors = dict(self._originals)
        for name in self.layers:
            processors[f"{name}.processor"] = StoreCrossAttention(name, self._record)
        self.unet.set_attn_processor(processors)  # it pops from the dict it is given: ours is a copy
        # A UNet call is a denoising step: open its dict before any layer records into it.
        self._hook = self.unet.register_forward_pre_hook(lambda module, args: self.maps.append({}))
        return self

    def __exit__(self, *exc) -> None:
        self._hook.remove()
        self.unet.set_attn_processor(dict(self._originals))
        self._hook = self._originals = None

    def heatmap(self, token: int, size: int = 64, steps: slice | list[int] | None = None,
                layers: list[str] | None = None) -> Float[Tensor, "batch h w"]:
        """`word_heatmap_sd` of what was recorded."""
        return word_heatmap_sd(self.maps, token, size, steps, layers)


def word_heatmap_sd(
    maps: list[StepMaps], token: int, size: int = 64,
    steps: slice | list[int] | None = None, layers: list[str] | None = None,
) -> Float[Tensor, "batch h w"]:
    """A token's DAAM heatmap per prompt: each layer's maps upsampled to `size`, averaged over heads, layers
    and steps, and scaled to a maximum of 1."""
    if not maps or not maps[0]:
        raise ValueError("nothing was recorded: run the UNet inside `with DiffusersCrossAttentionStore(...)`.")
    chosen = maps[steps] if isinstance(steps, slice) else maps if steps is None else [maps[i] for i in steps]
    names = list(chosen[0]) if layers is None else layers
    # Layers see the latent at different resolutions (64², 32², 16² queries...): upsample before averaging.
    heat = torch.stack([
        upsample(step[name][..., token].float().mean(dim=1), size) for step in chosen for name in names
    ]).mean(0)  # (prompt, size, size)
    return heat / heat.flatten(1).amax(-1).clamp_min(1e-12)[:, None, None]


def attn2_probs_nnsight(
    unet, sample: Float[Tensor, "batch channel h w"], timestep: Tensor | float,
    encoder_hidden_states: Float[Tensor, "batch pos d_model"], layer: str,
) -> Float[Tensor, "batch head q_pos k_pos"]:
    """Cross-attention probabilities of one `attn2` layer, from its query and key projections read in an nnsight trace."""
    from nnsight import NNsight

    attn = unet.get_submodule(layer)
    traced = NNsight(unet)
    with torch.no_grad(), traced.trace(sample, timestep, encoder_hidden_states):
        traced_attn = traced
        for part in layer.split("."):
            traced_attn = traced_attn[int(part)] if part.isdigit() else getattr(traced_attn, part)
        # The processor calls to_q before to_k, and nnsight needs modules touched in execution order.
        query = traced_attn.to_q.output.save()
        key = traced_attn.to_k.output.save()
    query, key = attn.head_to_batch_dim(query, out_dim=4), attn.head_to_batch_dim(key, out_dim=4)  # (B, H, T, d)
    if attn.norm_q is not None:
        query, key = attn.norm_q(query), attn.norm_k(key)
    return (query @ key.transpose(-1, -2) * attn.scale).softmax(-1)


def _hub_offline() -> bool:
    """Whether HF_HUB_OFFLINE is set, now or when huggingface_hub was imported."""
    from huggingface_hub import constants

    return os.environ.get("HF_HUB_OFFLINE", "").lower() in {"1", "true", "yes", "on"} or constants.HF_HUB_OFFLINE


def load_stable_diffusion(model_id: str = "stabilityai/sd-turbo", device: str | None = None):
    """A text-to-image pipeline from the Hub: float16 on CUDA, float32 on the CPU (full mode, e.g. on Colab)."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    # float16 halves memory and time on a GPU; many CPU kernels lack float16.
    half = device.startswith("cuda")
    pipe = pipeline_from_hub(model_id, torch.float16 if half else torch.float32, "fp16" if half else None)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def pipeline_from_hub(model_id: str, dtype: torch.dtype, variant: str | None):
    """`AutoPipelineForText2Image.from_pretrained`, failing with one sentence when the Hub is out of reach.

    The only place mikit reaches the Hub for a diffusion model: the full-mode tests replace it with a stand-in.
    """
    if _hub_offline():
        raise RuntimeError(f"Stable Diffusion ({model_id}) needs the Hugging Face Hub, and HF_HUB_OFFLINE is set: run notebook 05 in full mode on Colab.")
    from diffusers import AutoPipelineForText2Image

    try:
        return AutoPipelineForText2Image.from_pretrained(model_id, torch_dtype=dtype, **({"variant": variant} if variant else {}))
    except Exception as error:
        raise RuntimeError(f"could not load {model_id} from the Hugging Face Hub ({type(error).__name__}): run notebook 05 in full mode on Colab, with internet access.") from error
