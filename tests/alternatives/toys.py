"""Correct alternatives to notebook 07's exercises, written from the exercise text as a student would.

Each function is named `<exercise function>__<variant>`; the checks must accept every one of them, visibly,
under hidden variants and through the wire (tests/test_checks_toys.py).
"""

import math

import torch


# --- exercise 1: importance_loss(out, x, importance) ----------------------------------------------------------
def importance_loss__sum_then_divide(out, x, importance):
    batch, _, features = x.shape
    return ((x - out).pow(2) * importance[None]).sum(dim=(0, 2)).div(batch * features).sum()


def importance_loss__loop_over_instances(out, x, importance):
    total = 0.0
    for i in range(x.shape[1]):
        total = total + (importance[i] * (x[:, i] - out[:, i]) ** 2).mean()
    return total


# --- exercise 2: dimensionality(W) ----------------------------------------------------------------------------
def dimensionality__gram(W):
    # (Ŵ_i · W_j)² = G_ij² / G_ii with G = Wᵀ W, so D_i = G_ii² / Σ_j G_ij²
    gram = W.transpose(1, 2) @ W
    diagonal = gram.diagonal(dim1=1, dim2=2)
    squares = (gram**2).sum(-1)
    return torch.where(squares > 0, diagonal**2 / squares.clamp_min(1e-30), torch.zeros_like(diagonal))


def dimensionality__loops(W):
    instances, _, features = W.shape
    D = torch.zeros(instances, features)
    for n in range(instances):
        for i in range(features):
            norm = W[n, :, i].norm()
            if norm == 0:
                continue
            unit = W[n, :, i] / norm
            D[n, i] = norm**2 / sum((unit @ W[n, :, j]) ** 2 for j in range(features))
    return D


# --- exercise 3: qk_table(model) ------------------------------------------------------------------------------
def qk_table__float32_einsum(model):
    attn = model.blocks[0].attn
    residual = model.W_E[:, None, :] + model.W_pos[None, :, :]  # (token, pos, d_model)
    q = torch.einsum("td,dh->th", residual[:, -1], attn.W_Q[0]) + attn.b_Q[0]
    k = torch.einsum("tpd,dh->tph", residual, attn.W_K[0]) + attn.b_K[0]
    return (torch.einsum("qh,kph->qkp", q, k) / math.sqrt(model.cfg.d_head)).detach()


def qk_table__bilinear(model):
    attn = model.blocks[0].attn
    W_Q, W_K, b_Q, b_K = (w.detach().double()[0] for w in (attn.W_Q, attn.W_K, attn.b_Q, attn.b_K))
    x_q = model.W_E.detach().double() + model.W_pos.detach().double()[-1]  # (q_token, d_model)
    scores = []
    for p in range(model.cfg.n_ctx):
        x_k = model.W_E.detach().double() + model.W_pos.detach().double()[p]  # (k_token, d_model)
        # (x_q W_Q + b_Q)(x_k W_K + b_K)ᵀ, expanded term by term
        scores.append(x_q @ W_Q @ W_K.T @ x_k.T + (x_q @ W_Q @ b_K)[:, None] + (b_Q @ W_K.T @ x_k.T)[None, :]
                      + b_Q @ b_K)
    return torch.stack(scores, dim=-1) / model.blocks[0].attn.attn_scale


# --- exercise 4: attention_lower_bound(score_max, other_scores) -----------------------------------------------
def attention_lower_bound__softmax(score_max, other_scores):
    return torch.cat([score_max[..., None], other_scores], dim=-1).softmax(-1)[..., 0]


def attention_lower_bound__logsumexp(score_max, other_scores):
    shifted = other_scores - score_max[..., None]
    return torch.exp(-torch.logsumexp(torch.cat([torch.zeros_like(shifted[..., :1]), shifted], -1), -1))


# --- exercise 5: worst_case_margin(attention, direct_gap, gap_max, gap_rest) ----------------------------------
def worst_case_margin__penalty(attention, direct_gap, gap_max, gap_rest):
    # a·gap_max + (1 − a)·gap_rest = gap_max + (1 − a)(gap_rest − gap_max): a loss only where gap_rest is smaller
    penalty = ((1 - attention[..., None]) * (gap_rest - gap_max)).clamp(max=0)
    return direct_gap + gap_max + torch.where(torch.isinf(gap_rest), torch.zeros_like(penalty), penalty)


def worst_case_margin__loops(attention, direct_gap, gap_max, gap_rest):
    out = torch.empty_like(direct_gap)
    for g in range(direct_gap.shape[0]):
        a = float(attention[g])
        for y in range(direct_gap.shape[1]):
            ends = [float(gap_max[g, y])]
            if not math.isinf(float(gap_rest[g, y])):
                ends.append(a * float(gap_max[g, y]) + (1 - a) * float(gap_rest[g, y]))
            out[g, y] = float(direct_gap[g, y]) + min(ends)
    return out


# --- exercise 6: certified_fraction(proven, k) ----------------------------------------------------------------
def certified_fraction__python_integers(proven, k):
    d_vocab = proven.shape[0]
    count = 0
    for m in range(d_vocab):
        for t in range(m + 1):
            if proven[m, t]:
                count += (m + 1) ** (k - 1) - (m ** (k - 1) if t < m else 0)
    return count / d_vocab**k


def certified_fraction__one_minus_failures(proven, k):
    d_vocab = proven.shape[0]
    m = torch.arange(d_vocab, dtype=torch.float64)
    failed = 0.0
    for t in range(d_vocab):
        rows = m[t:]  # the groups (m, t) with m ≥ t
        sizes = (rows + 1) ** (k - 1) - torch.where(rows > t, rows ** (k - 1), torch.zeros_like(rows))
        failed += float((sizes * ~proven[t:, t]).sum())
    return 1 - failed / d_vocab**k


# --- exercise 7: fourier_basis(p) -----------------------------------------------------------------------------
def fourier_basis__scaled_waves(p):
    x = torch.arange(p)
    w = torch.arange(1, (p - 1) // 2 + 1)[:, None]
    angles = 2 * torch.pi * w * x / p
    waves = torch.stack([angles.cos(), angles.sin()], dim=1).reshape(-1, p) * math.sqrt(2 / p)
    return torch.cat([torch.full((1, p), 1 / math.sqrt(p)), waves])


def fourier_basis__complex_exponentials(p):
    x = torch.arange(p, dtype=torch.float64)
    rows = [torch.ones(p, dtype=torch.float64) / math.sqrt(p)]
    for w in range(1, (p - 1) // 2 + 1):
        wave = torch.exp(2j * math.pi * w * x / p) * math.sqrt(2 / p)
        rows += [wave.real, wave.imag]
    return torch.stack(rows)


# --- exercise 8: frequency_norms(W_E) -------------------------------------------------------------------------
def frequency_norms__fft(W_E):
    p = W_E.shape[0]
    spectrum = torch.fft.fft(W_E.double(), dim=0)[1 : (p - 1) // 2 + 1]  # (frequency, d_model), complex
    return spectrum.abs().pow(2).sum(-1).sqrt() * math.sqrt(2 / p)


def frequency_norms__waves(W_E):
    p = W_E.shape[0]
    x = torch.arange(p, dtype=torch.float64)
    norms = []
    for w in range(1, (p - 1) // 2 + 1):
        cos, sin = torch.cos(2 * math.pi * w * x / p), torch.sin(2 * math.pi * w * x / p)
        cos_part, sin_part = cos / cos.norm() @ W_E.double(), sin / sin.norm() @ W_E.double()
        norms.append(torch.cat([cos_part, sin_part]).norm())
    return torch.stack(norms)


# --- exercise 9: frequency_part(logits, freqs) ----------------------------------------------------------------
def frequency_part__matrix(logits, freqs):
    p = logits.shape[0]
    total = (torch.arange(p)[:, None] + torch.arange(p)[None, :]).flatten().double()
    directions = torch.stack([f(2 * math.pi * w * total / p) for w in freqs for f in (torch.cos, torch.sin)])
    directions = directions / directions.norm(dim=1, keepdim=True)  # (2 · len(freqs), p²)
    flat = logits.reshape(p * p, -1).double()
    return (directions.T @ (directions @ flat)).reshape(logits.shape).to(logits.dtype)


def frequency_part__per_output(logits, freqs):
    p = logits.shape[0]
    a, b = torch.meshgrid(torch.arange(p), torch.arange(p), indexing="ij")
    part = torch.zeros_like(logits)
    for w in freqs:
        for direction in (torch.cos(2 * math.pi * w * (a + b) / p), torch.sin(2 * math.pi * w * (a + b) / p)):
            direction = (direction / direction.norm()).to(logits.dtype)
            for c in range(logits.shape[2]):
                part[:, :, c] += (logits[:, :, c] * direction).sum() * direction
    return part
