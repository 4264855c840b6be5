"""Notebook 05's checks accept correct solutions and reject plausible wrong ones with a helpful message,
in the notebook and as the grader's hidden tests (other seeds, shapes and indices; arguments sent as data)."""

import functools
import json
from contextlib import nullcontext

import pytest
import torch
import torch.nn.functional as F

from alternatives import cross_attention as alternatives  # tests/alternatives/
from alternatives import assert_two_each, listed
from mikit import hidden
from mikit.checks import CheckFailed, hidden_variant
from mikit.checks import cross_attention as check
from mikit.xattn import attention as xattn_attention
from mikit.xattn import binding as xattn_binding
from mikit.xattn import captioner as xattn_captioner
from mikit.xattn import diffusers_attention as xattn_diffusers
from mikit.xattn.training import SceneData, sample

HIDDEN_SEEDS = (1, 2, 3)


@pytest.fixture(autouse=True)
def forget_recipes():
    yield
    hidden.reset()


@pytest.fixture(params=[0, 2], ids=["notebook", "hidden"])
def variant(request):
    """Each wrong-implementation test runs as in the notebook and as the grader's hidden test."""
    with (hidden.active() if request.param else nullcontext()), (hidden_variant(request.param) if request.param else nullcontext()):
        yield request.param


def fails(check_fn, *args, match):
    with pytest.raises(CheckFailed, match=match):
        check_fn(*args)


def wire(fn):
    """`fn` called as the grader calls a student's function: arguments and result through the codec, as JSON text."""

    def call(*args):
        tensors = {}
        payload = json.loads(json.dumps(hidden.encode(list(args), tensors)))
        result = fn(*hidden.decode(payload, {key: value.clone() for key, value in tensors.items()}))
        out = {}
        return hidden.decode(json.loads(json.dumps(hidden.encode(result, out))), out)

    return call


def stub(*args):
    raise NotImplementedError


# ---- exercise 1: attention probabilities ------------------------------------------------------------


def probs(q, k, padding, scale=None, dim=-1, mask=True):
    scores = torch.einsum("bqhd,bkhd->bhqk", q, k) * (q.shape[-1] ** -0.5 if scale is None else scale)
    if mask:
        scores = scores.masked_fill(padding[:, None, None, :], float("-inf"))
    return scores.softmax(dim)


def test_cross_attention_probs(variant):
    check.cross_attention_probs(probs)
    fails(check.cross_attention_probs, lambda q, k, p: probs(q, k, p, scale=1.0), match="√d_head")
    fails(check.cross_attention_probs, lambda q, k, p: probs(q, k, p, scale=1 / q.shape[-1]), match="not 1/d_head")
    fails(check.cross_attention_probs, lambda q, k, p: probs(q, k, p, mask=False), match="padding words get attention")
    fails(check.cross_attention_probs, lambda q, k, p: probs(q, k, p, dim=-2), match="over the words")
    fails(check.cross_attention_probs, lambda q, k, p: probs(q, k, p)[:, 0], match="shape")
    fails(check.cross_attention_probs, stub, match="NotImplementedError")


# ---- exercise 2: recording the maps under guidance --------------------------------------------------


def record(model, captions, steps=20, guidance=3.0, seed=0, rows="conditional", copy=True, order="step",
           hook_point="cross_attn", zero_unconditional=False):
    """The recorder, or one of its plausible mistakes."""
    n = len(captions)
    kept = {layer: [] for layer in range(model.cfg.n_layers)}

    def keep(pattern, hook, layer):
        chosen = {"conditional": pattern[:n], "unconditional": pattern[n:], "all": pattern}[rows]
        kept[layer].append(chosen.detach().clone() if copy else chosen.detach())
        if zero_unconditional:
            pattern[n:] = 0

    hooks = [(f"blocks.{layer}.{hook_point}.hook_pattern", functools.partial(keep, layer=layer)) for layer in kept]
    with model.hooks(fwd_hooks=hooks):
        images = sample(model, captions, steps=steps, guidance=guidance, seed=seed)
    maps = torch.stack([torch.stack(kept[layer]) for layer in kept])  # (layer, step, ...)
    return images, maps.transpose(0, 1) if order == "step" else maps


def half_the_batch(model, captions, steps=20, guidance=3.0, seed=0):
    """n_prompts taken as half of each call's rows, which holds only under guidance."""
    kept = []

    def keep(pattern, hook):
        kept.append(pattern[: pattern.shape[0] // 2].detach().clone())

    hooks = [(f"blocks.{layer}.cross_attn.hook_pattern", keep) for layer in range(model.cfg.n_layers)]
    with model.hooks(fwd_hooks=hooks):
        images = sample(model, captions, steps=steps, guidance=guidance, seed=seed)
    return images, torch.stack(kept).unflatten(0, (-1, model.cfg.n_layers))


def test_record_cross_attention(variant):
    check.record_cross_attention(record)
    fails(check.record_cross_attention, functools.partial(record, rows="unconditional"), match="unconditional rows")
    fails(check.record_cross_attention, functools.partial(record, rows="all"), match="kept all")
    fails(check.record_cross_attention, functools.partial(record, copy=False), match="Keep a copy")
    fails(check.record_cross_attention, functools.partial(record, order="layer"), match="first two axes")
    fails(check.record_cross_attention, functools.partial(record, hook_point="self_attn"), match="self-attention")
    fails(check.record_cross_attention, functools.partial(record, zero_unconditional=True), match="changed what the model draws")
    fails(check.record_cross_attention, half_the_batch, match="guidance 1")
    fails(check.record_cross_attention, lambda *a, **k: record(*a, **k)[1], match="two things")
    fails(check.record_cross_attention, stub, match="NotImplementedError")


def test_the_recording_model_overwrites_patterns_only_after_they_are_used():
    model = check.recording_model(0, 2)
    captions = SceneData.generate(2, seed=0).captions
    plain = check.TinyT2I(model.cfg).eval()
    plain.load_state_dict(model.state_dict())
    torch.testing.assert_close(sample(model, captions, steps=2), sample(plain, captions, steps=2))
    with xattn_attention.CrossAttentionStore(model) as store:  # a copy taken in the hook is safe ...
        sample(model, captions, steps=2)
    assert (store.stacked().sum(-1) - 1).abs().max() < 1e-5
    _, maps = record(model, captions, steps=2, copy=False)  # ... a view is overwritten
    assert maps.abs().max() == 0


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


def test_daam_heatmap(variant):
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


def test_mean_iou(variant):
    check.mean_iou(miou)
    fails(check.mean_iou, lambda h, m, t: miou(h, m, t, "pooled"), match="each object")
    fails(check.mean_iou, lambda h, m, t: miou(h, m, t, "dice"), match="Dice")
    fails(check.mean_iou, lambda h, m, t: miou(h, m, t, "recall"), match="union")
    fails(check.mean_iou, lambda h, m, t: miou(h, m, 0.6), match="IoU = ")
    fails(check.mean_iou, lambda h, m, t: "0.5", match="single number")


# ---- exercise 5: weakest token ----------------------------------------------------------------------


def weakest(maps, candidates, reduce="max", pick=min):
    mean = maps.mean(dim=(0, 1, 3))  # (prompt, patch, word)
    chosen = []
    for p, tokens in enumerate(candidates):
        peaks = {t: (mean[p, :, t].amax() if reduce == "max" else mean[p, :, t].mean()).item() for t in tokens}
        chosen.append(pick(peaks, key=peaks.get))
    return chosen


def test_weakest_token(variant):
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


def test_reweight(variant):
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


def test_attn2_probs(variant):
    check.attn2_probs(attn2)
    fails(check.attn2_probs, lambda *a: attn2(*a, half="first"), match="unconditional")
    fails(check.attn2_probs, lambda *a: attn2(*a, scale=False), match="attn.scale")
    fails(check.attn2_probs, lambda *a: attn2(*a, keys="image"), match="self-attention")
    fails(check.attn2_probs, lambda *a: attn2(*a, split="view"), match="mixes tokens and heads")
    fails(check.attn2_probs, lambda a, h, c, cfg: attn2(a, h, c, False), match="shape")


# ---- exercise 7: each word's image share -----------------------------------------------------------


def shares(patterns, n_image, caption, position, shift=0, keys="image", heads="mean", index="pairs", layout="word"):
    """Each word's image share, or one of its plausible mistakes."""
    chosen = {"image": patterns[..., :n_image], "text": patterns[..., n_image:], "last": patterns[..., -n_image:],
              "all": patterns, "mean": patterns[..., :n_image] / n_image}[keys]
    mass = chosen.sum(-1)
    mass = mass.mean(2) if heads == "mean" else mass.sum(2)  # (layer, caption, query)
    query = n_image + position + shift if shift is not None else position
    out = mass[:, caption, query] if index == "pairs" else mass[:, caption][:, :, query]
    return out.transpose(0, 1) if layout == "word" else out


def test_word_image_shares(variant):
    check.word_image_shares(shares)
    fails(check.word_image_shares, functools.partial(shares, shift=1), match="own position")
    fails(check.word_image_shares, functools.partial(shares, shift=None), match="queries count the image tokens")
    fails(check.word_image_shares, functools.partial(shares, keys="text"), match="text keys")
    fails(check.word_image_shares, functools.partial(shares, keys="last"), match="not the last")
    fails(check.word_image_shares, functools.partial(shares, keys="all"), match="sum the image keys only")
    fails(check.word_image_shares, functools.partial(shares, keys="mean"), match="divides the share by n_image")
    fails(check.word_image_shares, functools.partial(shares, heads="sum"), match="average over heads")
    fails(check.word_image_shares, functools.partial(shares, layout="layer"), match="words first")
    fails(check.word_image_shares, functools.partial(shares, index="grid"), match="one \\(caption, query\\) pair")
    fails(check.word_image_shares, functools.partial(shares, shift=-1), match="differs")
    fails(check.word_image_shares, stub, match="NotImplementedError")


# ---- hidden tests ------------------------------------------------------------------------------------

# A correct function per exercise: the kit's reference where it has one, else this file's.
REFERENCES = {
    "cross_attention_probs": probs,
    "record_cross_attention": record,
    "daam_heatmap": xattn_attention.word_heatmap,
    "mean_iou": xattn_attention.mean_iou,
    "weakest_token": weakest,
    "reweight": xattn_binding.reweight_pattern,
    "word_image_shares": xattn_captioner.word_image_shares,
    "attn2_probs": attn2,
}


def run_hidden(grade_id, fn, seed):
    exercise = check.EXERCISES[grade_id]
    with hidden.active(), hidden_variant(seed):
        exercise.check(wire(fn), *exercise.context())


@pytest.mark.parametrize("grade_id", list(REFERENCES))
def test_reference_passes_hidden_variants(grade_id, capsys):
    for seed in HIDDEN_SEEDS:
        run_hidden(grade_id, REFERENCES[grade_id], seed)
    assert capsys.readouterr().out.count("✓") == len(HIDDEN_SEEDS)


def answers(grade_id, fn):
    """The arguments the check passes and what `fn` returned for them, once per call."""
    seen = []

    def record(*args):
        seen.append((args, fn(*args)))
        return seen[-1][1]

    check.EXERCISES[grade_id].check(record, *check.EXERCISES[grade_id].context())
    return seen


@pytest.mark.parametrize("grade_id", list(REFERENCES))
def test_hidden_inputs_differ_and_the_visible_answer_fails_them(grade_id):
    visible_args, visible_answer = answers(grade_id, REFERENCES[grade_id])[0]  # the first call of the check
    with hidden.active(), hidden_variant(1):
        hidden_args, _ = answers(grade_id, REFERENCES[grade_id])[0]
    tensors = [(a, b) for a, b in zip(visible_args, hidden_args) if isinstance(a, torch.Tensor)]
    assert tensors and all(a.shape != b.shape for a, b in tensors)  # other shapes, so other values too
    for seed in HIDDEN_SEEDS:
        with pytest.raises(CheckFailed):
            run_hidden(grade_id, lambda *args: visible_answer, seed)


def test_hidden_messages_do_not_reveal_the_reference():
    with hidden.active(), hidden_variant(1):
        with pytest.raises(CheckFailed) as failure:
            check.mean_iou(lambda h, m, t: miou(h, m, 0.6))
        assert "expected" not in str(failure.value)
        with pytest.raises(CheckFailed) as failure:
            check.weakest_token(lambda m, c: [tokens[-1] for tokens in c])
        assert "expected" not in str(failure.value) and "[" not in str(failure.value)


def test_weakest_token_hidden_inputs_separate_the_known_mistakes():
    # Under every hidden seed the strongest pick, the mean pick and the answer differ, so each mistake is named.
    for seed in HIDDEN_SEEDS:
        with hidden.active(), hidden_variant(seed):
            fails(check.weakest_token, lambda m, c: weakest(m, c, pick=max), match="strongest")
            fails(check.weakest_token, lambda m, c: weakest(m, c, reduce="mean"), match="peaks")


def test_attn2_layer_is_rebuilt_from_its_recipe_in_another_process():
    with hidden.active():
        _, attn, _ = check.unet_attn2(7)
        tensors = {}
        payload = json.loads(json.dumps(hidden.encode(attn, tensors)))
        assert not tensors and "__recipe__" in payload
        weights = {name: value.clone() for name, value in attn.state_dict().items()}
        hidden.reset()  # as in the kernel: nothing built yet
        torch.manual_seed(123)  # whatever the kernel's global generator holds
        rebuilt = hidden.decode(payload, {})
    assert rebuilt is not attn and rebuilt.heads == attn.heads
    assert all(torch.equal(rebuilt.state_dict()[name], value) for name, value in weights.items())


def test_the_guard_sees_the_storing_processor_called_for_attn2_probs():
    def via_the_kits_processor(attn, hidden_states, context, cfg):
        recorded = {}
        xattn_diffusers.StoreCrossAttention("attn2", lambda _, p: recorded.update(p=p))(
            attn, hidden_states, encoder_hidden_states=context)
        return recorded["p"][hidden_states.shape[0] // 2:] if cfg else recorded["p"]

    forbidden = [hidden._qualified(fn) for fn in check.EXERCISES["attn2_probs"].forbidden]
    attn, hidden_states, context, _ = check._attn2_inputs(batch=2)
    with hidden._Guard(forbidden) as guard:
        via_the_kits_processor(attn, hidden_states, context, True)
    assert guard.called == ["mikit.xattn.diffusers_attention.StoreCrossAttention.__call__"]
    with hidden._Guard(forbidden) as guard:
        attn2(attn, hidden_states, context, True)
    assert guard.called == []


ALTERNATIVES = listed(alternatives)


def test_every_exercise_has_two_alternatives():
    assert_two_each(alternatives, check.EXERCISES)


@pytest.mark.parametrize("name", ALTERNATIVES)
def test_alternative_passes_visible_and_hidden_checks(name, capsys):
    grade_id, fn = name.split("__")[0], getattr(alternatives, name)
    check.EXERCISES[grade_id].check(fn)
    for seed in HIDDEN_SEEDS:
        run_hidden(grade_id, fn, seed)
    assert capsys.readouterr().out.count("✓") == 1 + len(HIDDEN_SEEDS)
