"""Correct alternatives to notebook 03's exercises, written from the exercise text as a student would.

Each function is named `<exercise function>__<variant>`; the checks must accept every one of them,
visibly and under hidden variants, and through the wire with gradients off in the kernel, as the
notebook leaves them (tests/test_checks_patching.py).
"""

import torch
from transformer_lens.utilities import get_act_name


# --- exercise 1: patch_resid(model, corrupted_tokens, clean_cache, layer, pos, metric) -------------
def patch_resid__in_place_hook_returns_none(model, corrupted_tokens, clean_cache, layer, pos, metric):
    clean = clean_cache[f"blocks.{layer}.hook_resid_pre"]

    def hook(resid, hook):
        resid[:, pos, :] = clean[:, pos, :]

    with model.hooks(fwd_hooks=[(f"blocks.{layer}.hook_resid_pre", hook)]):
        logits = model(corrupted_tokens)
    return float(metric(logits))


def patch_resid__add_hook_and_reset(model, corrupted_tokens, clean_cache, layer, pos, metric):
    name = get_act_name("resid_pre", layer)
    at_pos = torch.arange(corrupted_tokens.shape[1]) == pos
    model.add_hook(name, lambda resid, hook: torch.where(at_pos[None, :, None], clean_cache[name], resid))
    try:
        return metric(model(corrupted_tokens))
    finally:
        model.reset_hooks()


def patch_resid__split_the_run(model, corrupted_tokens, clean_cache, layer, pos, metric):
    # No hook at all: run up to the layer, patch the stream, run the rest.
    resid = model(corrupted_tokens, stop_at_layer=layer)
    resid = resid.clone()
    resid[:, pos] = clean_cache["resid_pre", layer][:, pos]
    return metric(model(resid, start_at_layer=layer)).item()


# --- exercise 2: patch_resid_nnsight(nn_model, corrupted_tokens, clean_cache, layer, pos) ------------
def patch_resid_nnsight__act_name_and_unembed(nn_model, corrupted_tokens, clean_cache, layer, pos):
    clean = clean_cache[get_act_name("resid_pre", layer)]
    with nn_model.trace(corrupted_tokens):
        nn_model.blocks[layer].hook_resid_pre.output[:, pos, :] = clean[:, pos, :]
        logits = nn_model.unembed.output.save()
    return logits


def patch_resid_nnsight__replace_output(nn_model, corrupted_tokens, clean_cache, layer, pos):
    with nn_model.trace(corrupted_tokens):
        resid = nn_model.blocks[layer].hook_resid_pre.output.clone()
        resid[:, pos] = clean_cache["resid_pre", layer][:, pos]
        nn_model.blocks[layer].hook_resid_pre.output = resid
        logits = nn_model.output.save()
    return logits


def patch_resid_nnsight__block_input(nn_model, corrupted_tokens, clean_cache, layer, pos):
    # The block's input is the residual stream entering it, before hook_resid_pre (an identity) sees it.
    with nn_model.trace(corrupted_tokens):
        nn_model.blocks[layer].input[:, pos] = clean_cache["resid_pre", layer][:, pos]
        logits = nn_model.output.save()
    return logits


# --- exercise 3: resid_patching_loop(model, corrupted_tokens, clean_cache, metric, layers, positions, patch)
def resid_patching_loop__first_differing_token(model, corrupted_tokens, clean_cache, metric, layers, positions, patch):
    # Under causal attention nothing differs before the first token where the prompts differ.
    embedded = model(corrupted_tokens, stop_at_layer=0)
    differs = (embedded != clean_cache["resid_pre", 0]).any(-1).any(0)
    first = int(differs.float().argmax())
    unpatched = metric(model(corrupted_tokens)).item()
    results = torch.empty(len(layers), len(positions))
    for i, layer in enumerate(layers):
        for j, pos in enumerate(positions):
            results[i, j] = unpatched if pos < first else patch(model, corrupted_tokens, clean_cache, layer, pos, metric)
    return results


def resid_patching_loop__full_cache_allclose(model, corrupted_tokens, clean_cache, metric, layers, positions, patch):
    logits, corrupted_cache = model.run_with_cache(corrupted_tokens)
    baseline = metric(logits)
    rows = []
    for layer in layers:
        row = []
        for pos in positions:
            name = get_act_name("resid_pre", layer)
            if torch.allclose(clean_cache[name][:, pos], corrupted_cache[name][:, pos], atol=0, rtol=0):
                row.append(float(baseline))
            else:
                row.append(float(patch(model, corrupted_tokens, clean_cache, layer, pos, metric)))
        rows.append(row)
    return torch.tensor(rows)


def resid_patching_loop__memo(model, corrupted_tokens, clean_cache, metric, layers, positions, patch):
    _, cache = model.run_with_cache(corrupted_tokens, names_filter=lambda name: name.endswith("hook_resid_pre"))
    memo = {}
    values = []
    for layer in layers:
        for pos in positions:
            same = bool((clean_cache["resid_pre", layer][:, pos] == cache["resid_pre", layer][:, pos]).all())
            if same:
                if "unpatched" not in memo:
                    memo["unpatched"] = metric(model(corrupted_tokens))
                values.append(memo["unpatched"])
            else:
                values.append(torch.as_tensor(patch(model, corrupted_tokens, clean_cache, layer, pos, metric)))
    return torch.stack([torch.as_tensor(v, dtype=torch.float32) for v in values]).reshape(len(layers), len(positions))


# --- exercise 4: patch_pattern_and_values(model, corrupted_tokens, clean_cache, layer, head, metric) --
def patch_pattern_and_values__in_place_hooks_return_none(model, corrupted_tokens, clean_cache, layer, head, metric):
    n_kv = model.cfg.n_key_value_heads or model.cfg.n_heads
    kv = head * n_kv // model.cfg.n_heads  # the same as head // group when the group size divides n_heads

    def pattern_hook(pattern, hook):
        pattern[:, head, :, :] = clean_cache[hook.name][:, head, :, :]

    def values_hook(v, hook):
        v[:, :, kv, :] = clean_cache[hook.name][:, :, kv, :]

    results = []
    for name, hook in ((f"blocks.{layer}.attn.hook_pattern", pattern_hook), (f"blocks.{layer}.attn.hook_v", values_hook)):
        with model.hooks(fwd_hooks=[(name, hook)]):
            results.append(float(metric(model(corrupted_tokens))))
    return results[0], results[1]


def patch_pattern_and_values__masks(model, corrupted_tokens, clean_cache, layer, head, metric):
    group = model.cfg.n_heads // (model.cfg.n_key_value_heads or model.cfg.n_heads)

    def only(index, size, axis, ndim):
        mask = torch.zeros(size, dtype=torch.bool)
        mask[index] = True
        return mask.view([-1 if d == axis else 1 for d in range(ndim)])

    def pattern_hook(pattern, hook):
        return torch.where(only(head, pattern.shape[1], 1, 4), clean_cache[hook.name], pattern)

    def values_hook(v, hook):
        return torch.where(only(head // group, v.shape[2], 2, 4), clean_cache[hook.name], v)

    pattern = metric(model.run_with_hooks(corrupted_tokens, fwd_hooks=[(get_act_name("pattern", layer), pattern_hook)]))
    values = metric(model.run_with_hooks(corrupted_tokens, fwd_hooks=[(get_act_name("v", layer), values_hook)]))
    return [pattern, values]


def patch_pattern_and_values__from_the_layer(model, corrupted_tokens, clean_cache, layer, head, metric):
    # Nothing before the layer changes: run the corrupted prompts up to it once, then only the rest twice.
    resid = model(corrupted_tokens, stop_at_layer=layer)
    kv = head // (model.cfg.n_heads // (model.cfg.n_key_value_heads or model.cfg.n_heads))
    out = []
    for name, index in ((get_act_name("pattern", layer), (slice(None), head)),
                        (get_act_name("v", layer), (slice(None), slice(None), kv))):
        def hook(act, hook, index=index):
            patched = act.clone()
            patched[index] = clean_cache[hook.name][index]
            return patched

        out.append(metric(model.run_with_hooks(resid, start_at_layer=layer, fwd_hooks=[(name, hook)])).item())
    return tuple(out)


# --- exercise 5: necessary_and_sufficient(denoised, noised, threshold) -------------------------------
def necessary_and_sufficient__loops(denoised, noised, threshold):
    sufficient, necessary = [], []
    n_layers, n_heads = denoised.shape
    for layer in range(n_layers):
        for head in range(n_heads):
            if denoised[layer, head].isnan():
                continue
            if denoised[layer, head] >= threshold:
                sufficient.append((layer, head))
            if 1 - noised[layer, head] >= threshold:
                necessary.append((layer, head))
    return {"sufficient": sufficient, "necessary": necessary}


def necessary_and_sufficient__argwhere_tensors(denoised, noised, threshold):
    cost = 1 - noised
    return {"necessary": torch.argwhere(cost >= threshold), "sufficient": torch.argwhere(denoised >= threshold)}


def necessary_and_sufficient__where_zip(denoised, noised, threshold):
    layers, heads = torch.where(denoised >= threshold)
    sufficient = [(int(layer), int(head)) for layer, head in zip(layers, heads)]
    layers, heads = torch.where((1 - noised) >= threshold)
    necessary = [(int(layer), int(head)) for layer, head in zip(layers, heads)]
    return {"sufficient": sufficient, "necessary": necessary}


# --- exercise 6: path_patch(model, clean_cache, corrupted_cache, metric, senders, receivers, receiver_input)
def path_patch__in_place_hooks_tensor_result(model, clean_cache, corrupted_cache, metric, senders, receivers, receiver_input):
    n_kv = model.cfg.n_key_value_heads or model.cfg.n_heads
    group = model.cfg.n_heads // n_kv if receiver_input in ("k", "v") else 1

    def freeze(z, hook):  # in place, returning None: the clean z, senders from the corrupted run
        z[:] = clean_cache[hook.name]
        for layer, head in senders:
            if f"blocks.{layer}." in hook.name:
                z[:, :, head] = corrupted_cache[hook.name][:, :, head]

    receiver_layers = sorted({layer for layer, _ in receivers})
    names = [f"blocks.{layer}.attn.hook_{receiver_input}" for layer in receiver_layers]
    with model.hooks(fwd_hooks=[(get_act_name("z", layer), freeze) for layer in range(model.cfg.n_layers)]):
        _, cache = model.run_with_cache(clean_cache["resid_pre", 0], start_at_layer=0, names_filter=names)

    def patch(act, hook):
        for layer, head in receivers:
            if hook.name == get_act_name(receiver_input, layer):
                act[:, :, head // group] = cache[hook.name][:, :, head // group]

    logits = model.run_with_hooks(clean_cache["resid_pre", 0], start_at_layer=0, fwd_hooks=[(n, patch) for n in names])
    return metric(logits)


def path_patch__from_first_sender(model, clean_cache, corrupted_cache, metric, senders, receivers, receiver_input):
    # Nothing changes before the first sender's layer, so both runs can start there from the clean cache.
    first = min(layer for layer, _ in senders)
    last = max(layer for layer, _ in receivers)
    kv_heads = model.cfg.n_key_value_heads if receiver_input != "q" and model.cfg.n_key_value_heads else model.cfg.n_heads
    kv_of = lambda head: head * kv_heads // model.cfg.n_heads  # noqa: E731  (h // group when group divides)

    def freeze(z, hook):
        frozen = clean_cache[hook.name].clone()
        mine = [head for layer, head in senders if layer == hook.layer()]
        frozen[:, :, mine] = corrupted_cache[hook.name][:, :, mine]
        return frozen

    recorded = {}

    def record(act, hook):
        recorded[hook.layer()] = act.detach().clone()
        return act

    run_1 = [(get_act_name("z", layer), freeze) for layer in range(first, last + 1)]
    run_1 += [(get_act_name(receiver_input, layer), record) for layer in {layer for layer, _ in receivers}]
    model.run_with_hooks(clean_cache["resid_pre", first], start_at_layer=first, stop_at_layer=last + 1, fwd_hooks=run_1)

    def replace(act, hook):
        heads = sorted({kv_of(head) for layer, head in receivers if layer == hook.layer()})
        act[:, :, heads] = recorded[hook.layer()][:, :, heads]
        return act

    run_2 = [(get_act_name(receiver_input, layer), replace) for layer in recorded]
    return float(metric(model.run_with_hooks(clean_cache["resid_pre", first], start_at_layer=first, fwd_hooks=run_2)))


# --- exercise 7: attribution_patch_heads(model, clean_tokens, corrupted_tokens, metric) --------------
def attribution_patch_heads__backward_hooks(model, clean_tokens, corrupted_tokens, metric):
    # ARENA's recipe: a forward hook caches each z, a backward hook its gradient; then value.backward().
    is_z = lambda name: name.endswith("hook_z")  # noqa: E731
    _, clean_cache = model.run_with_cache(clean_tokens, names_filter=is_z)
    corrupted_z, grad_z = {}, {}

    def forward_hook(z, hook):
        corrupted_z[hook.name] = z.detach()

    def backward_hook(grad, hook):
        grad_z[hook.name] = grad.detach()

    with torch.enable_grad():
        model.add_hook(is_z, forward_hook, "fwd")
        model.add_hook(is_z, backward_hook, "bwd")
        try:
            value = metric(model(corrupted_tokens))
            value.backward()
        finally:
            model.reset_hooks()
            model.zero_grad(set_to_none=True)
    estimate = torch.zeros(model.cfg.n_layers, model.cfg.n_heads)
    for layer in range(model.cfg.n_layers):
        name = get_act_name("z", layer)
        delta = clean_cache[name] - corrupted_z[name]
        estimate[layer] = torch.einsum("bphd,bphd->h", delta, grad_z[name])
    return estimate + value.item()


def attribution_patch_heads__retain_grad(model, clean_tokens, corrupted_tokens, metric):
    with torch.no_grad():
        _, clean_cache = model.run_with_cache(clean_tokens)
    stored = []

    def keep(z, hook):
        z.retain_grad()
        stored.append(z)

    with torch.set_grad_enabled(True):
        logits = model.run_with_hooks(corrupted_tokens, fwd_hooks=[(lambda n: n.endswith("attn.hook_z"), keep)])
        value = metric(logits)
        value.backward()
    model.zero_grad()
    rows = [((clean_cache["z", layer] - z.detach()) * z.grad).sum(dim=(0, 1, 3)) for layer, z in enumerate(stored)]
    return torch.stack(rows) + value.detach()


# --- exercise 8: ablate_head(z, hook, head, method, reference_z, perm) -------------------------------
def ablate_head__in_place_returns_none(z, hook, head, method, reference_z, perm):
    if method == "zero":
        z[:, :, head].zero_()
    elif method == "mean":
        z[:, :, head] = reference_z[:, :, head].sum(dim=0) / reference_z.shape[0]
    elif method == "resample":
        z[:, :, head] = reference_z.index_select(0, perm)[:, :, head]


def ablate_head__new_tensor_loops(z, hook, head, method, reference_z, perm):
    out = z.clone()
    if method == "zero":
        out[:, :, head] = torch.zeros_like(z[:, :, head])
    elif method == "mean":
        out[:, :, head] = reference_z.mean(dim=0, keepdim=True)[:, :, head]
    else:
        for i, j in enumerate(perm.tolist()):
            out[i, :, head] = reference_z[j, :, head]
    return out
