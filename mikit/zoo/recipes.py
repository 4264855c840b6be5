"""Recipes that train the zoo's models from scratch on a CPU, offline, reproducibly from a seed."""

from __future__ import annotations

import math
import platform
import time
from dataclasses import asdict, dataclass
from importlib.metadata import version
from pathlib import Path

import torch
from jaxtyping import Int
from pydoc_data.topics import topics
from torch import Tensor
from tqdm.auto import tqdm

from mikit.zoo.metrics import summarize
from mikit.zoo.storage import build_model, save_model_folder
from mikit.zoo.tokenizer import FIRST_CHAR_ID, VOCAB, build_char_tokenizer

HELD_OUT_FRACTION = 0.05  # tail of the corpus kept out of training, for the text metrics


@dataclass(frozen=True)
class Recipe:
    """How to build and train one zoo model; any field can be overridden with `dataclasses.replace`."""

    name: str
    description: str
    # Model shape (a TransformerLens HookedTransformer).
    n_layers: int
    d_model: int
    n_heads: int
    d_head: int
    n_ctx: int
    attn_only: bool
    normalization_type: str
    # Training.
    steps: int
    batch_size: int
    seq_len: int  # tokens per training row, BOS included; at most n_ctx
    lr: float
    weight_decay: float
    warmup_steps: int
    repeat_fraction: float  # share of each batch that is repeated random characters, the rest English text
    min_repeat_len: int
    max_repeat_len: int
    seed: int

    def hooked_config(self) -> dict:
        """The `HookedTransformerConfig` keyword arguments, minus the seed (which would reseed on every load)."""
        return {
            "model_name": self.name,
            "n_layers": self.n_layers,
            "d_model": self.d_model,
            "n_heads": self.n_heads,
            "d_head": self.d_head,
            "n_ctx": self.n_ctx,
            "d_vocab": len(VOCAB),
            "attn_only": self.attn_only,
            "normalization_type": self.normalization_type,
            "positional_embedding_type": "standard",
        }


RECIPES = {
    "attn-only-2l": Recipe(
        name="attn-only-2l",
        description="2-layer attention-only character model with induction heads (English text + repeated random characters).",
        n_layers=2,
        d_model=128,
        n_heads=8,
        d_head=16,
        n_ctx=256,
        attn_only=True,
        # LNPre is the form TransformerLens folds LayerNorm into, so W_Q, W_K, W_OV read as trained.
        normalization_type="LNPre",
        steps=600,
        batch_size=16,
        seq_len=256,
        lr=3e-3,
        weight_decay=0.01,
        warmup_steps=50,
        repeat_fraction=0.5,
        min_repeat_len=8,
        max_repeat_len=64,
        seed=0,
    ),
}


def corpus_text() -> str:
    """About 0.5 MB of English: the Python documentation topics that ship with CPython (`pydoc_data`)."""
    return "\n\n".join(topics[key] for key in sorted(topics))


def text_windows(corpus: Int[Tensor, "n"], batch: int, seq_len: int, gen: torch.Generator) -> Int[Tensor, "batch seq_len"]:
    """Random windows of `corpus`, each after a BOS token."""
    starts = torch.randint(0, len(corpus) - seq_len + 2, (batch, 1), generator=gen)
    windows = corpus[starts + torch.arange(seq_len - 1)]
    return torch.cat([torch.full((batch, 1), VOCAB["<|bos|>"]), windows], dim=1)


def repeated_rows(recipe: Recipe, batch: int, gen: torch.Generator) -> Int[Tensor, "batch seq_len"]:
    """Random character strings of random lengths, each repeated until the row is full, after a BOS token."""
    lengths = torch.randint(recipe.min_repeat_len, recipe.max_repeat_len + 1, (batch, 1), generator=gen)
    strings = torch.randint(FIRST_CHAR_ID, len(VOCAB), (batch, recipe.max_repeat_len), generator=gen)
    rows = strings.gather(1, torch.arange(recipe.seq_len - 1) % lengths)
    return torch.cat([torch.full((batch, 1), VOCAB["<|bos|>"]), rows], dim=1)


def held_out_text(corpus: Int[Tensor, "n"], batch: int, seq_len: int) -> Int[Tensor, "batch seq_len"]:
    """`batch` evenly spaced windows of held-out text, each after a BOS token."""
    starts = torch.linspace(0, len(corpus) - seq_len + 1, batch).long()[:, None]
    windows = corpus[starts + torch.arange(seq_len - 1)]
    return torch.cat([torch.full((batch, 1), VOCAB["<|bos|>"]), windows], dim=1)


def _lr_factor(recipe: Recipe, step: int) -> float:
    """Linear warm-up, then cosine decay to a tenth of the peak learning rate."""
    if step < recipe.warmup_steps:
        return (step + 1) / recipe.warmup_steps
    progress = (step - recipe.warmup_steps) / max(1, recipe.steps - recipe.warmup_steps)
    return 0.1 + 0.45 * (1 + math.cos(math.pi * progress))


def train(recipe: Recipe, out: Path, progress: bool = True) -> dict:
    """Train `recipe` from scratch, write the model folder `out`, and return the config written there."""
    start = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_char_tokenizer(model_max_length=recipe.n_ctx)
    # Saved first so the model gets its tokenizer from the folder, exactly as loading will.
    tokenizer.save_pretrained(str(out))
    corpus = torch.tensor(tokenizer.backend_tokenizer.encode(corpus_text(), add_special_tokens=False).ids)
    n_train = int(len(corpus) * (1 - HELD_OUT_FRACTION))
    train_text, eval_text = corpus[:n_train], corpus[n_train:]

    torch.manual_seed(recipe.seed)
    model = build_model(recipe.hooked_config(), out)
    gen = torch.Generator().manual_seed(recipe.seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.lr, betas=(0.9, 0.99), weight_decay=recipe.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: _lr_factor(recipe, step))
    n_repeat = round(recipe.batch_size * recipe.repeat_fraction)

    model.train()
    bar = tqdm(range(recipe.steps), desc=f"training {recipe.name}", disable=not progress)
    for step in bar:
        tokens = torch.cat([
            text_windows(train_text, recipe.batch_size - n_repeat, recipe.seq_len, gen),
            repeated_rows(recipe, n_repeat, gen),
        ])
        loss = model(tokens, return_type="loss")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        if step % 10 == 0 or step == recipe.steps - 1:
            bar.set_postfix(loss=f"{loss.item():.3f}")
    model.eval()

    metrics = summarize(model, held_out_text(eval_text, batch=16, seq_len=recipe.n_ctx))
    config = {
        "name": recipe.name,
        "description": recipe.description,
        "hooked_transformer_config": recipe.hooked_config(),
        "recipe": {
            **asdict(recipe),
            "data": (
                f"{1 - recipe.repeat_fraction:.0%} windows of pydoc_data.topics text "
                f"(last {HELD_OUT_FRACTION:.0%} held out), {recipe.repeat_fraction:.0%} random character strings "
                f"of length {recipe.min_repeat_len}-{recipe.max_repeat_len} repeated to fill the row"
            ),
            "final_train_loss": round(loss.item(), 4),
            "train_seconds": round(time.perf_counter() - start, 1),
            "torch_threads": torch.get_num_threads(),
            "versions": {
                "python": platform.python_version(),
                "torch": torch.__version__,
                "transformer_lens": version("transformer_lens"),
            },
            "metrics": metrics,
        },
    }
    save_model_folder(model, out, config)
    return config
