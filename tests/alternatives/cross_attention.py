"""Correct solutions to notebook 05's exercises written another way, as a student could from the exercise text.

Each is named `<exercise>__<variant>`; tests/test_checks_cross_attention.py runs every one through the
visible check and its hidden variants.
"""

import torch
import torch.nn.functional as F

# ---- exercise 1: cross-attention probabilities -----------------------------------------------------


def cross_attention_probs__matmul(q, k, padding):
    """Heads moved forward, then q @ kᵀ; padding masked with torch.where."""
    q, k = q.transpose(1, 2), k.transpose(1, 2)  # (batch, head, tokens, d_head)
    scores = q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5
    scores = torch.where(padding[:, None, None, :], torch.tensor(float("-inf")), scores)
    return torch.softmax(scores, dim=-1)


def cross_attention_probs__additive_mask(q, k, padding):
    """An additive mask of a very negative number instead of -inf (exp underflows to exactly 0)."""
    scores = torch.einsum("bqhd,bkhd->bhqk", q, k) * q.shape[-1] ** -0.5
    scores = scores + padding[:, None, None, :].float() * -1e9
    return F.softmax(scores, dim=-1)


def cross_attention_probs__loops(q, k, padding):
    """One batch row and head at a time; only the real words get a score, padding stays at 0."""
    batch, patches, heads, d_head = q.shape
    out = torch.zeros(batch, heads, patches, k.shape[1])
    for b in range(batch):
        real = ~padding[b]
        for h in range(heads):
            scores = q[b, :, h] @ k[b, real, h].T / d_head**0.5
            out[b, h][:, real] = scores.softmax(-1)
    return out


# ---- exercise 2: recording the maps under guidance --------------------------------------------------


def record_cross_attention__flat_list(model, captions, steps=20, guidance=3.0, seed=0):
    """Every call appended to one list (layer 0 first within a step), reshaped to (step, layer) at the end;
    hooks added with add_hook and removed in a finally."""
    from mikit.xattn.training import sample

    n_prompts, calls = len(captions), []

    def keep(pattern, hook):
        calls.append(pattern[:n_prompts].detach().clone())

    for layer in range(model.cfg.n_layers):
        model.add_hook(f"blocks.{layer}.cross_attn.hook_pattern", keep)
    try:
        images = sample(model, captions, steps=steps, guidance=guidance, seed=seed)
    finally:
        model.reset_hooks()
    return images, torch.stack(calls).unflatten(0, (-1, model.cfg.n_layers))


def record_cross_attention__step_dict(model, captions, steps=20, guidance=3.0, seed=0):
    """A {(step, layer): map} dict, a new step whenever layer 0 fires; the layer read from the hook's name;
    the hook returns the pattern unchanged."""
    from transformer_lens.utilities import get_act_name

    from mikit.xattn.training import sample

    n_layers, store = model.cfg.n_layers, {}

    def keep(pattern, hook):
        layer = int(hook.name.split(".")[1])
        step = len(store) // n_layers
        store[step, layer] = pattern[: captions.shape[0]].detach().to("cpu", copy=True)
        return pattern

    names = [get_act_name("pattern", layer).replace("attn", "cross_attn") for layer in range(n_layers)]
    with model.hooks(fwd_hooks=[(name, keep) for name in names]):
        images = sample(model, captions, steps=steps, guidance=guidance, seed=seed)
    n_steps = len(store) // n_layers
    maps = torch.stack([torch.stack([store[s, layer] for layer in range(n_layers)]) for s in range(n_steps)])
    return images, maps


def record_cross_attention__per_layer_lists(model, captions, steps=20, guidance=3.0, seed=0):
    """One list per layer (a closure per layer), stacked over steps and then over layers on axis 1."""
    from mikit.xattn.training import sample

    per_layer = [[] for _ in range(model.cfg.n_layers)]

    def keeper(layer):
        def keep(pattern, hook):
            with torch.no_grad():
                per_layer[layer].append(pattern.narrow(0, 0, len(captions)).clone())
        return keep

    hooks = [(f"blocks.{layer}.cross_attn.hook_pattern", keeper(layer)) for layer in range(len(per_layer))]
    with model.hooks(fwd_hooks=hooks):
        images = sample(model, captions, steps, guidance, seed)
    return images, torch.stack([torch.stack(maps) for maps in per_layer], dim=1)


# ---- exercise 3: DAAM heatmap -----------------------------------------------------------------------


def daam_heatmap__sum_then_scale(maps, token):
    """DAAM sums over steps, layers and heads; scaling to a maximum of 1 removes the constant."""
    total = maps[..., token].sum(dim=(0, 1, 3))  # (prompt, patch)
    heat = F.interpolate(total.unflatten(-1, (8, 8))[:, None], size=32, mode="bilinear", align_corners=False)
    heat = heat.squeeze(1)
    return heat / heat.amax(dim=(-2, -1), keepdim=True)


def daam_heatmap__upsample_every_map(maps, token):
    """DAAM's order: upsample every map first, then average (bilinear upsampling is linear)."""
    steps, layers, prompts, heads, patches, words = maps.shape
    grids = maps[..., token].reshape(-1, 1, 8, 8)
    images = F.interpolate(grids, size=(32, 32), mode="bilinear", align_corners=False)
    heat = images.view(steps, layers, prompts, heads, 32, 32).mean(dim=(0, 1, 3))
    return torch.stack([h / h.max() for h in heat])


# ---- exercise 4: mean IoU ---------------------------------------------------------------------------


def mean_iou__loop(heat, masks, threshold):
    """One object at a time, in Python floats."""
    total = 0.0
    for h, m in zip(heat, masks):
        predicted = h >= threshold
        total += torch.logical_and(predicted, m).sum().item() / torch.logical_or(predicted, m).sum().item()
    return total / len(masks)


def mean_iou__tensor(heat, masks, threshold):
    """Vectorised, returning a 0-d tensor; the union from |A| + |B| − |A∩B|."""
    predicted = (heat >= threshold).float()
    masks = masks.float()
    intersection = (predicted * masks).sum(dim=(1, 2))
    union = predicted.sum(dim=(1, 2)) + masks.sum(dim=(1, 2)) - intersection
    return (intersection / union).mean()


# ---- exercise 5: weakest token ----------------------------------------------------------------------


def weakest_token__min_key(maps, candidates):
    """Python's min over each prompt's candidates, keyed by the token's peak."""
    mean = maps.mean(dim=(0, 1, 3))  # (prompt, patch, word)
    return [min(tokens, key=lambda t: mean[p, :, t].max().item()) for p, tokens in enumerate(candidates)]


def weakest_token__tensor(maps, candidates):
    """Every token's peak at once, then an argmin per prompt; returned as a tensor."""
    peaks = maps.mean(dim=0).mean(dim=0).mean(dim=1).amax(dim=1)  # (prompt, word)
    chosen = []
    for p, tokens in enumerate(candidates):
        tokens = torch.tensor(tokens)
        chosen.append(tokens[peaks[p, tokens].argmin()])
    return torch.stack(chosen)


# ---- exercise 6: reweighting ------------------------------------------------------------------------


def reweight__loop(pattern, tokens, factor, n_prompts):
    """Row by row on a copy."""
    out = pattern.clone()
    for i in range(n_prompts):
        out[i, :, :, int(tokens[i])] = out[i, :, :, int(tokens[i])] * factor
        out[i] = out[i] / out[i].sum(dim=-1, keepdim=True)
    return out


def reweight__weights(pattern, tokens, factor, n_prompts):
    """A (batch, word) weight table of ones with `factor` at each conditional row's token."""
    weights = torch.ones(pattern.shape[0], pattern.shape[-1])
    weights[torch.arange(n_prompts), tokens] = factor
    scaled = pattern * weights[:, None, None, :]
    conditional = scaled[:n_prompts] / scaled[:n_prompts].sum(-1, keepdim=True)
    return torch.cat([conditional, pattern[n_prompts:]])


def reweight__in_place(pattern, tokens, factor, n_prompts):
    """Edits the pattern it is given and returns it (as a hook may)."""
    for i, token in enumerate(tokens.tolist()[:n_prompts]):
        pattern[i, ..., token] *= factor
        pattern[i] /= pattern[i].sum(-1, keepdim=True)
    return pattern


# ---- exercise 7: each word's image share -----------------------------------------------------------


def word_image_shares__loop(patterns, n_image, caption, position):
    """One word at a time: the row of the query before it, image keys summed, heads averaged."""
    rows = []
    for c, p in zip(caption.tolist(), position.tolist()):
        row = patterns[:, c, :, n_image + p]  # (layer, head, key)
        rows.append(row[..., :n_image].sum(-1).mean(-1))
    return torch.stack(rows)


def word_image_shares__heads_first(patterns, n_image, caption, position):
    """Heads averaged first, the words' query rows gathered, then the image keys summed."""
    rows = patterns.mean(dim=2)[:, caption, n_image + position]  # (layer, word, key)
    return rows[..., :n_image].sum(-1).T


def word_image_shares__one_minus_text(patterns, n_image, caption, position):
    """Rows sum to 1, so the image share is what the text keys leave; einsum over a 0/1 key mask."""
    is_text = (torch.arange(patterns.shape[-1]) >= n_image).to(patterns.dtype)
    text = torch.einsum("lbhqk,k->lbq", patterns, is_text) / patterns.shape[2]
    return (1 - text[:, caption, n_image + position]).permute(1, 0)


# ---- exercise 8: a diffusers attn2 layer -------------------------------------------------------------


def attn2_probs__head_to_batch_dim(attn, hidden_states, encoder_hidden_states, cfg):
    """diffusers' own head split, and chunk for the guidance halves."""
    q = attn.head_to_batch_dim(attn.to_q(hidden_states), out_dim=4)  # (batch, head, pixel, d_head)
    k = attn.head_to_batch_dim(attn.to_k(encoder_hidden_states), out_dim=4)
    probs = torch.softmax(torch.matmul(q, k.transpose(-1, -2)) * attn.scale, dim=-1)
    return probs.chunk(2)[1] if cfg else probs


def attn2_probs__einsum(attn, hidden_states, encoder_hidden_states, cfg):
    """view to (batch, tokens, head, d_head) and an einsum; the scale as 1/√d_head."""
    if cfg:  # only the conditional rows are needed
        half = hidden_states.shape[0] // 2
        hidden_states, encoder_hidden_states = hidden_states[half:], encoder_hidden_states[half:]
    q = attn.to_q(hidden_states)
    k = attn.to_k(encoder_hidden_states)
    q = q.view(q.shape[0], q.shape[1], attn.heads, -1)
    k = k.view(k.shape[0], k.shape[1], attn.heads, -1)
    scores = torch.einsum("bqhd,bkhd->bhqk", q, k) / q.shape[-1] ** 0.5
    return scores.softmax(-1)


def attn2_probs__get_attention_scores(attn, hidden_states, encoder_hidden_states, cfg):
    """diffusers' get_attention_scores on (batch · head, tokens, d_head) tensors."""
    q = attn.head_to_batch_dim(attn.to_q(hidden_states))
    k = attn.head_to_batch_dim(attn.to_k(encoder_hidden_states))
    probs = attn.get_attention_scores(q, k).unflatten(0, (hidden_states.shape[0], attn.heads))
    return probs[hidden_states.shape[0] // 2:] if cfg else probs
