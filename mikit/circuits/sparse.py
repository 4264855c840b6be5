"""Sparse attention post-training: make a model's attention patterns sparse at (nearly) unchanged loss, then see
what that does to the circuits discovery finds (the recipe of Draye et al. 2025, scaled down to `attn-only-2l`).

    sparse = sparsify(load_model("attn-only-2l"), steps=400, tolerance=0.03)   # a post-trained copy
    attention_density(sparse, held_out_text())                                 # share of weights above 0.01
    clean, corrupted = induction_prompts(sparse, 16)
    edges_for_faithfulness(sparse, Graph.of(sparse), clean, corrupted, repeat_logprob(clean))
    load_sparse()                                                              # the shipped post-trained model
    python -m mikit.circuits train-sparse                                      # retrain it (~2 min on 1 core)

Draye, Lei, Pan, Posner & Schölkopf, "Sparse Attention Post-Training for Mechanistic Interpretability"
(arXiv:2512.05865, 2025) pose post-training as a constrained problem,

    minimise  E[number of attention edges]   subject to   CE(model) ≤ τ   (τ: the pretrained model's loss),

solved with the Lagrangian  S + λ (CE − τ)  and a multiplier that grows while the constraint is violated and
shrinks while it holds (GECO, Rezende & Viola 2018). Their attention layers gate each edge with a sample of
Bernoulli(σ(q·k)), so the expected edge count is a sum of sigmoids. Scaled down here, and kept a plain
HookedTransformer (so `Graph`, EAP and every hook still apply unchanged):

- the sparsity S is a smooth count of the softmax pattern's edges: the mean over heads and queries of the
  effective number of keys attended, exp(H½) = (Σ_k √a_k)² (the exponential of the Rényi entropy of order ½,
  which counts many small weights more than the Shannon entropy does), divided by the causal keys available;
- the constraint is on the cross-entropy of each training batch *relative to the original model's on that batch*:
  c = CE(model) − CE(original) − tolerance, which removes the batch-to-batch noise of the mixture;
- the multiplier follows c by dual ascent on an exponential moving average of it (GECO's smoothing):
  λ ← max(0, λ + rate · c_ema). GECO's multiplicative form λ ← λ · exp(rate · c_ema) oscillated over four
  orders of magnitude here (the loss answers λ only after Adam's momentum turns), and ended sparser by less.

The data are the zoo recipe's own (`mikit.zoo.recipes`: English windows and repeated random strings).

On attn-only-2l (400 steps, tolerance 0.03 nats, 83 s on one core) the share of attention weights above 0.01
falls from 15.0 % to 6.4 % while held-out English loss goes from 1.661 to 1.719 (the constraint holds on the
training mixture, three quarters repeated strings; English alone drifts about twice as far). The induction circuit does not
shrink much: EAP-IG needs 37 of 81 edges for 0.9 faithfulness before and 36 after (23 vs 36 on other prompts).
The graph is tiny and its induction circuit already a handful of edges; the count mostly measures how far down
the |score| ranking the last essential edge sits: the faithfulness curve jumps from below 0.8 to above 0.95
at one edge (seed 1). The paper's "up to 100× fewer edges" is for models with thousands of edges and MLPs.
"""

from __future__ import annotations

import copy
import platform
import time
from importlib.metadata import version
from pathlib import Path
from typing import Callable

import torch
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm
from transformer_lens import HookedTransformer

from mikit.circuits.edges import Metric, attribute, run_with_edges, source_outputs
from mikit.circuits.graph import Graph
from mikit.paths import CIRCUITS_DIR
from mikit.storage import read_config, save_folder

SPARSE_DIR = CIRCUITS_DIR / "sparse-attn-only-2l"
THRESHOLD = 0.01  # an attention weight above this counts as an edge in `attention_density`


def _patterns_hook(store: list[Tensor]) -> tuple[Callable[[str], bool], Callable]:
    def keep(pattern: Tensor, hook) -> None:
        store.append(pattern)
    return (lambda name: name.endswith("attn.hook_pattern")), keep


def _causal(n: int, device) -> Tensor:
    return torch.ones(n, n, dtype=torch.bool, device=device).tril()


def attention_density(
    model: HookedTransformer, tokens: Int[Tensor, "batch pos"], threshold: float = THRESHOLD,
) -> float:
    """The share of attention weights above `threshold`, over every layer, head and query and the keys each query
    may attend (causal positions only): 1 for uniform attention over ≤ 1/threshold keys, 1/keys for one-hot."""
    if not 0 < threshold < 1:
        raise ValueError(f"threshold must be between 0 and 1, not {threshold}.")
    patterns: list[Tensor] = []
    names, keep = _patterns_hook(patterns)
    with torch.inference_mode():
        model.run_with_hooks(tokens, fwd_hooks=[(names, keep)])
    causal = _causal(tokens.shape[1], tokens.device)
    above = sum(int((p > threshold)[..., causal].sum()) for p in patterns)
    return above / (len(patterns) * tokens.shape[0] * model.cfg.n_heads * int(causal.sum()))


def effective_keys(pattern: Float[Tensor, "batch head q_pos k_pos"]) -> Float[Tensor, ""]:
    """The smooth edge count: mean over rows of (Σ_k √a_k)² over the number of keys the row may attend."""
    n = pattern.shape[-1]
    # the masked (future) keys are exactly 0, where √ has no gradient: they count 0 and pass none (no clamp, which
    # would count a weight below the clamp as the clamp)
    visible = pattern > 0
    root = torch.where(visible, pattern, torch.ones_like(pattern)).sqrt() * visible  # exact √a where a > 0
    count = root.sum(-1).square()  # (batch, head, q): 1 for one-hot, the number of keys for uniform
    return (count / torch.arange(1, n + 1, device=pattern.device)).mean()


def lm_loss(model: HookedTransformer, tokens: Int[Tensor, "batch pos"]) -> float:
    """Mean next-token cross-entropy of `model` on `tokens`."""
    with torch.inference_mode():
        return model(tokens, return_type="loss").item()


def sparsify(
    model: HookedTransformer, *, steps: int = 400, tolerance: float = 0.03, lr: float = 5e-4, batch: int = 16,
    rate: float = 2.0, seed: int = 0, progress: bool = True, data: Callable[[torch.Generator], Tensor] | None = None,
    history: list[dict] | None = None,
) -> HookedTransformer:
    """A copy of `model` post-trained for `steps` steps to minimise `effective_keys` of its attention, subject to
    its cross-entropy staying within `tolerance` nats of `model`'s on each batch (GECO multiplier; see the
    module's docstring). `data(generator)` gives a batch of token rows (default: the zoo recipe's mixture).
    `history`, if given, gets one entry per step: loss increase, sparsity, multiplier."""
    if steps < 1:
        raise ValueError(f"steps must be at least 1, not {steps}.")
    if tolerance < 0:
        raise ValueError(f"tolerance is the loss increase allowed, in nats per token, so it cannot be negative "
                         f"({tolerance}).")
    data = data or zoo_batches(model, batch)
    original, student = model, copy.deepcopy(model).train()
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(student.parameters(), lr=lr)
    multiplier, constraint_ema = torch.tensor(0.5), None
    patterns: list[Tensor] = []
    names, keep = _patterns_hook(patterns)
    bar = tqdm(range(steps), desc="sparsifying attention", disable=not progress)
    for _ in bar:
        tokens = data(generator)
        with torch.inference_mode():
            reference = original(tokens, return_type="loss").item()
        patterns.clear()
        loss = student.run_with_hooks(tokens, return_type="loss", fwd_hooks=[(names, keep)])
        sparsity = torch.stack([effective_keys(p) for p in patterns]).mean()
        constraint = loss - reference - tolerance
        lagrangian = sparsity + multiplier * constraint
        optimizer.zero_grad(set_to_none=True)
        lagrangian.backward()
        optimizer.step()
        value = constraint.item()
        constraint_ema = value if constraint_ema is None else 0.9 * constraint_ema + 0.1 * value
        multiplier = (multiplier + rate * constraint_ema).clamp_min(0.0)
        if history is not None:
            history.append({"loss_increase": loss.item() - reference, "sparsity": sparsity.item(),
                            "multiplier": multiplier.item()})
        bar.set_postfix(dloss=f"{loss.item() - reference:+.3f}", keys=f"{sparsity.item():.3f}",
                        lam=f"{multiplier.item():.2f}")
    return student.eval()


def zoo_batches(model: HookedTransformer, batch: int) -> Callable[[torch.Generator], Tensor]:
    """Batches of the zoo recipe of `model` (its `cfg.model_name`): English windows and repeated random strings
    in the recipe's proportion, drawn by the recipe's own functions."""
    from mikit.zoo.recipes import RECIPES, _random_text_rows, _repeated_rows, corpus_tokens

    if model.cfg.model_name not in RECIPES:
        raise ValueError(f"{model.cfg.model_name!r} is not a zoo model, so there is no recipe to draw data from; "
                         "pass data=.")
    recipe = RECIPES[model.cfg.model_name]
    text, n_repeat = corpus_tokens()[0], round(batch * recipe.repeat_fraction)

    def draw(generator: torch.Generator) -> Tensor:
        return torch.cat([_random_text_rows(text, batch - n_repeat, recipe.seq_len, generator),
                          _repeated_rows(recipe, n_repeat, generator)]).to(model.cfg.device)
    return draw


def induction_prompts(
    model: HookedTransformer, n: int = 16, half: int = 20, seed: int = 0,
) -> tuple[Int[Tensor, "batch pos"], Int[Tensor, "batch pos"]]:
    """Clean `[BOS, r, r]` and corrupted `[BOS, r', r]` prompts, r and r' random strings of `half` tokens (no
    special ids): in the corrupted ones the second half repeats nothing, so induction has nothing to copy."""
    specials = set(model.tokenizer.all_special_ids) if model.tokenizer is not None else set()
    low = max([1, *(i + 1 for i in specials if i < model.cfg.d_vocab)])
    g = torch.Generator().manual_seed(seed)
    first, other = torch.randint(low, model.cfg.d_vocab, (2, n, half), generator=g)
    bos = torch.full((n, 1), model.tokenizer.bos_token_id if model.tokenizer is not None else 0)
    clean, corrupted = torch.cat([bos, first, first], 1), torch.cat([bos, other, first], 1)
    return clean.to(model.cfg.device), corrupted.to(model.cfg.device)


def repeat_logprob(clean: Int[Tensor, "batch pos"]) -> Metric:
    """The induction metric: mean log-probability of the repeated half's tokens of `clean` ([BOS, r, r])."""
    half = (clean.shape[1] - 1) // 2

    def metric(logits: Tensor) -> Tensor:
        return logits[:, half + 1:-1].log_softmax(-1).gather(-1, clean[:, half + 2:, None]).mean()
    return metric


def faithfulness_curve(
    model: HookedTransformer, graph: Graph, scores: Float[Tensor, "edge"], clean: Int[Tensor, "batch pos"],
    corrupted: Int[Tensor, "batch pos"], metric: Metric, *, chunk: int = 32,
) -> Float[Tensor, "n_edges_plus_1"]:
    """Normalised faithfulness (F(C) − F(∅)) / (F(M) − F(∅)) of the circuits made of the k edges of largest
    |score|, for k = 0 … all edges (the others patched from `corrupted`), all in batched passes."""
    order = torch.argsort(scores.abs(), descending=True, stable=True)
    ranks = torch.empty_like(order)
    ranks[order] = torch.arange(graph.n_edges)
    prefixes = ranks[None] < torch.arange(graph.n_edges + 1)[:, None]  # row k: the k best edges
    values = run_with_edges(model, graph, clean, source_outputs(model, graph, corrupted), prefixes, metric, chunk=chunk)
    if values[-1] == values[0]:
        raise ValueError("the metric is the same with every edge patched as with none, so no share of it can be kept.")
    return (values - values[0]) / (values[-1] - values[0])


def edges_for_faithfulness(
    model: HookedTransformer, graph: Graph, clean: Int[Tensor, "batch pos"], corrupted: Int[Tensor, "batch pos"],
    metric: Metric, target: float = 0.9, steps: int = 10,
) -> int:
    """The fewest edges, taken in order of |EAP-IG score| (`steps`; 1 for EAP), whose circuit reaches a normalised
    faithfulness of `target` on the task (0 = every edge patched, 1 = the model)."""
    if not 0 < target <= 1:
        raise ValueError(f"target is a share of the model's metric, between 0 and 1, not {target}.")
    scores = attribute(model, graph, clean, corrupted, metric, steps=steps)
    curve = faithfulness_curve(model, graph, scores, clean, corrupted, metric)
    return int((curve >= target).nonzero()[0])


def measure(model: HookedTransformer, *, target: float = 0.9, seed: int = 1) -> dict[str, float]:
    """On held-out text (16 windows of 128 tokens): attention density and loss; on 16 induction prompts of 2 × 20
    random tokens: the induction metric and the edges EAP-IG (10 steps) needs for `target` faithfulness."""
    from mikit.zoo.recipes import held_out_text

    text = held_out_text(batch=16, seq_len=model.cfg.n_ctx).to(model.cfg.device)
    clean, corrupted = induction_prompts(model, 16, 20, seed)
    metric, graph = repeat_logprob(clean), Graph.of(model)
    with torch.inference_mode():
        induction = metric(model(clean)).item()
    return {"density": round(attention_density(model, text), 4), "text_loss": round(lm_loss(model, text), 4),
            "repeat_logprob": round(induction, 4), "threshold": THRESHOLD, "faithfulness_target": target,
            "edges_for_faithfulness": edges_for_faithfulness(model, graph, clean, corrupted, metric, target),
            "n_edges": graph.n_edges}


def train_sparse(out: Path | None = SPARSE_DIR, *, steps: int = 400, tolerance: float = 0.03, lr: float = 5e-4,
                 batch: int = 16, rate: float = 2.0, seed: int = 0, progress: bool = True) -> HookedTransformer:
    """Post-train the zoo's attn-only-2l with `sparsify`; save it with its recipe and before/after metrics in `out`
    (safetensors + JSON + the character tokenizer) unless None."""
    from mikit.models import load_model
    from mikit.zoo import model_folder
    from mikit.zoo.tokenizer import build_char_tokenizer

    original = load_model("attn-only-2l", "cpu")
    start = time.perf_counter()
    model = sparsify(original, steps=steps, tolerance=tolerance, lr=lr, batch=batch, rate=rate, seed=seed,
                     progress=progress)
    seconds = time.perf_counter() - start
    if out is not None:
        record = {"config": read_config(model_folder("attn-only-2l"))["config"], "recipe": {
            "base": "attn-only-2l", "steps": steps, "tolerance": tolerance, "lr": lr, "batch": batch, "rate": rate,
            "seed": seed, "optimizer": "Adam", "data": "the attn-only-2l zoo recipe's mixture (mikit.zoo.recipes)",
            "objective": "mean effective keys (Σ√a)² / causal keys, subject to CE − CE(original) ≤ tolerance "
                         "per batch; "
                         "multiplier λ ← max(0, λ + rate · EMA of the violation), λ₀ = 0.5",
            "train_seconds": round(seconds, 1), "torch_threads": torch.get_num_threads(),
            "versions": {"python": platform.python_version(), "torch": torch.__version__,
                         "transformer_lens": version("transformer_lens")}},
            "metrics": {"before": measure(original), "after": measure(model)}}
        build_char_tokenizer(model_max_length=model.cfg.n_ctx).save_pretrained(str(out))
        save_folder(model, out, record)
    return model


def load_sparse(device: str = "cpu", folder: Path = SPARSE_DIR) -> HookedTransformer:
    """The shipped sparse-attention attn-only-2l, in eval mode, character tokenizer attached."""
    from mikit.zoo import load_model_folder

    return load_model_folder(folder, device)
