"""The course's language models as nnsight models, with one set of names for their parts, locally or on NDIF.

    lm = load_language_model()                        # SmolLM2-135M-Instruct, offline, from the kit's GGUF
    lm = load_language_model("gpt2")                  # any causal LM on the Hugging Face Hub (full mode)
    lm = load_language_model("meta-llama/Llama-3.1-8B", remote=True)   # runs on NDIF; no weights downloaded

    with lm.trace("The Eiffel Tower is in", remote=False):
        resid = read(lm, "blocks.5.hook_resid_post").save()      # the same name in Llama, GPT-2 and Qwen
    stack = residual_stream(lm, ["The Eiffel Tower is in"])     # every layer at once: layer batch pos d_model

**Names.** The parts have TransformerLens's hook names (`blocks.{L}.hook_resid_post`, `blocks.{L}.hook_attn_out`,
`blocks.{L}.hook_mlp_out`, `ln_final.hook_normalized`, `unembed`, `hook_embed`), so what students learnt on
HookedTransformer carries over; `module_names` maps them onto each architecture's Hugging Face modules. Not
`nnterp` (whose StandardizedTransformer does the same): its newest release, 1.3.0, declares `nnsight>=0.6` but
does not import with the kit's nnsight 0.8.1 (`nnsight.intervention.tracing.globals` is gone; aliasing the moved
module does not help, `Object` was removed), and a name table for three families is a few lines.

**Tokens.** SmolLM2 reads text as the kit's HookedTransformer does: the tokenizer prepends BOS (`<|im_start|>`,
id 1) to every prompt, and `add_special_tokens=False` leaves it out, as `to_tokens(..., prepend_bos=False)` does.
The tokenizer alone adds no BOS; the kit prepends it because the first position becomes an attention sink with an
outsized residual norm, which had better be a fixed token than the prompt's first word (probes and steering
vectors read every position), and because then positions and activations agree with the HookedTransformer
notebooks. Batches pad on the left (nnsight's choice for decoders; positions come from the attention mask), so
`[:, -1]` is each prompt's last token. Hub models keep their own tokenizer's convention.

**NDIF.** `remote=True` runs a trace on NDIF's servers (https://ndif.us). Set an API key once, either in the
environment (`export NDIF_API_KEY=...`, or a Colab secret of that name) or persistently with
`from nnsight import CONFIG; CONFIG.set_default_api_key("...")` (or `nnsight login`). Client and server must run
the same nnsight: `check_remote_version()` reads the server's and says what to install if they differ (otherwise
the failure is an opaque serialization error, nnsight issue 570). Every function here that runs a trace takes
`remote` and passes it to `model.trace`; nnsight's `remote="local"` serializes the trace as for NDIF and runs it
here, which the tests use to prove that the traces ship.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib.metadata import version as installed_version
from pathlib import Path

import torch
from jaxtyping import Float
from torch import Tensor

from mikit.models import SMOLLM2, cache_dir, load_hf_smollm2, offline_mode
from mikit.storage import is_saved, load_weights, read_config, save_cache

# The Hugging Face model (norms unfolded, unlike the HookedTransformer's cache), in the kit's saved-model layout.
SMOLLM2_HF_CACHE = "smollm2-135m-hf-v1"
BOS_ID = 1  # <|im_start|>, which the kit's HookedTransformer prepends to SmolLM2 prompts


# ---- loading --------------------------------------------------------------------------------------


def load_language_model(name: str = SMOLLM2, *, device: str | None = None, remote: bool = False):
    """An nnsight `TransformersModel` for `name`: "smollm2-135m" (offline) or a Hugging Face Hub causal LM.

    `remote=True` builds the hub model on the meta device (no weights downloaded; NDIF holds them) after
    checking that this nnsight matches NDIF's. nnsight 0.8 deprecated `LanguageModel` as an alias of
    `TransformersModel(..., task="text-generation")`, which this returns (traces, `generate` and remote
    execution are the same; only the deprecation warning is gone).
    """
    from nnsight import TransformersModel

    if name == SMOLLM2:
        if remote:
            raise ValueError(
                f"{SMOLLM2} runs here, not on NDIF: pass remote=False, or a hub name NDIF serves "
                "(see nnsight.status()) such as 'openai-community/gpt2' or 'meta-llama/Llama-3.1-8B'."
            )
        model, tokenizer = load_smollm2_hf(device)
        return TransformersModel(model, tokenizer=tokenizer, task="text-generation")
    if "/" not in name and name not in _HUB_SHORT_NAMES:
        raise ValueError(
            f"Unknown model {name!r}: the offline model is {SMOLLM2!r}; in full mode give a Hugging Face Hub id "
            f"such as {', '.join(repr(n) for n in _HUB_SHORT_NAMES)} or 'Qwen/Qwen2.5-0.5B'."
        )
    if remote:
        check_remote_version()
        return TransformersModel(name, task="text-generation")  # meta device: the weights stay on NDIF
    return load_hub_language_model(name, device or ("cuda" if torch.cuda.is_available() else "cpu"))


def load_hub_language_model(name: str, device: str):
    """A Hugging Face Hub causal LM in nnsight, its weights on `device`.

    The only place this module downloads weights: the full-mode tests replace it with a stand-in.
    """
    from nnsight import TransformersModel

    if offline_mode():  # fail at once: a hub call would hang for tens of seconds first
        raise ValueError(f"{name!r} needs the Hugging Face Hub, which offline mode rules out; offline, use {SMOLLM2!r}.")
    return TransformersModel(name, task="text-generation", device_map=device, dispatch=True)


# Hub ids without an owner that the Hub still resolves (legacy root repositories).
_HUB_SHORT_NAMES = ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl", "distilgpt2")


def load_smollm2_hf(device: str | None = None):
    """SmolLM2-135M-Instruct as a Hugging Face `LlamaForCausalLM` (fp32, eval) and its tokenizer, which prepends BOS.

    The first call dequantises the GGUF (`mikit.models.load_hf_smollm2`, 12 s to 2 min) and caches the weights
    in `cache_dir()`; later calls read the cache in about a second.
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    try:
        from transformers.initialization import no_init_weights  # transformers 5
    except ImportError:  # transformers 4 initialises the weights at random first: slower, same result
        from contextlib import nullcontext as no_init_weights

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    folder = cache_dir() / SMOLLM2_HF_CACHE
    if not is_saved(folder):
        _write_smollm2_hf_cache(folder)
    config = AutoConfig.for_model(**read_config(folder)["config"])
    with no_init_weights():  # the cache overwrites every weight: skip the random initialisation
        model = AutoModelForCausalLM.from_config(config)
    # The cache holds the tied embedding once; tie_weights points lm_head at it again.
    result = model.load_state_dict(load_weights(folder, "cpu"), strict=False, assign=True)
    model.tie_weights()
    if result.unexpected_keys or set(result.missing_keys) - {"lm_head.weight"}:
        raise RuntimeError(f"The cached {SMOLLM2} in {folder} does not fit this transformers; delete that folder.")
    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.add_bos_token = True
    return model.to(device).eval(), tokenizer


def _write_smollm2_hf_cache(folder: Path) -> None:
    """Dequantise the GGUF once and save the Hugging Face state dict, config and tokenizer in `folder`."""
    print(f"Converting {SMOLLM2} from its GGUF file for nnsight, once; later loads use {folder}.")
    model, tokenizer = load_hf_smollm2()
    state = {key: value for key, value in model.state_dict().items() if key != "lm_head.weight"}  # tied
    config = model.config.to_dict()
    save_cache(state, folder, {"config": config, "source": f"{SMOLLM2} dequantised from its GGUF file"},
               also=tokenizer.save_pretrained)


# ---- one set of names -----------------------------------------------------------------------------


@dataclass(frozen=True)
class ModuleNames:
    """Where the standard parts sit in one architecture family (paths in the Hugging Face model)."""

    embed: str  # token embedding
    blocks: str  # the list of transformer blocks
    attn: str  # the attention module, inside a block
    attn_out: str  # the attention's output projection (W_O), inside the attention module: its input holds z
    mlp: str  # the MLP, inside a block
    final_norm: str
    unembed: str


_LLAMA_STYLE = ModuleNames("model.embed_tokens", "model.layers", "self_attn", "o_proj", "mlp", "model.norm", "lm_head")
ARCHITECTURES = {  # config.model_type -> names
    **{kind: _LLAMA_STYLE for kind in ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "olmo", "olmo2")},
    "gpt2": ModuleNames("transformer.wte", "transformer.h", "attn", "c_proj", "mlp", "transformer.ln_f", "lm_head"),
    "gpt_neox": ModuleNames("gpt_neox.embed_in", "gpt_neox.layers", "attention", "dense", "mlp",
                            "gpt_neox.final_layer_norm", "embed_out"),
}
# TransformerLens hook names (per layer where they have `{layer}`), in the order a forward pass reaches them:
# a trace must read them in that order.
HOOK_NAMES = ("hook_embed", "blocks.{layer}.hook_attn_out", "blocks.{layer}.hook_mlp_out",
              "blocks.{layer}.hook_resid_post", "ln_final.hook_normalized", "unembed")


def module_names(model) -> ModuleNames:
    """The `ModuleNames` of `model` (an nnsight model or a Hugging Face model), from its config's model_type."""
    kind = model.config.model_type
    if kind not in ARCHITECTURES:
        raise ValueError(f"No module names for model_type {kind!r}: known are {', '.join(sorted(ARCHITECTURES))}.")
    return ARCHITECTURES[kind]


def n_layers(model) -> int:
    """How many transformer blocks `model` has."""
    return len(_walk(model, module_names(model).blocks))


def module_path(model, name: str) -> str:
    """The Hugging Face module path whose output is TransformerLens hook `name` in `model`.

    `blocks.3.hook_resid_post` -> `model.layers.3` (Llama, Qwen) or `transformer.h.3` (GPT-2);
    `unembed`'s output is the logits.
    """
    names = module_names(model)
    fixed = {"hook_embed": names.embed, "ln_final.hook_normalized": names.final_norm, "unembed": names.unembed}
    if name in fixed:
        return fixed[name]
    parts = name.split(".")
    inside = {"hook_resid_post": "", "hook_attn_out": "." + names.attn, "hook_mlp_out": "." + names.mlp}
    if len(parts) == 3 and parts[0] == "blocks" and parts[1].isdigit() and parts[2] in inside:
        layer = int(parts[1])
        if layer >= n_layers(model):
            raise ValueError(f"{name!r}: layer {layer} is past the model's last layer, {n_layers(model) - 1}.")
        return f"{names.blocks}.{layer}{inside[parts[2]]}"
    raise ValueError(f"Unknown hook name {name!r}: the names are {', '.join(HOOK_NAMES)}.")


def module_at(model, name: str):
    """The module (an nnsight Envoy, for an nnsight model) whose output is TransformerLens hook `name`."""
    return _walk(model, module_path(model, name))


def output_projection(model, layer: int):
    """The attention output projection (W_O) of `layer`: its input is every head's z side by side,
    (batch, pos, head * d_head), head h in columns h·d_head … (h+1)·d_head − 1."""
    return getattr(module_at(model, f"blocks.{layer}.hook_attn_out"), module_names(model).attn_out)


def read(model, name: str) -> Tensor:
    """Inside a trace: the activation at hook `name` (the module's output; its first element where it is a tuple)."""
    output = module_at(model, name).output
    return output[0] if isinstance(output, tuple) else output


def write(model, name: str, value: Tensor) -> None:
    """Inside a trace: replace the activation at hook `name` by `value` (a tuple output keeps its other elements)."""
    module = module_at(model, name)
    output = module.output
    module.output = (value, *output[1:]) if isinstance(output, tuple) else value


def _walk(root, path: str):
    """`root.a.b.3.c` for path "a.b.3.c"; numbers index lists (an Envoy does not take `getattr(list, "3")`)."""
    for part in path.split("."):
        root = root[int(part)] if part.isdigit() else getattr(root, part)
    return root


# ---- traces ---------------------------------------------------------------------------------------


def residual_stream(
    model, prompts: str | list[str] | Tensor, *, layers: list[int] | None = None, remote: bool = False
) -> Float[Tensor, "layer batch pos d_model"]:
    """The residual stream after each of `layers` (default all) for `prompts`, from one trace.

    Text is tokenized as `load_language_model` set up (SmolLM2: BOS first; batches padded on the left).
    """
    layers = list(range(n_layers(model))) if layers is None else list(layers)
    names = [f"blocks.{layer}.hook_resid_post" for layer in layers]
    modules = [module_at(model, name) for name in names]  # looked up outside: NDIF has no mikit to run
    gate_remote(remote)
    with torch.no_grad(), model.trace(prompts, remote=remote):
        outputs = []
        for module in modules:
            output = module.output
            outputs.append(output[0] if isinstance(output, tuple) else output)
        stack = torch.stack(outputs).save()
    return stack


# ---- NDIF -----------------------------------------------------------------------------------------

_SERVER_VERSION: dict[str, str] = {}  # host -> version, read once per process


def gate_remote(remote) -> None:
    """Before a trace: check NDIF's nnsight version when `remote` is True ("local", nnsight's serverless dry run of
    a remote trace, and False need no server)."""
    if remote and remote != "local":
        check_remote_version()


def check_remote_version(server_version: str | None = None) -> str:
    """NDIF's nnsight version, after checking that it is the installed one; raises with what to install if not.

    `server_version` skips the network (tests, or a version read elsewhere); otherwise it is read from the
    server's `/env` (`nnsight.ndif.get_remote_env`), once per process.
    """
    from nnsight import CONFIG

    client = installed_version("nnsight")
    host = CONFIG.API.HOST
    if server_version is None:
        if host not in _SERVER_VERSION:
            from nnsight.ndif import get_remote_env

            try:
                packages = get_remote_env(force_refresh=True).get("packages", {})
            except Exception as error:  # unreachable host, HTTP error, bad JSON: one sentence either way
                raise ConnectionError(
                    f"Could not read NDIF's nnsight version from {host}/env ({type(error).__name__}: {error}); "
                    "check the network (and NDIF_HOST if you set it) before running remote=True."
                ) from error
            if "nnsight" not in packages:
                raise ConnectionError(f"{host}/env did not report an nnsight version; NDIF may be down (nnsight.status()).")
            _SERVER_VERSION[host] = packages["nnsight"]
        server_version = _SERVER_VERSION[host]
    if server_version != client:
        raise RuntimeError(
            f"NDIF runs nnsight {server_version} but this Python has nnsight {client}: run "
            f"`pip install nnsight=={server_version}` and restart the kernel (a mismatched client fails remotely "
            "with an opaque serialization error, nnsight issue 570)."
        )
    return server_version
