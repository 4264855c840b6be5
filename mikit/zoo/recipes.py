"""Recipes that train the zoo's models from scratch on a CPU, offline, reproducibly from a seed."""

from __future__ import annotations

import platform
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
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
    # MLP width and activation; unused when `attn_only`.
    d_mlp: int | None = None
    act_fn: str | None = None
    # Torch threads of the shipped run: on one machine the same seed and threads give the same weights, bit for bit
    # (another thread count changes float sums in the last bits, and training amplifies that).
    threads: int = 2

    def hooked_config(self) -> dict:
        """The `HookedTransformerConfig` keyword arguments, minus the seed (which would reseed on every load)."""
        config = {
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
        if not self.attn_only:
            config |= {"d_mlp": self.d_mlp, "act_fn": self.act_fn}
        return config


_ATTN_ONLY_2L = Recipe(
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
)

RECIPES = {
    "attn-only-2l": _ATTN_ONLY_2L,
    # The same batches, width and schedule with an MLP after each attention layer: neurons to study.
    "gelu-1l": replace(
        _ATTN_ONLY_2L,
        name="gelu-1l",
        description="1-layer character model with a GELU MLP (512 neurons), trained on the same data as attn-only-2l.",
        n_layers=1,
        attn_only=False,
        # 1e-3 (gelu-2l's) gave a worse text loss here: 2.04 against 1.90.
        d_mlp=512,
        act_fn="gelu",
        threads=1,
    ),
    "gelu-2l": replace(
        _ATTN_ONLY_2L,
        name="gelu-2l",
        description="2-layer character model with GELU MLPs (512 neurons each) and induction heads, same data as attn-only-2l.",
        attn_only=False,
        # At attn-only-2l's 3e-3 it stayed on the plateau before induction heads for all 1200 steps (repeat loss 4.2,
        # best induction score 0.03); at 1e-3 they form between steps 400 and 700.
        lr=1e-3,
        d_mlp=512,
        act_fn="gelu",
        threads=1,
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


def log_spaced_steps(final: int, n: int = 22) -> list[int]:
    """At least `n` training steps (all `final + 1` if fewer): 0, then whole steps evenly spaced in log(step), 1 to `final`."""
    if final < 1 or n < 2:
        raise ValueError(f"log_spaced_steps needs final >= 1 and n >= 2; got final={final}, n={n}.")
    n = min(n, final + 1)
    log_final = torch.tensor(final, dtype=torch.float64).log10().item()
    k = n - 1
    while True:  # rounding merges the smallest steps (1.0, 1.4 -> 1, 1), so ask for more until n are distinct
        steps = sorted({0, *torch.logspace(0, log_final, k, dtype=torch.float64).round().long().tolist()})
        if len(steps) >= n:
            return steps
        k += 1


def train(
    recipe: Recipe,
    out: Path,
    *,
    progress: bool = True,
    measure: Callable[[HookedTransformer, Tensor], dict] | None = None,
    checkpoints: Path | None = None,
    checkpoint_steps: Sequence[int] | None = None,
) -> HookedTransformer:
    """Train `recipe` from scratch, write the model folder `out`, and return the model in eval mode.

    `measure(model, held_out_tokens)` gives the metrics recorded with the model (`python -m mikit.zoo train`
    passes `mikit.induction.summarize_model`); without it none are recorded.

    With `checkpoints`, also write the weights as they were after each of `checkpoint_steps` optimizer steps
    (default `log_spaced_steps(recipe.steps)`) into that folder, with their metrics (see `save_checkpoints`).
    Collecting them changes nothing in the training: the model in `out` is the same with or without.
    """
    start = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    # Saved first so the model gets its tokenizer from the folder, exactly as loading will.
    build_char_tokenizer(model_max_length=recipe.n_ctx).save_pretrained(str(out))
    train_text = corpus_tokens()[0]
    if checkpoints is not None:
        checkpoint_steps = sorted(set(log_spaced_steps(recipe.steps) if checkpoint_steps is None else checkpoint_steps))
        if not checkpoint_steps or checkpoint_steps[0] < 0 or checkpoint_steps[-1] > recipe.steps:
            raise ValueError(f"checkpoint_steps must lie in 0-{recipe.steps} (the recipe's steps); got {checkpoint_steps}.")
    snapshots: dict[int, dict[str, Tensor]] = {}
    train_losses: list[float] = []

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
            if checkpoints is not None and step in checkpoint_steps:
                snapshots[step] = {name: param.detach().clone() for name, param in model.named_parameters()}
            tokens = torch.cat([
                _random_text_rows(train_text, recipe.batch_size - n_repeat, recipe.seq_len, gen),
                _repeated_rows(recipe, n_repeat, gen),
            ])
            loss = model(tokens, return_type="loss")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            train_losses.append(loss.item())
            if step % 10 == 0 or step == recipe.steps - 1:
                bar.set_postfix(loss=f"{loss.item():.3f}")
    model.eval()
    if checkpoints is not None and recipe.steps in checkpoint_steps:
        snapshots[recipe.steps] = {name: param.detach().clone() for name, param in model.named_parameters()}
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
    if checkpoints is not None:
        save_checkpoints(checkpoints, recipe, snapshots, train_losses, measure=measure, run=record["recipe"])
    return model


CHECKPOINT_DTYPE = torch.float16  # 22 float32 copies of attn-only-2l would take 15 MB; float16 halves that


def checkpoint_key(step: int, name: str) -> str:
    """The key of parameter `name` at training step `step` in a checkpoint series' safetensors file."""
    return f"step{step}.{name}"


def save_checkpoints(
    folder: Path,
    recipe: Recipe,
    snapshots: dict[int, dict[str, Tensor]],
    train_losses: list[float],
    *,
    measure: Callable[[HookedTransformer, Tensor], dict] | None,
    run: dict,
) -> None:
    """Write a training run's checkpoints into `folder`: one safetensors file, a JSON record, the tokenizer.

    `snapshots[step]` holds the parameters after `step` optimizer steps; they are stored in `CHECKPOINT_DTYPE`
    under `checkpoint_key(step, name)`. Each step's metrics are measured on the stored weights, so a reload
    reproduces them; `float16_max_change` says how far storing moved each metric from the float32 weights.
    `run` is the recipe as the model folder records it (with the timing, threads and versions of the run).
    """
    folder.mkdir(parents=True, exist_ok=True)
    build_char_tokenizer(model_max_length=recipe.n_ctx).save_pretrained(str(folder))
    text = held_out_text(seq_len=recipe.seq_len)
    model = build_model(recipe.hooked_config(), folder).eval()
    stored, entries, changes = {}, [], {}
    for step, params in sorted(snapshots.items()):
        rounded = {name: param.to(CHECKPOINT_DTYPE) for name, param in params.items()}
        stored |= {checkpoint_key(step, name): param for name, param in rounded.items()}
        metrics = {}
        if measure:
            model.load_state_dict(params, strict=False)
            exact = measure(model, text)
            model.load_state_dict({name: param.float() for name, param in rounded.items()}, strict=False)
            metrics = measure(model, text)
            for key, value in metrics.items():
                if isinstance(value, float):
                    changes[key] = max(changes.get(key, 0.0), round(abs(value - exact[key]), 4))
        lr = recipe.lr * _lr_factor(recipe, min(step, recipe.steps - 1))
        entries.append({"step": step, "lr": round(lr, 6), "metrics": metrics})
    record = {
        "config": recipe.hooked_config(),
        "dtype": str(CHECKPOINT_DTYPE).removeprefix("torch."),
        "steps": [entry["step"] for entry in entries],
        "checkpoints": entries,
        "float16_max_change": changes,
        # The loss of each training batch (one per optimizer step): the whole loss curve, between the checkpoints too.
        "train_loss": [round(loss, 4) for loss in train_losses],
        "recipe": run,
    }
    save_folder(stored, folder, record)
