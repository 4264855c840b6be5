"""Steering vectors and function vectors on nnsight language models (notebook 08), locally or on NDIF.

    lm = load_language_model()                                          # SmolLM2 offline (mikit.language_model)
    vector = steering_vector(lm, ["I love it"], ["I hate it"], layer=10)  # ActAdd / CAA: a contrastive mean difference
    logits = add_vector(lm, ["The movie was"], vector, layer=10, scale=4)  # the last position's logits, steered
    steered_generation(lm, "The movie was", vector, layer=10, scale=4)    # text, with the vector at every step

    z = head_inputs(lm, icl_prompts)                                    # each head's z at the last token, per layer
    effects = indirect_effects(lm, shuffled_prompts, answers, z.mean(1))  # Todd et al.: each head's causal effect
    fv = function_vector(lm, z.mean(1), top_heads(effects, 10))           # Σ of the top heads' mean outputs
    add_vector(lm, ["cold:"], fv, layer=9, positions="last")             # a zero-shot prompt does the task

**Steering** (Turner et al. 2023, ActAdd; Rimsky et al. 2024, CAA): the residual stream after a layer, at the last
token, averaged over prompts with a property minus prompts without it, is a direction that adds the property.
**Function vectors** (Todd et al. 2024): in-context examples ("hot: cold, big: small, fast:") make some attention
heads carry the *task* (here, "give the antonym"). A head's mean output at the last token over such prompts,
patched into prompts whose examples were shuffled (so they no longer show the task), raises the probability of
the right answer by its **causal indirect effect**; the sum of the top heads' mean outputs, added to the residual
stream of a zero-shot prompt, makes the model do the task. A head's output is its part of the attention's output
projection: W_O applied to that head's slice of z alone (bias excluded).

Every function takes `remote`, passed to the trace: `remote=True` runs it on NDIF for a hub model
(`load_language_model(name, remote=True)`), after `mikit.language_model.check_remote_version`.
"""

from __future__ import annotations

from typing import Literal

import torch
from jaxtyping import Float, Int
from torch import Tensor

from mikit.language_model import gate_remote, module_at, n_layers, output_projection

Positions = Literal["all", "last"]


def _check_layer(model, layer: int) -> None:
    if not 0 <= layer < n_layers(model):
        raise ValueError(f"layer must lie between 0 and {n_layers(model) - 1}; got {layer}.")


def _resid(layer: int) -> str:
    return f"blocks.{layer}.hook_resid_post"


# ---- steering vectors -----------------------------------------------------------------------------


def steering_vector(
    model, positive: list[str], negative: list[str], layer: int, *, remote: bool = False
) -> Float[Tensor, "d_model"]:
    """The mean residual stream after `layer` at the last token of `positive` prompts minus that of `negative` ones.

    With pairs (same length lists) it is the mean of the pairs' differences, CAA's vector; with one pair, ActAdd's.
    """
    if not positive or not negative:
        raise ValueError("steering_vector needs at least one positive and one negative prompt.")
    _check_layer(model, layer)
    gate_remote(remote)
    module = module_at(model, _resid(layer))
    with torch.no_grad(), model.trace(list(positive) + list(negative), remote=remote):
        output = module.output
        last = (output[0] if isinstance(output, tuple) else output)[:, -1].save()  # left padding: -1 is the last token
    return last[: len(positive)].mean(0) - last[len(positive):].mean(0)


def add_vector(
    model, prompts: str | list[str], vector: Float[Tensor, "d_model"], layer: int, *, scale: float = 1.0,
    positions: Positions = "all", remote: bool = False,
) -> Float[Tensor, "batch d_vocab"]:
    """The logits at the last position with `scale * vector` added to the residual stream after `layer`.

    `positions="all"` adds it at every position (ActAdd), `"last"` only at the last token (function vectors).
    """
    if positions not in ("all", "last"):
        raise ValueError(f"positions must be 'all' or 'last'; got {positions!r}.")
    _check_layer(model, layer)
    gate_remote(remote)
    module = module_at(model, _resid(layer))  # looked up here: the trace's code runs on NDIF, without mikit
    added = scale * vector
    with torch.no_grad(), model.trace(prompts, remote=remote):
        output = module.output
        resid = output[0] if isinstance(output, tuple) else output
        if positions == "all":
            steered = resid + added
        else:
            steered = resid.clone()
            steered[:, -1] += added
        module.output = (steered, *output[1:]) if isinstance(output, tuple) else steered
        logits = model.output.logits[:, -1].save()
    return logits


def steered_generation(
    model, prompt: str, vector: Float[Tensor, "d_model"], layer: int, *, scale: float = 1.0,
    max_new_tokens: int = 20, remote: bool = False,
) -> str:
    """Greedy continuation of `prompt` with `scale * vector` added after `layer` at every position of every step."""
    _check_layer(model, layer)
    gate_remote(remote)
    module = module_at(model, _resid(layer))
    added = scale * vector
    # Exactly max_new_tokens steps (min_new_tokens): a bounded loop, so the statement after it runs.
    with torch.no_grad(), model.generate(prompt, max_new_tokens=max_new_tokens, min_new_tokens=max_new_tokens,
                                         do_sample=False, remote=remote) as tracer:
        for _ in tracer.iter[:max_new_tokens]:
            output = module.output
            if isinstance(output, tuple):
                module.output = (output[0] + added, *output[1:])
            else:
                module.output = output + added
        ids = tracer.result.save()
    prompt_length = len(model.tokenizer(prompt).input_ids)
    return model.tokenizer.decode(ids[0, prompt_length:], skip_special_tokens=True)


def compare_generations(
    model, prompts: list[str], vector: Float[Tensor, "d_model"], layer: int, *, scales: tuple[float, ...] = (0.0, 4.0),
    max_new_tokens: int = 20, remote: bool = False,
) -> list[dict]:
    """One row per prompt: its continuation at each scale (0 = unsteered), for a side-by-side table."""
    return [{"prompt": prompt, **{f"scale {scale:g}": steered_generation(
        model, prompt, vector, layer, scale=scale, max_new_tokens=max_new_tokens, remote=remote) for scale in scales}}
        for prompt in prompts]


# ---- function vectors -----------------------------------------------------------------------------


def _heads(model) -> int:
    return model.config.num_attention_heads


def head_inputs(
    model, prompts: list[str], *, layers: list[int] | None = None, remote: bool = False
) -> Float[Tensor, "layer batch head d_head"]:
    """Each head's z (its output before W_O) at the last token of every prompt, for `layers` (default all)."""
    layers = list(range(n_layers(model))) if layers is None else list(layers)
    for layer in layers:
        _check_layer(model, layer)
    gate_remote(remote)
    projections = [output_projection(model, layer) for layer in layers]
    n_heads = _heads(model)
    with torch.no_grad(), model.trace(prompts, remote=remote):
        z = torch.stack([projection.input[:, -1] for projection in projections]).save()
    return z.view(*z.shape[:2], n_heads, -1)


def _per_head(z: Tensor, n_heads: int) -> Tensor:
    """(..., head, d_head) -> (..., head, head * d_head): each head's z alone, the others zero (W_O's input)."""
    eye = torch.eye(n_heads, dtype=z.dtype, device=z.device)
    return (eye[:, :, None] * z[..., None, :, :]).flatten(-2)


def head_outputs(
    model, z: Float[Tensor, "layer head d_head"], layers: list[int] | None = None, *, remote: bool = False
) -> Float[Tensor, "layer head d_model"]:
    """What each head writes into the residual stream for its z: W_O applied to its slice alone, no bias."""
    layers = list(range(n_layers(model))) if layers is None else list(layers)
    if z.shape[0] != len(layers):
        raise ValueError(f"z has {z.shape[0]} layers but {len(layers)} layers were named.")
    gate_remote(remote)
    projections = [output_projection(model, layer) for layer in layers]
    alone = [_per_head(z_layer, _heads(model)) for z_layer in z]  # (head, head * d_head) per layer
    with torch.no_grad(), model.session(remote=remote):
        outputs = [projection(x) - projection(torch.zeros_like(x)) for projection, x in zip(projections, alone)]
        stacked = torch.stack(outputs).save()  # W_O of each head's z alone, the bias taken off
    return stacked


def indirect_effects(
    model, prompts: list[str], answers: Int[Tensor, "batch"], mean_z: Float[Tensor, "layer head d_head"], *,
    layers: list[int] | None = None, remote: bool = False,
) -> Float[Tensor, "layer head"]:
    """Each head's causal indirect effect: the mean rise in the answer's probability when the head's z at the last
    token is replaced by its mean over in-context prompts (`mean_z`), on `prompts` that do not show the task.

    One trace per layer, with one copy of the prompts per head (patched in its own rows).
    """
    layers = list(range(n_layers(model))) if layers is None else list(layers)
    if mean_z.shape[0] != len(layers):
        raise ValueError(f"mean_z has {mean_z.shape[0]} layers but {len(layers)} layers were named.")
    if len(answers) != len(prompts):
        raise ValueError(f"one answer per prompt: got {len(answers)} answers for {len(prompts)} prompts.")
    gate_remote(remote)
    n_heads, batch = _heads(model), len(prompts)
    rows = torch.arange(batch)
    with torch.no_grad(), model.trace(prompts, remote=remote):
        baseline = model.output.logits[:, -1].softmax(-1)[rows, answers].save()
    effects = []
    for layer, layer_mean in zip(layers, mean_z):
        projection = output_projection(model, layer)
        with torch.no_grad(), model.trace(list(prompts) * n_heads, remote=remote):
            z = projection.input.clone()  # (heads * batch, pos, head * d_head)
            d_head = z.shape[-1] // n_heads
            for head in range(n_heads):
                z[head * batch:(head + 1) * batch, -1, head * d_head:(head + 1) * d_head] = layer_mean[head]
            projection.input = z
            probs = model.output.logits[:, -1].softmax(-1).save()
        patched = probs.view(n_heads, batch, -1)[:, rows, answers]  # (head, batch)
        effects.append((patched - baseline).mean(1))
    return torch.stack(effects)


def top_heads(effects: Float[Tensor, "layer head"], k: int = 10, layers: list[int] | None = None) -> list[tuple[int, int]]:
    """The `k` (layer, head) pairs with the largest indirect effect, largest first."""
    layers = list(range(effects.shape[0])) if layers is None else list(layers)
    if not 1 <= k <= effects.numel():
        raise ValueError(f"k must lie between 1 and {effects.numel()} (the heads scored); got {k}.")
    order = effects.flatten().topk(k).indices
    return [(layers[int(i) // effects.shape[1]], int(i) % effects.shape[1]) for i in order]


def function_vector(
    model, mean_z: Float[Tensor, "layer head d_head"], heads: list[tuple[int, int]], *, remote: bool = False,
) -> Float[Tensor, "d_model"]:
    """The sum of the chosen heads' mean outputs (W_O of each head's mean z), `mean_z` covering every layer."""
    if mean_z.shape[0] != n_layers(model):
        raise ValueError(f"mean_z must cover all {n_layers(model)} layers; got {mean_z.shape[0]}.")
    used = sorted({layer for layer, _ in heads})
    outputs = head_outputs(model, mean_z[used], used, remote=remote)
    return sum(outputs[used.index(layer), head] for layer, head in heads)


__all__ = [
    "add_vector",
    "compare_generations",
    "function_vector",
    "head_inputs",
    "head_outputs",
    "indirect_effects",
    "steered_generation",
    "steering_vector",
    "top_heads",
]
