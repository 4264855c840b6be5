"""Every notebook-08 check passes a correct solution and rejects plausible wrong implementations.

The reference implementations are the solution notebook's own functions (read with mikit.dev.mutants). Each
exercise's test runs as the notebook runs the check (`variant` 0) and as the grader does (`variant` 1-3); the
hidden tests also run through the wire (`mikit.hidden`), with the reference, the correct alternatives of
tests/alternatives/steering.py, and functions that only replay the visible check's answers. The nnsight checks
run on a tiny GPT-2 and a tiny Qwen2 (3 layers; 4, with other weights, under the grader), padded on the left.
"""

import os
import re

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from functools import partial  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from alternatives import solution_functions  # noqa: E402  (tests/alternatives/)
from alternatives import steering as alternatives  # noqa: E402
from verdicts import accepts, grader_tests, rejects  # noqa: E402  (tests/verdicts.py)

from mikit import hidden, lens, probes, steering  # noqa: E402
from mikit.checks import CheckFailed, hidden_variant  # noqa: E402
from mikit.checks import steering as checks  # noqa: E402
from mikit.language_model import module_at, n_layers, output_projection, residual_stream  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


SOLUTION = solution_functions("08_probes_and_steering")


def stub(*args):
    raise NotImplementedError


def _hidden(output):
    return output[0] if isinstance(output, tuple) else output


def test_the_solutions_are_the_notebook_functions():
    assert set(SOLUTION) == {name for exercise in checks.EXERCISES.values() for name in exercise.students}


# --- the check's models ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind, architecture", [("gpt2", "GPT2LMHeadModel"), ("qwen2", "Qwen2ForCausalLM")])
def test_the_tiny_models_are_what_the_checks_say(kind, architecture):
    model = checks.tiny_language_model(kind)
    assert type(model._module).__name__ == architecture and model.config.model_type == kind
    assert n_layers(model) == 3 and model.config.hidden_size == 32 and model.config.num_attention_heads == 2
    assert model.tokenizer.padding_side == "left"
    deeper = checks.tiny_language_model(kind, 4, 7)
    assert n_layers(deeper) == 4
    embed = module_at(model, "hook_embed")._module.weight
    assert not torch.equal(embed, module_at(deeper, "hook_embed")._module.weight)  # another seed, other weights

    prompts = checks._prompts(torch.Generator().manual_seed(0), 4)
    lengths = [len(prompt.split()) for prompt in prompts]
    assert lengths[0] == 2 and lengths[-1] == 6  # unequal: the batch needs padding
    batch = model.tokenizer(prompts, padding=True, return_tensors="pt")
    mask, ids = batch["attention_mask"], batch["input_ids"]
    assert mask.shape == (4, 6) and mask.sum(1).tolist() == lengths  # one token per word
    assert (mask[:, -1] == 1).all() and (mask[0, :4] == 0).all()  # padded on the left: -1 is every last token
    assert (ids[mask == 0] == model.tokenizer.pad_token_id).all() and (ids[mask == 1] < 64).all()  # no [UNK]


def test_the_checks_use_3_layers_in_the_notebook_and_4_other_ones_under_the_grader():
    # Layer 1, which the checks steer and patch, is not the last: a change at one position reaches the last one.
    visible = checks._models()
    assert [m.config.model_type for m in visible] == list(checks.KINDS) and [n_layers(m) for m in visible] == [3, 3]
    with hidden.active(), hidden_variant(2):
        hidden_models = checks._models()
    hidden.reset()
    assert [n_layers(m) for m in hidden_models] == [4, 4]
    for model, other in zip(visible, hidden_models):  # other weights
        assert not torch.equal(module_at(model, "hook_embed")._module.weight, module_at(other, "hook_embed")._module.weight)


# --- part 1: probes --------------------------------------------------------------------------------------------
def _means(acts, labels):
    return acts[labels == 1].mean(0), acts[labels == 0].mean(0)


def test_mean_difference_direction(capsys, variant):
    accepts(checks.mean_difference_direction, SOLUTION["mean_difference_direction"], capsys)

    def backwards(acts, labels):
        one, zero = _means(acts, labels)
        return (zero - one) / (zero - one).norm()

    def unnormalised(acts, labels):
        one, zero = _means(acts, labels)
        return one - zero

    def the_class_mean(acts, labels):
        mean = acts[labels == 1].mean(0)
        return mean / mean.norm()

    def labels_plus_minus_one(acts, labels):  # an SVM habit: the other class is -1, which has no rows
        direction = acts[labels == 1].mean(0) - acts[labels == -1].mean(0)
        return direction / direction.norm()

    check = checks.mean_difference_direction
    rejects(check, backwards, "points from class 1 to class 0")
    rejects(check, unnormalised, "normalise the difference to unit length")
    rejects(check, the_class_mean, "subtract the class-0 mean: the direction is \\*between\\* the means")
    rejects(check, labels_plus_minus_one, "NaN")
    rejects(check, lambda acts, labels: SOLUTION["mean_difference_direction"](acts, labels).tolist(), "torch.Tensor")
    rejects(check, lambda acts, labels: (acts[labels == 1].mean() - acts[labels == 0].mean()).sign(), "shape")
    rejects(check, stub, "still raises NotImplementedError")


def test_held_out_split(capsys, variant):
    accepts(checks.held_out_split, SOLUTION["held_out_split"], capsys)

    def by_rows(types, test_fraction, seed):
        order = torch.randperm(len(types), generator=torch.Generator().manual_seed(seed))
        n_test = round(test_fraction * len(types))
        return order[n_test:], order[:n_test]

    def split_on(types, test_types):
        in_test = torch.tensor([t in test_types for t in types])
        return (~in_test).nonzero().flatten(), in_test.nonzero().flatten()

    def first_types(types, test_fraction, seed):
        distinct = sorted(set(types))
        return split_on(types, set(distinct[: round(test_fraction * len(distinct))]))

    def unseeded(types, test_fraction, seed):
        distinct = sorted(set(types))
        order = torch.randperm(len(distinct))
        return split_on(types, {distinct[i] for i in order[: round(test_fraction * len(distinct))].tolist()})

    def fraction_of_rows(types, test_fraction, seed):  # counts the test types from the number of rows
        distinct = sorted(set(types))
        order = torch.randperm(len(distinct), generator=torch.Generator().manual_seed(seed))
        return split_on(types, {distinct[i] for i in order[: round(test_fraction * len(types))].tolist()})

    def masks(types, test_fraction, seed):
        train, test = SOLUTION["held_out_split"](types, test_fraction, seed)
        in_test = torch.zeros(len(types), dtype=torch.bool)
        in_test[test] = True
        return ~in_test, in_test

    check, reference = checks.held_out_split, SOLUTION["held_out_split"]
    rejects(check, by_rows, "has rows in both halves")
    rejects(check, first_types, "gives the same split for every seed")
    rejects(check, unseeded, "two different splits for the same seed")
    rejects(check, fraction_of_rows, "word types; it should hold a fraction test_fraction of the types")
    rejects(check, lambda types, f, seed: reference(types, f, seed)[::-1], "word types; it should hold a fraction")
    rejects(check, masks, "row indices \\(integers\\), not a tensor of dtype torch.bool")
    rejects(check, lambda types, f, seed: reference(types, f, seed)[1], "a pair \\(train, test\\)")
    rejects(check, stub, "still raises NotImplementedError")


def test_control_labels(capsys, variant):
    accepts(checks.control_labels, SOLUTION["control_labels"], capsys)

    def per_type(types, drawn):
        label_of = dict(zip(sorted(set(types)), drawn.tolist()))
        return torch.tensor([label_of[t] for t in types])

    def per_row(labels, types, seed):
        shares = torch.bincount(labels).float()
        return torch.multinomial(shares, len(labels), replacement=True, generator=torch.Generator().manual_seed(seed))

    def uniform(labels, types, seed):
        n_classes = int(labels.max()) + 1
        return per_type(types, torch.randint(n_classes, (len(set(types)),), generator=torch.Generator().manual_seed(seed)))

    def a_row_of_the_same_type(labels, types, seed):  # each type keeps the label of one of its rows: the task's
        rows = {}
        for i, t in enumerate(types):
            rows.setdefault(t, []).append(i)
        order = torch.Generator().manual_seed(seed)
        label_of = {t: int(labels[r[int(torch.randint(len(r), (), generator=order))]]) for t, r in rows.items()}
        return torch.tensor([label_of[t] for t in types])

    def draw(shares, n, generator=None):
        return torch.multinomial(shares, n, replacement=True, generator=generator)

    def fixed_seed(labels, types, seed):
        return per_type(types, draw(torch.bincount(labels).float(), len(set(types)), torch.Generator().manual_seed(0)))

    def unseeded(labels, types, seed):
        return per_type(types, draw(torch.bincount(labels).float(), len(set(types))))

    def float_labels(labels, types, seed):
        out = torch.zeros(len(types))
        out[:] = SOLUTION["control_labels"](labels, types, seed)
        return out

    check = checks.control_labels
    rejects(check, per_row, "rows of the same word type got different control labels")
    rejects(check, uniform, "from the task's label distribution .*, not uniformly")
    rejects(check, a_row_of_the_same_type, "are \\(almost\\) the task's labels")
    rejects(check, lambda labels, types, seed: labels, "are \\(almost\\) the task's labels")
    rejects(check, fixed_seed, "gives the same labels for every seed")
    rejects(check, unseeded, "two different answers for the same seed")
    rejects(check, float_labels, "a tensor of integer labels")
    rejects(check, stub, "still raises NotImplementedError")


# --- part 2: nnsight -------------------------------------------------------------------------------------------
def _resid_at(model, prompts, hook, *, position=-1, read_input=False):
    """The output (its first element if a tuple) or the input of the module at `hook`, at `position`: a student's
    last_token_residual."""
    module = module_at(model, hook)
    with torch.no_grad(), model.trace(prompts):
        value = module.input if read_input else _hidden(module.output)
        last = value[:, position].save()
    return last


def test_last_token_residual(capsys, variant):
    accepts(checks.last_token_residual, SOLUTION["last_token_residual"], capsys)

    def right_padded(model, prompts, layer):  # the last token at the attention mask's count − 1
        block = module_at(model, f"blocks.{layer}.hook_resid_post")
        last = model.tokenizer(prompts, padding=True, return_tensors="pt")["attention_mask"].sum(1) - 1
        with torch.no_grad(), model.trace(prompts):
            resid = _hidden(block.output).save()
        return resid[torch.arange(len(prompts)), last]

    def whole_sequence(model, prompts, layer):
        block = module_at(model, f"blocks.{layer}.hook_resid_post")
        with torch.no_grad(), model.trace(prompts):
            resid = _hidden(block.output).save()
        return resid

    check = checks.last_token_residual
    rejects(check, lambda m, p, layer: _resid_at(m, p, f"blocks.{layer}.hook_resid_post", position=0),
            "you read the first position: prompts are padded on the left")
    rejects(check, lambda m, p, layer: _resid_at(m, p, f"blocks.{layer}.hook_resid_post", read_input=True),
            "before\\* the layer")
    rejects(check, lambda m, p, layer: _resid_at(m, p, f"blocks.{layer - 1}.hook_resid_post"), "before\\* the layer")
    rejects(check, lambda m, p, layer: _resid_at(m, p, f"blocks.{layer}.hook_attn_out"),
            "you read the attention's output")
    rejects(check, right_padded, "as if the prompts were padded on the right")
    rejects(check, whole_sequence, "shape \\(batch d_model\\)")
    rejects(check, stub, "still raises NotImplementedError")


def test_module_names_of_one_architecture_fail_on_the_other():
    def gpt2_only(model, prompts, layer):
        with torch.no_grad(), model.trace(prompts):
            last = model.transformer.h[layer].output[:, -1].save()
        return last

    with pytest.raises(AttributeError, match="transformer"):  # passes on the tiny GPT-2, fails on the tiny Qwen2
        checks.last_token_residual(gpt2_only)


def _last_mean(model, prompts, layer, *, reduce="mean"):
    block = module_at(model, f"blocks.{layer}.hook_resid_post")
    with torch.no_grad(), model.trace(prompts):
        resid = _hidden(block.output).save()
    if reduce == "positions":
        return resid.mean(1).mean(0)
    return getattr(resid[:, -1], reduce)(0)


def test_steering_vector(capsys, variant):
    accepts(checks.steering_vector, SOLUTION["steering_vector"], capsys)

    def normalised(model, positive, negative, layer):
        difference = _last_mean(model, positive, layer) - _last_mean(model, negative, layer)
        return difference / difference.norm()

    check = checks.steering_vector
    rejects(check, lambda m, pos, neg, layer: _last_mean(m, neg, layer) - _last_mean(m, pos, layer),
            "points from positive to negative")
    rejects(check, lambda m, pos, neg, layer: _last_mean(m, pos, layer, reduce="sum") - _last_mean(m, neg, layer, reduce="sum"),
            "mean, not sum")
    rejects(check, normalised, "keep the vector's length")
    rejects(check, lambda m, pos, neg, layer: torch.stack([_last_mean(m, pos, layer), _last_mean(m, neg, layer)]),
            "shape \\(d_model\\)")
    rejects(check, lambda m, pos, neg, layer: (_last_mean(m, pos, layer, reduce="positions")
                                               - _last_mean(m, neg, layer, reduce="positions")), "differs from the reference")
    rejects(check, stub, "still raises NotImplementedError")


def _steered(model, prompts, vector, layer, scale, *, where="output", last_only=False, write_back=True, probs=False,
             positions_out=False):
    """A student's steered_logits: add `scale * vector` to the block's output (or its input), read the logits."""
    block = module_at(model, f"blocks.{layer}.hook_resid_post")
    with torch.no_grad(), model.trace(prompts):
        if where == "input":
            block.input = block.input + scale * vector
        else:
            output = block.output
            resid = _hidden(output)
            if last_only:
                resid[:, -1] += scale * vector
            elif write_back:
                block.output = resid + scale * vector
            else:
                steered = resid.clone()  # edits a copy, which the model never sees
                steered += scale * vector
        logits = model.output.logits
        out = (logits if positions_out else logits[:, -1])
        out = (out.softmax(-1) if probs else out).save()
    return out


def test_steered_logits(capsys, variant):
    accepts(checks.steered_logits, SOLUTION["steered_logits"], capsys)
    check = checks.steered_logits
    rejects(check, partial(_steered, last_only=True), "at the last position only")
    rejects(check, partial(_steered, where="input"), "before the layer")
    rejects(check, lambda m, p, vector, layer, scale: _steered(m, p, vector, layer, 1.0), "multiply the vector by `scale`")
    rejects(check, lambda m, p, vector, layer, scale: _steered(m, p, vector / vector.norm(), layer, scale),
            "not its unit vector")
    rejects(check, partial(_steered, write_back=False), "the logits are unsteered")
    rejects(check, partial(_steered, probs=True), "return logits, not probabilities")
    rejects(check, partial(_steered, positions_out=True), "shape \\(batch d_vocab\\)")
    rejects(check, stub, "still raises NotImplementedError")


def _lens(model, prompts, layers, *, norm=True, position=-1, out="log_softmax"):
    """A student's logit lens: each layer's residual through (the final norm and) the unembedding."""
    blocks = [module_at(model, f"blocks.{layer}.hook_resid_post") for layer in layers]
    final_norm, unembed = module_at(model, "ln_final.hook_normalized"), module_at(model, "unembed")
    with torch.no_grad(), model.trace(prompts):
        resid = torch.stack([_hidden(block.output)[:, position] for block in blocks])
        logits = unembed(final_norm(resid) if norm else resid)
        result = (getattr(logits, out)(-1) if out else logits).save()
    return result


def test_logit_lens(capsys, variant):
    accepts(checks.logit_lens, SOLUTION["logit_lens"], capsys)
    check = checks.logit_lens
    rejects(check, partial(_lens, norm=False), "apply the model's final norm before the unembedding")
    rejects(check, partial(_lens, out=None), "return log-probabilities: log_softmax over the vocabulary")
    rejects(check, partial(_lens, out="softmax"), "return log-probabilities, not probabilities")
    rejects(check, partial(_lens, position=0), "you read the first position")
    rejects(check, lambda m, p, layers: _lens(m, p, layers).transpose(0, 1), "shape \\(layer batch d_vocab\\)")
    rejects(check, stub, "still raises NotImplementedError")


def _effect(model, prompts, answers, z, layer, head, *, everywhere=False, from_one=False, log=False, total=False,
            per_prompt=False):
    """A student's head_indirect_effect, with one of its mistakes."""
    projection = output_projection(model, layer)
    n_heads = model.config.num_attention_heads
    rows = torch.arange(len(prompts))
    with torch.no_grad(), model.trace(prompts):
        clean = model.output.logits[:, -1].save()
    with torch.no_grad(), model.trace(prompts):
        heads_z = projection.input.clone()
        per_head = heads_z.view(*heads_z.shape[:2], n_heads, -1)  # (batch, pos, head, d_head), sharing heads_z
        positions = slice(None) if everywhere else -1
        per_head[:, positions, head - 1 if from_one else head] = z
        projection.input = heads_z
        patched = model.output.logits[:, -1].save()
    if log:
        change = patched.log_softmax(-1)[rows, answers] - clean.log_softmax(-1)[rows, answers]
    else:
        change = patched.softmax(-1)[rows, answers] - clean.softmax(-1)[rows, answers]
    return change if per_prompt else change.sum() if total else change.mean()


def test_head_indirect_effect(capsys, variant):
    accepts(checks.head_indirect_effect, SOLUTION["head_indirect_effect"], capsys)

    def patched_only(model, prompts, answers, z, layer, head):
        projection = output_projection(model, layer)
        d_head = z.shape[0]
        with torch.no_grad(), model.trace(prompts):
            heads_z = projection.input.clone()
            heads_z[:, -1, head * d_head:(head + 1) * d_head] = z
            projection.input = heads_z
            probs = model.output.logits[:, -1].softmax(-1).save()
        return probs[torch.arange(len(prompts)), answers].mean()

    check = checks.head_indirect_effect
    rejects(check, patched_only, "subtract the clean probability")
    rejects(check, partial(_effect, everywhere=True), "you patched the head at every position")
    rejects(check, partial(_effect, from_one=True), "you patched the other head")  # heads counted from 1
    rejects(check, partial(_effect, log=True), "use probabilities, not log-probabilities")
    rejects(check, partial(_effect, total=True), "average over the prompts \\(mean, not sum\\)")
    rejects(check, partial(_effect, per_prompt=True), "single number")
    rejects(check, stub, "still raises NotImplementedError")


def test_the_students_effect_matches_the_library():
    """The exercise's effect is `mikit.steering.indirect_effects` for one head (every other head's z is unused)."""
    model = checks.tiny_language_model("qwen2")
    prompts = checks._prompts(torch.Generator().manual_seed(1), 4)
    answers, z = torch.tensor([3, 14, 15, 9]), 4 * torch.randn(16, generator=torch.Generator().manual_seed(2))
    effects = steering.indirect_effects(model, prompts, answers, z.repeat(2, 1)[None], layers=[1])
    for head in (0, 1):
        assert SOLUTION["head_indirect_effect"](model, prompts, answers, z, 1, head) == pytest.approx(
            effects[0, head].item(), abs=1e-7)


# --- the grader ------------------------------------------------------------------------------------------------
globals().update(grader_tests(checks, SOLUTION, alternatives))  # wire, and the tests of the wire and the alternatives


def test_calling_the_reference_scores_zero(wire):
    cases = {
        "mean_difference_direction": ("mikit.probes.mean_difference_probe", lambda acts, labels: F.normalize(
            probes.mean_difference_probe(acts, labels).direction, dim=0)),
        "held_out_split": ("mikit.probes.train_test_split", lambda types, test_fraction, seed: probes.train_test_split(
            torch.zeros(len(types), dtype=torch.long), groups=types, test_fraction=test_fraction, seed=seed)),
        "control_labels": ("mikit.probes.control_labels",
                           lambda labels, types, seed: probes.control_labels(labels, types, seed=seed)),
        "last_token_residual": ("mikit.language_model.residual_stream", lambda model, prompts, layer: residual_stream(
            model, prompts, layers=[layer])[0, :, -1]),
        "steering_vector": ("mikit.steering.steering_vector", steering.steering_vector),
        "steered_logits": ("mikit.steering.add_vector", lambda model, prompts, vector, layer, scale: steering.add_vector(
            model, prompts, vector, layer, scale=scale)),
        "logit_lens": ("mikit.lens.logit_lens",
                       lambda model, prompts, layers: lens.logit_lens(model, prompts, layers=layers)),
        "head_indirect_effect": ("mikit.steering.indirect_effects", lambda model, prompts, answers, z, layer, head: (
            steering.indirect_effects(model, prompts, answers, z.repeat(model.config.num_attention_heads, 1)[None],
                                      layers=[layer])[0, head].item())),
    }
    assert set(cases) == set(checks.EXERCISES)
    for gid, (reference, cheat) in cases.items():
        with pytest.raises(CheckFailed, match=re.escape(f"calls the reference `{reference}`")):
            wire(gid, cheat)
