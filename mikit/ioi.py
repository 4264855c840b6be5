"""Indirect object identification (notebook 02): reference implementations the checks compare against.

Direct logit attribution onto the IO − S direction, attention between the name positions, head
classes from that evidence, activation patching of layers and heads (batched: one forward pass
per layer, every head of the layer in one batch), path patching into receiver heads' queries,
and the faithfulness of a circuit: mean-ablate every head outside it (means taken on the
ABC-corrupted prompts of the same template) and report the logit difference it keeps.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Callable, Iterable, Sequence

import torch
from jaxtyping import Float
from torch import Tensor
from transformer_lens import ActivationCache, HookedTransformer
from transformer_lens.hook_points import HookPoint
from transformer_lens.utilities import get_act_name

from mikit import core, patching
from mikit.core import Head
from mikit.datasets.ioi import IOIDataset


def _is_z(name: str) -> bool:
    return name.endswith("hook_z")


def logit_diff(logits: Float[Tensor, "batch pos d_vocab"], ds: IOIDataset) -> Float[Tensor, "batch"]:
    """Each prompt's logit of the indirect object minus that of the subject, at its END position."""
    return core.logit_diff(logits, ds.word_idx["END"], ds.io_tokens, ds.s_tokens)


def logit_diff_directions(model: HookedTransformer, ds: IOIDataset) -> Float[Tensor, "batch d_model"]:
    """Unembedding direction of IO minus that of S, per prompt: the residual direction the task reads."""
    return (model.W_U[:, ds.io_tokens] - model.W_U[:, ds.s_tokens]).T


def at_end(stack: Float[Tensor, "... batch pos d_model"], ds: IOIDataset) -> Float[Tensor, "... batch d_model"]:
    """Each prompt's row of `stack` at its own END position (prompts differ in length)."""
    batch = torch.arange(len(ds), device=stack.device)
    return stack[..., batch, ds.word_idx["END"].to(stack.device), :]


def head_results_at_end(model: HookedTransformer, cache: ActivationCache, ds: IOIDataset) -> Float[Tensor, "component batch d_model"]:
    """Every head's output (z @ W_O) at END, layer-major: component = layer * n_heads + head."""
    batch = torch.arange(len(ds), device=model.W_O.device)
    end = ds.word_idx["END"].to(model.W_O.device)
    z = torch.stack([cache["z", layer][batch, end] for layer in range(model.cfg.n_layers)])  # (layer, batch, head, d_head)
    return torch.einsum("lbhe,lhed->lhbd", z, model.W_O).flatten(0, 1)


def residual_stack_to_logit_diff(
    stack: Float[Tensor, "component batch d_model"], cache: ActivationCache, model: HookedTransformer, ds: IOIDataset
) -> Float[Tensor, "component"]:
    """Each component's direct effect on the mean logit difference: components at END, final-norm scale applied."""
    if model.cfg.normalization_type in ("LN", "LNPre"):
        stack = stack - stack.mean(-1, keepdim=True)
    scale = at_end(cache["ln_final.hook_scale"], ds)  # (batch, 1): the norm of the full residual stream
    return torch.einsum("cbd,bd->c", stack / scale, logit_diff_directions(model, ds)) / len(ds)


def head_dla(model: HookedTransformer, cache: ActivationCache, ds: IOIDataset) -> Float[Tensor, "layer head"]:
    """Each head's direct contribution to the logit difference at END."""
    dla = residual_stack_to_logit_diff(head_results_at_end(model, cache, ds), cache, model, ds)
    return dla.view(model.cfg.n_layers, model.cfg.n_heads)


def attention_between(
    pattern: Float[Tensor, "batch head q_pos k_pos"], ds: IOIDataset, query: str, key: str
) -> Float[Tensor, "head"]:
    """Mean attention from the position of `query` to that of `key` ("IO", "S1", "S2", "END", "S1+1"), per head."""
    batch = torch.arange(len(ds), device=pattern.device)
    return pattern[batch, :, ds.word_idx[query].to(pattern.device), ds.word_idx[key].to(pattern.device)].mean(0)


HEAD_CLASSES = ("name mover", "negative name mover", "S suppressor", "S mover", "other")
MIN_NAME_ATTENTION = 0.1  # below this to both names, a head's effect does not come from reading a name


def classify_heads(
    dla: Float[Tensor, "layer head"],
    attn_io: Float[Tensor, "layer head"],
    attn_s: Float[Tensor, "layer head"],
    threshold: float,
) -> dict[str, list[Head]]:
    """Sort the heads whose |DLA| ≥ threshold by the name they attend to from END and the sign of their effect.

    Attending to IO and raising IO − S: copies IO (name mover); lowering it: suppresses IO (negative
    name mover). Attending to S and raising IO − S: suppresses S; lowering it: copies S. Attending
    to neither name (< MIN_NAME_ATTENTION to both): other.
    """
    classes: dict[str, list[Head]] = {name: [] for name in HEAD_CLASSES}
    for layer, head in (dla.abs() >= threshold).nonzero().tolist():
        if max(attn_io[layer, head], attn_s[layer, head]) < MIN_NAME_ATTENTION:
            classes["other"].append((layer, head))
            continue
        to_io = bool(attn_io[layer, head] >= attn_s[layer, head])
        raises = bool(dla[layer, head] > 0)
        name = {(True, True): "name mover", (True, False): "negative name mover",
                (False, True): "S suppressor", (False, False): "S mover"}[to_io, raises]
        classes[name].append((layer, head))
    for heads in classes.values():
        heads.sort(key=lambda lh: -abs(float(dla[lh])))
    return classes


def end_logit_diff(model: HookedTransformer, resid: Float[Tensor, "batch pos d_model"], ds: IOIDataset) -> Tensor:
    """Mean logit difference from the final residual stream, unembedding only END and only the two names."""
    batch = torch.arange(len(ds), device=resid.device)
    end = model.ln_final(resid[batch, ds.word_idx["END"].to(resid.device)])
    return torch.einsum("bd,bd->b", end, logit_diff_directions(model, ds)).mean()


def layer_patching(
    model: HookedTransformer, ds: IOIDataset, clean_cache: ActivationCache, corrupted_cache: ActivationCache,
) -> Float[Tensor, "layer"]:
    """Mean logit diff when all heads of one layer get their clean output in the corrupted run, per layer."""
    metric = lambda resid: end_logit_diff(model, resid, ds)  # noqa: E731
    patches = [(get_act_name("z", layer), ()) for layer in range(model.cfg.n_layers)]
    return patching.run_patches(model, corrupted_cache, clean_cache, metric, patches, progress=False, metric_input="resid")


def head_patching(
    model: HookedTransformer, ds: IOIDataset, clean_cache: ActivationCache, corrupted_cache: ActivationCache,
    layers: Iterable[int],
) -> Float[Tensor, "layer head"]:
    """Mean logit diff when one head gets its clean output in the corrupted run (NaN for layers not swept)."""
    layers = list(layers)
    metric = lambda resid: end_logit_diff(model, resid, ds)  # noqa: E731
    patches = [(get_act_name("z", layer), (slice(None), head)) for layer in layers for head in range(model.cfg.n_heads)]
    results = torch.full((model.cfg.n_layers, model.cfg.n_heads), float("nan"))
    results[layers] = patching.run_patches(
        model, corrupted_cache, clean_cache, metric, patches, progress=False, metric_input="resid"
    ).view(len(layers), model.cfg.n_heads)
    return results


def path_patch_to_queries(
    model: HookedTransformer, ds: IOIDataset, clean_cache: ActivationCache, corrupted_cache: ActivationCache,
    senders: Sequence[Head], receivers: Sequence[Head],
) -> float:
    """Mean logit diff when the senders' corrupted outputs reach the receivers' queries and nothing else."""
    metric = lambda logits: logit_diff(logits, ds).mean()  # noqa: E731
    return patching.path_patch(model, clean_cache, corrupted_cache, metric, senders, receivers, "q").item()


def template_means(corrupted_cache: ActivationCache, corrupted: IOIDataset, ds: IOIDataset) -> dict[str, Tensor]:
    """Per clean prompt, every layer's `hook_z` averaged over the corrupted prompts of its template."""
    groups = defaultdict(list)
    for i, prompt in enumerate(corrupted.prompts):
        groups[prompt.template, int(corrupted.lengths[i])].append(i)
    rows = []
    for i, prompt in enumerate(ds.prompts):
        key = prompt.template, int(ds.lengths[i])
        if key not in groups:
            raise ValueError(f"prompt {i} has a template or length that no corrupted prompt has; corrupt this dataset.")
        rows.append(groups[key])
    names = [name for name in corrupted_cache.keys() if _is_z(name)]
    return {name: torch.stack([corrupted_cache[name][idx].mean(0) for idx in rows]) for name in names}


def mean_ablate_outside(
    z: Float[Tensor, "batch pos head d_head"], hook: HookPoint, circuit: Iterable[Head], means: dict[str, Tensor]
) -> Float[Tensor, "batch pos head d_head"]:
    """Replace the output of every head of this layer that is not in `circuit` with its mean."""
    outside = torch.ones(z.shape[2], dtype=torch.bool, device=z.device)
    outside[[head for layer, head in circuit if layer == hook.layer()]] = False
    z[:, :, outside] = means[hook.name][:, :, outside].to(z.dtype)
    return z


def circuit_logit_diff(
    model: HookedTransformer, ds: IOIDataset, circuit: Iterable[Head], means: dict[str, Tensor],
    ablate: Callable = mean_ablate_outside,
) -> float:
    """Mean logit difference when every head outside `circuit` is replaced by its template mean."""
    circuit = list(circuit)
    with torch.inference_mode():
        logits = model.run_with_hooks(ds.tokens, fwd_hooks=[(_is_z, lambda z, hook: ablate(z, hook, circuit, means))])
    return logit_diff(logits, ds).mean().item()


def faithfulness(model: HookedTransformer, ds: IOIDataset, circuit: Iterable[Head], corrupted: IOIDataset) -> float:
    """Fraction of the clean logit difference the circuit keeps when all other heads are mean-ablated."""
    with torch.inference_mode():
        clean_logits = model(ds.tokens)
        _, corrupted_cache = model.run_with_cache(corrupted.tokens, names_filter=_is_z)
    means = template_means(corrupted_cache, corrupted, ds)
    return circuit_logit_diff(model, ds, circuit, means) / logit_diff(clean_logits, ds).mean().item()

