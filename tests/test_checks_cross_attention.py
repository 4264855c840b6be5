"""Notebook 05's checks accept correct solutions and reject plausible wrong ones with a helpful message."""

import pytest
import torch
import torch.nn.functional as F

from mikit.checks import CheckFailed
from mikit.checks import cross_attention as check


def fails(check_fn, *args, match):
    with pytest.raises(CheckFailed, match=match):
        check_fn(*args)


def stub(*args):
    raise NotImplementedError


# ---- exercise 1: attention probabilities ------------------------------------------------------------


def probs(q, k, padding, scale=None, dim=-1, mask=True):
    scores = torch.einsum("bqhd,bkhd->bhqk", q, k) * (q.shape[-1] ** -0.5 if scale is None else scale)
    if mask:
        scores = scores.masked_fill(padding[:, None, None, :], float("-inf"))
    return scores.softmax(dim)


def test_cross_attention_probs():
    check.cross_attention_probs(probs)
    fails(check.cross_attention_probs, lambda q, k, p: probs(q, k, p, scale=1.0), match="√d_head")
    fails(check.cross_attention_probs, lambda q, k, p: probs(q, k, p, scale=1 / q.shape[-1]), match="not 1/d_head")
    fails(check.cross_attention_probs, lambda q, k, p: probs(q, k, p, mask=False), match="padding words get attention")
    fails(check.cross_attention_probs, lambda q, k, p: probs(q, k, p, dim=-2), match="over the words")
    fails(check.cross_attention_probs, lambda q, k, p: probs(q, k, p)[:, 0], match="shape")
    fails(check.cross_attention_probs, stub, match="NotImplementedError")


# ---- exercise 2: a word's grid ----------------------------------------------------------------------


def test_word_grid():
    check.word_grid(lambda maps, w: maps[..., w + 1].unflatten(-1, (8, 8)))
    fails(check.word_grid, lambda maps, w: maps[..., w].unflatten(-1, (8, 8)), match="i \\+ 1")
    fails(check.word_grid, lambda maps, w: maps[..., w + 1].unflatten(-1, (8, 8)).transpose(-1, -2), match="transposed")
    fails(check.word_grid, lambda maps, w: maps[..., w + 2].unflatten(-1, (8, 8)), match="differs")
    fails(check.word_grid, lambda maps, w: maps[..., w + 1], match="shape")


# ---- exercise 3: DAAM heatmap -----------------------------------------------------------------------


def heatmap(maps, token, mode="bilinear", normalise="prompt"):
    mean = maps[..., token].mean(dim=(0, 1, 3)).view(-1, 1, 8, 8)
    kwargs = {"align_corners": False} if mode == "bilinear" else {}
    heat = F.interpolate(mean, size=(32, 32), mode=mode, **kwargs)[:, 0]
    if normalise == "prompt":
        return heat / heat.flatten(1).amax(-1)[:, None, None]
    if normalise == "all":
        return heat / heat.max()
    if normalise == "minmax":
        low, high = heat.flatten(1).amin(-1)[:, None, None], heat.flatten(1).amax(-1)[:, None, None]
        return (heat - low) / (high - low)
    return heat


def test_daam_heatmap():
    check.daam_heatmap(heatmap)
    fails(check.daam_heatmap, lambda m, t: heatmap(m, t, normalise=None), match="maximum of 1")
    fails(check.daam_heatmap, lambda m, t: heatmap(m, t, normalise="all"), match="each prompt separately")
    fails(check.daam_heatmap, lambda m, t: heatmap(m, t, mode="nearest"), match="bilinear")
    fails(check.daam_heatmap, lambda m, t: heatmap(m, t, normalise="minmax"), match="min-max")
    fails(check.daam_heatmap, lambda m, t: heatmap(m[:, :1], t), match="differs")  # one layer only


# ---- exercise 4: mIoU ---------------------------------------------------------------------------------


def miou(heat, masks, threshold, kind="iou"):
    predicted = heat >= threshold
    inter = (predicted & masks).flatten(1).sum(-1).float()
    if kind == "pooled":
        return (inter.sum() / (predicted | masks).sum()).item()
    if kind == "dice":
        return (2 * inter / (predicted.flatten(1).sum(-1) + masks.flatten(1).sum(-1))).mean().item()
    if kind == "recall":
        return (inter / masks.flatten(1).sum(-1)).mean().item()
    return (inter / (predicted | masks).flatten(1).sum(-1)).mean().item()


def test_mean_iou():
    check.mean_iou(miou)
    fails(check.mean_iou, lambda h, m, t: miou(h, m, t, "pooled"), match="each object")
    fails(check.mean_iou, lambda h, m, t: miou(h, m, t, "dice"), match="Dice")
    fails(check.mean_iou, lambda h, m, t: miou(h, m, t, "recall"), match="union")
    fails(check.mean_iou, lambda h, m, t: miou(h, m, 0.6), match="expected")
    fails(check.mean_iou, lambda h, m, t: "0.5", match="single number")


# ---- exercise 5: weakest token ----------------------------------------------------------------------


def weakest(maps, candidates, reduce="max", pick=min):
    mean = maps.mean(dim=(0, 1, 3))  # (prompt, patch, word)
    chosen = []
    for p, tokens in enumerate(candidates):
        peaks = {t: (mean[p, :, t].amax() if reduce == "max" else mean[p, :, t].mean()).item() for t in tokens}
        chosen.append(pick(peaks, key=peaks.get))
    return chosen


def test_weakest_token():
    check.weakest_token(weakest)
    check.weakest_token(lambda m, c: torch.tensor(weakest(m, c)))
    fails(check.weakest_token, lambda m, c: weakest(m, c, pick=max), match="strongest")
    fails(check.weakest_token, lambda m, c: weakest(m, c, reduce="mean"), match="peaks")
    fails(check.weakest_token, lambda m, c: [0] * len(c), match="candidates")
    fails(check.weakest_token, lambda m, c: weakest(m, c)[:2], match="one token per prompt")


# ---- exercise 6: reweighting --------------------------------------------------------------------------


def reweight(pattern, tokens, factor, n_prompts, rows=None, renormalise=True):
    rows = n_prompts if rows is None else rows
    pattern = pattern.clone()
    for i in range(rows):
        pattern[i, ..., tokens[i % n_prompts]] *= factor
        if renormalise:
            pattern[i] /= pattern[i].sum(-1, keepdim=True)
    return pattern


def test_reweight():
    check.reweight(reweight)
    fails(check.reweight, lambda p, t, f, n: reweight(p, t, f, n, rows=p.shape[0]), match="unconditional")
    fails(check.reweight, lambda p, t, f, n: reweight(p, t, f, n, renormalise=False), match="renormalise")
    fails(check.reweight, lambda p, t, f, n: reweight(p, t[:1].expand(n), f, n), match="own token")
    fails(check.reweight, lambda p, t, f, n: reweight(p, t + 1, f, n), match="differs")


# ---- exercise 8: diffusers attn2 ---------------------------------------------------------------------


def attn2(attn, hidden, context, cfg, half="second", scale=True, keys="text", split="heads"):
    def heads(x):
        if split == "heads":
            return x.unflatten(-1, (attn.heads, -1)).transpose(1, 2)
        return x.view(x.shape[0], attn.heads, x.shape[1], -1)

    q = heads(attn.to_q(hidden))
    k = heads(attn.to_k(context if keys == "text" else hidden))
    probs = (q @ k.transpose(-1, -2) * (attn.scale if scale else 1.0)).softmax(-1)
    if not cfg:
        return probs
    return probs[probs.shape[0] // 2:] if half == "second" else probs[: probs.shape[0] // 2]


def test_attn2_probs():
    check.attn2_probs(attn2)
    fails(check.attn2_probs, lambda *a: attn2(*a, half="first"), match="unconditional")
    fails(check.attn2_probs, lambda *a: attn2(*a, scale=False), match="attn.scale")
    fails(check.attn2_probs, lambda *a: attn2(*a, keys="image"), match="self-attention")
    fails(check.attn2_probs, lambda *a: attn2(*a, split="view"), match="mixes tokens and heads")
    fails(check.attn2_probs, lambda a, h, c, cfg: attn2(a, h, c, False), match="shape")


# ---- exercise 7: image attention share ---------------------------------------------------------------


def test_image_attention_share():
    check.image_attention_share(lambda p, n: p[..., :n].sum(-1))
    fails(check.image_attention_share, lambda p, n: p[..., n:].sum(-1), match="text tokens")
    fails(check.image_attention_share, lambda p, n: p[..., :n].mean(-1), match="mean")
    fails(check.image_attention_share, lambda p, n: p[..., : n + 1].sum(-1), match="keys 0 to n_image - 1")
    fails(check.image_attention_share, lambda p, n: p[..., :n, :].sum(-2), match="not over the queries")
    fails(check.image_attention_share, lambda p, n: p[..., :n].sum(-1)[:, 0], match="shape")
