"""Every notebook-02 check passes the reference and rejects plausible wrong implementations (on SmolLM2)."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
from transformer_lens.utilities import get_act_name

import mikit
from mikit import ioi as ref
from mikit.checks import CheckFailed
from mikit.checks import ioi as checks
from mikit.datasets.ioi import logit_diff as ref_logit_diff

# Found in SmolLM2 by notebook 02's analysis: its solution's 20-head circuit, receivers and senders.
CIRCUIT = [
    (2, 4), (5, 6), (8, 0), (8, 1), (9, 2), (13, 7), (14, 3), (15, 6), (15, 7), (17, 4),
    (17, 5), (19, 2), (20, 0), (23, 0), (23, 1), (23, 2), (23, 3), (23, 7), (28, 1), (29, 1),
]
RECEIVERS = [(23, 0), (23, 1), (23, 2), (23, 3)]
SENDERS = [(20, 0), (19, 2)]


@pytest.fixture(scope="module")
def lm():
    return mikit.load_model("smollm2-135m", device="cpu")


def rejects(check, fn, *args, match=None):
    with pytest.raises(CheckFailed, match=match):
        check(fn, *args)


def batch_end(ds):
    return torch.arange(len(ds)), ds.word_idx["END"]


# --- exercise 1 -------------------------------------------------------------------------
def test_logit_diff(lm, capsys):
    checks.logit_diff(ref_logit_diff, lm)
    assert "✓" in capsys.readouterr().out

    def last_position(logits, ds):
        b = torch.arange(len(ds))
        return logits[b, -1, ds.io_tokens] - logits[b, -1, ds.s_tokens]

    def s_minus_io(logits, ds):
        return -ref_logit_diff(logits, ds)

    def probabilities(logits, ds):
        b, end = batch_end(ds)
        probs = logits[b, end].softmax(-1)
        return probs[b, ds.io_tokens] - probs[b, ds.s_tokens]

    def at_io_position(logits, ds):
        b = torch.arange(len(ds))
        row = logits[b, ds.word_idx["IO"]]
        return row[b, ds.io_tokens] - row[b, ds.s_tokens]

    def batch_mean(logits, ds):
        return ref_logit_diff(logits, ds).mean()

    rejects(checks.logit_diff, last_position, lm, match="right-padded")
    rejects(checks.logit_diff, s_minus_io, lm, match="sign")
    rejects(checks.logit_diff, probabilities, lm, match="raw logits")
    rejects(checks.logit_diff, at_io_position, lm, match="differs")
    rejects(checks.logit_diff, batch_mean, lm, match="shape")


# --- exercise 2 -------------------------------------------------------------------------
def _direction(model, ds):
    return (model.W_U[:, ds.io_tokens] - model.W_U[:, ds.s_tokens]).T


def test_residual_stack_to_logit_diff(lm):
    checks.residual_stack_to_logit_diff(ref.residual_stack_to_logit_diff, lm)

    def unscaled(stack, cache, model, ds):
        return (stack * _direction(model, ds)).sum(-1).mean(-1)

    def norm_per_component(stack, cache, model, ds):
        return (model.ln_final(stack) * _direction(model, ds)).sum(-1).mean(-1)

    def summed(stack, cache, model, ds):
        return ref.residual_stack_to_logit_diff(stack, cache, model, ds) * len(ds)

    def scale_at_last_position(stack, cache, model, ds):
        scale = cache["ln_final.hook_scale"][:, -1]
        return (stack / scale * _direction(model, ds)).sum(-1).mean(-1)

    def flipped(stack, cache, model, ds):
        return -ref.residual_stack_to_logit_diff(stack, cache, model, ds)

    rejects(checks.residual_stack_to_logit_diff, unscaled, lm, match="hook_scale")
    rejects(checks.residual_stack_to_logit_diff, norm_per_component, lm, match="differs")
    rejects(checks.residual_stack_to_logit_diff, summed, lm, match="summed")
    rejects(checks.residual_stack_to_logit_diff, scale_at_last_position, lm, match="differs")
    rejects(checks.residual_stack_to_logit_diff, flipped, lm, match="differs")


# --- exercise 3 -------------------------------------------------------------------------
def test_attention_between(lm):
    checks.attention_between(ref.attention_between, lm)

    def transposed(pattern, ds, query, key):
        return ref.attention_between(pattern.transpose(-1, -2), ds, query, key)

    def last_position_for_end(pattern, ds, query, key):
        b = torch.arange(len(ds))
        q = torch.full((len(ds),), -1) if query == "END" else ds.word_idx[query]
        return pattern[b, :, q, ds.word_idx[key]].mean(0)

    def every_query(pattern, ds, query, key):
        b = torch.arange(len(ds))
        return pattern[b, :, :, ds.word_idx[key]].mean((0, -1))

    def summed(pattern, ds, query, key):
        return ref.attention_between(pattern, ds, query, key) * len(ds)

    rejects(checks.attention_between, transposed, lm, match="swapped")
    rejects(checks.attention_between, last_position_for_end, lm, match="differs")
    rejects(checks.attention_between, every_query, lm, match="differs")
    rejects(checks.attention_between, summed, lm, match="differs")


# --- exercise 4 -------------------------------------------------------------------------
def _classify(rule):
    def classify(dla, attn_io, attn_s, threshold):
        classes = {name: [] for name in ref.HEAD_CLASSES}
        for layer, head in rule(dla, threshold).nonzero().tolist():
            args = dla[layer, head], attn_io[layer, head], attn_s[layer, head]
            classes[classify.name_of(*args)].append((layer, head))
        return classes

    return classify


def _name_of(dla, io, s, other=True, swap=False):
    if other and max(io, s) < ref.MIN_NAME_ATTENTION:
        return "other"
    to_io = (io >= s) != swap
    return {(True, True): "name mover", (True, False): "negative name mover",
            (False, True): "S suppressor", (False, False): "S mover"}[bool(to_io), bool(dla > 0)]


def test_classify_heads():
    dla = torch.randn(6, 5, generator=torch.Generator().manual_seed(0))
    attn_io, attn_s = torch.rand(2, 6, 5, generator=torch.Generator().manual_seed(1)) * 0.5
    checks.classify_heads(ref.classify_heads, dla, attn_io, attn_s, 0.5)

    no_other = _classify(lambda d, t: d.abs() >= t)
    no_other.name_of = lambda *a: _name_of(*a, other=False)
    swapped = _classify(lambda d, t: d.abs() >= t)
    swapped.name_of = lambda *a: _name_of(*a, swap=True)
    positive_only = _classify(lambda d, t: d >= t)
    positive_only.name_of = _name_of
    every_head = _classify(lambda d, t: torch.ones_like(d, dtype=torch.bool))
    every_head.name_of = _name_of

    for wrong in (no_other, swapped, positive_only, every_head):
        rejects(checks.classify_heads, wrong, dla, attn_io, attn_s, 0.5, match="class")
    rejects(checks.classify_heads, lambda *a: [], dla, attn_io, attn_s, 0.5, match="dict")


def test_paper_comparison(capsys):
    checks.paper_comparison({"name mover": [(23, 0)]}, "smollm2-135m")
    assert "no published IOI circuit" in capsys.readouterr().out
    checks.paper_comparison(
        {"name mover": [(9, 9), (9, 6)], "S-inhibition": [(7, 3), (8, 6), (8, 10)]}, "gpt2-small"
    )
    assert "recovers" in capsys.readouterr().out
    with pytest.raises(CheckFailed, match="name mover"):
        checks.paper_comparison({"name mover": [(9, 9), (11, 2)], "S-inhibition": [(7, 3), (8, 6)]}, "gpt2-small")
    with pytest.raises(CheckFailed, match="S-inhibition"):
        checks.paper_comparison({"name mover": [(9, 9), (10, 0)], "S-inhibition": []}, "gpt2-small")


# --- exercise 5 -------------------------------------------------------------------------
def test_normalised_logit_diff():
    checks.normalised_logit_diff(ref.normalised_logit_diff)
    wrongs = [
        lambda p, clean, corrupted: (p - clean) / (clean - corrupted),
        lambda p, clean, corrupted: p / clean,
        lambda p, clean, corrupted: 1 - (p - corrupted) / (clean - corrupted),
        lambda p, clean, corrupted: (p - corrupted) / clean,
    ]
    for wrong in wrongs:
        rejects(checks.normalised_logit_diff, wrong, match="maps to 0")


# --- exercise 6 -------------------------------------------------------------------------
def test_patch_head_hook():
    checks.patch_head_hook(ref.patch_head_hook)

    def in_place_no_return(z, hook, head, clean_z):
        z[:, :, head] = clean_z[:, :, head]

    checks.patch_head_hook(in_place_no_return)  # TransformerLens accepts in-place hooks that return None

    def every_head(z, hook, head, clean_z):
        return clean_z.clone()

    def position_axis(z, hook, head, clean_z):
        z[:, head] = clean_z[:, head]
        return z

    def first_prompt(z, hook, head, clean_z):
        z[0, :, head] = clean_z[0, :, head]
        return z

    def last_position(z, hook, head, clean_z):
        z[:, -1, head] = clean_z[:, -1, head]
        return z

    rejects(checks.patch_head_hook, every_head, match="heads other than")
    rejects(checks.patch_head_hook, position_axis, match="heads other than")
    rejects(checks.patch_head_hook, first_prompt, match="every prompt")
    rejects(checks.patch_head_hook, last_position, match="every prompt")


# --- exercise 7 -------------------------------------------------------------------------
def _run_end_ld(model, ds, hooks):
    with torch.inference_mode():
        return ref_logit_diff(model.run_with_hooks(ds.tokens, fwd_hooks=hooks), ds).mean().item()


def _sender_hook(senders, corrupted_cache):
    def hook(z, hook):
        for layer, head in senders:
            if layer == hook.layer():
                z[:, :, head] = corrupted_cache[hook.name][:, :, head]
        return z

    return hook


def _query_path(model, ds, clean_cache, corrupted_cache, senders, receivers, freeze=True, all_heads=False, patch="q"):
    """Two-step path patching with one thing changed, to build wrong implementations from."""
    stored = {}

    def frozen(z, hook):
        if freeze:
            z = clean_cache[hook.name].clone()
        return _sender_hook(senders, corrupted_cache)(z, hook)

    layers = sorted({layer for layer, _ in receivers})
    _run_end_ld(model, ds, [(lambda name: name.endswith("hook_z"), frozen)]
                + [(get_act_name(patch, layer), lambda a, hook: stored.__setitem__(hook.name, a.clone())) for layer in layers])

    def patched(a, hook):
        heads = range(a.shape[2]) if all_heads else [h for l, h in receivers if l == hook.layer()]
        for head in heads:
            a[:, :, head] = stored[hook.name][:, :, head]
        return a

    return _run_end_ld(model, ds, [(get_act_name(patch, layer), patched) for layer in layers])


def test_path_patch_to_queries(lm):
    checks.path_patch_to_queries(ref.path_patch_to_queries, lm, SENDERS, RECEIVERS)

    def every_path(model, ds, clean_cache, corrupted_cache, senders, receivers):
        return _run_end_ld(model, ds, [(lambda name: name.endswith("hook_z"), _sender_hook(senders, corrupted_cache))])

    def nothing_frozen(*args):
        return _query_path(*args, freeze=False)

    def receivers_outputs(*args):
        return _query_path(*args, patch="z")

    def every_query_of_the_layer(*args):
        return _query_path(*args, all_heads=True)

    # The helper with nothing changed is the reference, so the wrong ones differ for their one change.
    checks.path_patch_to_queries(_query_path, lm, SENDERS, RECEIVERS)
    for wrong in (every_path, nothing_frozen, receivers_outputs, every_query_of_the_layer):
        rejects(checks.path_patch_to_queries, wrong, lm, SENDERS, RECEIVERS, match="freeze every head")


# --- exercise 8 -------------------------------------------------------------------------
def test_mean_ablate_outside():
    checks.mean_ablate_outside(ref.mean_ablate_outside)

    def inside(z, hook, circuit, means):
        keep = [h for l, h in circuit if l == hook.layer()]
        z[:, :, keep] = means[hook.name][:, :, keep]
        return z

    def zero(z, hook, circuit, means):
        outside = [h for h in range(z.shape[2]) if (hook.layer(), h) not in circuit]
        z[:, :, outside] = 0
        return z

    def any_layer(z, hook, circuit, means):
        outside = [h for h in range(z.shape[2]) if h not in {h for _, h in circuit}]
        z[:, :, outside] = means[hook.name][:, :, outside]
        return z

    def everything(z, hook, circuit, means):
        return means[hook.name].clone()

    rejects(checks.mean_ablate_outside, inside, match="circuit heads")
    rejects(checks.mean_ablate_outside, zero, match="differs")
    rejects(checks.mean_ablate_outside, any_layer, match="differs")
    rejects(checks.mean_ablate_outside, everything, match="circuit heads")


# --- exercise 9 -------------------------------------------------------------------------
def test_circuit(lm):
    assert checks.circuit(CIRCUIT, lm, n_prompts=16) >= 0.6
    with pytest.raises(CheckFailed, match="at most 20"):
        checks.circuit([(layer, head) for layer in range(3) for head in range(7)], lm)
    with pytest.raises(CheckFailed, match="not heads of this model"):
        checks.circuit([(30, 0)], lm)
    with pytest.raises(CheckFailed, match="list of"):
        checks.circuit("L23H3", lm)
    movers_only = [(23, 0), (23, 1), (23, 2), (23, 3), (23, 7), (28, 1), (29, 1)]
    with pytest.raises(CheckFailed, match="keeps"):
        checks.circuit(movers_only, lm, n_prompts=16)
