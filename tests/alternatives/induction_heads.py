"""Correct alternatives to notebook 01's exercises, written from the exercise text as a student would.

Each function is named `<exercise function>__<variant>`; the checks must accept every one of them,
visibly and under hidden variants (tests/test_checks_induction_heads.py).
"""

import math

import einops
import torch
import torch.nn.functional as F


# --- exercise 1: count_correct_predictions(model, text) ---------------------------------------------
def count_correct_predictions__loop(model, text):
    tokens = model.to_tokens(text)[0]
    logits = model(tokens[None])[0]
    correct = 0
    for p in range(len(tokens) - 1):
        if logits[p].argmax().item() == tokens[p + 1].item():
            correct += 1
    return correct


def count_correct_predictions__string_input(model, text):
    logits = model(text)  # a HookedTransformer tokenizes a string itself (BOS prepended)
    predicted = logits.argmax(dim=-1)[:, :-1]
    target = model.to_tokens(text)[:, 1:]
    return torch.eq(predicted, target).sum().item()


# --- exercise 2: attention_pattern(q, k) ----------------------------------------------------------
def attention_pattern__matmul(q, k):
    q, k = q.permute(0, 2, 1, 3), k.permute(0, 2, 1, 3)  # (batch, head, pos, d_head)
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    n = scores.shape[-1]
    allowed = torch.tril(torch.ones(n, n, dtype=torch.bool))
    scores = torch.where(allowed, scores, torch.tensor(float("-inf")))
    return torch.softmax(scores, dim=-1)


def attention_pattern__einops_large_negative(q, k):
    scores = einops.einsum(q, k, "b q h d, b k h d -> b h q k") * q.shape[-1] ** -0.5
    n = q.shape[1]
    future = torch.arange(n)[None, :] > torch.arange(n)[:, None]
    scores = scores - 1e9 * future  # a large negative number instead of -inf
    return F.softmax(scores, dim=-1)


def attention_pattern__loops(q, k):
    batch, pos, heads, d_head = q.shape
    pattern = torch.zeros(batch, heads, pos, pos)
    for b in range(batch):
        for h in range(heads):
            for i in range(pos):
                scores = k[b, : i + 1, h] @ q[b, i, h] / d_head**0.5
                pattern[b, h, i, : i + 1] = scores.softmax(-1)
    return pattern


# --- exercise 3: head detectors ----------------------------------------------------------------
def previous_token_scores__indexing(pattern):
    n = pattern.shape[-1]
    queries = torch.arange(1, n)
    return pattern[:, :, queries, queries - 1].mean(dim=(0, 2))


def previous_token_scores__loop(pattern):
    n = pattern.shape[-1]
    total = torch.zeros(pattern.shape[1])
    for q in range(1, n):
        total += pattern[:, :, q, q - 1].mean(0)
    return total / (n - 1)


def duplicate_token_scores__indexing(pattern, seq_len):
    queries = torch.arange(seq_len + 1, 2 * seq_len + 1)
    return pattern[:, :, queries, queries - seq_len].mean(dim=(0, -1))


def duplicate_token_scores__loop(pattern, seq_len):
    scores = []
    for i in range(seq_len):
        scores.append(pattern[:, :, seq_len + 1 + i, 1 + i])  # second copy -> first copy
    return torch.stack(scores, dim=-1).mean(-1).mean(0)


def induction_scores__indexing(pattern, seq_len):
    queries = torch.arange(seq_len + 1, 2 * seq_len + 1)
    return pattern[:, :, queries, queries - seq_len + 1].mean(dim=(0, -1))


def induction_scores__loop(pattern, seq_len):
    total = 0
    for i in range(seq_len):
        total = total + pattern[:, :, seq_len + 1 + i, 2 + i].mean(0)  # the token after the first copy
    return total / seq_len


# --- exercise 4: per_token_loss(logits, tokens) ---------------------------------------------------
def per_token_loss__cross_entropy(logits, tokens):
    batch, pos, vocab = logits.shape
    loss = F.cross_entropy(logits[:, :-1].reshape(-1, vocab), tokens[:, 1:].reshape(-1), reduction="none")
    return loss.view(batch, pos - 1)


def per_token_loss__logsumexp(logits, tokens):
    predicting = logits[:, :-1]
    correct = torch.take_along_dim(predicting, tokens[:, 1:].unsqueeze(-1), dim=-1).squeeze(-1)
    return predicting.logsumexp(dim=-1) - correct


# --- exercise 5: logit_attribution(components, W_U, tokens) ---------------------------------------
def logit_attribution__full_logits(components, W_U, tokens):
    logits = components[:, :, :-1] @ W_U  # (comp, batch, pos - 1, vocab)
    index = tokens[:, 1:].expand(components.shape[0], -1, -1)[..., None]
    return logits.gather(-1, index)[..., 0]


def logit_attribution__elementwise(components, W_U, tokens):
    directions = W_U.T[tokens[:, 1:]]  # (batch, pos - 1, d_model)
    return (components[:, :, :-1] * directions).sum(-1)


# --- exercise 6: ablate_head(z, hook, head, mode) -------------------------------------------------
def ablate_head__in_place(z, hook, head, mode="zero"):
    if mode == "zero":
        z[:, :, head, :] = 0
    else:
        z[:, :, head, :] = z[:, :, head, :].mean(dim=0)
    return z


def ablate_head__mask(z, hook, head, mode="zero"):
    mask = torch.zeros(z.shape[2], 1)
    mask[head] = 1
    replacement = torch.zeros_like(z) if mode == "zero" else z.mean(dim=0, keepdim=True).expand_as(z)
    return z * (1 - mask) + replacement * mask


def ablate_head__in_place_returns_none(z, hook, head, mode="zero"):
    """As TransformerLens allows: edit the activation in place and return nothing."""
    z[:, :, head] = 0.0 if mode == "zero" else z[:, :, head].mean(dim=0)


# --- exercise 7: ov_copying_score(W_E, W_V, W_O, W_U) ---------------------------------------------
def ov_copying_score__diagonal_is_max(W_E, W_V, W_O, W_U):
    full = (W_E @ W_V) @ (W_O @ W_U)
    return (full.diagonal() >= full.max(dim=1).values).float().mean()


def ov_copying_score__loop(W_E, W_V, W_O, W_U):
    full = torch.linalg.multi_dot([W_E, W_V, W_O, W_U])
    copied = sum(int(full[s].argmax()) == s for s in range(full.shape[0]))
    return copied / full.shape[0]


# --- exercise 8: composition_score(W_A, W_B) -----------------------------------------------------
def composition_score__manual_norms(W_A, W_B):
    frobenius = lambda M: M.pow(2).sum().sqrt()  # noqa: E731
    return frobenius(W_A @ W_B) / (frobenius(W_A) * frobenius(W_B))


def composition_score__torch_norm(W_A, W_B):
    return float(torch.norm(torch.mm(W_A, W_B)) / torch.norm(W_A) / torch.norm(W_B))


# --- exercise 9: scan_heads(model, tokens, detector) ------------------------------------------------
def scan_heads__cache(model, tokens, detector):
    _, cache = model.run_with_cache(tokens, names_filter=lambda name: "pattern" in name)
    return torch.stack([detector(cache[f"blocks.{layer}.attn.hook_pattern"]) for layer in range(model.cfg.n_layers)])


def scan_heads__hooks_into_a_dict(model, tokens, detector):
    scores = {}

    def keep(pattern, hook):
        scores[hook.name] = detector(pattern).detach()

    hooks = [(f"blocks.{layer}.attn.hook_pattern", keep) for layer in range(model.cfg.n_layers)]
    with torch.no_grad():
        model.run_with_hooks(tokens, fwd_hooks=hooks)
    return torch.stack([scores[f"blocks.{layer}.attn.hook_pattern"] for layer in range(model.cfg.n_layers)])
