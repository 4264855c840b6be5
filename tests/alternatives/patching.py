"""Correct alternatives to notebook 03's exercises, written from the exercise text as a student would.

Each function is named `<exercise function>__<variant>`; the checks must accept every one of them,
visibly and under hidden variants, and through the wire with gradients off in the kernel, as the
notebook leaves them (tests/test_checks_patching.py).
"""

import torch
from transformer_lens.utilities import get_act_name


# --- exercise 1: patch_resid_hook(resid, hook, pos, clean_resid) -----------------------------------
def patch_resid_hook__in_place_returns_none(resid, hook, pos, clean_resid):
    resid[:, pos, :] = clean_resid[:, pos, :]


def patch_resid_hook__new_tensor(resid, hook, pos, clean_resid):
    patched = resid.clone()
    patched[:, pos] = clean_resid[:, pos]
    return patched


def patch_resid_hook__where_mask(resid, hook, pos, clean_resid):
    at_pos = torch.arange(resid.shape[1]) == pos
    return torch.where(at_pos[None, :, None], clean_resid, resid)


def patch_resid_hook__index_copy(resid, hook, pos, clean_resid):
    index = torch.tensor([pos])
    return resid.index_copy_(1, index, clean_resid.index_select(1, index))


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


# --- exercise 3: resid_patching_loop(model, corrupted_tokens, clean_cache, metric, layers, positions, patch_hook)
def resid_patching_loop__add_hook_and_reset(model, corrupted_tokens, clean_cache, metric, layers, positions, patch_hook):
    results = torch.empty(len(layers), len(positions))
    for i, layer in enumerate(layers):
        name = f"blocks.{layer}.hook_resid_pre"
        for j, pos in enumerate(positions):
            model.add_hook(name, lambda resid, hook, pos=pos, name=name: patch_hook(resid, hook, pos, clean_cache[name]))
            results[i, j] = metric(model(corrupted_tokens)).item()
            model.reset_hooks()
    return results


def resid_patching_loop__hooks_context(model, corrupted_tokens, clean_cache, metric, layers, positions, patch_hook):
    rows = []
    for layer in layers:
        row = []
        for pos in positions:

            def hook(resid, hook, pos=pos, layer=layer):
                return patch_hook(resid, hook, pos=pos, clean_resid=clean_cache["resid_pre", layer])

            with model.hooks(fwd_hooks=[(get_act_name("resid_pre", layer), hook)]):
                row.append(metric(model(corrupted_tokens)).item())
        rows.append(row)
    return torch.tensor(rows)


def resid_patching_loop__stacked(model, corrupted_tokens, clean_cache, metric, layers, positions, patch_hook):
    values = []
    for layer in layers:
        name = get_act_name("resid_pre", layer)
        for pos in positions:
            hook = lambda resid, hook, pos=pos, name=name: patch_hook(resid, hook, pos, clean_cache[name])  # noqa: E731
            values.append(metric(model.run_with_hooks(corrupted_tokens, return_type="logits", fwd_hooks=[(name, hook)])))
    return torch.stack(values).reshape(len(layers), len(positions))


# --- exercise 4: patch_pattern_hook(pattern, hook, head, clean_pattern) ------------------------------
def patch_pattern_hook__in_place_returns_none(pattern, hook, head, clean_pattern):
    pattern[:, head, :, :] = clean_pattern[:, head, :, :]


def patch_pattern_hook__where_mask(pattern, hook, head, clean_pattern):
    is_head = torch.zeros(pattern.shape[1], dtype=torch.bool)
    is_head[head] = True
    return torch.where(is_head[None, :, None, None], clean_pattern, pattern)


def patch_pattern_hook__cat(pattern, hook, head, clean_pattern):
    return torch.cat([pattern[:, :head], clean_pattern[:, head : head + 1], pattern[:, head + 1 :]], dim=1)


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
