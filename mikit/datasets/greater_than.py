"""Greater-Than (Hanna et al. 2023): "The war lasted from the year 1732 to the year 17" → a year after 32.

    ds = GreaterThanDataset(model, n_prompts=100, seed=0)
    logits = model(ds.tokens)
    probability_difference(logits, ds).mean()    # mass on later years minus mass on the rest
    ds.corrupted()                                # the same prompts with the start year ending in 01

How a tokenizer reads years decides what the model predicts next. GPT-2 has a token for every two-digit
string, so after "to the year 17" it predicts the two digits YY at once, and the metric is the paper's:
the probability of every YY' > YY minus that of every YY' ≤ YY. SmolLM2 (and Llama, Qwen, …) reads
digits one at a time, so the next token is only the tens digit of the end year. A tens digit above YY's
makes the end year later whatever follows; one below makes it earlier; the same tens digit leaves it open
(1732 → 1735 or 1731). So in digit mode the metric is the probability of the larger tens digits minus that
of the smaller ones, and the equal digit counts for neither. `ds.mode` says which one a tokenizer gets.

Years are drawn only where the tokenizer splits them into the century and then YY, as the paper does.
The corrupted prompts (the paper's "01" dataset) keep everything but the start year, which ends in 01: then
any year is later, and the prompt carries no information about which ones are.
"""

from __future__ import annotations

import copy
import random

import torch
from jaxtyping import Float, Int
from torch import Tensor
from transformer_lens import HookedTransformer
from transformers import PreTrainedTokenizerBase

TEMPLATE = "The {noun} lasted from the year {century}{yy:02d} to the year {century}"

# Event nouns from the paper's list; each tokenizer keeps those that are one token with a leading space, so
# that every prompt has the same length.
NOUNS = """
war expedition siege reign trial journey campaign project tour voyage marriage study plan program process
treaty rule dispute crisis conflict strike riot deal contract effort operation quest trip order mission
""".split()
CENTURIES = (11, 12, 13, 14, 15, 16, 17)
# Two-digit years whose tens digit leaves room on both sides in digit mode (the paper uses 02–98).
YEARS = range(12, 89)
MODES = ("two-digit", "digit")


def tokenizer_mode(tokenizer: PreTrainedTokenizerBase) -> str:
    """"two-digit" where "00" … "99" are each one token (GPT-2), "digit" where every digit is its own token."""
    def one_token(text: str) -> bool:
        return len(tokenizer.encode(text, add_special_tokens=False)) == 1

    if all(one_token(f"{n:02d}") for n in range(100)):
        return "two-digit"
    if all(one_token(str(d)) for d in range(10)):
        return "digit"
    raise ValueError("this tokenizer has neither a token for every two-digit year ending nor one for every digit, "
                     "so Greater-Than has no single next token to read.")


class GreaterThanDataset:
    """Greater-Than prompts of one length (no padding), with each start year's last two digits `yy`."""

    tokens: Int[Tensor, "batch pos"]
    yy: Int[Tensor, "batch"]
    answer_tokens: Int[Tensor, "answer"]

    def __init__(
        self, model_or_tokenizer: HookedTransformer | PreTrainedTokenizerBase, n_prompts: int = 100, seed: int = 0,
        prepend_bos: bool = True,
    ):
        is_model = isinstance(model_or_tokenizer, HookedTransformer)
        self.tokenizer = model_or_tokenizer.tokenizer if is_model else model_or_tokenizer
        self.device = model_or_tokenizer.cfg.device if is_model else "cpu"
        if not isinstance(n_prompts, int) or n_prompts < 1:
            raise ValueError(f"n_prompts must be a positive integer, not {n_prompts!r}.")
        self.mode, self.seed, self.prepend_bos = tokenizer_mode(self.tokenizer), seed, prepend_bos
        answers = [f"{n:02d}" for n in range(100)] if self.mode == "two-digit" else [str(d) for d in range(10)]
        encode = lambda text: self.tokenizer.encode(text, add_special_tokens=False)  # noqa: E731
        self.answer_tokens = torch.tensor([encode(a)[0] for a in answers], device=self.device)
        self.nouns = [noun for noun in NOUNS if len(encode(f" {noun}")) == 1]
        if len(self.nouns) < 3:
            raise ValueError(f"only {len(self.nouns)} of the {len(NOUNS)} nouns are one token in this tokenizer.")
        # Years that split into the century's tokens and then YY's (GPT-2 reads " 1121" as " 112" "1"), and whose
        # century also splits from 01, so that clean and corrupted prompts line up token by token.
        def splits(century: int, yy: int) -> bool:
            return encode(f" {century}{yy:02d}") == encode(f" {century}") + encode(f"{yy:02d}")

        years = [(c, yy) for c in CENTURIES if splits(c, 1) for yy in YEARS if splits(c, yy)]
        rng = random.Random(seed)
        self.prompts = [(rng.choice(self.nouns), *rng.choice(years)) for _ in range(n_prompts)]
        self._tokenize()

    def _tokenize(self) -> None:
        texts = [TEMPLATE.format(noun=noun, century=century, yy=yy) for noun, century, yy in self.prompts]
        bos = [self.tokenizer.bos_token_id] if self.prepend_bos else []
        rows = [bos + self.tokenizer.encode(text, add_special_tokens=False) for text in texts]
        if len({len(row) for row in rows}) != 1:
            raise RuntimeError("the prompts tokenize to different lengths in this tokenizer; they must line up.")
        self.tokens = torch.tensor(rows, device=self.device)
        self.yy = torch.tensor([yy for _, _, yy in self.prompts], device=self.device)
        self.texts = texts

    def corrupted(self) -> GreaterThanDataset:
        """The same prompts with every start year ending in 01, token-aligned with these."""
        new = copy.copy(self)
        new.prompts = [(noun, century, 1) for noun, century, _ in self.prompts]
        new._tokenize()
        if new.tokens.shape != self.tokens.shape:
            raise RuntimeError("the 01 prompts do not line up token by token with the clean ones in this tokenizer.")
        return new

    def __len__(self) -> int:
        return len(self.prompts)

    def __repr__(self) -> str:
        return f"GreaterThanDataset({len(self)} prompts, {self.mode} answers, {len(self.nouns)} nouns, seed={self.seed})"


def probability_difference(logits: Float[Tensor, "batch pos d_vocab"], ds: GreaterThanDataset) -> Float[Tensor, "batch"]:
    """Per prompt, at the last position: the probability of the answers that make the end year later minus that
    of the answers that make it earlier or equal (two-digit mode) or earlier (digit mode; see the module)."""
    probs = logits[:, -1].softmax(-1)[:, ds.answer_tokens.to(logits.device)]
    answers = torch.arange(len(ds.answer_tokens), device=logits.device)
    yy = ds.yy.to(logits.device)[:, None]
    if ds.mode == "two-digit":
        later, earlier = answers > yy, answers <= yy
    else:
        later, earlier = answers > yy // 10, answers < yy // 10
    return (probs * later).sum(-1) - (probs * earlier).sum(-1)
