"""Indirect object identification (notebook 02): reference implementations the checks compare against.

Direct logit attribution of heads onto the IO − S direction, attention from END to the
names, and the faithfulness of a circuit: mean-ablate every head outside it (means taken on
the ABC-corrupted prompts of the same template) and report the logit difference it keeps.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Iterable

import torch
from jaxtyping import Float
from torch import Tensor
from transformer_lens import ActivationCache, HookedTransformer

from mikit.datasets.ioi import IOIDataset, logit_diff

Head = tuple[int, int]


def _is_z(name: str) -> bool:
    return name.endswith("hook_z")


def logit_diff_directions(model: HookedTransformer, ds: IOIDataset) -> Float[Tensor, "batch d_model"]:
    """Unembedding direction of IO minus that of S, per prompt: the residual direction the task reads."""
    return (model.W_U[:, ds.io_tokens] - model.W_U[:, ds.s_tokens]).T


def head_dla(cache: ActivationCache, model: HookedTransformer, ds: IOIDataset) -> Float[Tensor, "layer head"]:
    """Each head's direct contribution to the logit difference at END (final layer norm's scale applied)."""
    results = cache.stack_head_results(layer=-1, apply_ln=True)  # (layer*head, batch, pos, d_model)
    batch = torch.arange(len(ds), device=results.device)
    at_end = results[:, batch, ds.word_idx["END"]]  # (layer*head, batch, d_model)
    dla = torch.einsum("cbd,bd->cb", at_end, logit_diff_directions(model, ds)).mean(-1)
    return dla.view(model.cfg.n_layers, model.cfg.n_heads)


def attention_to(pattern: Float[Tensor, "batch head q k"], ds: IOIDataset, word: str) -> Float[Tensor, "head"]:
    """Mean attention from END to the position of `word` ("IO", "S1", "S2", …), per head."""
    batch = torch.arange(len(ds), device=pattern.device)
    return pattern[batch, :, ds.word_idx["END"], ds.word_idx[word]].mean(0)


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


def circuit_logit_diff(
    model: HookedTransformer, ds: IOIDataset, circuit: Iterable[Head], means: dict[str, Tensor]
) -> float:
    """Mean logit difference when every head outside `circuit` is replaced by its template mean."""
    keep = defaultdict(list)
    for layer, head in circuit:
        keep[layer].append(head)

    def ablate_outside(z: Float[Tensor, "batch pos head d_head"], hook) -> Tensor:
        outside = torch.ones(model.cfg.n_heads, dtype=torch.bool, device=z.device)
        outside[keep[hook.layer()]] = False
        z[:, :, outside] = means[hook.name][:, :, outside]
        return z

    with torch.inference_mode():
        logits = model.run_with_hooks(ds.tokens, fwd_hooks=[(_is_z, ablate_outside)])
    return logit_diff(logits, ds).mean().item()


def faithfulness(model: HookedTransformer, ds: IOIDataset, circuit: Iterable[Head], corrupted: IOIDataset) -> float:
    """Fraction of the clean logit difference the circuit keeps when all other heads are mean-ablated."""
    with torch.inference_mode():
        clean_logits = model(ds.tokens)
        _, corrupted_cache = model.run_with_cache(corrupted.tokens, names_filter=_is_z)
    means = template_means(corrupted_cache, corrupted, ds)
    return circuit_logit_diff(model, ds, circuit, means) / logit_diff(clean_logits, ds).mean().item()

