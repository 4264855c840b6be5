"""Correct alternatives to notebook 02's exercises, written from the exercise text as a student would.

Each is named `<exercise>__<variant>`: a function, or for `circuit` (a value) another form of the same
heads. The checks must accept every one of them, visibly and under hidden variants
(tests/test_checks_ioi.py).
"""

from functools import partial

import einops
import torch
from transformer_lens.utilities import get_act_name


# --- exercise 1: logit_diff(logits, ds) ---------------------------------------------------------------
def logit_diff__loop(logits, ds):
    out = []
    for i in range(len(ds)):
        end = ds.word_idx["END"][i]
        out.append(logits[i, end, ds.io_tokens[i]] - logits[i, end, ds.s_tokens[i]])
    return torch.stack(out)


def logit_diff__gather(logits, ds):
    end_logits = logits[torch.arange(logits.shape[0]), ds.word_idx["END"]]  # (batch, vocab)
    names = torch.stack([ds.io_tokens, ds.s_tokens], dim=1)  # (batch, 2)
    io_s = end_logits.gather(1, names)
    return io_s[:, 0] - io_s[:, 1]


def logit_diff__log_probs(logits, ds):
    # The hint: a difference of logits equals the difference of log-probabilities.
    batch = torch.arange(len(ds))
    log_probs = logits[batch, ds.word_idx["END"]].log_softmax(-1)
    return log_probs[batch, ds.io_tokens] - log_probs[batch, ds.s_tokens]


# --- exercise 2: residual_stack_to_logit_diff(stack, cache, model, ds) --------------------------------
def residual_stack_to_logit_diff__einsum(stack, cache, model, ds):
    batch = torch.arange(len(ds))
    scale = cache["ln_final.hook_scale"][batch, ds.word_idx["END"]]  # (batch, 1)
    directions = model.W_U[:, ds.io_tokens] - model.W_U[:, ds.s_tokens]  # (d_model, batch)
    return torch.einsum("cbd,db->c", stack / scale, directions) / len(ds)


def residual_stack_to_logit_diff__loop(stack, cache, model, ds):
    total = torch.zeros(stack.shape[0])
    for i in range(len(ds)):
        scale = cache["ln_final.hook_scale"][i, ds.word_idx["END"][i], 0]
        direction = model.W_U[:, ds.io_tokens[i]] - model.W_U[:, ds.s_tokens[i]]
        total += (stack[:, i] / scale) @ direction
    return total / len(ds)


def residual_stack_to_logit_diff__unembed(stack, cache, model, ds):
    # Unembed each (scaled) component fully, then read the two names' logits, as logit_diff does.
    batch = torch.arange(len(ds))
    scale = cache["ln_final.hook_scale"][batch, ds.word_idx["END"]]
    logits = (stack / scale) @ model.W_U  # (component, batch, vocab)
    return (logits[:, batch, ds.io_tokens] - logits[:, batch, ds.s_tokens]).mean(dim=1)


# --- exercise 3: attention_between(pattern, ds, query, key) -------------------------------------------
def attention_between__loop(pattern, ds, query, key):
    rows = [pattern[i, :, ds.word_idx[query][i], ds.word_idx[key][i]] for i in range(len(ds))]
    return sum(rows) / len(rows)


def attention_between__one_hot(pattern, ds, query, key):
    n_pos = pattern.shape[-1]
    q = torch.nn.functional.one_hot(ds.word_idx[query], n_pos).to(pattern.dtype)
    k = torch.nn.functional.one_hot(ds.word_idx[key], n_pos).to(pattern.dtype)
    return torch.einsum("bhqk,bq,bk->h", pattern, q, k) / len(ds)


# --- exercise 4: classify_heads(dla, attn_io, attn_s, threshold) --------------------------------------
def classify_heads__every_head(dla, attn_io, attn_s, threshold):
    classes = {key: [] for key in ("name mover", "negative name mover", "S suppressor", "S mover", "other")}
    n_layers, n_heads = dla.shape
    for layer in range(n_layers):
        for head in range(n_heads):
            effect, io, s = dla[layer, head].item(), attn_io[layer, head].item(), attn_s[layer, head].item()
            if abs(effect) < threshold:
                continue
            if io < 0.1 and s < 0.1:
                key = "other"
            elif io >= s:
                key = "name mover" if effect > 0 else "negative name mover"
            else:
                key = "S suppressor" if effect > 0 else "S mover"
            classes[key].append((layer, head))
    return classes


def classify_heads__masks(dla, attn_io, attn_s, threshold):
    strong = dla.abs() >= threshold
    reads_name = torch.maximum(attn_io, attn_s) >= 0.1
    to_io = attn_io >= attn_s
    masks = {
        "name mover": strong & reads_name & to_io & (dla > 0),
        "negative name mover": strong & reads_name & to_io & (dla <= 0),
        "S suppressor": strong & reads_name & ~to_io & (dla > 0),
        "S mover": strong & reads_name & ~to_io & (dla <= 0),
        "other": strong & ~reads_name,
    }
    return {key: [tuple(pair) for pair in mask.nonzero().tolist()] for key, mask in masks.items()}


# --- exercise 5: patch_head(model, ds, corrupted_tokens, clean_cache, layer, head, clean_ld, corrupted_ld)
def _mean_end_logit_diff(logits, ds):
    batch = torch.arange(len(ds))
    end_logits = logits[batch, ds.word_idx["END"]]
    return (end_logits.gather(-1, ds.io_tokens[:, None]) - end_logits.gather(-1, ds.s_tokens[:, None])).mean()


def patch_head__in_place_hook_returns_none(model, ds, corrupted_tokens, clean_cache, layer, head, clean_ld, corrupted_ld):
    def patch(z, hook):
        z[:, :, head, :] = clean_cache[hook.name][:, :, head, :]  # TransformerLens keeps z when a hook returns None

    with model.hooks(fwd_hooks=[(f"blocks.{layer}.attn.hook_z", patch)]):
        patched = _mean_end_logit_diff(model(corrupted_tokens), ds).item()
    return 1 - (clean_ld - patched) / (clean_ld - corrupted_ld)


def patch_head__from_the_layer(model, ds, corrupted_tokens, clean_cache, layer, head, clean_ld, corrupted_ld):
    # Nothing before the layer changes: run the corrupted prompts up to it, then the rest with the patch.
    resid = model(corrupted_tokens, stop_at_layer=layer)
    mask = torch.zeros(model.cfg.n_heads, dtype=torch.bool)
    mask[head] = True
    hook = lambda z, hook: torch.where(mask[None, None, :, None], clean_cache[hook.name], z)  # noqa: E731
    logits = model.run_with_hooks(resid, start_at_layer=layer, fwd_hooks=[(get_act_name("z", layer), hook)])
    return torch.sub(_mean_end_logit_diff(logits, ds), corrupted_ld).div(clean_ld - corrupted_ld).item()


def patch_head__add_hook_and_reset(model, ds, corrupted_tokens, clean_cache, layer, head, clean_ld, corrupted_ld):
    clean_z = clean_cache["z", layer]
    model.add_hook(get_act_name("z", layer), lambda z, hook: z.index_copy(2, torch.tensor([head]), clean_z[:, :, [head]]))
    try:
        logits = model(corrupted_tokens)
    finally:
        model.reset_hooks()
    per_prompt = torch.stack([logits[i, end, io] - logits[i, end, s] for i, (end, io, s)
                              in enumerate(zip(ds.word_idx["END"].tolist(), ds.io_tokens.tolist(), ds.s_tokens.tolist()))])
    return (per_prompt.mean() - corrupted_ld) / (clean_ld - corrupted_ld)


# --- exercise 6: path_patch_to_queries(model, ds, clean_cache, corrupted_cache, senders, receivers) ---
def _end_logit_diff(logits, ds):
    batch = torch.arange(len(ds))
    end_logits = logits[batch, ds.word_idx["END"]]
    return (end_logits[batch, ds.io_tokens] - end_logits[batch, ds.s_tokens]).mean().item()


def path_patch_to_queries__full_runs(model, ds, clean_cache, corrupted_cache, senders, receivers):
    """Both runs from the tokens (no start_at_layer), hooks that edit in place and return None."""
    receiver_layers = sorted({layer for layer, _ in receivers})
    queries = {}

    def freeze(z, hook):
        z[:] = clean_cache[hook.name]
        for layer, head in senders:
            if layer == hook.layer():
                z[:, :, head] = corrupted_cache[hook.name][:, :, head]

    def store(q, hook):
        queries[hook.name] = q.clone()

    model.run_with_hooks(
        ds.tokens,
        fwd_hooks=[(get_act_name("z", layer), freeze) for layer in range(model.cfg.n_layers)]
        + [(get_act_name("q", layer), store) for layer in receiver_layers],
    )

    def patch(q, hook):
        for layer, head in receivers:
            if layer == hook.layer():
                q[:, :, head] = queries[hook.name][:, :, head]

    logits = model.run_with_hooks(ds.tokens, fwd_hooks=[(get_act_name("q", layer), patch) for layer in receiver_layers])
    return _end_logit_diff(logits, ds)


def _set_heads(act, hook, heads, source):
    act[:, :, heads] = source[:, :, heads]
    return act


def path_patch_to_queries__hooks_context(model, ds, clean_cache, corrupted_cache, senders, receivers):
    """Hooks built with functools.partial per layer, run inside `model.hooks(...)`; the second run starts at the
    first receiver layer."""
    first_receiver = min(layer for layer, _ in receivers)
    frozen_hooks = []
    for layer in range(model.cfg.n_layers):
        z = clean_cache["z", layer].clone()
        heads = [head for l, head in senders if l == layer]
        z[:, :, heads] = corrupted_cache["z", layer][:, :, heads]
        frozen_hooks.append((get_act_name("z", layer), lambda act, hook, z=z: z))
    recorded = {}
    with model.hooks(
        fwd_hooks=frozen_hooks
        + [(get_act_name("q", l), lambda q, hook: recorded.update({hook.layer(): q.clone()})) for l, _ in receivers]
    ):
        model(ds.tokens)
    patches = [
        (get_act_name("q", layer), partial(_set_heads, heads=[h for l, h in receivers if l == layer], source=q))
        for layer, q in recorded.items()
    ]
    with model.hooks(fwd_hooks=patches):
        logits = model(clean_cache["resid_pre", first_receiver], start_at_layer=first_receiver)
    return _end_logit_diff(logits, ds)


# --- exercise 7: mean_ablate_outside(z, hook, circuit, means) -----------------------------------------
def mean_ablate_outside__in_place_returns_none(z, hook, circuit, means):
    layer = hook.layer()
    for head in range(z.shape[2]):
        if (layer, head) not in circuit:
            z[:, :, head] = means[hook.name][:, :, head]


def mean_ablate_outside__where(z, hook, circuit, means):
    keep = torch.zeros(z.shape[2], dtype=torch.bool)
    for layer, head in circuit:
        if layer == hook.layer():
            keep[head] = True
    return torch.where(keep[:, None], z, means[hook.name])  # (head, 1) broadcasts over batch, pos and d_head


def mean_ablate_outside__einops(z, hook, circuit, means):
    keep = torch.tensor([float((hook.layer(), h) in set(map(tuple, circuit))) for h in range(z.shape[2])])
    keep = einops.rearrange(keep, "head -> 1 1 head 1")
    return keep * z + (1 - keep) * means[hook.name]


# --- exercise 8: circuit (a value) ----------------------------------------------------------------------
# SmolLM2's circuit from the solution, written as a student might leave it.
_CIRCUIT = [
    (2, 4), (5, 6), (8, 0), (8, 1), (9, 2), (13, 7), (14, 3), (15, 6), (15, 7), (17, 4),
    (17, 5), (19, 2), (20, 0), (23, 0), (23, 1), (23, 2), (23, 3), (23, 7), (28, 1), (29, 1),
]
circuit__set = set(_CIRCUIT)
circuit__lists_with_repeats = [list(head) for head in reversed(_CIRCUIT)] + [[23, 3]]
