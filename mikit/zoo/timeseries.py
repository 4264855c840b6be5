"""The zoo's time-series classifier: a 2-layer HookedTransformer that reads a tokenised series and names its class.

    model = load_timeseries_classifier()         # eval mode, CPU; every TransformerLens hook is there
    ds = make_timeseries(256, seed=1)            # mikit.datasets.timeseries: the classes and why
    logits = model(ds.tokens())                  # (batch, pos, 4): the class logits, read at the last position
    predicted = logits[:, -1].argmax(-1)         # compare with ds.labels
    python -m mikit.zoo.timeseries train         # retrain it from scratch (7 min on one thread of a busy 2-core CPU)

Its input is [BOS, 48 value tokens, CLS] (values scaled and quantised into 32 bins, as Chronos does) and its
unembedding maps to the 4 classes instead of a vocabulary (`d_vocab_out=4`), so `model(tokens)[:, -1]` holds
the class logits. Only the last position is trained, on freshly drawn series each step. Time step t sits at
position t + 1 (`mikit.datasets.timeseries.step_position`); the decisive features' steps are known for every
series (`ds.decisive_steps`), so patching and attention can be checked against them (`mikit.timeseries`).
The folder records the test accuracy, overall and per class, on `evaluation_set()`.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
import warnings
from importlib.metadata import version
from pathlib import Path

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm
from transformer_lens import HookedTransformer, HookedTransformerConfig

from mikit.datasets.timeseries import CLASSES, D_VOCAB, LENGTH, TimeSeriesDataset, make_timeseries
from mikit.storage import is_saved, load_weights, read_config, save_folder
from mikit.zoo import zoo_dir

NAME = "timeseries-classifier"
CONFIG = {
    "model_name": NAME,
    "n_layers": 2,
    "d_model": 64,
    "n_heads": 4,
    "d_head": 16,
    "d_mlp": 256,
    "act_fn": "gelu",
    "n_ctx": LENGTH + 2,  # BOS, the steps, CLS
    "d_vocab": D_VOCAB,
    "d_vocab_out": len(CLASSES),
    # LNPre, as the zoo's other models: the LayerNorm weights are folded in, so W_Q, W_OV, W_U read as trained.
    "normalization_type": "LNPre",
    "positional_embedding_type": "standard",
    "initializer_range": 0.02,
}
DESCRIPTION = ("2-layer time-series classifier (4 classes, d_vocab_out=4) on mikit.datasets.timeseries, whose "
               "decisive features and their time steps are known: patching over time steps, attention saliency, SAEs.")
TRAINING = {"steps": 1200, "batch_size": 128, "lr": 2e-3, "weight_decay": 0.01, "warmup_steps": 100, "seed": 0}
TEST_SIZE, TEST_SEED = 2000, 10_000  # the fixed test set the recorded accuracy is measured on


def folder() -> Path:
    """Where the shipped classifier lives: `timeseries-classifier` in the zoo folder (`$MIKIT_ZOO_DIR` if set)."""
    return zoo_dir() / NAME


def build_timeseries_classifier(device: str = "cpu") -> HookedTransformer:
    """A freshly initialised classifier of the shipped shape (seed it with `torch.manual_seed` first)."""
    # TransformerLens 3.9 flags HookedTransformer itself as deprecated; students need not see that here.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="HookedTransformer is deprecated", category=DeprecationWarning)
        return HookedTransformer(HookedTransformerConfig(**CONFIG, device=device))


def load_timeseries_classifier(device: str | None = None, path: Path | None = None) -> HookedTransformer:
    """The shipped classifier (or the one saved in `path`), in eval mode on `device` (default CPU)."""
    path = folder() if path is None else Path(path)
    if not is_saved(path):
        raise FileNotFoundError(
            f"no time-series classifier in {path}; train it with `python -m mikit.zoo.timeseries train`."
        )
    device = device or "cpu"
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="HookedTransformer is deprecated", category=DeprecationWarning)
        model = HookedTransformer(HookedTransformerConfig(**read_config(path)["config"], device=device))
    model.load_state_dict(load_weights(path, device))
    return model.eval()


def evaluation_set() -> TimeSeriesDataset:
    """The fixed test set the recorded accuracy is measured on (never drawn in training: its seed is not used there)."""
    return make_timeseries(TEST_SIZE, seed=TEST_SEED)


def class_logits(
    model: HookedTransformer, tokens: Int[Tensor, "batch pos"], *, batch_size: int = 512
) -> Float[Tensor, "batch class"]:
    """The class logits at the last position, in batches, without gradients."""
    with torch.inference_mode():
        return torch.cat([model(tokens[i : i + batch_size].to(model.cfg.device))[:, -1].cpu()
                          for i in range(0, len(tokens), batch_size)])


def accuracy(model: HookedTransformer, ds: TimeSeriesDataset) -> dict:
    """Accuracy on `ds`, overall and per class (keyed by the names in CLASSES), rounded to 4 digits."""
    correct = class_logits(model, ds.tokens()).argmax(-1) == ds.labels
    per_class = {name: round(correct[ds.labels == c].float().mean().item(), 4) for c, name in enumerate(CLASSES)}
    return {"accuracy": round(correct.float().mean().item(), 4), "per_class_accuracy": per_class}


def _lr_factor(step: int, steps: int, warmup: int) -> float:
    """Linear warm-up, then a cosine decay to zero."""
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))


def train_timeseries_classifier(
    out: Path | None = None, *, steps: int = TRAINING["steps"], batch_size: int = TRAINING["batch_size"],
    lr: float = TRAINING["lr"], seed: int = TRAINING["seed"], progress: bool = True,
) -> HookedTransformer:
    """Train the classifier from scratch on fresh series every step; save it in `out` (with its test accuracy) if given.

    Cross-entropy on the class logits at the last position, AdamW, warm-up then cosine decay. Step i draws its
    batch with seed `seed * 1_000_003 + i`, so the data never repeats, and never meets the test set's seed
    (TEST_SEED) in fewer than 10,000 steps.
    """
    if steps < 1 or batch_size < 1:
        raise ValueError(f"steps and batch_size must be positive, not {steps} and {batch_size}.")
    start = time.perf_counter()
    torch.manual_seed(seed)
    model = build_timeseries_classifier()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.99), weight_decay=TRAINING["weight_decay"])
    warmup = TRAINING["warmup_steps"]
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: _lr_factor(step, steps, warmup))
    model.train()
    bar = tqdm(range(steps), desc=f"training {NAME}", disable=not progress)
    for step in bar:
        ds = make_timeseries(batch_size, seed=seed * 1_000_003 + step)
        loss = F.cross_entropy(model(ds.tokens())[:, -1], ds.labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        if step % 50 == 0 or step == steps - 1:
            bar.set_postfix(loss=f"{loss.item():.4f}")
    model.eval()
    if out is not None:
        record = {
            "config": CONFIG,
            "description": DESCRIPTION,
            "metrics": {**accuracy(model, evaluation_set()), "test_size": TEST_SIZE, "test_seed": TEST_SEED},
            "recipe": {
                **TRAINING, "steps": steps, "batch_size": batch_size, "lr": lr, "seed": seed,
                "data": "mikit.datasets.timeseries.make_timeseries(batch_size, seed=seed * 1_000_003 + step), "
                        "tokens() with 32 bins; loss on the last position only",
                "final_train_loss": round(loss.item(), 4),
                "train_seconds": round(time.perf_counter() - start, 1),
                "torch_threads": torch.get_num_threads(),
                "versions": {"python": platform.python_version(), "torch": torch.__version__,
                             "transformer_lens": version("transformer_lens")},
            },
        }
        save_folder(model, Path(out), record)
    return model


def main(argv: list[str] | None = None) -> int:
    """`python -m mikit.zoo.timeseries train [--out DIR] [--steps N] [--seed S] [--threads T]`, or `accuracy`."""
    parser = argparse.ArgumentParser(prog="python -m mikit.zoo.timeseries", description=f"the zoo's {NAME}.")
    commands = parser.add_subparsers(dest="command", required=True)
    trainer = commands.add_parser("train", help="train it from scratch and save it")
    trainer.add_argument("--out", type=Path, help="output folder (default: the zoo folder)")
    trainer.add_argument("--steps", type=int, default=TRAINING["steps"])
    trainer.add_argument("--batch-size", type=int, default=TRAINING["batch_size"])
    trainer.add_argument("--seed", type=int, default=TRAINING["seed"])
    trainer.add_argument("--threads", type=int, default=1)
    commands.add_parser("accuracy", help="measure the shipped model on the test set")
    args = parser.parse_args(argv)
    if args.command == "accuracy":
        print(json.dumps(accuracy(load_timeseries_classifier(), evaluation_set()), indent=2))
        return 0
    torch.set_num_threads(args.threads)  # recorded with the model; the timing in the docstring is for 1 thread
    out = args.out or folder()
    train_timeseries_classifier(out, steps=args.steps, batch_size=args.batch_size, seed=args.seed)
    record = read_config(out)
    print(f"wrote {out} in {record['recipe']['train_seconds']} s")
    print(json.dumps(record["metrics"], indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
