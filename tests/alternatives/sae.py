"""Correct alternatives to notebook 04's exercises, written from the exercise text as a student would.

Each function is named `<exercise function>__<variant>`; the checks must accept every one of them,
visibly and under hidden variants (tests/test_checks_sae.py).
"""

import einops
import torch
import torch.nn.functional as F


# --- exercise 1: relu_sae_forward(x, W_enc, b_enc, W_dec, b_dec) -> (latents, x_hat) -------------------
def relu_sae_forward__einsum(x, W_enc, b_enc, W_dec, b_dec):
    latents = F.relu(torch.einsum("bd,ds->bs", x - b_dec, W_enc) + b_enc)
    x_hat = torch.einsum("bs,sd->bd", latents, W_dec) + b_dec
    return latents, x_hat


def relu_sae_forward__linear_clamp(x, W_enc, b_enc, W_dec, b_dec):
    # F.linear computes x @ weight.T + bias: pass the transposed matrices.
    latents = F.linear(x - b_dec, W_enc.T, b_enc).clamp(min=0)
    x_hat = F.linear(latents, W_dec.T, b_dec)
    return (latents, x_hat)


def relu_sae_forward__addmm(x, W_enc, b_enc, W_dec, b_dec):
    centred = x - b_dec[None, :]
    latents = torch.addmm(b_enc, centred, W_enc)
    latents = torch.where(latents > 0, latents, torch.zeros_like(latents))
    return latents, torch.addmm(b_dec, latents, W_dec)


# --- exercise 2: relu_sae_loss(x, latents, x_hat, W_dec, l1_coefficient) ----------------------------------
def relu_sae_loss__matmul(x, latents, x_hat, W_dec, l1_coefficient):
    squared_error = ((x_hat - x) ** 2).sum(dim=1).mean()
    decoder_norms = torch.sqrt((W_dec**2).sum(dim=1))
    l1 = (latents @ decoder_norms).mean()  # Σ_i f_i ‖W_dec[i]‖ per token, as a matrix-vector product
    return squared_error + l1_coefficient * l1


def relu_sae_loss__mse_loss_and_linalg(x, latents, x_hat, W_dec, l1_coefficient):
    n_tokens = x.shape[0]
    reconstruction = F.mse_loss(x_hat, x, reduction="sum") / n_tokens
    sparsity = torch.einsum("bs,s->", latents, torch.linalg.vector_norm(W_dec, dim=-1)) / n_tokens
    return (reconstruction + l1_coefficient * sparsity).item()  # a plain number is a loss value too


def relu_sae_loss__loop_over_tokens(x, latents, x_hat, W_dec, l1_coefficient):
    norms = W_dec.norm(dim=-1)
    total = 0.0
    for token in range(x.shape[0]):
        total += ((x_hat[token] - x[token]) ** 2).sum() + l1_coefficient * (latents[token].abs() * norms).sum()
    return total / x.shape[0]


# --- exercise 3: topk_sae_forward(x, W_enc, b_enc, W_dec, b_dec, k) -> (latents, x_hat) ---------------------
def topk_sae_forward__relu_first_dense_decode(x, W_enc, b_enc, W_dec, b_dec, k):
    # ReLU before choosing: the same values survive (a negative value would be zeroed either way).
    rectified = ((x - b_dec) @ W_enc + b_enc).relu()
    top = rectified.topk(k, dim=-1)
    latents = torch.zeros_like(rectified).scatter(-1, top.indices, top.values)
    return latents, latents @ W_dec + b_dec


def topk_sae_forward__threshold_mask(x, W_enc, b_enc, W_dec, b_dec, k):
    pre = torch.einsum("...d,ds->...s", x - b_dec, W_enc) + b_enc
    kth_largest = pre.topk(k, dim=-1).values[..., -1:]
    latents = torch.where(pre >= kth_largest, pre, torch.zeros_like(pre)).clamp(min=0)
    return latents, torch.einsum("...s,sd->...d", latents, W_dec) + b_dec


def topk_sae_forward__loop_over_tokens_sparse_decode(x, W_enc, b_enc, W_dec, b_dec, k):
    flat = x.reshape(-1, x.shape[-1])
    latents = torch.zeros(flat.shape[0], W_enc.shape[1])
    x_hat = torch.zeros_like(flat)
    for token in range(flat.shape[0]):
        pre = (flat[token] - b_dec) @ W_enc + b_enc
        values, indices = torch.topk(pre, k)
        x_hat[token] = b_dec
        for value, index in zip(values.relu(), indices):
            latents[token, index] = value
            x_hat[token] += value * W_dec[index]  # only the k kept rows of W_dec
    return latents.reshape(*x.shape[:-1], -1), x_hat.reshape(x.shape)


def topk_sae_forward__gathered_rows(x, W_enc, b_enc, W_dec, b_dec, k):
    top = F.linear(x - b_dec, W_enc.T, b_enc).topk(k, dim=-1)
    values = top.values.clamp(min=0)
    latents = torch.zeros(*x.shape[:-1], W_enc.shape[1]).scatter(-1, top.indices, values)
    x_hat = einops.einsum(values, W_dec[top.indices], "... k, ... k d -> ... d") + b_dec
    return latents, x_hat


# --- exercise 4: auxk_loss(x, x_hat, pre, dead, W_dec, k_aux) ---------------------------------------------------
def auxk_loss__gather_rows(x, x_hat, pre, dead, W_dec, k_aux):
    error = x.detach() - x_hat.detach()
    dead_pre = torch.where(dead, pre, torch.full_like(pre, float("-inf")))
    values, indices = torch.topk(dead_pre, k_aux, dim=-1)
    # ê per token: Σ over the chosen latents of value · W_dec[latent] (no dense latent vector needed)
    error_hat = (values.relu().unsqueeze(-1) * W_dec[indices]).sum(dim=-2)
    return ((error_hat - error) ** 2).sum() / ((error - error.mean(dim=0, keepdim=True)) ** 2).sum()


def auxk_loss__variance_denominator(x, x_hat, pre, dead, W_dec, k_aux):
    with torch.no_grad():
        error = x - x_hat
    top = pre.masked_fill(dead.logical_not(), -float("inf")).topk(k_aux)
    aux_latents = torch.zeros_like(pre).scatter(-1, top.indices, F.relu(top.values))
    error_hat = einops.einsum(aux_latents, W_dec, "token latent, latent d -> token d")
    # Σ‖e − ē‖² is the number of tokens times the per-feature (biased) variance, summed over features.
    baseline = error.var(dim=0, unbiased=False).sum() * error.shape[0]
    return F.mse_loss(error_hat, error, reduction="sum") / baseline


def auxk_loss__only_dead_columns(x, x_hat, pre, dead, W_dec, k_aux):
    error = (x - x_hat).detach()
    dead_ids = dead.nonzero().squeeze(-1)
    top = pre[:, dead_ids].topk(k_aux, dim=-1)  # indices into the dead latents only
    aux_latents = torch.zeros(pre.shape[0], dead_ids.numel()).scatter(-1, top.indices, top.values.clamp(min=0))
    error_hat = aux_latents @ W_dec[dead_ids]
    return (error_hat - error).pow(2).sum() / (error - error.mean(0)).pow(2).sum()


# --- exercise 5: training_step(sae, optimizer, x) -> float ------------------------------------------------------------
def training_step__zero_first_in_place_projection(sae, optimizer, x):
    # Zeroing at the start (to zeros, not None) leaves the same gradients for backward as zeroing at the end.
    optimizer.zero_grad(set_to_none=False)
    out = sae.forward_with_loss(x)
    out.loss.backward()
    with torch.no_grad():
        unit = F.normalize(sae.W_dec, dim=-1)
        sae.W_dec.grad.sub_(torch.einsum("sd,sd->s", sae.W_dec.grad, unit)[:, None] * unit)
    optimizer.step()
    sae.W_dec.data = F.normalize(sae.W_dec.data, dim=-1)
    return out.loss.item()


def training_step__new_grad_tensor_and_copy(sae, optimizer, x):
    loss = sae.forward_with_loss(x).loss
    loss.backward()
    W, g = sae.W_dec.detach(), sae.W_dec.grad
    # The projection onto W's rows without normalising them first: (g·w / w·w) w.
    sae.W_dec.grad = g - ((g * W).sum(dim=1, keepdim=True) / (W * W).sum(dim=1, keepdim=True)) * W
    optimizer.step()
    with torch.no_grad():
        sae.W_dec.copy_(sae.W_dec / torch.linalg.vector_norm(sae.W_dec, dim=1, keepdim=True))
    sae.zero_grad(set_to_none=True)
    return float(loss)


def training_step__loop_over_rows(sae, optimizer, x):
    loss = sae.forward_with_loss(x).loss
    loss.backward()
    with torch.no_grad():
        for i in range(sae.d_sae):
            row, grad = sae.W_dec[i], sae.W_dec.grad[i]
            u = row / row.norm()
            grad -= torch.dot(grad, u) * u
    optimizer.step()
    optimizer.zero_grad()
    with torch.no_grad():
        for i in range(sae.d_sae):
            sae.W_dec[i] /= sae.W_dec[i].norm()
    return loss.item()


# --- exercise 6: l0(latents), fvu(x, x_hat), ce_loss_recovered(ce_clean, ce_sae, ce_zero_ablation) ---------------
def l0__count_nonzero(latents):
    return torch.count_nonzero(latents, dim=-1).float().mean()  # a one-element tensor is a number too


def l0__flatten_tokens(latents):
    tokens = latents.reshape(-1, latents.shape[-1])
    return (tokens != 0).sum().item() / tokens.shape[0]


def fvu__mse_loss(x, x_hat):
    return F.mse_loss(x_hat, x, reduction="sum") / ((x - x.mean(dim=0)) ** 2).sum()


def fvu__variance(x, x_hat):
    n = x.shape[0]
    return float(((x - x_hat) ** 2).sum() / (x.var(dim=0, unbiased=False).sum() * n))


def ce_loss_recovered__one_minus_lost(ce_clean, ce_sae, ce_zero_ablation):
    return 1 - (ce_sae - ce_clean) / (ce_zero_ablation - ce_clean)


def ce_loss_recovered__tensors(ce_clean, ce_sae, ce_zero_ablation):
    clean, sae, zero = torch.tensor([ce_clean, ce_sae, ce_zero_ablation], dtype=torch.float64)
    return ((zero - sae) / (zero - clean)).item()


# --- exercise 7: dead_latents(sae, activations, batch_size) -------------------------------------------------------
def dead_latents__any_fired(sae, activations, batch_size=4096):
    fired = torch.zeros(sae.d_sae, dtype=torch.bool)
    with torch.no_grad():
        for batch in torch.split(activations, batch_size):
            fired |= (sae.encode(batch) != 0).any(dim=0)
    return ~fired


def dead_latents__max_activation(sae, activations, batch_size=4096):
    # TopK latents are never negative: a latent fired if its largest activation is above zero.
    largest = []
    for start in range(0, len(activations), batch_size):
        largest.append(sae.encode(activations[start : start + batch_size]).detach().amax(dim=0))
    return torch.stack(largest).amax(dim=0) == 0


def dead_latents__counts_with_while(sae, activations, batch_size=4096):
    counts = torch.zeros(sae.d_sae)
    start = 0
    while start < activations.shape[0]:
        latents = sae.encode(activations[start : start + batch_size])
        counts = counts + (latents != 0).float().sum(0)
        start += batch_size
    return counts.eq(0)


# --- exercise 8: max_activating_examples(latent_acts, k) ----------------------------------------------------------
def max_activating_examples__sort_and_unravel(latent_acts, k):
    values, flat = torch.sort(latent_acts.flatten(), descending=True)
    rows, positions = torch.unravel_index(flat[:k], latent_acts.shape)
    return [(r.item(), p.item(), v.item()) for r, p, v in zip(rows, positions, values[:k])]


def max_activating_examples__python_sorted(latent_acts, k):
    cells = [
        (row, position, latent_acts[row, position].item())
        for row in range(latent_acts.shape[0])
        for position in range(latent_acts.shape[1])
    ]
    return sorted(cells, key=lambda cell: cell[2], reverse=True)[:k]


def max_activating_examples__divmod(latent_acts, k):
    top = torch.topk(latent_acts.reshape(-1), k)
    examples = []
    for value, index in zip(top.values.tolist(), top.indices.tolist()):
        row, position = divmod(index, latent_acts.shape[1])
        examples.append((row, position, value))
    return examples


# --- exercise 9: clamp_latent_hook(activation, hook, sae, latent, value) --------------------------------------------
def clamp_latent_hook__in_place_no_return(activation, hook, sae, latent, value):
    with torch.no_grad():
        current = sae.encode(activation)[:, :, latent]
        activation += (value - current).unsqueeze(-1) * sae.W_dec[latent]  # TransformerLens keeps it


def clamp_latent_hook__reconstruction_plus_error(activation, hook, sae, latent, value):
    # Templeton et al.'s wording: the reconstruction with the latent set to `value`, plus the SAE's error.
    latents = sae.encode(activation)
    error = activation - sae.decode(latents)
    clamped = latents.clone()
    clamped[..., latent] = value
    return sae.decode(clamped) + error


def clamp_latent_hook__einops_outer(activation, hook, sae, latent, value):
    current = sae.encode(activation)[..., latent]
    change = einops.einsum(value - current, sae.W_dec[latent], "batch pos, d_model -> batch pos d_model")
    return activation + change
