"""Max-of-K (Gross et al. 2024, "Compact proofs of model performance via mechanistic interpretability").

    model = mikit.load_model("max-of-4")          # 1 layer, 1 head, attention only, no LayerNorm; d_vocab 64, K = 4
    model = train_max_of_k(16, seed=1)            # or train one (d_vocab 16: 8 s on a CPU thread)
    tokens, labels = generate_max_of_k(8)         # (8, K) random tokens; labels: each row's largest token
    brute_force_accuracy(model)                   # (fraction, count) correct over all d_vocab**K inputs
    cubic_proof(model)                            # Bound(accuracy, cost, certified): a proven lower bound
    quadratic_proof(model)                        # a looser bound that costs less to check
    circuits(model).scores                        # the QK circuit, EQKE with positions: (q_token, k_token, k_pos)

The model reads K tokens and must put the largest one on top of the logits at the last position. A proof
certifies a set of inputs correct from the circuits alone: the logits at the last position are the direct path
(`circuits(model).direct`) plus an attention-weighted average of each key's OV output (`.ovu`), with
weights from the QK scores (`.scores`). Grouping inputs by their largest token m, the query (last) token t and
(for the cubic proof) the largest other token c, a worst case over each group bounds the attention on the copies
of m from below and every logit gap from below; if every gap stays positive, the whole group is correct. The
bound is the certified share of all inputs, and the cost counts the floating-point operations the check took:
compare both with brute force, which runs the model on every input.

The shipped max-of-4: brute force 0.99976 (859 GFLOP, 95 s); cubic proof 0.955 (74 MFLOP); quadratic 0.267
(7 MFLOP). max-of-4-small (d_vocab 16) runs all its 65,536 inputs in under a second, for tests and exercises.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm
from transformer_lens import HookedTransformer

from mikit.zoo import build_from_config

D_VOCAB, K = 64, 4
TRAINING = {"steps": 4000, "batch_size": 512, "lr": 1e-3, "weight_decay": 0.1}
# A gap counts as positive only above this, so float32 rounding in the model cannot flip a certified argmax.
MARGIN_SLACK = 1e-3


def max_of_k_config(d_vocab: int = D_VOCAB, k: int = K, d_model: int = 32) -> dict:
    """The `HookedTransformerConfig` arguments: 1 attention-only layer, 1 head, no LayerNorm, learned positions."""
    return {
        "model_name": f"max-of-{k}",
        "n_layers": 1,
        "d_model": d_model,
        "n_heads": 1,
        "d_head": d_model,
        "n_ctx": k,
        "d_vocab": d_vocab,
        "attn_only": True,
        "normalization_type": None,
        "positional_embedding_type": "standard",
    }


def generate_max_of_k(
    batch: int, d_vocab: int = D_VOCAB, k: int = K, *, generator: torch.Generator | None = None,
) -> tuple[Int[Tensor, "batch pos"], Int[Tensor, "batch"]]:
    """`batch` sequences of `k` uniform random tokens, and the largest token of each (the label)."""
    if batch < 1 or d_vocab < 2 or k < 2:
        raise ValueError(f"generate_max_of_k needs batch >= 1, d_vocab >= 2 and k >= 2; got {batch}, {d_vocab}, {k}.")
    tokens = torch.randint(0, d_vocab, (batch, k), generator=generator)
    return tokens, tokens.max(dim=1).values


def train_max_of_k(
    d_vocab: int = D_VOCAB, k: int = K, *, d_model: int = 32, steps: int = TRAINING["steps"],
    batch_size: int = TRAINING["batch_size"], lr: float = TRAINING["lr"], seed: int = 0, progress: bool = True,
) -> HookedTransformer:
    """Train from scratch on fresh random sequences: cross-entropy on the last position's logits, AdamW."""
    if steps < 1 or batch_size < 1:
        raise ValueError(f"steps and batch_size must be positive; got {steps} and {batch_size}.")
    torch.manual_seed(seed)
    model = build_from_config(max_of_k_config(d_vocab, k, d_model))
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=TRAINING["weight_decay"])
    model.train()
    bar = tqdm(range(steps), desc=f"training max-of-{k}", disable=not progress)
    for step in bar:
        tokens, labels = generate_max_of_k(batch_size, d_vocab, k, generator=generator)
        loss = F.cross_entropy(model(tokens)[:, -1], labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step % 100 == 0 or step == steps - 1:
            bar.set_postfix(loss=f"{loss.item():.4f}")
    return model.eval()


def all_sequences(d_vocab: int, k: int, start: int = 0, stop: int | None = None) -> Int[Tensor, "batch pos"]:
    """Inputs number `start` to `stop` (default: the last) of all d_vocab**k, in lexicographic order."""
    index = torch.arange(start, d_vocab**k if stop is None else stop)
    powers = d_vocab ** torch.arange(k - 1, -1, -1)
    return index[:, None] // powers % d_vocab


def brute_force_accuracy(model: HookedTransformer, *, batch_size: int = 2**16) -> tuple[float, int]:
    """The exact accuracy over every possible input: (fraction correct, number correct) of d_vocab**n_ctx."""
    d_vocab, k = model.cfg.d_vocab, model.cfg.n_ctx
    total, correct = d_vocab**k, 0
    with torch.inference_mode():
        for start in range(0, total, batch_size):
            tokens = all_sequences(d_vocab, k, start, min(start + batch_size, total)).to(model.cfg.device)
            # Only the last position's logits count: unembed it alone (most of the work on all positions).
            final = model(tokens, stop_at_layer=model.cfg.n_layers)[:, -1:]
            if hasattr(model, "ln_final"):
                final = model.ln_final(final)
            logits = model.unembed(final)[:, 0]
            correct += int((logits.argmax(-1) == tokens.max(dim=1).values).sum())
    return correct / total, correct


@dataclass
class Circuits:
    """The model's computation at the last position, as tables (float64), with the positions folded in.

    logits(x) = direct[x_last] + Σ_i attention_i · ovu[x_i, i], attention = softmax_i scores[x_last, x_i, i].
    """

    scores: Float[Tensor, "q_token k_token k_pos"]  # the QK circuit (EQKE plus the positional terms), already scaled
    ovu: Float[Tensor, "k_token k_pos d_vocab_out"]  # the OV circuit (EVOU plus PVOU), biases included
    direct: Float[Tensor, "q_token d_vocab_out"]  # the residual path to the unembedding, unembedding bias included
    flops: int  # the multiply-adds that computed the tables, counted twice (a multiply and an add)


def circuits(model: HookedTransformer) -> Circuits:
    """The tables of a 1-layer, 1-head, attention-only model without LayerNorm (see `Circuits`)."""
    cfg = model.cfg
    if not (cfg.n_layers == 1 and cfg.n_heads == 1 and cfg.attn_only and cfg.normalization_type is None):
        raise ValueError(
            "circuits needs a 1-layer, 1-head, attention-only model without LayerNorm, as max_of_k_config builds."
        )
    attn = model.blocks[0].attn
    W_E, W_pos, W_U = (w.detach().double() for w in (model.W_E, model.W_pos, model.W_U))
    W_Q, W_K, W_V, W_O = (w.detach().double()[0] for w in (attn.W_Q, attn.W_K, attn.W_V, attn.W_O))
    b_Q, b_K, b_V = (b.detach().double()[0] for b in (attn.b_Q, attn.b_K, attn.b_V))
    b_O, b_U = attn.b_O.detach().double(), model.b_U.detach().double()
    V, k, d, d_head = cfg.d_vocab, cfg.n_ctx, cfg.d_model, cfg.d_head
    tokens_at = W_E[:, None, :] + W_pos[None, :, :]  # (token, pos, d_model): every residual a key can hold
    query = tokens_at[:, -1] @ W_Q + b_Q  # the query is always at the last position
    keys = tokens_at @ W_K + b_K
    scores = torch.einsum("qh,kph->qkp", query, keys) / float(attn.attn_scale)
    # The attention weights sum to 1, so b_V W_O and b_O add the same vector to every key's output.
    ovu = ((tokens_at @ W_V + b_V) @ W_O + b_O) @ W_U
    direct = tokens_at[:, -1] @ W_U + b_U
    flops = 2 * (V * d * d_head + V * k * d * d_head + V * V * k * d_head + V * k * d * d_head
                 + V * k * d_head * d + V * k * d * W_U.shape[1] + V * d * W_U.shape[1])
    return Circuits(scores, ovu, direct, flops)


@dataclass
class Bound:
    """A proven lower bound on the accuracy over all inputs, and what it cost to check."""

    accuracy: float  # certified inputs / all d_vocab**n_ctx inputs
    cost: int  # floating-point operations, the circuit tables included
    certified: int  # how many inputs the proof certifies correct

    def __iter__(self):  # so that `bound, cost = cubic_proof(model)` works
        return iter((self.accuracy, self.cost))


def _inputs_per_group(m: int, n_others: int, largest_other: Int[Tensor, "other"]) -> Int[Tensor, "q_token other"]:
    """How many inputs have largest token m, query (last) token t ≤ m, and every other token of the first
    `n_others` positions ≤ `largest_other` (cumulative over it; -1 means all of them are m)."""
    below = largest_other.double() + 1  # the tokens 0..c a position may hold besides m
    with_m = (below + 1) ** n_others  # each position holds m or a token ≤ c
    at_least_one_m = with_m - below**n_others  # needed when the query is not m itself
    counts = at_least_one_m.expand(m + 1, -1).clone()
    counts[m] = with_m
    return counts.round().long()


def attention_lower_bound(score_max: Float[Tensor, "*group"], other_scores: Float[Tensor, "*group k_pos"]) -> Float[Tensor, "*group"]:
    """The least softmax weight the copies of the largest token can get: 1 / (1 + Σ_j exp(other_j - score_max)).

    `score_max` bounds one copy's score from below, `other_scores` each other key's score from above (-inf for a
    key that is absent). More copies, lower other scores or a higher copy score only raise the weight. Written as
    differences of scores, it cannot overflow where exp(score) would.
    """
    return 1 / (1 + (other_scores - score_max[..., None]).exp().sum(-1))


def worst_case_margin(
    attention: Float[Tensor, "*group"], direct_gap: Float[Tensor, "*group d_vocab_out"],
    gap_max: Float[Tensor, "*group d_vocab_out"], gap_rest: Float[Tensor, "*group d_vocab_out"],
) -> Float[Tensor, "*group d_vocab_out"]:
    """The least logit gap (largest token minus output y) over a group of inputs, for every y.

    The gap is the direct path's `direct_gap` plus the attention-weighted average of the keys' OV gaps: at least
    `gap_max` from the copies of the largest token, `gap_rest` from the other keys (+inf where there are none).
    The average is linear in the attention a on the copies, which lies between `attention` and 1, so its least
    value sits at one of the two ends.
    """
    a = attention[..., None]
    at_least = torch.where(torch.isinf(gap_rest), gap_max, a * gap_max + (1 - a) * gap_rest)
    return direct_gap + torch.minimum(at_least, gap_max)


def _certify_max(tables: Circuits, m: int, largest_other: Int[Tensor, "other"]) -> tuple[Tensor, int]:
    """Which (query t ≤ m, largest other c) groups of inputs with largest token m are proven correct, and the flops.

    A group allows, besides the copies of m, any tokens ≤ c in the first K - 1 positions (so a proof that uses
    c = m - 1 alone covers every input whose maximum is m). The worst case takes the lowest score any copy of m
    can get, the highest any other key can, and the fewest copies of m (attention on m only grows with more), then
    the lowest OV gap per output y among the copies of m and among the other keys; the attention-weighted average
    of the gaps is linear in the attention on m, so its minimum sits at the lowest attention or at 1.
    """
    scores, ovu, direct = tables.scores[: m + 1, : m + 1], tables.ovu[: m + 1], tables.direct[: m + 1]
    k = scores.shape[-1]
    n_out = ovu.shape[-1]
    gaps = ovu[..., m : m + 1] - ovu  # (key, pos, y): how much each key's output favours m over y
    gap_m = gaps[m, :-1].min(0).values  # (y,): the worst copy of m in the first positions
    # The other keys (tokens < m in the first positions) and their worst case, cumulative over c; row c + 1 holds
    # c's, and row 0 the case c = -1, where no key but the query is other than m.
    gap_others = torch.cat([torch.full((1, n_out), torch.inf, dtype=gaps.dtype), gaps[:m, :-1].amin(1)])
    score_others = torch.cat([torch.full((m + 1, 1), -torch.inf, dtype=gaps.dtype), scores[:, :m, :-1].amax(-1)], dim=1)
    gap_rest = gap_others.cummin(0).values[largest_other + 1][None]  # (1, c, y)
    score_rest = score_others.cummax(1).values[:, largest_other + 1]  # (t, c)
    t = torch.arange(m + 1)
    score_query, gap_query = scores[t, t, -1], gaps[t, -1]  # the query key, known exactly: (t,), (t, y)
    score_m = scores[:, m, :-1].amin(-1)  # (t,)

    # The query is not m (t < m): at least one copy of m, up to K - 2 other keys, and the query key.
    score_m, score_query = score_m[:, None], score_query[:, None]
    attn_not_m = attention_lower_bound(score_m, torch.stack(
        [score_rest] * (k - 2) + [score_query.expand_as(score_rest)], dim=-1))  # (t, c)
    worst_m = gap_m.expand(m + 1, 1, n_out)
    worst_rest = torch.minimum(gap_rest, gap_query[:, None])  # (t, c, y)
    # The query is m: the query key is a copy of m, and up to K - 1 other keys.
    attn_is_m = attention_lower_bound(score_query, torch.stack([score_rest] * (k - 1), dim=-1))
    attention = attn_not_m.clone()
    attention[m] = attn_is_m[m]
    worst_m = worst_m.clone()
    worst_m[m] = torch.minimum(gap_m, gap_query[m])
    worst_rest = worst_rest.clone()
    worst_rest[m] = gap_rest[0]

    margin = worst_case_margin(attention, (direct[:, m : m + 1] - direct)[:, None, :], worst_m, worst_rest)  # (t, c, y)
    margin[..., m] = torch.inf  # y = m is the answer itself
    proven = margin.amin(-1) > MARGIN_SLACK  # (t, c)
    flops = gaps.numel() + 2 * scores[:, :m].numel() + 12 * margin.numel()
    return proven, flops


def _proof(model: HookedTransformer, *, per_largest_other: bool) -> Bound:
    """Certify every group of inputs (see `_certify_max`), by (m, t, c) or by (m, t) with c = m - 1."""
    tables = circuits(model)
    V, k = model.cfg.d_vocab, model.cfg.n_ctx
    certified, flops = 0, tables.flops
    for m in range(V):
        cs = torch.arange(-1, m) if per_largest_other else torch.tensor([m - 1])
        proven, cost = _certify_max(tables, m, cs)
        counts = _inputs_per_group(m, k - 1, cs)
        if per_largest_other:  # the cubic proof's groups are "largest other exactly c": differences of the cumulative counts
            counts = torch.diff(counts, dim=1, prepend=torch.zeros(m + 1, 1, dtype=torch.long))
        certified += int(counts[proven].sum())
        flops += cost
    return Bound(certified / V**k, flops, certified)


def cubic_proof(model: HookedTransformer) -> Bound:
    """A lower bound on the accuracy from worst cases per (largest token, query token, largest other token).

    About d_vocab**3 groups, each checked against every output: d_vocab**4 operations, against brute force's
    d_vocab**n_ctx forward passes.
    """
    return _proof(model, per_largest_other=True)


def quadratic_proof(model: HookedTransformer) -> Bound:
    """A looser, cheaper lower bound: worst cases per (largest token, query token), any smaller tokens elsewhere.

    About d_vocab**2 groups: d_vocab**3 operations. It fails a whole group when a single smaller token at
    any position could attract enough attention, so it certifies less than `cubic_proof`.
    """
    return _proof(model, per_largest_other=False)


def brute_force_flops(model: HookedTransformer) -> int:
    """Floating-point operations of running the model on all d_vocab**n_ctx inputs (the matrix products only)."""
    cfg = model.cfg
    per_position = 2 * (3 * cfg.d_model * cfg.d_head + cfg.d_head * cfg.d_model + cfg.d_model * cfg.d_vocab_out)
    per_input = cfg.n_ctx * per_position + 4 * cfg.n_ctx**2 * cfg.d_head
    return cfg.d_vocab**cfg.n_ctx * per_input


__all__ = [
    "Bound",
    "Circuits",
    "D_VOCAB",
    "K",
    "all_sequences",
    "attention_lower_bound",
    "brute_force_accuracy",
    "brute_force_flops",
    "circuits",
    "cubic_proof",
    "generate_max_of_k",
    "max_of_k_config",
    "quadratic_proof",
    "train_max_of_k",
    "worst_case_margin",
]
