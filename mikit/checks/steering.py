"""Checks for notebook 08 (probes, steering, the logit lens and function vectors in nnsight).

The probing checks build activations and word types here. The nnsight checks run the student's function on two
tiny random language models, a GPT-2 and a Qwen2 (3 layers, d_model 32, a word-level tokenizer, left padding,
prompts of unequal length), so that code which hard-codes one architecture's module names, or reads the last
token at the wrong place, fails in the notebook and not only on SmolLM2. The references are `mikit.probes`,
`mikit.steering` and `mikit.lens`. Under the grader (`hidden_variant`) the models have 4 layers and other
weights, and the inputs have other values and sizes.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Callable

import torch
from torch import Tensor

from mikit import lens, probes, steering
from mikit.checks import (
    CheckFailed, Exercise, call_student, expect_close, expect_number, expect_tensor, passed,
    reject_known_mistakes, reveal, seeded, size,
)
from mikit.hidden import recipe
from mikit.language_model import module_at, n_layers, output_projection, residual_stream

KINDS = ("gpt2", "qwen2")  # every nnsight check runs on both


@recipe
@lru_cache(maxsize=8)
def tiny_language_model(kind: str, n_layer: int = 3, seed: int = 0):
    """A random GPT-2 or Qwen2 (d_model 32, 2 heads, vocabulary w0 … w63) in nnsight; the tokenizer pads on the left.

    The weights are drawn 10 times wider than Hugging Face's default (std 0.2, not 0.02): at the default, attention
    barely mixes positions, so steering every position or only the last moved the last logits by 2e-4 (inside
    the check's tolerance) and patching a head at every position or only the last moved its effect by 4e-6 (as
    much as the tolerance); now by 0.24 and 1.2e-4 at least, 10 times the tolerance or more."""
    import nnsight
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if kind == "gpt2":
            model = GPT2LMHeadModel(GPT2Config(n_layer=n_layer, n_embd=32, n_head=2, vocab_size=66, n_positions=64,
                                             initializer_range=0.2))
        elif kind == "qwen2":
            model = Qwen2ForCausalLM(Qwen2Config(num_hidden_layers=n_layer, hidden_size=32, intermediate_size=64,
                                                 num_attention_heads=2, num_key_value_heads=1, vocab_size=66,
                                                 initializer_range=0.2))
        else:
            raise ValueError(f"kind must be one of {KINDS}, not {kind!r}.")
    words = Tokenizer(models.WordLevel({f"w{i}": i for i in range(64)} | {"[UNK]": 64, "[PAD]": 65}, unk_token="[UNK]"))
    words.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=words, name_or_path=f"tiny-{kind}", eos_token="[UNK]",
                                        pad_token="[PAD]", padding_side="left")
    return nnsight.TransformersModel(model.eval(), tokenizer=tokenizer, task="text-generation")


def _models() -> list:
    """The check's tiny models: 3 layers in the notebook, 4 (other weights) under the grader. Layer 1, which the
    checks steer and patch, is then never the last: what it changes at one position reaches the last one."""
    seed = seeded(0).initial_seed()  # 0 in the notebook, the hidden seed's shift under the grader
    return [tiny_language_model(kind, 3 if not seed else 4, seed) for kind in KINDS]


def _prompts(generator: torch.Generator, n: int) -> list[str]:
    """`n` prompts of 2 to 6 random words: a batch that needs padding."""
    lengths = torch.randint(2, 7, (n,), generator=generator)
    lengths[0], lengths[-1] = 2, 6
    return [" ".join(f"w{int(i)}" for i in torch.randint(64, (int(length),), generator=generator)) for length in lengths]


def _underlying(envoy) -> torch.nn.Module:
    return envoy._module


# ---- part 1: probes -----------------------------------------------------------------------------------------


def mean_difference_direction(fn: Callable) -> None:
    """Exercise 1: the unit vector from the mean activation of class 0 to that of class 1."""
    __tracebackhide__ = True
    name = "mean_difference_direction"
    generator = seeded(1)
    n, d = size(40, 4), size(12)
    labels = torch.zeros(n, dtype=torch.long)
    labels[torch.randperm(n, generator=generator)[: n // 3]] = 1  # unequal classes: the overall mean is not halfway
    acts = torch.randn(n, d, generator=generator) + 2.0 + 1.5 * labels[:, None] * torch.randn(d, generator=generator)
    got = expect_tensor(call_student(fn, name, acts.clone(), labels.clone()), name, (d,), "d_model")
    means = [acts[labels == c].mean(0) for c in (0, 1)]
    want = torch.nn.functional.normalize(means[1] - means[0], dim=0)
    reject_known_mistakes(got, [
        (-want, "your direction points from class 1 to class 0: subtract the class-0 mean from the class-1 mean"),
        (means[1] - means[0], "normalise the difference to unit length (divide by its norm)"),
        (torch.nn.functional.normalize(means[1], dim=0), "subtract the class-0 mean: the direction is *between* the means"),
    ], want)
    expect_close(got, want, name, hint="normalise(mean of class-1 rows − mean of class-0 rows)")
    passed(name, reveal(f"cosine with the first feature axis {got[0]:.3f}"))


def _types(generator: torch.Generator, n_types: int, most: int = 4) -> list[str]:
    """One word type per row, each type on 1 to `most` rows, rows shuffled."""
    counts = torch.randint(1, most + 1, (n_types,), generator=generator)
    rows = torch.arange(n_types).repeat_interleave(counts)
    return [f"word{int(t)}" for t in rows[torch.randperm(len(rows), generator=generator)]]


def _as_indices(value, name: str, n_rows: int) -> Tensor:
    if isinstance(value, Tensor):
        if value.dtype.is_floating_point or value.dtype == torch.bool or value.dim() != 1:
            raise CheckFailed(f"`{name}` should return two 1-d tensors of row indices (integers), not a tensor of "
                              f"dtype {value.dtype} and shape {tuple(value.shape)}.")
        value = value.tolist()
    if not isinstance(value, (list, tuple)) or not all(isinstance(i, int) for i in value):
        raise CheckFailed(f"`{name}` should return two lists or 1-d tensors of row indices (integers).")
    if any(not 0 <= i < n_rows for i in value):
        raise CheckFailed(f"`{name}` returned a row index outside 0 … {n_rows - 1}.")
    return torch.tensor(value, dtype=torch.long)


def held_out_split(fn: Callable) -> None:
    """Exercise 2: train and test row indices with every word type wholly in one half, the test types drawn at random."""
    __tracebackhide__ = True
    name = "held_out_split"
    generator = seeded(2)
    n_types, fraction = size(40, 8), 0.25
    types = _types(generator, n_types)
    seed = int(torch.randint(1000, (), generator=generator))

    def split(s: int) -> tuple[Tensor, Tensor]:
        got = call_student(fn, name, list(types), fraction, s)
        if not isinstance(got, (tuple, list)) or len(got) != 2:
            raise CheckFailed(f"`{name}` should return a pair (train, test) of row indices.")
        return tuple(_as_indices(half, name, len(types)) for half in got)

    train, test = split(seed)
    both = torch.cat([train, test])
    if len(both) != len(types) or len(both.unique()) != len(types):
        raise CheckFailed(f"`{name}` should put each of the {len(types)} rows in exactly one half; yours "
                          f"{'repeats a row' if len(both.unique()) < len(both) else 'leaves rows out'}.")
    train_types, test_types = {types[i] for i in train.tolist()}, {types[i] for i in test.tolist()}
    shared = sorted(train_types & test_types)
    if shared:
        raise CheckFailed(f"word type {shared[0]!r} has rows in both halves ({len(shared)} types do): a probe can then "
                          "pass by memorising words it saw in training; choose test *types*, then take all their rows")
    want_types = round(fraction * n_types)
    if abs(len(test_types) - want_types) > 1:
        raise CheckFailed(f"your test half holds {reveal(f'{len(test_types)} of {n_types}', 'the wrong number of')} "
                          f"word types; it should hold a fraction test_fraction of the types ({reveal(str(want_types), 'rounded')}).")
    again = split(seed)
    if not torch.equal(again[1].sort().values, test.sort().values):
        raise CheckFailed(f"`{name}` gave two different splits for the same seed: draw with a generator seeded by `seed` "
                          "(torch.Generator().manual_seed(seed)), so that the split can be reproduced")
    other = [set(split(s)[1].tolist()) for s in (seed + 1, seed + 2)]
    if all(o == set(test.tolist()) for o in other):
        raise CheckFailed(f"`{name}` gives the same split for every seed: choose the test types at random, with the seed")
    passed(name, reveal(f"{len(test_types)} of {n_types} types held out, {len(test)} of {len(types)} rows"))


def control_labels(fn: Callable) -> None:
    """Exercise 3: Hewitt & Liang's control task: one random label per word type, drawn from the task's distribution."""
    __tracebackhide__ = True
    name = "control_labels"
    generator = seeded(3)
    n_types = size(2000, 200)
    types = _types(generator, n_types)
    type_ids = torch.tensor([int(t[4:]) for t in types])
    distribution = torch.tensor([0.6, 0.3, 0.1])
    labels = torch.multinomial(distribution, n_types, replacement=True, generator=generator)[type_ids]
    seed = int(torch.randint(1000, (), generator=generator))

    def control(s: int) -> Tensor:
        got = call_student(fn, name, labels.clone(), list(types), s)
        if not isinstance(got, Tensor) or got.dtype.is_floating_point or got.dtype == torch.bool:
            raise CheckFailed(f"`{name}` should return a tensor of integer labels, one per row.")
        got = expect_tensor(got, name, (len(types),), "row").long()
        if got.min() < 0 or got.max() > 2:
            raise CheckFailed(f"`{name}` returned labels outside the task's classes 0 … 2.")
        return got

    got = control(seed)
    per_type = torch.full((n_types,), -1, dtype=torch.long)
    per_type[type_ids] = got
    if not torch.equal(per_type[type_ids], got):
        raise CheckFailed("rows of the same word type got different control labels: draw one label per word *type* and "
                          "give it to every row of that type (that is what a probe can only memorise)")
    if (got == labels).float().mean() > 0.9:
        raise CheckFailed("your control labels are (almost) the task's labels: the control task must be random per type")
    if torch.equal(control(seed), got) is False:
        raise CheckFailed(f"`{name}` gave two different answers for the same seed: draw with a generator seeded by `seed`")
    if torch.equal(control(seed + 1), got):
        raise CheckFailed(f"`{name}` gives the same labels for every seed: draw them at random, with the seed")
    share = torch.bincount(per_type, minlength=3).double() / n_types
    task_share = torch.bincount(labels, minlength=3).double() / len(labels)
    if (share - task_share).abs().max() > 0.06:
        uniform = (share - 1 / 3).abs().max() < 0.06
        raise CheckFailed("draw each type's label from the task's label distribution (how often each label occurs in "
                          f"`labels`){', not uniformly' if uniform else ''}: your shares "
                          f"{reveal(', '.join(f'{s:.2f}' for s in share), 'are off')}"
                          f"{reveal(' against ' + ', '.join(f'{s:.2f}' for s in task_share))}")
    passed(name, reveal(f"label shares {', '.join(f'{s:.2f}' for s in share)} over {n_types} types"))


# ---- part 2: nnsight ----------------------------------------------------------------------------------------


def _last(model, prompts: list[str], hook: str) -> Tensor:
    """The output of the module at TransformerLens hook `hook` at the last token (for known mistakes)."""
    module = module_at(model, hook)
    with torch.no_grad(), model.trace(prompts):
        output = module.output
        value = (output[0] if isinstance(output, tuple) else output)[:, -1].save()
    return value


def last_token_residual(fn: Callable) -> None:
    """Exercise 4: the residual stream after `layer` at each prompt's last token, (batch, d_model), via nnsight."""
    __tracebackhide__ = True
    name = "last_token_residual"
    generator = seeded(4)
    for model in _models():
        prompts = _prompts(generator, size(4))
        layer = 1
        got = expect_tensor(call_student(fn, name, model, list(prompts), layer), name, (len(prompts), 32), "batch d_model")
        stream = residual_stream(model, prompts, layers=[layer - 1, layer])  # (2, batch, pos, d_model)
        want = stream[1, :, -1]
        counted = model.tokenizer(prompts, padding=True, return_tensors="pt")["attention_mask"].sum(1) - 1
        reject_known_mistakes(got, [
            (stream[1, :, 0], "you read the first position: prompts are padded on the left, so the last token of every "
                              "prompt sits at position -1"),
            (stream[1, torch.arange(len(prompts)), counted],
             "you found the last token as if the prompts were padded on the right (at the number of tokens − 1): they "
             "are padded on the left, so every prompt's last token sits at position -1"),
            (stream[0, :, -1], "you read the residual stream *before* the layer (its input, or the layer before): "
                               "take the block's output"),
            (_last(model, prompts, f"blocks.{layer}.hook_attn_out"), "you read the attention's output: take the whole "
                                                                    "block's output (the residual stream)"),
        ], want)
        expect_close(got, want, name, hint="module_at(model, f'blocks.{layer}.hook_resid_post').output (its first "
                                           "element if it is a tuple), at [:, -1]")
    passed(name, reveal("on a tiny GPT-2 and a tiny Qwen2"))


def steering_vector(fn: Callable) -> None:
    """Exercise 5: mean last-token residual of the positive prompts minus that of the negative prompts."""
    __tracebackhide__ = True
    name = "steering_vector"
    generator = seeded(5)
    for model in _models():
        positive, negative = _prompts(generator, size(3)), _prompts(generator, size(2))
        layer = 1
        got = expect_tensor(call_student(fn, name, model, list(positive), list(negative), layer), name, (32,), "d_model")
        want = steering.steering_vector(model, positive, negative, layer)
        stream = residual_stream(model, positive + negative, layers=[layer])[0, :, -1]
        pos, neg = stream[: len(positive)], stream[len(positive):]
        reject_known_mistakes(got, [
            (-want, "your vector points from positive to negative: positive mean minus negative mean"),
            (pos.sum(0) - neg.sum(0), "average over the prompts (mean, not sum): there are more positive than negative ones"),
            (torch.nn.functional.normalize(want, dim=0), "keep the vector's length: the scale in the next exercise "
                                                          "multiplies the raw mean difference"),
        ], want)
        expect_close(got, want, name, hint="last_token_residual(positive).mean(0) − last_token_residual(negative).mean(0)")
    passed(name)


def steered_logits(fn: Callable) -> None:
    """Exercise 6: the last position's logits with `scale * vector` added after `layer` at every position."""
    __tracebackhide__ = True
    name = "steered_logits"
    generator = seeded(6)
    for model in _models():
        prompts = _prompts(generator, size(3))
        layer = 1
        vector = 2 * torch.randn(32, generator=generator)
        scale = float(torch.empty(()).uniform_(2, 4, generator=generator))
        got = expect_tensor(call_student(fn, name, model, list(prompts), vector.clone(), layer, scale), name,
                            (len(prompts), model.config.vocab_size), "batch d_vocab")
        want = steering.add_vector(model, prompts, vector, layer, scale=scale)
        reject_known_mistakes(got, [
            (steering.add_vector(model, prompts, vector, layer, scale=scale, positions="last"),
             "you added the vector at the last position only: add it at every position"),
            (steering.add_vector(model, prompts, vector, layer - 1, scale=scale),
             "you added the vector before the layer: add it to the layer's output"),
            (steering.add_vector(model, prompts, vector, layer, scale=1.0), "multiply the vector by `scale`"),
            (steering.add_vector(model, prompts, vector / vector.norm(), layer, scale=scale),
             "add scale × the vector as given, not its unit vector"),
            (steering.add_vector(model, prompts, vector, layer, scale=0.0), "the logits are unsteered: set the block's "
                                                                            "output to output + scale · vector"),
            (steering.add_vector(model, prompts, vector, layer, scale=scale).softmax(-1),
             "return logits, not probabilities"),
        ], want, atol=1e-4)
        expect_close(got, want, name, hint="inside the trace set the block's output to output + scale * vector, then "
                                           "save model.output.logits[:, -1]")
    passed(name)


def logit_lens(fn: Callable) -> None:
    """Exercise 7: log-probabilities at the last position from the residual stream after each of `layers`."""
    __tracebackhide__ = True
    name = "logit_lens"
    generator = seeded(7)
    for model in _models():
        prompts = _prompts(generator, size(4))  # never as many as the layers: (batch, layer, …) fails on its shape
        layers = list(range(n_layers(model)))
        got = expect_tensor(call_student(fn, name, model, list(prompts), list(layers)), name,
                            (len(layers), len(prompts), model.config.vocab_size), "layer batch d_vocab")
        want = lens.logit_lens(model, prompts, layers=layers)
        stream = residual_stream(model, prompts, layers=layers)  # (layer, batch, pos, d_model)
        norm = _underlying(module_at(model, "ln_final.hook_normalized"))
        unembed = _underlying(module_at(model, "unembed"))
        with torch.no_grad():
            logits = unembed(norm(stream[:, :, -1]))
            raw = unembed(stream[:, :, -1])
            first = unembed(norm(stream[:, :, 0])).log_softmax(-1)
        reject_known_mistakes(got, [
            (raw.log_softmax(-1), "apply the model's final norm before the unembedding: the unembedding was trained on "
                                  "normalised residuals"),
            (logits, "return log-probabilities: log_softmax over the vocabulary"),
            (logits.softmax(-1), "return log-probabilities, not probabilities"),
            (first, "you read the first position: the prediction is at the last token, position -1"),
        ], want, atol=1e-4)
        expect_close(got, want, name, hint="for each layer: unembed(final_norm(resid[:, -1])).log_softmax(-1)")
    passed(name)


def _patched_probs(model, prompts: list[str], layer: int, head: int, z: Tensor, last_only: bool = True) -> Tensor:
    """P(every token) at the last position with `head`'s z set to `z` (at the last token, or everywhere)."""
    projection = output_projection(model, layer)
    with torch.no_grad(), model.trace(prompts):
        value = projection.input.clone()
        d_head = value.shape[-1] // model.config.num_attention_heads
        columns = slice(head * d_head, (head + 1) * d_head)
        if last_only:
            value[:, -1, columns] = z
        else:
            value[:, :, columns] = z
        projection.input = value
        probs = model.output.logits[:, -1].softmax(-1).save()
    return probs


def head_indirect_effect(fn: Callable) -> None:
    """Exercise 8: the mean rise in P(answer) when one head's z at the last token is replaced by `z`."""
    __tracebackhide__ = True
    name = "head_indirect_effect"
    generator = seeded(8)
    for model in _models():
        prompts = _prompts(generator, size(4))
        answers = torch.randint(64, (len(prompts),), generator=generator)
        layer, head = 1, int(torch.randint(2, (), generator=generator))
        z = 4 * torch.randn(16, generator=generator)
        got = torch.tensor(expect_number(call_student(fn, name, model, list(prompts), answers.clone(), z.clone(), layer,
                                                      head), name), dtype=torch.float64)
        rows = torch.arange(len(prompts))
        with torch.no_grad(), model.trace(prompts):
            clean = model.output.logits[:, -1].save()
        clean_p = clean.softmax(-1)[rows, answers]
        patched = _patched_probs(model, prompts, layer, head, z)
        want = (patched[rows, answers] - clean_p).mean().double()
        reject_known_mistakes(got, [
            (patched[rows, answers].mean().double(), "subtract the clean probability: the effect is the *rise* in "
                                                      "P(answer), patched minus clean"),
            ((_patched_probs(model, prompts, layer, head, z, last_only=False)[rows, answers] - clean_p).mean().double(),
             "you patched the head at every position: patch only the last token"),
            ((_patched_probs(model, prompts, layer, 1 - head, z)[rows, answers] - clean_p).mean().double(),
             "you patched the other head: head h's z is columns h·d_head … (h+1)·d_head − 1 of W_O's input"),
            ((patched[rows, answers].log() - clean_p.log()).mean().double(),
             "use probabilities, not log-probabilities"),
            ((patched[rows, answers] - clean_p).sum().double(), "average over the prompts (mean, not sum)"),
        ], want, atol=1e-6)
        expect_close(got, want, name, atol=1e-6, hint="mean over prompts of P(answer | head patched) − P(answer | clean)")
    passed(name, reveal(f"effect {got.item():+.4f} on the tiny Qwen2"))


EXERCISES = {
    "mean_difference_direction": Exercise(mean_difference_direction, ("mean_difference_direction",),
                                          forbidden=(probes.mean_difference_probe,)),
    "held_out_split": Exercise(held_out_split, ("held_out_split",), forbidden=(probes.train_test_split,)),
    "control_labels": Exercise(control_labels, ("control_labels",), forbidden=(probes.control_labels,)),
    "last_token_residual": Exercise(last_token_residual, ("last_token_residual",),
                                    forbidden=(residual_stream, steering.steering_vector)),
    "steering_vector": Exercise(steering_vector, ("steering_vector",), forbidden=(steering.steering_vector,)),
    "steered_logits": Exercise(steered_logits, ("steered_logits",), forbidden=(steering.add_vector,)),
    "logit_lens": Exercise(logit_lens, ("logit_lens",), forbidden=(lens.logit_lens,)),
    "head_indirect_effect": Exercise(head_indirect_effect, ("head_indirect_effect",),
                                     forbidden=(steering.indirect_effects,)),
}
