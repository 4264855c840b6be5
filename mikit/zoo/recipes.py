"""Recipes that train the zoo's models from scratch on a CPU, offline, reproducibly from a seed."""

from __future__ import annotations

import platform
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from functools import cache
from importlib.metadata import version
from pathlib import Path

import warnings
from typing import Callable

import torch
import torch.utils.deterministic
from jaxtyping import Int
from pydoc_data.topics import topics
from torch import Tensor
from tqdm.auto import tqdm
from transformer_lens import HookedTransformer, HookedTransformerConfig

from mikit.storage import save_folder
from mikit.zoo.tokenizer import BOS_TOKEN, FIRST_CHAR_ID, VOCAB, build_char_tokenizer, char_backend, load_char_tokenizer

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
    init_std: float
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
    eval_repeat_len: int  # length of r in the [BOS, r, r] sequences the final metrics use
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
            "initializer_range": self.init_std,
        }


RECIPES = {
    "attn-only-2l": Recipe(
        name="attn-only-2l",
        description="2-layer attention-only character model with induction heads (English text + repeated random characters).",
        n_layers=2,
        d_model=128,
        n_heads=4,
        d_head=32,
        n_ctx=128,
        attn_only=True,
        # LNPre is the form TransformerLens folds LayerNorm into, so W_Q, W_K, W_OV read as trained.
        normalization_type="LNPre",
        # Below TransformerLens's default (0.8 / sqrt(d_model) = 0.07): the induction plateau ends sooner.
        init_std=0.02,
        steps=1200,
        batch_size=32,
        seq_len=128,
        lr=3e-3,
        weight_decay=0.01,
        warmup_steps=50,
        repeat_fraction=0.75,
        min_repeat_len=8,
        max_repeat_len=64,
        eval_repeat_len=50,
        seed=0,
    ),
}


def corpus_text() -> str:
    """About 0.5 MB of English: the Python documentation topics that ship with CPython (`pydoc_data`)."""
    return "\n\n".join(topics[key] for key in sorted(topics))


@cache
def corpus_tokens() -> tuple[Int[Tensor, "n_train"], Int[Tensor, "n_held_out"]]:
    """The corpus as character tokens, split into training text and a held-out tail."""
    tokens = torch.tensor(char_backend().encode(corpus_text(), add_special_tokens=False).ids)
    n_train = int(len(tokens) * (1 - HELD_OUT_FRACTION))
    return tokens[:n_train], tokens[n_train:]


def _with_bos(rows: Int[Tensor, "batch pos"]) -> Int[Tensor, "batch pos_plus_1"]:
    """`rows`, each after a BOS token."""
    return torch.cat([torch.full((rows.shape[0], 1), VOCAB[BOS_TOKEN]), rows], dim=1)


def held_out_text(batch: int = 16, seq_len: int = 128) -> Int[Tensor, "batch pos"]:
    """`batch` evenly spaced windows of held-out text, each `seq_len` tokens with the BOS."""
    text = corpus_tokens()[1]
    starts = torch.linspace(0, len(text) - seq_len + 1, batch).long()[:, None]
    return _with_bos(text[starts + torch.arange(seq_len - 1)])


def _random_text_rows(text: Int[Tensor, "pos"], batch: int, seq_len: int, gen: torch.Generator) -> Int[Tensor, "batch pos"]:
    """Random windows of `text`, each `seq_len` tokens with the BOS."""
    starts = torch.randint(0, len(text) - seq_len + 2, (batch, 1), generator=gen)
    return _with_bos(text[starts + torch.arange(seq_len - 1)])


def _repeated_rows(recipe: Recipe, batch: int, gen: torch.Generator) -> Int[Tensor, "batch pos"]:
    """Random character strings of random lengths, each repeated to fill a row of `recipe.seq_len` with the BOS."""
    lengths = torch.randint(recipe.min_repeat_len, recipe.max_repeat_len + 1, (batch, 1), generator=gen)
    strings = torch.randint(FIRST_CHAR_ID, len(VOCAB), (batch, recipe.max_repeat_len), generator=gen)
    return _with_bos(strings.gather(1, torch.arange(recipe.seq_len - 1) % lengths))


def _lr_factor(recipe: Recipe, step: int) -> float:
    """Linear warm-up, a constant peak, then a linear decay to a tenth over the last fifth of training."""
    # A long constant phase gets through the plateau before induction heads, then sharpens them.
    if step < recipe.warmup_steps:
        return (step + 1) / recipe.warmup_steps
    decay_start = 0.8 * recipe.steps
    if step < decay_start:
        return 1.0
    return 1.0 - 0.9 * (step - decay_start) / (recipe.steps - decay_start)


def build_model(hooked_config: dict, folder: Path, device: str = "cpu") -> HookedTransformer:
    """A freshly initialised model for `hooked_config`, with the character tokenizer saved in `folder`."""
    cfg = HookedTransformerConfig(**hooked_config, device=device)
    # TransformerLens 3.9 flags HookedTransformer itself as deprecated; students need not see that here.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="HookedTransformer is deprecated", category=DeprecationWarning)
        return HookedTransformer(cfg, tokenizer=load_char_tokenizer(folder))


@contextmanager
def _deterministic() -> Iterator[None]:
    """Deterministic kernels while inside, so a seed reproduces a run exactly on the same machine and threads."""
    # Without this, the multithreaded embedding gradient sums in a varying order, and the
    # chaotic early training can then pick a different head to become the induction head.
    saved = torch.are_deterministic_algorithms_enabled(), torch.utils.deterministic.fill_uninitialized_memory
    torch.use_deterministic_algorithms(True)
    torch.utils.deterministic.fill_uninitialized_memory = False  # costs time and we never read uninitialised memory
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(saved[0])
        torch.utils.deterministic.fill_uninitialized_memory = saved[1]


def train(
    recipe: Recipe, out: Path, *, progress: bool = True, measure: Callable[[HookedTransformer, Tensor], dict] | None = None
) -> HookedTransformer:
    """Train `recipe` from scratch, write the model folder `out`, and return the model in eval mode.

    `measure(model, held_out_tokens)` gives the metrics recorded with the model (`python -m mikit.zoo train`
    passes `mikit.induction.summarize_model`); without it none are recorded.
    """
    start = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    # Saved first so the model gets its tokenizer from the folder, exactly as loading will.
    build_char_tokenizer(model_max_length=recipe.n_ctx).save_pretrained(str(out))
    train_text = corpus_tokens()[0]

    torch.manual_seed(recipe.seed)
    model = build_model(recipe.hooked_config(), out)
    gen = torch.Generator().manual_seed(recipe.seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.lr, betas=(0.9, 0.99), weight_decay=recipe.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: _lr_factor(recipe, step))
    n_repeat = round(recipe.batch_size * recipe.repeat_fraction)

    model.train()
    bar = tqdm(range(recipe.steps), desc=f"training {recipe.name}", disable=not progress)
    with _deterministic():
        for step in bar:
            tokens = torch.cat([
                _random_text_rows(train_text, recipe.batch_size - n_repeat, recipe.seq_len, gen),
                _repeated_rows(recipe, n_repeat, gen),
            ])
            loss = model(tokens, return_type="loss")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            if step % 10 == 0 or step == recipe.steps - 1:
                bar.set_postfix(loss=f"{loss.item():.3f}")
    model.eval()

    metrics = measure(model, held_out_text(seq_len=recipe.seq_len)) if measure else {}
    record = {
        "config": recipe.hooked_config(),
        "metrics": metrics,
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
        },
    }
    save_folder(model, out, record)
    return model
