"""A model with an induction circuit planted by training, so the true edges are known (ROC curves of ACDC, EAP, EAP-IG).

    model = load_planted()                    # 2 layers × 4 heads, attention only, 40 token ids + BOS
    tokens, predictable = induction_rows(32, torch.Generator().manual_seed(1))
    truth = Graph.of(model).mask(TRUTH)       # the 5 edges that carry the prompt's tokens
    python -m mikit.circuits train-planted    # retrain it (about 3.5 min on 2 cores)

Each training row is a random string of 4–12 tokens repeated to fill 24 positions after a BOS; the loss is
on the tokens a repeat predicts. In every training step the edges outside `CIRCUIT` carry their source's
output on *other* rows (resample ablation, `patched_logits`), so only the circuit's edges ever see the
row being predicted: the previous-token head a0.h0 and the induction head a1.h0, which reads a0.h0 in its
key. The other six heads learn nothing the output can use.

Two of the circuit's edges, the embeddings into a0.h0's query and key, give that head its positions
only, and positions are the same in every row: patching them changes nothing, so no patching method
can see them. `TRUTH` is the circuit without them.
"""

from __future__ import annotations

import platform
import time
from importlib.metadata import version
from pathlib import Path

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor
from tqdm.auto import tqdm
from transformer_lens import HookedTransformer, HookedTransformerConfig

from mikit.circuits.edges import patched_logits, run_with_edges, source_outputs
from mikit.circuits.graph import Graph
from mikit.paths import CIRCUITS_DIR
from mikit.storage import load_weights, read_config, save_folder

PLANTED_DIR = CIRCUITS_DIR / "planted-induction"
N_TOKENS, ROW, PERIODS = 40, 24, (4, 12)  # token ids 1..40 (0 is BOS); positions after the BOS; string lengths
CIRCUIT = [("input", "a0.h0<q>"), ("input", "a0.h0<k>"), ("input", "a0.h0<v>"), ("a0.h0", "a1.h0<k>"),
           ("input", "a1.h0<q>"), ("input", "a1.h0<v>"), ("a1.h0", "logits")]
TRUTH = [edge for edge in CIRCUIT if edge not in (("input", "a0.h0<q>"), ("input", "a0.h0<k>"))]
CONFIG = dict(n_layers=2, d_model=64, n_heads=4, d_head=16, n_ctx=ROW + 1, d_vocab=N_TOKENS + 1, attn_only=True,
              normalization_type="LNPre", positional_embedding_type="standard", initializer_range=0.02)


def induction_rows(n: int, generator: torch.Generator) -> tuple[Int[Tensor, "batch pos"], Bool[Tensor, "batch pos_minus_1"]]:
    """`n` rows [BOS, s, s, …] of a random string s of 4–12 token ids, and where the next token is predictable
    (from position `len(s)` on: mask[:, j] says whether logits[:, j] can predict tokens[:, j + 1])."""
    period = torch.randint(PERIODS[0], PERIODS[1] + 1, (n, 1), generator=generator)
    strings = torch.randint(1, N_TOKENS + 1, (n, PERIODS[1]), generator=generator)
    rows = strings.gather(1, torch.arange(ROW) % period)
    tokens = torch.cat([torch.zeros(n, 1, dtype=torch.long), rows], 1)
    return tokens, torch.arange(ROW) >= period


def repeat_loss(logits: Float[Tensor, "batch pos d_vocab"], tokens: Int[Tensor, "batch pos"], predictable: Tensor) -> Tensor:
    """Cross-entropy on the predictable next tokens."""
    logprobs = logits[:, :-1].log_softmax(-1).gather(-1, tokens[:, 1:, None])[..., 0]
    return -logprobs[predictable].mean()


def train_planted(out: Path | None = PLANTED_DIR, *, steps: int = 1500, batch: int = 64, lr: float = 3e-3,
                  weight_decay: float = 0.1, seed: int = 0, progress: bool = True) -> HookedTransformer:
    """Train the planted model (edges outside `CIRCUIT` resampled in every step); save it in `out` unless None."""
    start = time.perf_counter()
    model = HookedTransformer(HookedTransformerConfig(**CONFIG, seed=seed))
    graph, generator = Graph.of(model), torch.Generator().manual_seed(seed)
    circuit = graph.mask(CIRCUIT)[None]
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    for _ in tqdm(range(steps), desc="training the planted model", disable=not progress):
        (tokens, predictable), (others, _) = induction_rows(batch, generator), induction_rows(batch, generator)
        loss = repeat_loss(patched_logits(model, graph, tokens, source_outputs(model, graph, others), circuit),
                           tokens, predictable)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    model.eval()
    if out is not None:
        record = {"config": CONFIG, "recipe": {
            "steps": steps, "batch": batch, "lr": lr, "weight_decay": weight_decay, "seed": seed,
            "circuit": [f"{s}->{r}" for s, r in CIRCUIT], "final_train_loss": round(loss.item(), 4),
            "train_seconds": round(time.perf_counter() - start, 1), "torch_threads": torch.get_num_threads(),
            "versions": {"python": platform.python_version(), "torch": torch.__version__,
                         "transformer_lens": version("transformer_lens")}},
            "metrics": measure(model)}
        save_folder(model, out, record)
    return model


def measure(model: HookedTransformer, n: int = 64, seed: int = 1) -> dict[str, float]:
    """On `n` fresh rows, every edge patched alone from other rows: the loss of the model and of the circuit alone,
    the smallest |effect| on the loss of a `TRUTH` edge and the largest of any other edge."""
    generator = torch.Generator().manual_seed(seed)
    (tokens, predictable), (others, _) = induction_rows(n, generator), induction_rows(n, generator)
    graph = Graph.of(model)
    corrupted = source_outputs(model, graph, others)
    truth = graph.mask(TRUTH)
    sets = torch.cat([graph.mask()[None], graph.mask(CIRCUIT)[None], ~torch.eye(graph.n_edges, dtype=torch.bool)])
    losses = run_with_edges(model, graph, tokens, corrupted, sets,
                            lambda logits: repeat_loss(logits, tokens, predictable), chunk=32)
    effects = (losses[2:] - losses[0]).abs()
    return {"loss": round(losses[0].item(), 4), "circuit_loss": round(losses[1].item(), 4),
            "min_truth_effect": round(effects[truth].min().item(), 4),
            "max_other_effect": round(effects[~truth].max().item(), 4)}


def load_planted(device: str = "cpu", folder: Path = PLANTED_DIR) -> HookedTransformer:
    """The shipped planted model, in eval mode."""
    config = read_config(folder)["config"]
    model = HookedTransformer(HookedTransformerConfig(**config, device=device))
    model.load_state_dict(load_weights(folder, device))
    return model.eval()
