"""The toy tasks' zoo models: how `python -m mikit.zoo train NAME` trains, measures and saves them.

    python -m mikit.zoo train max-of-4                          # 25 s, then 95 s of brute force over all 64**4 inputs
    python -m mikit.zoo train max-of-4-small                    # vocabulary 16: 8 s
    python -m mikit.zoo train modular-addition --checkpoints    # the grokking run and its checkpoints: 2 min

(Times on one thread of a shared 2-core CPU.) Each model folder holds model.safetensors and config.json (the
HookedTransformer config, the recipe, the figures measured on the saved weights); modular-addition's checkpoints
are one float16 safetensors file with the loss curve in its config.json, read by `mikit.zoo.load_checkpoint`,
`checkpoint_steps` and `checkpoint_metrics`.
"""

from __future__ import annotations

import platform
import time
from importlib.metadata import version
from pathlib import Path

import torch
from transformer_lens import HookedTransformer

from mikit.storage import save_folder
from mikit.toys import max_of_k as mok
from mikit.toys import modular_addition as ma
from mikit.zoo import build_from_config
from mikit.zoo.recipes import CHECKPOINT_DTYPE, checkpoint_key

MAX_OF_4 = {"max-of-4": {"d_vocab": 64, "steps": 3000}, "max-of-4-small": {"d_vocab": 16, "steps": 1000}}
# The grokking run (its sizes and why: mikit.toys.modular_addition), with 31 evenly spaced checkpoints.
MODULAR_ADDITION = {"p": ma.P, **ma.TRAINING, "betas": list(ma.TRAINING["betas"]), "n_checkpoints": 31}


def _run_facts(start: float) -> dict:
    """What the record says about the run itself: its time, threads and library versions."""
    return {
        "train_seconds": round(time.perf_counter() - start, 1),
        "torch_threads": torch.get_num_threads(),
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "transformer_lens": version("transformer_lens")},
    }


def max_of_k_figures(model: HookedTransformer) -> dict:
    """Brute-force accuracy and both proofs' bounds and costs, as the zoo records them."""
    start = time.perf_counter()
    accuracy, correct = mok.brute_force_accuracy(model)
    seconds = round(time.perf_counter() - start, 1)
    figures = {"brute_force_accuracy": accuracy, "brute_force_correct": correct,
               "brute_force_flops": mok.brute_force_flops(model), "brute_force_seconds": seconds}
    for name, proof in (("cubic", mok.cubic_proof), ("quadratic", mok.quadratic_proof)):
        bound = proof(model)
        figures |= {f"{name}_bound": bound.accuracy, f"{name}_certified": bound.certified, f"{name}_cost": bound.cost}
    return figures


def train_max_of_4(name: str, out: Path, *, steps: int | None = None, seed: int = 0, progress: bool = True) -> dict:
    """Train zoo model `name` (max-of-4 or max-of-4-small), save it in `out` with its figures; return the record."""
    start = time.perf_counter()
    recipe = {**mok.TRAINING, **MAX_OF_4[name], "k": mok.K, "seed": seed}
    recipe["steps"] = steps or recipe["steps"]
    model = mok.train_max_of_k(recipe["d_vocab"], mok.K, steps=recipe["steps"], batch_size=recipe["batch_size"],
                               lr=recipe["lr"], seed=seed, progress=progress)
    facts = _run_facts(start)
    record = {"config": mok.max_of_k_config(recipe["d_vocab"], mok.K),
              "metrics": max_of_k_figures(model), "recipe": {**recipe, **facts}}
    save_folder(model, out, record)
    return record


def _significant(x: float) -> float:
    """`x` to 4 significant digits: losses span 1e-7 to 30 over a grokking run."""
    return float(f"{x:.4g}")


def checkpoint_figures(model: HookedTransformer, freqs: list[int], train: torch.Tensor, test: torch.Tensor) -> dict:
    """Train and test loss and accuracy, and the restricted and excluded loss on the training pairs for `freqs`."""
    tokens, labels = ma.modular_addition_data(model.cfg.d_vocab_out)
    with torch.inference_mode():
        logits = ma.final_logits(model, tokens)
    figures = {}
    for split, indices in (("train", train), ("test", test)):
        figures[f"{split}_loss"] = _significant(ma.loss_from_logits(logits[indices], labels[indices]).item())
        figures[f"{split}_accuracy"] = round((logits[indices].argmax(-1) == labels[indices]).float().mean().item(), 4)
    figures["restricted_loss"] = _significant(ma.restricted_loss(model, freqs, train))
    figures["excluded_loss"] = _significant(ma.excluded_loss(model, freqs, train))
    return figures


def train_modular_addition(out: Path, *, checkpoints: Path | None = None, steps: int | None = None,
                           seed: int | None = None, progress: bool = True) -> dict:
    """Train the grokking run, save the final model in `out` and (optionally) its checkpoint series; return its record.

    The checkpoints are evenly spaced from step 0 to the last; each one's figures (`checkpoint_figures`, with the
    final model's key frequencies) are measured on its float16 weights, so a reload reproduces them.
    """
    start = time.perf_counter()
    recipe = {**MODULAR_ADDITION, "steps": steps or MODULAR_ADDITION["steps"],
              "seed": MODULAR_ADDITION["seed"] if seed is None else seed}
    config = ma.modular_addition_config(recipe["p"], recipe["d_model"], recipe["d_mlp"], recipe["n_heads"])
    n = recipe["n_checkpoints"] - 1
    snapshot_steps = sorted({round(i * recipe["steps"] / n) for i in range(n + 1)}) if checkpoints else []
    run = ma.train_modular_addition(
        config, steps=recipe["steps"], lr=recipe["lr"], weight_decay=recipe["weight_decay"],
        train_fraction=recipe["train_fraction"], seed=recipe["seed"], snapshot_steps=snapshot_steps, progress=progress,
    )
    facts = _run_facts(start)
    train, test = ma.train_test_split(recipe["p"], recipe["train_fraction"], recipe["seed"])
    freqs = ma.key_frequencies(run.model)
    metrics = {**checkpoint_figures(run.model, freqs, train, test), "key_frequencies": freqs,
               "grokking_step": grokking_step(run.logged_steps, run.test_loss)}
    record = {"config": config, "metrics": metrics, "recipe": {**recipe, **facts}}
    save_folder(run.model, out, record)
    if checkpoints:
        model = build_from_config(config).eval()
        stored, entries = {}, []
        for step, params in sorted(run.snapshots.items()):
            rounded = {name: param.to(CHECKPOINT_DTYPE) for name, param in params.items()}
            stored |= {checkpoint_key(step, name): param for name, param in rounded.items()}
            model.load_state_dict({name: param.float() for name, param in rounded.items()}, strict=False)
            entries.append({"step": step, "metrics": checkpoint_figures(model, freqs, train, test)})
        save_folder(stored, checkpoints, {
            "config": config,
            "dtype": str(CHECKPOINT_DTYPE).removeprefix("torch."),
            "steps": [entry["step"] for entry in entries],
            "checkpoints": entries,
            "key_frequencies": freqs,
            # Every `log_every` steps of the run, in float32: the whole grokking curve, between the checkpoints too.
            "loss_curve": {"step": run.logged_steps, "train_loss": [_significant(x) for x in run.train_loss],
                           "test_loss": [_significant(x) for x in run.test_loss]},
            "recipe": record["recipe"],
        })
    return record


def grokking_step(steps: list[int], test_loss: list[float], threshold: float = 0.1) -> int | None:
    """The first logged step at which the test loss falls below `threshold` (None if it never does)."""
    return next((step for step, loss in zip(steps, test_loss) if loss < threshold), None)


def train_toy(name: str, out: Path, *, checkpoints: Path | None = None, steps: int | None = None,
              seed: int | None = None, progress: bool = True) -> dict:
    """Train the toy zoo model `name` into `out` (and its checkpoints into `checkpoints`); return its record."""
    if name == "modular-addition":
        return train_modular_addition(out, checkpoints=checkpoints, steps=steps, seed=seed, progress=progress)
    if name not in MAX_OF_4:
        raise ValueError(f"No toy zoo model named {name!r}; the toys' models are modular-addition, {', '.join(MAX_OF_4)}.")
    if checkpoints:
        raise ValueError(f"{name} has no checkpoint series; only modular-addition records one.")
    return train_max_of_4(name, out, steps=steps, seed=seed or 0, progress=progress)
