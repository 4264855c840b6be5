"""Correct alternatives to notebook 08's exercises, written from the exercise text as a student would.

Each function is named `<exercise function>__<variant>`; the checks must accept every one of them, visibly,
under hidden variants and through the wire (tests/test_checks_steering.py). The nnsight ones look every module
up before their trace, touch modules in the order the forward pass reaches them, and save what they return.
"""

import random

import numpy as np
import torch
import torch.nn.functional as F

from mikit.language_model import module_at, n_layers, output_projection


def _hidden(output):
    """A block's output is its hidden states, or a tuple that starts with them (older transformers)."""
    return output[0] if isinstance(output, tuple) else output


# --- exercise 1: mean_difference_direction(acts, labels) ------------------------------------------------------
def mean_difference_direction__normalize(acts, labels):
    return F.normalize(acts[labels == 1].mean(dim=0) - acts[labels == 0].mean(dim=0), dim=0)


def mean_difference_direction__masked_sums(acts, labels):
    ones = labels.float()[:, None]  # 1 on class-1 rows, 0 elsewhere
    mean_1 = (acts * ones).sum(0) / ones.sum()
    mean_0 = (acts * (1 - ones)).sum(0) / (1 - ones).sum()
    direction = mean_1 - mean_0
    return direction / torch.linalg.vector_norm(direction)


def mean_difference_direction__loop(acts, labels):
    sums, counts = [torch.zeros(acts.shape[1]), torch.zeros(acts.shape[1])], [0, 0]
    for row, label in zip(acts, labels.tolist()):
        sums[label] += row
        counts[label] += 1
    direction = sums[1] / counts[1] - sums[0] / counts[0]
    return direction / direction.pow(2).sum().sqrt()


def mean_difference_direction__centred(acts, labels):
    # Centring on the overall mean first changes the length only: mean_1 − mean_all = (n_0 / n)(mean_1 − mean_0).
    centred = acts - acts.mean(0)
    direction = centred[labels == 1].mean(0)
    return direction / direction.norm()


# --- exercise 2: held_out_split(types, test_fraction, seed) ---------------------------------------------------
def held_out_split__python_random(types, test_fraction, seed):
    distinct = sorted(set(types))
    held_out = set(random.Random(seed).sample(distinct, round(test_fraction * len(distinct))))
    train = [i for i, t in enumerate(types) if t not in held_out]
    test = [i for i, t in enumerate(types) if t in held_out]
    return train, test


def held_out_split__numpy_first_seen(types, test_fraction, seed):
    distinct = list(dict.fromkeys(types))  # in order of first appearance
    chosen = np.random.default_rng(seed).choice(len(distinct), size=int(test_fraction * len(distinct)), replace=False)
    held_out = {distinct[i] for i in chosen}
    in_test = np.array([t in held_out for t in types])
    return torch.from_numpy(np.flatnonzero(~in_test)), torch.from_numpy(np.flatnonzero(in_test))


def held_out_split__random_keys(types, test_fraction, seed):
    distinct = sorted(set(types))
    keys = torch.rand(len(distinct), generator=torch.Generator().manual_seed(seed))
    n_test = round(test_fraction * len(distinct))
    test_ids = set(keys.argsort()[:n_test].tolist())  # the types with the smallest random keys
    type_id = {t: i for i, t in enumerate(distinct)}
    row_type = torch.tensor([type_id[t] for t in types])
    in_test = torch.isin(row_type, torch.tensor(sorted(test_ids)))
    return torch.where(~in_test)[0], torch.where(in_test)[0]


# --- exercise 3: control_labels(labels, types, seed) ----------------------------------------------------------
def control_labels__numpy_frequencies(labels, types, seed):
    distinct = list(dict.fromkeys(types))
    frequencies = np.bincount(labels.numpy()) / len(labels)
    drawn = np.random.default_rng(seed).choice(len(frequencies), size=len(distinct), p=frequencies)
    label_of = dict(zip(distinct, drawn))
    return torch.from_numpy(np.array([label_of[t] for t in types]))


def control_labels__a_random_row_per_type(labels, types, seed):
    # Each type takes the label of a row drawn at random from all rows: a draw from the task's distribution.
    rng = random.Random(seed)
    all_labels = labels.tolist()
    label_of = {t: rng.choice(all_labels) for t in sorted(set(types))}
    return torch.tensor([label_of[t] for t in types])


# --- exercise 4: last_token_residual(model, prompts, layer) ---------------------------------------------------
def last_token_residual__attention_mask(model, prompts, layer):
    block = module_at(model, f"blocks.{layer}.hook_resid_post")
    mask = model.tokenizer(prompts, padding=True, return_tensors="pt")["attention_mask"]
    last = mask.shape[1] - 1 - mask.flip(1).argmax(1)  # the position of each prompt's last real token
    with torch.no_grad(), model.trace(prompts):
        resid = _hidden(block.output).save()
    return resid[torch.arange(len(prompts)), last]


def last_token_residual__what_comes_next(model, prompts, layer):
    # The residual stream after block `layer` is what the next block (or, after the last, the final norm) reads.
    following = (module_at(model, f"blocks.{layer + 1}.hook_resid_post") if layer + 1 < n_layers(model)
                 else module_at(model, "ln_final.hook_normalized"))
    with torch.no_grad(), model.trace(prompts):
        last = following.input[:, -1].save()
    return last


# --- exercise 5: steering_vector(model, positive, negative, layer) --------------------------------------------
def steering_vector__one_trace(model, positive, negative, layer):
    block = module_at(model, f"blocks.{layer}.hook_resid_post")
    with torch.no_grad(), model.trace(list(positive) + list(negative)):
        last = _hidden(block.output)[:, -1].save()
    return last[: len(positive)].mean(0) - last[len(positive):].mean(0)


def steering_vector__sums_over_counts(model, positive, negative, layer):
    block = module_at(model, f"blocks.{layer}.hook_resid_post")
    totals = []
    for prompts in (positive, negative):
        with torch.no_grad(), model.trace(prompts):
            total = _hidden(block.output)[:, -1].sum(0).save()
        totals.append(total / len(prompts))
    return totals[0] - totals[1]


# --- exercise 6: steered_logits(model, prompts, vector, layer, scale) -----------------------------------------
def steered_logits__in_place(model, prompts, vector, layer, scale):
    block = module_at(model, f"blocks.{layer}.hook_resid_post")
    with torch.no_grad(), model.trace(prompts):
        _hidden(block.output)[:] += scale * vector
        logits = model.output.logits[:, -1].save()
    return logits


def steered_logits__slice_write_then_unembed(model, prompts, vector, layer, scale):
    block, unembed = module_at(model, f"blocks.{layer}.hook_resid_post"), module_at(model, "unembed")
    added = (scale * vector).to(torch.float32)
    with torch.no_grad(), model.trace(prompts):
        resid = _hidden(block.output)
        resid[:, :, :] = resid + added
        logits = unembed.output[:, -1].save()
    return logits


# --- exercise 7: logit_lens(model, prompts, layers) -----------------------------------------------------------
def logit_lens__a_trace_per_layer(model, prompts, layers):
    final_norm, unembed = module_at(model, "ln_final.hook_normalized"), module_at(model, "unembed")
    per_layer = []
    for layer in layers:
        block = module_at(model, f"blocks.{layer}.hook_resid_post")
        with torch.no_grad(), model.trace(prompts):
            logprobs = unembed(final_norm(_hidden(block.output)[:, -1])).log_softmax(-1).save()
        per_layer.append(logprobs)
    return torch.stack(per_layer)


def logit_lens__modules_after_the_trace(model, prompts, layers):
    blocks = [module_at(model, f"blocks.{layer}.hook_resid_post") for layer in layers]
    final_norm, unembed = module_at(model, "ln_final.hook_normalized"), module_at(model, "unembed")
    last = []
    with torch.no_grad(), model.trace(prompts):
        for block in blocks:
            last.append(_hidden(block.output)[:, -1].save())
    with torch.no_grad():  # an Envoy called outside a trace runs its module
        logits = unembed(final_norm(torch.stack(last)))
    return logits - logits.logsumexp(-1, keepdim=True)


# --- exercise 8: head_indirect_effect(model, prompts, answers, z, layer, head) --------------------------------
def head_indirect_effect__one_batch(model, prompts, answers, z, layer, head):
    projection = output_projection(model, layer)
    n, d_head = len(prompts), model.config.hidden_size // model.config.num_attention_heads
    with torch.no_grad(), model.trace(list(prompts) + list(prompts)):  # rows n … 2n − 1 are patched
        heads_z = projection.input.clone()
        heads_z[n:, -1, head * d_head:(head + 1) * d_head] = z
        projection.input = heads_z
        probs = model.output.logits[:, -1].softmax(-1).save()
    rows = torch.arange(n)
    return float((probs[n + rows, answers] - probs[rows, answers]).mean())


def head_indirect_effect__log_softmax_exp(model, prompts, answers, z, layer, head):
    projection = output_projection(model, layer)
    d_head = z.shape[0]
    picked = []
    for patch in (False, True):
        with torch.no_grad(), model.trace(prompts):
            if patch:
                projection.input[:, -1, head * d_head:(head + 1) * d_head] = z  # in place, before W_O runs
            logprobs = model.output.logits[:, -1].log_softmax(-1).save()
        picked.append(logprobs.gather(1, answers[:, None]).squeeze(1).exp())
    clean, patched = picked
    return (patched - clean).mean()
