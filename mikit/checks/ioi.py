"""Checks for notebook 02 (indirect object identification): each compares a student function with `mikit.ioi`.

Checks that need the model build their own small dataset (8 prompts of 4 templates, so prompts
differ in length and right padding sits where a careless `[-1]` would read it). As hidden tests they
run on other prompts (another seed, 10-14 of them) in `tiny_lm`, a small random model with SmolLM2's
tokenizer (the names must be single tokens), except the circuit, which only the real LM can judge.
"""

from __future__ import annotations

from typing import Callable, Iterable

import torch
from torch import Tensor
from transformer_lens import ActivationCache, HookedTransformer, HookedTransformerConfig
from transformer_lens.utilities import get_act_name
from transformers import PreTrainedTokenizerBase

from mikit import core, patching
from mikit import ioi as ref
from mikit.checks import (
    CheckFailed, Exercise, call_student, expect_close, expect_number, expect_no_hooks_left, expect_tensor, hidden,
    hook_point, offline_model, passed, reveal, seeded, size,
)
from mikit.core import Head
from mikit.datasets.ioi import IOIDataset
from mikit.hidden import recipe

# Wang et al. 2022, GPT-2 small (layer, head).
PAPER_HEADS: dict[str, list[Head]] = {
    "name mover": [(9, 9), (9, 6), (10, 0)],
    "negative name mover": [(10, 7), (11, 10)],
    "S-inhibition": [(7, 3), (7, 9), (8, 6), (8, 10)],
    "induction": [(5, 5), (5, 8), (5, 9), (6, 9)],
    "duplicate token": [(0, 1), (0, 10), (3, 0)],
    "previous token": [(2, 2), (4, 11)],
}
MAX_CIRCUIT = 20
MIN_FAITHFULNESS = 0.6


def _hidden_seed(seed: int) -> int:
    """`seed` in the notebook; under the grader another one, drawn from the hidden seed."""
    return seed if not hidden() else int(torch.randint(0, 2**31 - 1, (1,), generator=seeded(seed)))


def _smollm2_tokenizer() -> PreTrainedTokenizerBase:
    """SmolLM2's tokenizer, without its weights: from the converted model's folder, else from the GGUF."""
    from transformers import AutoTokenizer

    from mikit.models import SMOLLM2_CACHE, cache_dir, smollm2_gguf

    folder = cache_dir() / SMOLLM2_CACHE
    if folder.exists():
        return AutoTokenizer.from_pretrained(folder)
    gguf = smollm2_gguf()
    return AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)


@recipe
def tiny_lm(seed: int = 0) -> HookedTransformer:
    """A 4-layer random model built like SmolLM2 (RMS norms folded, rotary, grouped-query attention) with SmolLM2's
    tokenizer, so that IOI prompts tokenize as in SmolLM2; it builds in about a second (mostly the tokenizer)."""
    tokenizer = _smollm2_tokenizer()
    cfg = HookedTransformerConfig(
        model_name="ioi-tiny", n_layers=4, d_model=64, n_heads=6, d_head=16, n_key_value_heads=2, d_mlp=128,
        d_vocab=len(tokenizer), n_ctx=128, act_fn="silu", gated_mlp=True, normalization_type="RMSPre",
        final_rms=True, positional_embedding_type="rotary", rotary_dim=16, default_prepend_bos=True,
        init_weights=False, device="cpu",
    )
    model = HookedTransformer(cfg, tokenizer=tokenizer)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # weights drawn from a private generator: the same model in the grader and the kernel
        for name, param in sorted(model.named_parameters()):
            if name.endswith("W_E"):
                std = 1.0
            elif name.endswith(("W_Q", "W_K")):
                # 3/sqrt(fan-in): sharp attention, so that a query patched by path patching moves the answer
                std = 3 * param.shape[-2] ** -0.5
            elif param.dim() >= 2:
                std = param.shape[-2] ** -0.5  # 1/sqrt(fan-in): every layer's output is of order one
            else:
                std = 0.1
            param.copy_(torch.randn(param.shape, generator=generator) * std)
    return model.eval()


@recipe
def ioi_data(model: HookedTransformer, n_prompts: int, seed: int) -> tuple[IOIDataset, IOIDataset]:
    """A check's prompts and their ABC corruption."""
    ds = IOIDataset(model, n_prompts=n_prompts, seed=seed)
    return ds, ds.corrupted("ABC")


@recipe
def ioi_cache(model: HookedTransformer, n_prompts: int, seed: int, corrupted: bool = False) -> ActivationCache:
    """The activation cache of `ioi_data(model, n_prompts, seed)`'s clean (or corrupted) prompts."""
    ds, abc = ioi_data(model, n_prompts, seed)
    # no_grad, not inference_mode: a student's code may use these tensors with autograd on.
    with torch.no_grad():
        _, cache = model.run_with_cache((abc if corrupted else ds).tokens)
    return cache


def _data_args(model: HookedTransformer) -> tuple[HookedTransformer, int, int]:
    """The arguments of `ioi_data` for a check: 8 prompts of seed 3 in the notebook, others under the grader."""
    return model, size(8, 2), _hidden_seed(3)


def _check_data(model: HookedTransformer) -> tuple[IOIDataset, IOIDataset]:
    return ioi_data(*_data_args(model))


def _caches(model: HookedTransformer) -> tuple[ActivationCache, ActivationCache]:
    return ioi_cache(*_data_args(model)), ioi_cache(*_data_args(model), corrupted=True)


def logit_diff(fn: Callable, model: HookedTransformer) -> None:
    """Exercise 1: logit of IO minus logit of S at END, per prompt."""
    __tracebackhide__ = True
    name = "logit_diff"
    ds, _ = _check_data(model)
    logits = torch.randn(len(ds), ds.tokens.shape[1], model.cfg.d_vocab, generator=seeded(0))
    got = expect_tensor(call_student(fn, name, logits, ds), name, (len(ds),), "batch")
    want = ref.logit_diff(logits, ds)
    batch = torch.arange(len(ds))
    at_last = logits[batch, -1, ds.io_tokens] - logits[batch, -1, ds.s_tokens]
    if torch.allclose(got, at_last, atol=1e-4) and not torch.allclose(got, want, atol=1e-4):
        raise CheckFailed(
            "you read the logits at the last position, but prompts are right-padded: read each prompt's "
            "END position, ds.word_idx['END']"
        )
    if torch.allclose(got, -want, atol=1e-4):
        raise CheckFailed("your sign is flipped: the logit difference is IO minus S (ds.io_tokens − ds.s_tokens)")
    expect_close(got, want, name, hint="take the raw logits (not probabilities) of ds.io_tokens and ds.s_tokens at END")
    passed(name)


def residual_stack_to_logit_diff(fn: Callable, model: HookedTransformer) -> None:
    """Exercise 2: direct effect of residual components on the logit difference."""
    __tracebackhide__ = True
    name = "residual_stack_to_logit_diff"
    ds, _ = _check_data(model)
    cache = ioi_cache(*_data_args(model))
    stack = ref.at_end(cache.accumulated_resid(layer=-1), ds)
    got = expect_tensor(call_student(fn, name, stack, cache, model, ds), name, (stack.shape[0],), "component")
    want = ref.residual_stack_to_logit_diff(stack, cache, model, ds)
    unscaled = torch.einsum("cbd,bd->c", stack, ref.logit_diff_directions(model, ds)) / len(ds)
    if torch.allclose(got, unscaled, rtol=1e-3, atol=1e-3):
        raise CheckFailed(
            "the logits see the residual stream after the final norm: divide each component by the norm's scale "
            "at END, cache['ln_final.hook_scale'] (the scale of the whole stream, not of each component)"
        )
    if torch.allclose(got, want * len(ds), rtol=1e-3, atol=1e-3):
        raise CheckFailed("you summed over prompts: return the mean over the batch")
    expect_close(
        got, want, name, atol=1e-3, rtol=1e-3,
        hint="divide by the final norm's scale at each prompt's END (not at position -1) and project onto "
        "W_U[:, io] − W_U[:, s]; the last component should equal the mean logit difference",
    )
    passed(name, reveal(f"accumulated residual stream ends at {want[-1]:.2f}, the model's logit difference"))


def attention_between(fn: Callable, model: HookedTransformer) -> None:
    """Exercise 3: mean attention from one word's position to another's."""
    __tracebackhide__ = True
    name = "attention_between"
    ds, _ = _check_data(model)
    pos, heads = ds.tokens.shape[1], size(5)
    scores = torch.randn(len(ds), heads, pos, pos, generator=seeded(1)) * 3
    pattern = scores.masked_fill(torch.ones(pos, pos).triu(1).bool(), float("-inf")).softmax(-1)
    for query, key in (("END", "IO"), ("END", "S2"), ("S2", "S1"), ("S2", "S1+1")):
        got = expect_tensor(call_student(fn, name, pattern, ds, query, key), name, (heads,), "head")
        want = ref.attention_between(pattern, ds, query, key)
        flipped = ref.attention_between(pattern.transpose(-1, -2), ds, query, key)
        if torch.allclose(got, flipped, atol=1e-5) and not torch.allclose(got, want, atol=1e-5):
            raise CheckFailed(
                "you swapped query and key: a pattern is indexed [batch, head, query_pos, key_pos], and the "
                f"query ({query}) is the position attention comes from"
            )
        expect_close(
            got, want, f"{name}({query!r}, {key!r})", atol=1e-5,
            hint="for each prompt take pattern[b, :, word_idx[query][b], word_idx[key][b]], then average over prompts",
        )
    passed(name)


def _as_classes(value: object, name: str) -> dict[str, set[Head]]:
    __tracebackhide__ = True
    if not isinstance(value, dict) or set(value) != set(ref.HEAD_CLASSES):
        raise CheckFailed(f"`{name}` should return a dict with the keys {list(ref.HEAD_CLASSES)}.")
    try:
        return {key: {(int(layer), int(head)) for layer, head in heads} for key, heads in value.items()}
    except (TypeError, ValueError):
        raise CheckFailed(f"`{name}` should map each class to a list of (layer, head) pairs.") from None


def classify_heads(fn: Callable, dla: Tensor, attn_io: Tensor, attn_s: Tensor, threshold: float) -> None:
    """Exercise 4: head classes from DLA sign and END attention."""
    __tracebackhide__ = True
    name = "classify_heads"
    # A synthetic case first: every class, a head under the threshold, heads attending to neither name.
    synthetic = (
        torch.tensor([[0.8, -0.6, 0.05, 0.4], [0.5, -0.9, -0.3, 0.25]]),
        torch.tensor([[0.7, 0.6, 0.9, 0.12], [0.1, 0.05, 0.0, 0.02]]),
        torch.tensor([[0.1, 0.2, 0.0, 0.08], [0.6, 0.5, 0.01, 0.03]]),
        0.2,
    )
    for args in (synthetic, (dla.float().cpu(), attn_io.float().cpu(), attn_s.float().cpu(), threshold)):
        got = _as_classes(call_student(fn, name, *args), name)
        want = {key: set(heads) for key, heads in ref.classify_heads(*args).items()}
        for key in ref.HEAD_CLASSES:
            if got[key] != want[key]:
                missing, extra = sorted(want[key] - got[key]), sorted(got[key] - want[key])
                detail = reveal(f": missing {missing}, should not contain {extra}") or " holds other heads than it should"
                raise CheckFailed(
                    f"class {key!r}{detail}; a head with |DLA| ≥ threshold "
                    f"is 'other' if it attends less than {ref.MIN_NAME_ATTENTION} to both names, else its class "
                    "follows the name it attends to more from END and the sign of its DLA"
                )
    passed(name)


def paper_comparison(found: dict[str, Iterable[Head]], model_name: str) -> None:
    """Compare the heads found in GPT-2 small with Wang et al.; on other models, list the classes found."""
    __tracebackhide__ = True
    found = {key: [tuple(head) for head in heads] for key, heads in found.items()}
    fmt = lambda heads: ", ".join(f"{layer}.{head}" for layer, head in heads) or "—"  # noqa: E731
    if model_name != "gpt2-small":
        for key, heads in found.items():
            print(f"{key:>20}: {fmt(heads)}")
        print(f"({model_name} has no published IOI circuit: these classes are your finding.)")
        return
    for key, paper in PAPER_HEADS.items():
        mine = found.get(key, [])
        print(f"{key:>20}: paper {fmt(paper):<22} yours {fmt(mine):<22} shared {len(set(paper) & set(mine))}")
    for key in ("name mover", "S-inhibition"):
        if len(set(PAPER_HEADS[key]) & set(found.get(key, []))) < 2:
            raise CheckFailed(
                f"your {key} heads {fmt(found.get(key, []))} share fewer than 2 with the paper's "
                f"{fmt(PAPER_HEADS[key])}: revisit the evidence for that class"
            )
    passed("paper_comparison", "your analysis recovers the paper's name movers and S-inhibition heads")


def patch_head(fn: Callable, model: HookedTransformer) -> None:
    """Exercise 5: one head's output patched into the corrupted run, end to end, as a normalised logit difference."""
    __tracebackhide__ = True
    name = "patch_head"
    ds, abc = _check_data(model)
    clean_cache, corrupted_cache = _caches(model)
    n_heads = model.cfg.n_heads
    group = n_heads // (model.cfg.n_key_value_heads or n_heads)
    mean_ld = lambda logits: ref.logit_diff(logits, ds).mean()  # noqa: E731
    with torch.no_grad():  # the logits of both runs, from their caches' final normalised residual streams
        clean_ld, corrupted_ld = (mean_ld(model.unembed(cache["ln_final.hook_normalized"])).item()
                                  for cache in (clean_cache, corrupted_cache))

    def patched_ld(layer: int, index: tuple) -> float:
        """The mean logit diff of the corrupted run with `hook_z[:, *index]` of `layer` from the clean run."""
        patches = [(get_act_name("z", layer), index)]
        return patching.run_patches(model, corrupted_cache, clean_cache, mean_ld, patches, progress=False).item()

    normalised = lambda ld: core.normalised_metric(ld, clean_ld, corrupted_ld)  # noqa: E731
    # The head that writes most directly into the answer, and another of its layer (whose head // group, in a
    # grouped-query model, is yet another head).
    layer, top = divmod(int(ref.head_dla(model, clean_cache, ds).abs().argmax()), n_heads)
    for head in (top, n_heads - 2 if top != n_heads - 2 else n_heads - 3):
        z_name = get_act_name("z", layer)
        before = clean_cache[z_name].clone()
        out = call_student(fn, name, model, ds, abc.tokens, clean_cache, layer, head, clean_ld, corrupted_ld)
        expect_no_hooks_left(model, name)
        if not torch.equal(clean_cache[z_name], before):
            raise CheckFailed("your function changed clean_cache: write into the activation the hook is given, never "
                              "into the clean cache, which every later patch reads")
        if isinstance(out, Tensor) and out.numel() > 1:
            raise CheckFailed(f"`{name}` returned a tensor of shape {tuple(out.shape)}: return one number, the mean "
                              "logit difference over prompts, normalised")
        got = expect_number(out, name)
        ld = patched_ld(layer, (slice(None), head))
        want = normalised(ld)
        if abs(got - want) <= 1e-4 * max(1.0, abs(want)):
            continue
        wrongs = [
            (0.0, "nothing changed: 0 is the corrupted run; either your hook changed nothing (it must copy head "
                  "`head`'s clean output into z in a run of the corrupted tokens), or it patched a position where both "
                  "runs are the same: hook_z is (batch, pos, head, d_head), the head is axis 2"),
            (ld, "you returned the mean logit difference itself: normalise it, so that the corrupted run's value "
                 "gives 0 and the clean run's 1"),
            (1 - want, "your normalisation is reversed: the corrupted run's logit difference maps to 0, the clean one to 1"),
            (want - 1, "your normalisation is shifted: subtract the corrupted run's logit difference, not the clean one's"),
            ((ld - corrupted_ld) / clean_ld, "divide by the gap between the clean and the corrupted logit differences, "
                                             "not by the clean one"),
            (normalised(ld * len(ds)), "you summed the logit differences over prompts: take their mean"),
            (normalised(patched_ld(layer, (slice(None), slice(None)))),
             "you patched every head of the layer: patch only head `head`, z[:, :, head]"),
            (normalised(patched_ld(layer, (head,))),
             "you indexed the position axis: hook_z is (batch, pos, head, d_head), the head is axis 2"),
        ]
        if group > 1 and head // group != head:
            wrongs.append((normalised(patched_ld(layer, (slice(None), head // group))),
                           "hook_z has one slice per query head: grouped-query attention shares keys and values, not "
                           "heads' outputs, so patch z[:, :, head] itself, not head // group"))
        for wrong, message in wrongs:
            if abs(got - wrong) <= 1e-4 * max(1.0, abs(wrong)) < abs(wrong - want):
                raise CheckFailed(message)
        raise CheckFailed(
            f"`{name}` gave {got:.4f}" + reveal(f" for L{layer}H{head}, expected {want:.4f}")
            + ": run the corrupted tokens with one hook on hook_z of `layer` that copies head `head`'s clean output "
            "(every prompt and position), then normalise the mean logit difference"
        )
    passed(name)


def path_patch_to_queries(
    fn: Callable, model: HookedTransformer, senders: list[Head], receivers: list[Head]
) -> None:
    """Exercise 6: path patching from sender heads to receiver heads' queries."""
    __tracebackhide__ = True
    name = "path_patch_to_queries"
    ds, _ = _check_data(model)
    clean, corrupted = _caches(model)
    args = (model, ds, clean, corrupted, [tuple(head) for head in senders], [tuple(head) for head in receivers])
    got = expect_number(call_student(fn, name, *args), name)
    want = ref.path_patch_to_queries(*args)
    # The tiny model of the hidden test computes to ~1e-6 but its path effects can be small: a tighter tolerance.
    if abs(got - want) > (1e-4 if hidden() else 1e-3) * max(1.0, abs(want)):
        raise CheckFailed(
            f"`{name}` gave a mean logit diff of {got:.4f}"
            + reveal(f" for senders {senders} → receivers' queries, expected {want:.4f}")
            + "; freeze every head at its clean output except the senders (corrupted), record the "
            "receivers' hook_q in that run, and patch only those heads' queries into a clean run"
        )
    passed(name)


def mean_ablate_outside(fn: Callable) -> None:
    """Exercise 7: mean-ablate every head of a layer that is not in the circuit."""
    __tracebackhide__ = True
    name = "mean_ablate_outside"
    layers, heads = size(3), size(4)
    shape = (size(3), size(5), heads, size(6))
    circuit = [(1, 0), (1, 3), (2, 1)]
    if hidden():  # layer 0 keeps no head; every other layer keeps one to heads - 1 of its heads
        circuit = []
        for layer in range(1, layers):
            order = torch.randperm(heads, generator=seeded(20 + layer)).tolist()
            circuit += [(layer, head) for head in sorted(order[: 1 + layer % (heads - 1)])]
    means = {
        f"blocks.{layer}.attn.hook_z": torch.randn(shape, generator=seeded(10 + layer)) for layer in range(layers)
    }
    for layer in range(layers):
        z = torch.randn(shape, generator=seeded(4 + layer))
        hook = hook_point(f"blocks.{layer}.attn.hook_z")
        edited = z.clone()
        out = call_student(fn, name, edited, hook, circuit, means)
        # A hook may edit z in place and return None, as TransformerLens allows.
        got = expect_tensor(edited if out is None else out, name, z.shape, "batch pos head d_head")
        want = ref.mean_ablate_outside(z.clone(), hook, circuit, means)
        kept = [head for l, head in circuit if l == layer]
        if kept and not torch.equal(got[:, :, kept], z[:, :, kept]):
            raise CheckFailed(
                f"in layer {layer} you changed circuit heads" + reveal(f" {kept}")
                + ": heads in the circuit keep their own output"
            )
        expect_close(
            got, want, f"{name} (layer {layer})", atol=0, rtol=0,
            hint="replace every head of this layer not in the circuit by means[hook.name] for that head; use "
            "hook.layer() to know which circuit heads belong to this layer",
        )
    passed(name)


def circuit(heads: object, model: HookedTransformer, n_prompts: int = 40, seed: int = 1) -> None:
    """Exercise 8: a circuit of at most 20 heads that keeps ≥ 60 % of the logit difference on unseen prompts."""
    __tracebackhide__ = True
    circuit_faithfulness(heads, model, n_prompts, seed)


def circuit_faithfulness(heads: object, model: HookedTransformer, n_prompts: int = 40, seed: int = 1) -> float:
    """`circuit`'s verdict, returning the fraction of the logit difference the circuit keeps (the check cell
    shows only the verdict: the fraction's last digits move with the machine)."""
    __tracebackhide__ = True
    try:
        heads = [(int(layer), int(head)) for layer, head in heads]
    except (TypeError, ValueError):
        raise CheckFailed("`circuit` should be a list of (layer, head) pairs of ints") from None
    bad = [h for h in heads if not (0 <= h[0] < model.cfg.n_layers and 0 <= h[1] < model.cfg.n_heads)]
    if bad:
        raise CheckFailed(
            f"{bad} are not heads of this model ({model.cfg.n_layers} layers × {model.cfg.n_heads} heads)"
        )
    heads = sorted(set(heads))
    if len(heads) > MAX_CIRCUIT:
        raise CheckFailed(f"your circuit has {len(heads)} heads; keep at most {MAX_CIRCUIT}")
    seed = _hidden_seed(seed)
    ds = IOIDataset(model, n_prompts=n_prompts, seed=seed)
    kept = ref.faithfulness(model, ds, heads, ds.corrupted("ABC"))
    if kept < MIN_FAITHFULNESS:
        raise CheckFailed(
            f"your {len(heads)}-head circuit keeps {kept:.0%} of the logit difference on unseen prompts"
            + reveal(f" (seed {seed})") + f"; at least {MIN_FAITHFULNESS:.0%} is needed: which class of heads is missing?"
        )
    passed("circuit", f"{len(heads)} heads keep {kept:.0%} of the logit difference on unseen prompts")
    return kept


def _tiny() -> tuple:
    return (tiny_lm(),)


def _classify_context() -> tuple:
    """Random evidence for a layer × head grid: some heads under the threshold, some attending to neither name."""
    shape = (size(6), size(5))
    dla = torch.randn(shape, generator=seeded(30))
    attn_io, attn_s = torch.rand((2, *shape), generator=seeded(31)) * 0.6
    quiet = torch.rand(shape, generator=seeded(32)) < 0.3
    attn_io, attn_s = attn_io.where(~quiet, attn_io * 0.15), attn_s.where(~quiet, attn_s * 0.15)
    threshold = 0.5
    # Heads exactly on each boundary the text states: |DLA| = threshold counts, attention of exactly
    # MIN_NAME_ATTENTION is not "less", and a tie between the names counts as IO.
    for (layer, head), (d, io, s) in {
        (0, 0): (threshold, 0.4, 0.2), (1, 0): (0.9, ref.MIN_NAME_ATTENTION, 0.05), (2, 0): (-0.8, 0.3, 0.3),
    }.items():
        dla[layer, head], attn_io[layer, head], attn_s[layer, head] = d, io, s
    return dla, attn_io, attn_s, threshold


def _path_patch_context() -> tuple:
    """The tiny model, a sender in each of layers 0 and 1, and receivers in layers 2 (one) and 3 (two).

    Layer 3's receivers make freezing the heads in between matter, and the receiver layers keep heads that
    are not receivers, so that patching a whole layer's queries is wrong.
    """
    model = tiny_lm()

    def heads(seed: int, k: int) -> list[int]:
        return sorted(torch.randperm(model.cfg.n_heads, generator=seeded(seed))[:k].tolist())

    senders = [(0, *heads(40, 1)), (1, *heads(41, 1))]
    receivers = [(2, *heads(42, 1))] + [(3, head) for head in heads(43, 2)]
    return model, senders, receivers


def _real_lm() -> tuple:
    """The real LM the notebook ran on: the circuit is a set of its heads."""
    from mikit.session import REAL_LM, choose_mode

    return (offline_model(REAL_LM[choose_mode()]),)


EXERCISES = {
    "logit_diff": Exercise(logit_diff, ("logit_diff",), _tiny, (ref.logit_diff, core.logit_diff)),
    "residual_stack_to_logit_diff": Exercise(
        residual_stack_to_logit_diff, ("residual_stack_to_logit_diff",), _tiny, (ref.residual_stack_to_logit_diff,)
    ),
    "attention_between": Exercise(attention_between, ("attention_between",), _tiny, (ref.attention_between,)),
    "classify_heads": Exercise(classify_heads, ("classify_heads",), _classify_context, (ref.classify_heads,)),
    "patch_head": Exercise(
        patch_head, ("patch_head",), _tiny,
        (ref.head_patching, ref.layer_patching, patching.run_patches, patching.copy_index,
         core.normalised_metric),
    ),
    "path_patch_to_queries": Exercise(
        path_patch_to_queries, ("path_patch_to_queries",), _path_patch_context,
        (ref.path_patch_to_queries, patching.path_patch),
    ),
    "mean_ablate_outside": Exercise(mean_ablate_outside, ("mean_ablate_outside",), forbidden=(ref.mean_ablate_outside,)),
    "circuit": Exercise(circuit, ("circuit",), _real_lm),
}
