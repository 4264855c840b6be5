"""Checks for notebook 05 (cross-attention in text-to-image models and a captioner).

Each check runs the student's function on small inputs built here (a tiny random TinyT2I, random
attention maps with a known structure, one cross-attention layer of a tiny random UNet) and compares it
with `mikit.xattn`; each takes well under a second. Under the grader (`hidden_variant`) the seeds, the
shapes and the indices change, and the models travel as their recipes (`recording_model`, `unet_attn2`).
"""

from __future__ import annotations

import functools
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from mikit.checks import (
    CheckFailed, Exercise, call_student, expect_close, expect_number, expect_tensor, hidden, passed,
    reject_known_mistakes, reveal, seeded, size,
)
from mikit.hidden import recipe
from mikit.xattn import attention as xattn_attention
from mikit.xattn import binding as xattn_binding
from mikit.xattn import captioner as xattn_captioner
from mikit.xattn import diffusers_attention as xattn_diffusers
from mikit.xattn.attention import iou, upsample, word_heatmap
from mikit.xattn.binding import reweight_pattern, token_strength
from mikit.xattn.model import TinyT2I, TinyT2IConfig
from mikit.xattn.training import SceneData, sample


def _seed(seed: int) -> int:
    """`seed` in the notebook; under the grader the hidden seed's shift of it (for functions that take an int)."""
    return seeded(seed).initial_seed()


def _maps(seed: int, steps: int = 3, layers: int = 2, prompts: int = 3, heads: int = 2, words: int = 7) -> Tensor:
    """Random cross-attention maps (step, layer, prompt, head, patch, word) whose rows sum to 1 over words."""
    scores = torch.randn(steps, layers, prompts, heads, 64, words, generator=seeded(seed)) * 2
    return scores.softmax(-1)


def _hidden_maps(seed: int, words: int = 7, prompts: int = 3) -> Tensor:
    """`_maps` with every axis but the 64 patches (8 × 8, as in the exercises) resized under the grader."""
    return _maps(seed, size(3), size(2), size(prompts), size(2), size(words))


def cross_attention_probs(fn: Callable) -> None:
    """Exercise 1: attention probabilities from queries and keys, with caption padding masked out."""
    __tracebackhide__ = True
    name = "cross_attention_probs"
    batch, n_heads, d_head = size(3), size(4), size(8, 4)  # d_model = n_heads · d_head stays a multiple of 4
    torch.manual_seed(_seed(0))
    model = TinyT2I(TinyT2IConfig(d_model=n_heads * d_head, n_heads=n_heads, n_layers=1, d_mlp=64)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=seeded(1)) * 0.3)
    data = SceneData.generate(batch, seed=_seed(2))  # captions of different lengths: padding differs per row
    with torch.no_grad():
        _, cache = model.run_with_cache(data.images, torch.full((batch,), 0.5), data.captions)
    q, k = cache["blocks.0.cross_attn.hook_q"], cache["blocks.0.cross_attn.hook_k"]
    padding = data.captions == 0
    want = cache["blocks.0.cross_attn.hook_pattern"]
    got = expect_tensor(call_student(fn, name, q, k, padding), name, want.shape, "batch head image_patch word")
    scores = torch.einsum("bqhd,bkhd->bhqk", q, k)
    masked = lambda s: s.masked_fill(padding[:, None, None, :], float("-inf"))  # noqa: E731
    reject_known_mistakes(got, [
        (masked(scores).softmax(-1), "you forgot to divide the scores by √d_head before the softmax"),
        (masked(scores / d_head).softmax(-1), "scale the scores by 1/√d_head (d_head = q.shape[-1]), not 1/d_head"),
        ((scores / d_head**0.5).softmax(-1), "padding words get attention: set their scores to -inf before the softmax"),
    ], want)
    if got.isnan().any():
        raise CheckFailed(f"`{name}` returned NaN: the softmax must run over the words (keys, the last axis); a padding "
                          "column is all -inf, so a softmax over the image patches gives NaN.")
    if torch.allclose(got.sum(-2), torch.ones_like(got.sum(-2)), atol=1e-4):
        raise CheckFailed("the softmax must run over the words (keys, the last axis), not the image patches")
    expect_close(got, want, name, atol=1e-5, hint="softmax over words of q·k/√d_head, padding at -inf")
    passed(name, "rows sum to 1 over the caption's words and padding gets 0")


@recipe
def recording_model(seed: int, n_layers: int) -> TinyT2I:
    """A tiny random TinyT2I that overwrites each cross-attention pattern in place once its layer has used it.

    The overwrite (zeros, at the layer's `hook_z`, after every hook on `hook_pattern` has run) leaves the model's
    output unchanged but reaches every map a recorder kept as a view instead of a copy, as a later in-place hook would.
    """
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        # 16 × 16 patches (4 image tokens, not 64): a recorder does not depend on the grid, the check runs faster,
        # and self-attention maps (4 keys) cannot pass for cross-attention ones (16 words)
        model = TinyT2I(TinyT2IConfig(d_model=16, n_heads=2, n_layers=n_layers, patch=16, d_mlp=32)).eval()
    with torch.no_grad():  # off the adaLN-Zero init, so that the maps change from step to step
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(seed + 1)) * 0.3)
    used: dict[int, Tensor] = {}

    def note(pattern: Tensor, hook, layer: int) -> None:
        used[layer] = pattern

    def overwrite(z: Tensor, hook, layer: int) -> None:
        with torch.no_grad():
            used.pop(layer).zero_()

    for layer in range(n_layers):
        model.add_hook(f"blocks.{layer}.cross_attn.hook_pattern", functools.partial(note, layer=layer), is_permanent=True)
        model.add_hook(f"blocks.{layer}.cross_attn.hook_z", functools.partial(overwrite, layer=layer), is_permanent=True)
    return model


def _store_run(model: TinyT2I, captions: Tensor, steps: int, guidance: float, seed: int) -> tuple[Tensor, Tensor]:
    """The images and every row of every recorded map (step, layer, batch row, head, patch, word), by the kit's store."""
    with torch.no_grad(), xattn_attention.CrossAttentionStore(model) as store:
        images = sample(model, captions, steps=steps, guidance=guidance, seed=seed)
    return images, store.stacked()


def _recorded(result, name: str) -> tuple[Tensor, Tensor]:
    """The (images, maps) pair a recorder returned."""
    __tracebackhide__ = True
    if not (isinstance(result, (tuple, list)) and len(result) == 2):
        raise CheckFailed(f"`{name}` should return two things, (images, maps), but returned a {type(result).__name__}"
                          + (f" of {len(result)}" if isinstance(result, (tuple, list)) else "") + ".")
    return result[0], result[1]


def record_cross_attention(fn: Callable) -> None:
    """Exercise 2: record every layer's cross-attention at every sampling step, conditional rows only."""
    __tracebackhide__ = True
    name = "record_cross_attention"
    steps, n_layers, n_prompts = size(3), size(2), size(3)
    model = recording_model(_seed(20), n_layers)
    captions = SceneData.generate(n_prompts, seed=_seed(21)).captions
    guidance, seed = 2.5, 0
    if hidden():
        guidance, seed = round(1.5 + 3 * float(torch.rand(1, generator=seeded(22))), 3), _seed(23)
    images_want, every_row = _store_run(model, captions, steps, guidance, seed)
    want = every_row[:, :, :n_prompts]
    dims = "step layer prompt head image_patch word"
    images, maps = _recorded(call_student(fn, name, model, captions, steps, guidance, seed), name)
    if isinstance(maps, Tensor) and maps.ndim == 6:
        if maps.shape[-1] == model.cfg.n_patches and maps.shape[-1] != want.shape[-1]:
            raise CheckFailed("those are the self-attention maps (image patch → image patch): hook "
                              "blocks.{layer}.cross_attn.hook_pattern, whose keys are the caption's words")
        if tuple(maps.shape) == tuple(every_row.shape):
            raise CheckFailed(f"you kept all {2 * n_prompts} rows of each call: under classifier-free guidance the "
                              f"sampler runs [conditional; unconditional], and only the first n_prompts = {n_prompts} "
                              "(the captions' rows) attend to the words")
        if maps.shape[:2] == (n_layers, steps) and maps.shape[2:] == want.shape[2:] and steps != n_layers:
            raise CheckFailed("your first two axes are (layer, step): stack the steps first, (step, layer, prompt, "
                              "head, patch, word)")
    maps = expect_tensor(maps, name, want.shape, dims)
    images = expect_tensor(images, name + " (images)", images_want.shape, "prompt 3 32 32")
    reject_known_mistakes(maps, [
        (every_row[:, :, n_prompts:], "those are the unconditional rows: our sampler batches [conditional; "
                                      "unconditional], so the prompts' maps are the first n_prompts rows"),
        (torch.zeros_like(want), "your maps changed after your hook returned: the check's model overwrites each pattern "
                                 "in place once its layer has used it, as a later hook may. Keep a copy (clone()), "
                                 "not a slice, which is a view of the pattern"),
    ], want)
    if not torch.allclose(images, images_want, atol=1e-5):
        raise CheckFailed("your hooks changed what the model draws: a recording hook only copies the pattern and "
                          "returns None (or the pattern unchanged)")
    expect_close(maps, want, name, atol=1e-6, hint="one map per model call and layer, the first n_prompts rows, "
                                                  "stacked as (step, layer, ...)")
    # Without guidance (scale 1) the sampler runs the conditional rows alone: nothing to drop.
    _, want = _store_run(model, captions, 2, 1.0, seed)
    _, maps = _recorded(call_student(fn, name, model, captions, 2, 1.0, seed), name)
    if isinstance(maps, Tensor) and maps.ndim == 6 and maps.shape[2] == n_prompts // 2 != n_prompts:
        raise CheckFailed("with guidance 1 the sampler runs only the conditional rows, so half of each batch is half "
                          "the prompts: take n_prompts from the captions, not from the pattern's size")
    maps = expect_tensor(maps, name, want.shape, dims)
    expect_close(maps, want, name, atol=1e-6, hint="with guidance 1 every row of each call is a prompt's")
    passed(name, "the same maps as mikit's CrossAttentionStore, one per step and layer")


def daam_heatmap(fn: Callable) -> None:
    """Exercise 3: average over steps, layers and heads, upsample bilinearly to 32 × 32, scale to max 1."""
    __tracebackhide__ = True
    name = "daam_heatmap"
    maps = _hidden_maps(4)
    maps[:, :, 1] *= 0.2  # prompt 1 attends weakly: per-prompt normalisation matters
    token = 3 if not hidden() else int(torch.randint(1, maps.shape[-1], (1,), generator=seeded(40)))
    want = word_heatmap(maps, token)
    got = expect_tensor(call_student(fn, name, maps, token), name, want.shape, "prompt 32 32")
    mean = maps[..., token].mean(dim=(0, 1, 3))  # (prompt, patch)
    bilinear = upsample(mean)
    nearest = F.interpolate(mean.view(-1, 1, 8, 8), size=(32, 32), mode="nearest").view(-1, 32, 32)
    reject_known_mistakes(got, [
        (bilinear, "scale each prompt's heatmap to a maximum of 1 (divide by its max)"),
        (bilinear / bilinear.max(), "normalise each prompt separately, not by the largest value of all prompts"),
        (nearest / nearest.flatten(1).amax(-1)[:, None, None], "upsample bilinearly (F.interpolate(..., mode='bilinear')), not by repeating patches"),
        ((bilinear - bilinear.flatten(1).amin(-1)[:, None, None])
         / (bilinear.flatten(1).amax(-1) - bilinear.flatten(1).amin(-1))[:, None, None],
         "divide by the maximum only; min-max scaling moves the zero"),
    ], want)
    expect_close(got, want, name, atol=1e-4, hint="mean over steps, layers and heads; bilinear upsampling; divide by each prompt's max")
    passed(name)


def mean_iou(fn: Callable) -> None:
    """Exercise 4: threshold the heatmaps and average the per-object IoU with the true masks."""
    __tracebackhide__ = True
    name = "mean_iou"
    generator = seeded(5)
    n = size(6)
    heat = upsample(torch.rand(n, 64, generator=generator) ** 3)
    heat = heat / heat.flatten(1).amax(-1)[:, None, None]
    masks = torch.rand(n, 32, 32, generator=generator) < torch.linspace(0.05, 0.6, n)[:, None, None]
    threshold = 0.4 if not hidden() else round(0.25 + 0.3 * float(torch.rand(1, generator=seeded(50))), 3)
    # Each heatmap's maximum is exactly 1: the second threshold tells heat ≥ τ from heat > τ.
    for tau in (threshold, 1.0):
        got = expect_number(call_student(fn, name, heat, masks, tau), name)
        predicted = heat >= tau
        want = sum(iou(p, m) for p, m in zip(predicted, masks)) / len(masks)
        pooled = (predicted & masks).sum().item() / (predicted | masks).sum().item()
        dice = sum(2 * (p & m).sum().item() / (p.sum() + m.sum()).item() for p, m in zip(predicted, masks)) / len(masks)
        recall = sum((p & m).sum().item() / m.sum().item() for p, m in zip(predicted, masks)) / len(masks)
        for wrong, message in ((pooled, "average the IoU of each object, do not pool all pixels into one IoU"),
                               (dice, "that is the Dice score 2|A∩B|/(|A|+|B|); IoU is |A∩B|/|A∪B|"),
                               (recall, "you divided by the mask's area (recall); IoU divides by the union")):
            if abs(got - wrong) < 1e-6 and abs(wrong - want) > 1e-6:
                raise CheckFailed(message)
        if abs(got - want) > 1e-6:
            raise CheckFailed(f"`{name}` gave {got:.4f}" + reveal(f" at threshold {tau}, expected {want:.4f}")
                              + ": predicted mask = heat ≥ threshold (a pixel equal to the threshold counts); "
                              "IoU = |A∩B| / |A∪B|, averaged over objects.")
    passed(name)


def _weakest_token_inputs() -> tuple[Tensor, list[list[int]]]:
    """Maps and candidate tokens per prompt where the peak, the mean and the strongest token disagree."""
    if not hidden():
        maps = _maps(6, prompts=4, words=9)
        candidates = [[2, 5], [3, 6, 8], [4, 7], [2, 4, 6]]
        # Make "peak" and "mean" disagree: one token gets a single sharp peak, another a broad weak spread.
        maps[:, :, 0, :, 10, 2] += 2.0
        maps[:, :, 0, :, :, 5] += 0.12
        return maps, candidates
    maps = _hidden_maps(6, words=9, prompts=4)
    words, generator = maps.shape[-1], seeded(60)
    candidates = [torch.randperm(words - 2, generator=generator)[: 2 + p % 2].add(2).tolist()
                  for p in range(maps.shape[2])]
    sharp, broad = candidates[0][:2]
    patch = int(torch.randint(0, 64, (1,), generator=generator))
    maps[:, :, 0, :, patch, sharp] += 2.0  # prompt 0: the weakest peak has the larger mean
    maps[:, :, 0, :, :, broad] += 0.12
    maps[:, :, 1, :, :, candidates[1][0]] += 0.3  # prompt 1: the strongest token has the largest mean
    return maps, candidates


def weakest_token(fn: Callable) -> None:
    """Exercise 5: per prompt, the candidate token whose peak attention (steps, layers, heads averaged) is lowest."""
    __tracebackhide__ = True
    name = "weakest_token"
    maps, candidates = _weakest_token_inputs()
    want = []
    for p, tokens in enumerate(candidates):
        strength = token_strength(maps[:, :, [p] * len(tokens)], torch.tensor(tokens))
        want.append(tokens[int(strength.argmin())])
    got = call_student(fn, name, maps, candidates)
    try:
        got = [int(t) for t in (got.tolist() if isinstance(got, Tensor) else got)]
    except (TypeError, ValueError):
        raise CheckFailed(f"`{name}` should return one token index per prompt (a list of ints), but returned a "
                          f"{type(got).__name__}.") from None
    if len(got) != len(candidates):
        raise CheckFailed(f"`{name}` should return one token per prompt ({len(candidates)}), but returned {len(got)}.")
    mean_pick = [tokens[int(maps.mean(dim=(0, 1, 3))[p, :, tokens].mean(0).argmin())] for p, tokens in enumerate(candidates)]
    strongest = []
    for p, tokens in enumerate(candidates):
        strength = token_strength(maps[:, :, [p] * len(tokens)], torch.tensor(tokens))
        strongest.append(tokens[int(strength.argmax())])
    if got == strongest and got != want:
        raise CheckFailed("you picked the strongest token: a neglected object is the one with the weakest peak (argmin)")
    if got == mean_pick and got != want:
        raise CheckFailed("compare peaks (max over image patches), not average attention: Attend-and-Excite asks whether a token is strong *somewhere*")
    if any(g not in tokens for g, tokens in zip(got, candidates)):
        raise CheckFailed("return a token from each prompt's candidates (its object words), not a position in the candidate list")
    if got != want:
        raise CheckFailed(f"`{name}` returned {reveal(f'{got}, expected {want}') or 'other tokens than the reference'}: "
                          "average over steps, layers and heads, take the max over patches, then the argmin over candidates.")
    passed(name)


def reweight(fn: Callable) -> None:
    """Exercise 6: Prompt-to-Prompt-style reweighting of one token per prompt, conditional rows only."""
    __tracebackhide__ = True
    name = "reweight"
    n_prompts, heads, patches, words = size(3), size(2), size(64, 16), size(7)
    # n_prompts conditional + n_prompts unconditional rows
    pattern = torch.rand(2 * n_prompts, heads, patches, words, generator=seeded(7)).softmax(-1)
    if not hidden():
        tokens, factor = torch.tensor([1, 4, 2]), 3.0
    else:  # distinct tokens below the last word (so that a neighbour exists), a factor away from 1
        generator = seeded(70)
        tokens = torch.randperm(words - 1, generator=generator)[:n_prompts]
        factor = round(1.5 + 3 * float(torch.rand(1, generator=generator)), 3)
    want = reweight_pattern(pattern, tokens, factor, n_prompts)
    got = expect_tensor(call_student(fn, name, pattern.clone(), tokens, factor, n_prompts), name, want.shape,
                        "batch head patch word")
    everything = reweight_pattern(pattern, torch.cat([tokens, tokens]), factor, 2 * n_prompts)
    unnormalised = pattern.clone()
    unnormalised[torch.arange(n_prompts), :, :, tokens] *= factor
    first_token = reweight_pattern(pattern, tokens[:1].expand(n_prompts), factor, n_prompts)
    reject_known_mistakes(got, [
        (everything, "leave the unconditional rows (after the first n_prompts) alone: guidance needs them unchanged"),
        (unnormalised, "renormalise the reweighted rows so they sum to 1 over the words again"),
        (first_token, "each prompt has its own token: row i reweights tokens[i]"),
    ], want)
    expect_close(got, want, name, atol=1e-6, hint="multiply pattern[i, :, :, tokens[i]] by factor for i < n_prompts, then renormalise those rows")
    passed(name)


@recipe
def unet_attn2(seed: int) -> tuple:
    """`tiny_unet(seed)`, its first cross-attention module (`attn2`) and that module's name."""
    unet = xattn_diffusers.tiny_unet(seed).eval()
    name = next(key.removesuffix(".processor") for key in unet.attn_processors if key.endswith("attn2.processor"))
    return unet, unet.get_submodule(name), name


class _Reached(Exception):
    """Stops a UNet call once the layer under test has its inputs."""


def _attn2_inputs(batch: int, seed: int = 0, side: int = 16, tokens: int = 7):
    """A tiny random UNet's first attn2 module, the inputs it gets in one [unconditional; conditional] call,
    and the probabilities the kit's storing processor records for them."""
    unet, attn, name = unet_attn2(seed)
    seen = {}

    def capture(module, args, kwargs):
        seen.update(hidden=kwargs.get("hidden_states", args[0] if args else None), context=kwargs["encoder_hidden_states"])
        raise _Reached  # the rest of the UNet does not change this layer's inputs

    handle = attn.register_forward_pre_hook(capture, with_kwargs=True)
    generator = torch.Generator().manual_seed(seed + 1)
    latents = torch.randn(batch, 4, side, side, generator=generator)
    text = torch.randn(batch, tokens, unet.config.cross_attention_dim, generator=generator)
    try:
        with torch.no_grad():
            unet(latents, 10, encoder_hidden_states=text)
    except _Reached:
        pass
    finally:
        handle.remove()
    recorded = {}
    with torch.no_grad():
        xattn_diffusers.StoreCrossAttention(name, lambda _, probs: recorded.update(probs=probs))(
            attn, seen["hidden"], encoder_hidden_states=seen["context"])
    return attn, seen["hidden"], seen["context"], recorded["probs"][batch // 2:]


def attn2_probs(fn: Callable) -> None:
    """Exercise 8: a diffusers cross-attention layer's probabilities, conditional rows only (CFG batch)."""
    __tracebackhide__ = True
    name = "attn2_probs"
    # Half the batch must differ from half the heads and half the tokens, or "keep the second half" could
    # slice the wrong axis unnoticed.
    heads = unet_attn2(_seed(0))[1].heads
    batch = size(4, 2)
    batch += 2 * (batch // 2 == heads // 2)
    attn, hidden_states, context, want = _attn2_inputs(batch=batch, seed=_seed(0), side=size(16, 4), tokens=batch + 3)
    with torch.no_grad():
        got = call_student(fn, name, attn, hidden_states, context, True)
    if isinstance(got, Tensor) and got.shape[-1] == hidden_states.shape[1] != want.shape[-1]:
        raise CheckFailed("keys come from the text (encoder_hidden_states), not the image: that is self-attention")
    got = expect_tensor(got, name, want.shape, "prompt head query token")
    with torch.no_grad():
        split = lambda t: attn.head_to_batch_dim(t, out_dim=4)  # noqa: E731  (B, H, T, d)
        q, k = split(attn.to_q(hidden_states)), split(attn.to_k(context))
        probs = (q @ k.transpose(-1, -2) * attn.scale).softmax(-1)
        b = hidden_states.shape[0]
        naive = lambda x: x.view(x.shape[0], attn.heads, x.shape[1], -1)  # noqa: E731  no transpose
        wrongs = [
            (probs[: b // 2], "those are the unconditional rows: diffusers puts [unconditional; conditional], keep the second half"),
            ((q @ k.transpose(-1, -2)).softmax(-1)[b // 2:], "multiply the scores by attn.scale (1/√d_head) before the softmax"),
        ]
        wrong_split = (naive(attn.to_q(hidden_states)) @ naive(attn.to_k(context)).transpose(-1, -2) * attn.scale).softmax(-1)
        wrongs.append((wrong_split[b // 2:], "split heads as (batch, tokens, heads, d_head) and then move heads forward; "
                                              "a plain view(batch, heads, tokens, d) mixes tokens and heads"))
    reject_known_mistakes(got, wrongs, want)
    expect_close(got, want, name, atol=1e-5, hint="softmax over text tokens of (q kᵀ)·attn.scale, second half of the batch")
    passed(name, "the same probabilities the kit's StoreCrossAttention processor records")


def _word_share_inputs() -> tuple[Tensor, int, Tensor, Tensor]:
    """Captioner-like patterns (layer, caption, head, query, key) under the prefix-LM mask, and judged words."""
    n_layers, batch, heads, n_image, n_text = size(3), size(4), size(2), size(6), size(7)
    n = n_image + n_text
    scores = torch.randn(n_layers, batch, heads, n, n, generator=seeded(8)) * 2
    scores[..., :n_image] += torch.randn(n_layers, batch, heads, n, 1, generator=seeded(9))  # heads differ in image share
    patterns = scores.masked_fill(~xattn_captioner.prefix_lm_mask(n_image, n_text), float("-inf")).softmax(-1)
    if not hidden():  # words of captions 0, 2 and 3, in caption order and not; the first word and the last one
        caption, position = torch.tensor([0, 0, 2, 3, 3, 1, 2]), torch.tensor([0, 3, 1, 5, 2, 0, 4])
    else:
        generator, n_words = seeded(80), size(7)
        caption = torch.randint(0, batch, (n_words,), generator=generator)
        position = torch.randint(0, n_text - 1, (n_words,), generator=generator)
        position[0] = 0
    return patterns, n_image, caption, position


def word_image_shares(fn: Callable) -> None:
    """Exercise 7: each generated word's image attention share per layer, at the query that predicted it."""
    __tracebackhide__ = True
    name = "word_image_shares"
    patterns, n_image, caption, position = _word_share_inputs()
    n_words, n_layers = caption.shape[0], patterns.shape[0]
    want = xattn_captioner.word_image_shares(patterns, n_image, caption, position)
    got = call_student(fn, name, patterns.clone(), n_image, caption.clone(), position.clone())
    if isinstance(got, Tensor) and tuple(got.shape) == (n_layers, n_words) and n_layers != n_words:
        raise CheckFailed(f"`{name}` returned (layer, word); put the words first: (n_words, layer)")
    if isinstance(got, Tensor) and got.ndim == 3 and list(got.shape).count(n_words) >= 2:
        raise CheckFailed("pick one (caption, query) pair per word: index the caption and query axes together with two "
                          "index tensors, not one after the other (that gives every caption × every query)")
    got = expect_tensor(got, name, want.shape, "word layer")

    def shares(query: Tensor, keys: slice = slice(None, n_image), heads: str = "mean") -> Tensor:
        mass = patterns[..., keys].sum(-1)  # (layer, caption, head, query)
        mass = mass.mean(2) if heads == "mean" else mass.sum(2)
        return mass[:, caption, query].transpose(0, 1)

    reject_known_mistakes(got, [
        (shares(n_image + position + 1), "that is the share at the word's own position; read it at the query that "
                                          "predicted the word, the token before it (query n_image + position)"),
        (torch.ones_like(want), "every share is 1. Either you summed over every key (a row sums to 1: sum the image "
                                "keys only), or you read an image token's query, which sees only the image (queries "
                                "count the image tokens too: word `position` was predicted at query n_image + position)"),
        (shares(n_image + position, slice(n_image, None)), "that is the share on the text keys: the image tokens are "
                                                            "the first n_image keys"),
        (shares(n_image + position, slice(-n_image, None)), "the image tokens are the first n_image keys, not the last"),
        (shares(n_image + position, heads="sum"), "average over heads; a sum multiplies the share by the number of heads"),
        (shares(n_image + position) / n_image, "sum the attention over the image keys; a mean divides the share by n_image"),
    ], want)
    expect_close(got, want, name, atol=1e-6, hint="attention on the first n_image keys, mean over heads, at query "
                                                  "n_image + position of each word's caption")
    passed(name, "the shares mikit's generated_word_shares reads for the study")


EXERCISES = {
    # Exercise 1 has no reference function in mikit.xattn (the model computes it inside its Attention
    # module, which a function of q, k and padding cannot reach).
    "cross_attention_probs": Exercise(cross_attention_probs, ("cross_attention_probs",)),
    "record_cross_attention": Exercise(
        record_cross_attention, ("record_cross_attention",),
        forbidden=(xattn_attention.CrossAttentionStore.__enter__, xattn_attention.CrossAttentionStore.stacked),
    ),
    # `upsample` stays allowed: it is the bilinear step the exercise asks for with F.interpolate.
    "daam_heatmap": Exercise(daam_heatmap, ("daam_heatmap",), forbidden=(xattn_attention.word_heatmap,)),
    "mean_iou": Exercise(mean_iou, ("mean_iou",), forbidden=(xattn_attention.mean_iou, xattn_attention.iou)),
    "weakest_token": Exercise(weakest_token, ("weakest_token",), forbidden=(xattn_binding.token_strength,)),
    "reweight": Exercise(reweight, ("reweight",), forbidden=(xattn_binding.reweight_pattern,)),
    "word_image_shares": Exercise(
        word_image_shares, ("word_image_shares",),
        forbidden=(xattn_captioner.word_image_shares, xattn_captioner.image_attention_share),
    ),
    "attn2_probs": Exercise(
        attn2_probs, ("attn2_probs",),
        forbidden=(xattn_diffusers.StoreCrossAttention.__call__, xattn_diffusers.attn2_probs_nnsight),
    ),
}
