"""SAEs on disk in SAELens 6's format: `sae_weights.safetensors` + `cfg.json`, never a pickle.

A folder written by `save` loads with `sae_lens.SAE.load_from_disk`, and `load` reads folders written by
SAELens's `save_model` (inference SAEs and the standard / topk / jumprelu / batchtopk training SAEs) or by
its `save_inference_model`.

cfg.json, as SAELens 6 writes it:

    {"d_in": 64, "d_sae": 256, "dtype": "float32", "device": "cpu", "apply_b_dec_to_input": true,
     "normalize_activations": "none", "reshape_activations": "none",
     "metadata": {"sae_lens_version": "...", "hook_name": "...", ...},
     "architecture": "standard" | "topk" | "jumprelu",
     "k": 8, "rescale_acts_by_decoder_norm": false}            # the last two for topk only

Weights: W_enc (d_in, d_sae), b_enc (d_sae), W_dec (d_sae, d_in), b_dec (d_in), and for jumprelu a
per-latent `threshold` (d_sae). SAELens has no inference BatchTopK class: it saves a BatchTopK SAE as a
JumpReLU SAE whose thresholds all equal the learned global threshold, and records
`training_architecture: "batchtopk"` and `training_architecture_details: {"k": ...}` in the metadata;
`save` does the same, and `load` turns such a folder back into a `BatchTopKSAE`.
mikit's own hyperparameters (loss coefficients and so on) ride along in `metadata["mikit"]`.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from mikit.sae.architectures import SAE, BatchTopKSAE, JumpReLUSAE, ReLUSAE, TopKSAE

WEIGHTS_FILE = "sae_weights.safetensors"
CONFIG_FILE = "cfg.json"
# SAELens reads a cfg.json without a version >= 6 as an old (5.x) config and renames its keys, so files
# we write claim the version whose format they follow.
SAELENS_FORMAT_VERSION = "6.0.0"
_DTYPES = {"float32": torch.float32, "float64": torch.float64, "float16": torch.float16, "bfloat16": torch.bfloat16}


def save(sae: SAE, folder: str | Path) -> Path:
    """Write `sae` into `folder` (created if needed) as SAELens would; returns the folder."""
    if not isinstance(sae, SAE):
        raise ValueError(f"save expects a mikit SAE; got {type(sae).__name__}.")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    weights = {"W_enc": sae.W_enc, "b_enc": sae.b_enc, "W_dec": sae.W_dec, "b_dec": sae.b_dec}
    if isinstance(sae, JumpReLUSAE):
        weights["threshold"] = sae.threshold
    elif isinstance(sae, BatchTopKSAE):
        # At inference a BatchTopK SAE is a JumpReLU SAE with one threshold shared by every latent.
        weights["threshold"] = sae.threshold.expand(sae.d_sae)
    save_file({name: t.detach().cpu().contiguous() for name, t in weights.items()}, str(folder / WEIGHTS_FILE))
    (folder / CONFIG_FILE).write_text(json.dumps(config_dict(sae), indent=2) + "\n")
    return folder


def config_dict(sae: SAE) -> dict[str, Any]:
    """The cfg.json contents for `sae`, in SAELens 6's inference format."""
    metadata = {"sae_lens_version": SAELENS_FORMAT_VERSION, "sae_lens_training_version": SAELENS_FORMAT_VERSION}
    metadata.update(sae.metadata)
    metadata["mikit"] = {"class": type(sae).__name__, "hyperparameters": sae.hyperparameters()}
    dtype = str(sae.W_enc.dtype).removeprefix("torch.")
    cfg: dict[str, Any] = {
        "d_in": sae.d_in,
        "d_sae": sae.d_sae,
        "dtype": dtype,
        "device": str(sae.W_enc.device),
        "apply_b_dec_to_input": sae.apply_b_dec_to_input,
        "normalize_activations": "none",
        "reshape_activations": "none",
        "metadata": metadata,
        "architecture": sae.architecture,
    }
    if isinstance(sae, BatchTopKSAE):
        cfg["architecture"] = "jumprelu"
        metadata["training_architecture"] = "batchtopk"
        metadata["training_architecture_details"] = {
            "k": sae.k,
            "topk_threshold_lr": sae.threshold_lr,
            "aux_loss_coefficient": sae.aux_coefficient,
            "rescale_acts_by_decoder_norm": False,
        }
    elif isinstance(sae, TopKSAE):
        cfg["k"] = sae.k
        cfg["rescale_acts_by_decoder_norm"] = False  # mikit keeps decoder rows unit-norm instead
    return cfg


def load(folder: str | Path, device: str | torch.device = "cpu") -> SAE:
    """Rebuild the SAE saved in `folder` (by mikit or SAELens), in eval mode on `device`."""
    folder = Path(folder)
    if not (folder / CONFIG_FILE).is_file() or not (folder / WEIGHTS_FILE).is_file():
        raise ValueError(f"{folder} is not a saved SAE: it needs both {CONFIG_FILE} and {WEIGHTS_FILE}.")
    cfg = json.loads((folder / CONFIG_FILE).read_text())
    weights = load_file(str(folder / WEIGHTS_FILE), device=str(device))
    _check_supported(cfg)

    metadata = dict(cfg.get("metadata") or {})
    mikit_info = metadata.pop("mikit", {})
    dtype_name = str(cfg.get("dtype", "float32")).removeprefix("torch.")
    if dtype_name not in _DTYPES:
        raise ValueError(f"cfg.json has dtype {cfg.get('dtype')!r}; expected one of {sorted(_DTYPES)}.")
    cls, kwargs, weights = _class_and_weights(cfg, metadata, weights)
    if mikit_info.get("class") == cls.__name__:
        # Training hyperparameters SAELens has no field for; the cfg's own fields win where both exist.
        kwargs = {**mikit_info.get("hyperparameters", {}), **kwargs}
    kwargs["apply_b_dec_to_input"] = bool(cfg.get("apply_b_dec_to_input", True))
    sae = cls(cfg["d_in"], cfg["d_sae"], **kwargs, dtype=_DTYPES[dtype_name], device=device, metadata=metadata)
    _load_weights(sae, weights, folder)
    if isinstance(sae, BatchTopKSAE):
        # A saved threshold is already an average over many batches: further training should move it by
        # threshold_lr per step, not restart the plain running mean from this one value.
        sae.threshold_updates.fill_(math.ceil(1 / sae.threshold_lr))
    return sae.eval()


def load_released(release: str, sae_id: str, device: str | torch.device = "cpu") -> SAE:
    """A released SAE from SAELens's pretrained list, as a mikit SAE (needs the Hugging Face Hub: full mode).

    e.g. load_released("gpt2-small-res-jb", "blocks.7.hook_resid_pre"): Joseph Bloom's GPT-2 small residual SAEs.
    """
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        download_released(release, sae_id, folder)
        sae = load(folder, device)
    sae.metadata.setdefault("release", release)
    return sae


def download_released(release: str, sae_id: str, folder: str | Path) -> None:
    """Write a released SAE into `folder` in SAELens's on-disk format, through SAELens (needs the Hub).

    The only place mikit reaches the Hub for an SAE: the full-mode tests replace it with a stand-in.
    """
    from sae_lens import SAE as SAELensSAE

    SAELensSAE.from_pretrained(release, sae_id, device="cpu").save_model(folder)

def _check_supported(cfg: dict[str, Any]) -> None:
    for key in ("d_in", "d_sae"):
        if not isinstance(cfg.get(key), int):
            raise ValueError(f"cfg.json must give {key} as an integer; got {cfg.get(key)!r}.")
    if cfg.get("normalize_activations", "none") not in ("none", None):
        raise ValueError(
            f"cfg.json has normalize_activations = {cfg['normalize_activations']!r}; mikit reads only SAEs on "
            "unnormalised activations (fold the scaling into the weights in SAELens first)."
        )
    if cfg.get("reshape_activations", "none") not in ("none", None):
        raise ValueError(f"cfg.json has reshape_activations = {cfg['reshape_activations']!r}; mikit reads only SAEs on flat activations.")


def _class_and_weights(
    cfg: dict[str, Any], metadata: dict[str, Any], weights: dict[str, Tensor]
) -> tuple[type[SAE], dict[str, Any], dict[str, Tensor]]:
    """Which mikit class rebuilds this SAELens architecture, its arguments, and the weights it loads."""
    architecture = cfg.get("architecture", "standard")
    if "log_threshold" in weights:  # JumpReLU checkpoints from before SAELens 6 trained the log
        weights["threshold"] = weights.pop("log_threshold").exp()
    if architecture == "standard":
        return ReLUSAE, {}, weights
    if architecture == "topk":
        if cfg.get("rescale_acts_by_decoder_norm", False):
            _fold_decoder_norms(weights)
        return TopKSAE, {"k": int(cfg["k"])}, weights
    if architecture == "batchtopk":  # SAELens's training format: the threshold is a scalar buffer
        if cfg.get("rescale_acts_by_decoder_norm", True):
            _fold_decoder_norms(weights)
        weights["threshold"] = weights.pop("topk_threshold")
        return BatchTopKSAE, {"k": _batchtopk_k(cfg.get("k"))}, weights
    if architecture == "jumprelu":
        details = metadata.get("training_architecture_details") or {}
        threshold = weights.get("threshold")
        shared_threshold = threshold is not None and bool((threshold == threshold[0]).all())
        k = _batchtopk_k(details.get("k"), strict=False)
        if metadata.get("training_architecture") == "batchtopk" and shared_threshold and k is not None:
            weights["threshold"] = threshold[0]
            return BatchTopKSAE, {"k": k}, weights
        return JumpReLUSAE, {}, weights
    raise ValueError(f"cfg.json names architecture {architecture!r}; mikit reads standard, topk, batchtopk and jumprelu SAEs.")


def _batchtopk_k(k: Any, strict: bool = True) -> int | None:
    # SAELens allows a fractional average k; mikit's BatchTopKSAE keeps a whole number per token on average.
    if isinstance(k, (int, float)) and not isinstance(k, bool) and float(k).is_integer() and k >= 1:
        return int(k)
    if strict:
        raise ValueError(f"this BatchTopK SAE has k = {k!r}; mikit needs a whole number of latents per token.")
    return None


def _fold_decoder_norms(weights: dict[str, Tensor]) -> None:
    """Turn an SAE that rescales latents by decoder norms into the equivalent one with unit decoder rows."""
    # SAELens's rescale_acts_by_decoder_norm multiplies pre-activations by ‖W_dec[i]‖ and divides latents
    # by it before decoding; scaling W_enc's column and b_enc by the norm and W_dec's row down by it is the
    # same map, with identical latents.
    norms = weights["W_dec"].norm(dim=-1).clamp_min(1e-12)
    weights["W_enc"] = weights["W_enc"] * norms
    weights["b_enc"] = weights["b_enc"] * norms
    weights["W_dec"] = weights["W_dec"] / norms[:, None]


def _load_weights(sae: SAE, weights: dict[str, Tensor], folder: Path) -> None:
    expected = sae.state_dict()
    if set(weights) != set(expected):
        raise ValueError(f"{folder / WEIGHTS_FILE} holds tensors {sorted(weights)}, but a {type(sae).__name__} needs {sorted(expected)}.")
    for name, tensor in weights.items():
        if tensor.shape != expected[name].shape:
            raise ValueError(
                f"{name} in {folder / WEIGHTS_FILE} has shape {tuple(tensor.shape)}, "
                f"but cfg.json implies {tuple(expected[name].shape)}."
            )
    sae.load_state_dict({name: t.to(expected[name].dtype) for name, t in weights.items()})


__all__ = ["CONFIG_FILE", "WEIGHTS_FILE", "config_dict", "load", "save"]
