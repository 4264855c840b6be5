"""Recipes for the SAEs mikit ships: trained offline on a CPU, from a seed, and measured on held-out text.

    python -m mikit.sae cache smollm2-135m-l15-topk64 acts.safetensors   # the training activations (~25 min)
    python -m mikit.sae train smollm2-135m-l15-topk64 [--activations acts.safetensors]

`train` writes data/saes/<name>/: the SAE in SAELens's format, with the recipe, the seed, the time it
took and the held-out metrics in its cfg.json metadata, and a latent index for the dashboard. Without
`--activations` it runs the model itself first. The model runs once; training makes `epochs` passes
over the activations held in memory.
"""

from __future__ import annotations

import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from jaxtyping import Float, Int
from torch import Tensor

import mikit
from mikit.datasets import corpus
from mikit.paths import SAE_DIR
from mikit.sae.architectures import TopKSAE
from mikit.sae.latents import LatentIndex
from mikit.sae.evaluation import evaluate
from mikit.sae.io import save
from mikit.sae.training import ActivationBuffer, CachedActivations, train_sae



@dataclass(frozen=True)
class SAERecipe:
    """One shipped SAE: where it reads, its shape, and how it is trained and evaluated."""

    name: str
    model: str
    hook_name: str
    d_sae: int
    k: int
    corpus: str
    context: int
    train_rows: int  # the corpus's first rows; every position but BOS is a training token
    epochs: int
    batch_size: int
    lr: float
    eval_rows: int  # the corpus's last rows, never trained on
    index_rows: int  # the corpus's last rows scanned for the dashboard's top contexts (includes eval_rows)
    seed: int


RECIPES = {
    "smollm2-135m-l15-topk64": SAERecipe(
        name="smollm2-135m-l15-topk64", model="smollm2-135m", hook_name="blocks.15.hook_resid_pre",
        d_sae=2304, k=64, corpus="bbc", context=128, train_rows=4096, epochs=4, batch_size=2048, lr=4e-4,
        eval_rows=128, index_rows=512, seed=0,
    ),
}


def recipe_rows(recipe: SAERecipe, tokenizer) -> dict[str, Int[Tensor, "batch pos"]]:
    """The recipe's rows from its corpus: "train" (the first), "eval" (the last, held out) and "index"."""
    rows = corpus.token_rows(tokenizer, corpus.load_texts(recipe.corpus), context=recipe.context)
    if recipe.train_rows + recipe.eval_rows > rows.shape[0]:
        raise ValueError(f"{recipe.name}: {recipe.train_rows} training + {recipe.eval_rows} held-out rows, "
                         f"but the {recipe.corpus!r} corpus has only {rows.shape[0]} rows of {recipe.context} tokens.")
    return {"train": rows[: recipe.train_rows], "eval": rows[-recipe.eval_rows :], "index": rows[-recipe.index_rows :]}


def recipe_activations(
    recipe: SAERecipe, model=None, *, rows: Int[Tensor, "batch pos"] | None = None, progress: bool = True
) -> Float[Tensor, "batch d_in"]:
    """The activations the recipe trains on, in row order (BOS positions dropped); `rows`: its training rows, if
    already read (the corpus is then not loaded and tokenized again)."""
    model = model or mikit.load_model(recipe.model, device="cpu")
    rows = recipe_rows(recipe, model.tokenizer)["train"] if rows is None else rows
    return ActivationBuffer(model, recipe.hook_name, rows).collect(progress=progress)


def train_recipe(
    recipe: SAERecipe, out: Path | None = None, activations: Tensor | None = None, *, progress: bool = True
) -> tuple[TopKSAE, dict[str, float]]:
    """Train `recipe`'s SAE, evaluate it on held-out rows, index its latents, save both into `out`."""
    torch.manual_seed(recipe.seed)
    model = mikit.load_model(recipe.model, device="cpu")
    rows = recipe_rows(recipe, model.tokenizer)
    if activations is None:
        activations = recipe_activations(recipe, model, rows=rows["train"], progress=progress)
    expected = recipe.train_rows * (recipe.context - 1)
    if activations.shape != (expected, model.cfg.d_model):
        raise ValueError(f"{recipe.name} trains on {expected} activations of size {model.cfg.d_model}; "
                         f"the activations given have shape {tuple(activations.shape)}.")
    sae = TopKSAE(model.cfg.d_model, recipe.d_sae, k=recipe.k)
    start = time.perf_counter()
    data = CachedActivations(activations, batch_size=recipe.batch_size, seed=recipe.seed)
    train_sae(sae, data, recipe.epochs * expected, lr=recipe.lr, progress=progress)
    seconds = time.perf_counter() - start
    report = evaluate(model, sae, recipe.hook_name, rows["eval"])
    sae.metadata.update({
        "model_name": recipe.model, "hook_name": recipe.hook_name, "context_size": recipe.context,
        "prepend_bos": True, "recipe": asdict(recipe),
        "metrics": {key: round(value, 4) for key, value in report.items()},
        "train_seconds": round(seconds), "trained_on": f"{platform.machine()}, {torch.get_num_threads()} threads",
    })
    out = save(sae, out or SAE_DIR / recipe.name)
    LatentIndex.build(model, sae, recipe.hook_name, rows["index"], progress=progress).save(out)
    return sae, report
