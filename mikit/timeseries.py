"""Where a time-series classifier looks, checked against the time steps that decide each series' class.

    model = load_timeseries_classifier()                       # mikit.zoo.timeseries
    clean = make_timeseries(64, seed=1)[...]                   # mikit.datasets.timeseries
    corrupted = clean.with_feature("early_peak", False)        # the same series without the early peak
    restored = time_step_patching(model, clean.tokens(), corrupted.tokens(), clean.labels, corrupted.labels)
    # (batch, layer, pos): share of the clean-vs-corrupted logit difference that patching that one position's
    # residual stream (from the clean run into the corrupted one) restores, for each pair on its own
    share_in_steps(restored[:, 1], clean.decisive_steps)      # (batch,): how much of it lies on the decisive steps
    attention = last_position_attention(model, clean.tokens())   # (batch, layer, head, pos)
    share_in_steps(attention, clean.decisive_steps)          # (batch, layer, head)
    path = path_attention(model, clean.tokens(), [(0, 0), (1, 1)])   # (batch, pos): L1H1 reading through L0H0

Each pair is patched on its own (with `mikit.patching.patch_residual`, TransformerLens hooks), since the
decisive steps move from series to series: an average over pairs would blur them. Positions follow the
tokens, [BOS, step 0, ..., step 47, CLS]; `share_in_steps` reads only the 48 step positions.
"""

from __future__ import annotations

from typing import Literal, Sequence

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor
from tqdm.auto import tqdm
from transformer_lens import HookedTransformer
from transformer_lens.utilities import get_act_name

from mikit.core import Head
from mikit.datasets.timeseries import LENGTH
from mikit.patching import Metric, patch_residual


def class_logit_diff(
    correct: Int[Tensor, "batch"], wrong: Int[Tensor, "batch"], *, reduce: bool = True
) -> Metric:
    """A metric on the logits: the logit of class `correct` minus that of `wrong` at the last position, averaged
    over the batch (or one per row with `reduce=False`)."""
    def metric(logits: Float[Tensor, "batch pos class"]) -> Tensor:
        last = logits[:, -1]
        rows = torch.arange(len(last), device=last.device)
        diff = last[rows, correct.to(last.device)] - last[rows, wrong.to(last.device)]
        return diff.mean() if reduce else diff

    return metric


def time_step_patching(
    model: HookedTransformer, clean_tokens: Int[Tensor, "batch pos"], corrupted_tokens: Int[Tensor, "batch pos"],
    clean_labels: Int[Tensor, "batch"], corrupted_labels: Int[Tensor, "batch"],
    component: Literal["resid_pre", "attn_out", "mlp_out"] = "resid_pre",
    *, batch_size: int = 256, progress: bool = True, layers: Sequence[int] | None = None,
) -> Float[Tensor, "batch layer pos"]:
    """For each clean/corrupted pair and each (layer, position): the share of the logit difference (clean class
    minus corrupted class) that patching `component` there from the clean run into the corrupted run restores.

    0 means the corrupted run's logit difference, 1 the clean run's. Pairs where the two runs' differences are
    equal (within 1e-4) get NaN: there is nothing to restore. Layers left out of `layers` are NaN too.
    """
    if clean_tokens.shape != corrupted_tokens.shape or clean_tokens.ndim != 2:
        raise ValueError(
            f"clean and corrupted tokens must be (batch, pos) tensors of one shape, not {tuple(clean_tokens.shape)} "
            f"and {tuple(corrupted_tokens.shape)}."
        )
    if not len(clean_labels) == len(corrupted_labels) == len(clean_tokens):
        raise ValueError(
            f"there must be one clean and one corrupted label per pair: {len(clean_tokens)} pairs, "
            f"{len(clean_labels)} clean and {len(corrupted_labels)} corrupted labels."
        )
    metric = class_logit_diff(clean_labels, corrupted_labels, reduce=False)
    with torch.inference_mode():
        clean_diff = metric(model(clean_tokens))
        corrupted_diff = metric(model(corrupted_tokens))
    results = torch.full((len(clean_tokens), model.cfg.n_layers, clean_tokens.shape[1]), float("nan"))
    for i in tqdm(range(len(clean_tokens)), desc="patching pairs", disable=not progress):
        gap = (clean_diff[i] - corrupted_diff[i]).item()
        if abs(gap) < 1e-4:
            continue
        pair_metric = class_logit_diff(clean_labels[i : i + 1], corrupted_labels[i : i + 1])
        patched = patch_residual(
            model, clean_tokens[i : i + 1], corrupted_tokens[i : i + 1], pair_metric, component,
            batch_size=batch_size, progress=False, layers=layers,
        )
        results[i] = (patched - corrupted_diff[i].item()) / gap
    return results


def last_position_attention(
    model: HookedTransformer, tokens: Int[Tensor, "batch pos"], *, batch_size: int = 256
) -> Float[Tensor, "batch layer head pos"]:
    """Each head's attention from the last position (the CLS token the class is read at) to every position."""
    rows = []
    with torch.inference_mode():
        for start in range(0, len(tokens), batch_size):
            _, cache = model.run_with_cache(
                tokens[start : start + batch_size], names_filter=lambda name: name.endswith("attn.hook_pattern")
            )
            layers = [cache[get_act_name("pattern", layer)][:, :, -1] for layer in range(model.cfg.n_layers)]
            rows.append(torch.stack(layers, 1))
    return torch.cat(rows).cpu()


def path_attention(
    model: HookedTransformer, tokens: Int[Tensor, "batch pos"], heads: Sequence[Head]
) -> Float[Tensor, "batch pos"]:
    """How much the last position reads from each position along a chain of heads, one per layer in forward order.

    For `heads=[(0, 0), (1, 1)]`: the attention of L1H1 from the last position to each position k, times the
    attention of L0H0 from k to each position j, summed over k. A head that reads what an earlier head moved
    shows its source here, where its own attention only shows the relay positions.
    """
    layers = [layer for layer, _ in heads]
    if not heads or any(a >= b for a, b in zip(layers, layers[1:])):
        raise ValueError(f"heads must be (layer, head) pairs in strictly increasing layers, not {list(heads)}.")
    names = {get_act_name("pattern", layer) for layer in layers}
    with torch.inference_mode():
        _, cache = model.run_with_cache(tokens, names_filter=lambda name: name in names)
    weights = torch.zeros(tokens.shape, device=cache[get_act_name("pattern", layers[-1])].device)
    weights[:, -1] = 1.0
    for layer, head in reversed(heads):
        weights = torch.einsum("bq,bqk->bk", weights, cache[get_act_name("pattern", layer)][:, head])
    return weights.cpu()


def share_in_steps(
    scores: Float[Tensor, "batch *rest pos"], steps: Bool[Tensor, "batch step"]
) -> Float[Tensor, "batch *rest"]:
    """The share of the absolute `scores` over the time-step positions (1 to LENGTH) that falls on `steps`.

    For attention it is the share of the attention paid to the series that goes to those steps; for patching
    results, the share of the (absolute) restoration found there. Rows with no `steps` give NaN. Chance level
    is `steps.sum(-1) / LENGTH`.
    """
    if scores.shape[-1] != LENGTH + 2 or steps.shape[-1] != LENGTH:
        raise ValueError(
            f"scores must run over the {LENGTH + 2} token positions and steps over the {LENGTH} time steps, "
            f"not {scores.shape[-1]} and {steps.shape[-1]}."
        )
    if scores.shape[0] != steps.shape[0]:
        raise ValueError(
            f"scores and steps must have one row per series each, not {scores.shape[0]} and {steps.shape[0]}."
        )
    on_steps = scores[..., 1 : LENGTH + 1].abs().nan_to_num(0.0)
    mask = steps.reshape(steps.shape[0], *[1] * (scores.ndim - 2), LENGTH).to(on_steps.device)
    share = (on_steps * mask).sum(-1) / on_steps.sum(-1).clamp_min(1e-12)
    empty = ~steps.any(-1)
    return share.masked_fill(empty.reshape(-1, *[1] * (scores.ndim - 2)).to(share.device), float("nan"))
