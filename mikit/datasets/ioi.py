"""Indirect object identification (Wang et al. 2022): prompts, their key positions, and the logit difference.

    ds = IOIDataset(model, n_prompts=60, seed=0)
    logits = model(ds.tokens)
    logit_diff(logits, ds).mean()          # how far the IO name's logit beats the subject's
    abc = ds.corrupted("ABC")              # same templates and positions, three unrelated names

A template names the indirect object `[A]` once and the subject `[B]` twice, the second `[B]` last:
"When [A] and [B] went to the [PLACE], [B] gave a [OBJECT] to" should be answered with " A". The
prompt's order, not the template, decides which of the first two names comes first: ABBA (IO first)
or BABA (subject first). Names are drawn only from those that are one token with their leading space
in the tokenizer at hand, so one seed gives other prompts in another tokenizer; positions are read
from each prompt's own tokenization, never assumed.
"""

from __future__ import annotations

import copy
import random
import re
from dataclasses import dataclass, field
from functools import partial

import torch
from jaxtyping import Int
from torch import Tensor
from transformer_lens import HookedTransformer
from transformers import PreTrainedTokenizerBase

TEMPLATES = [
    "When [A] and [B] went to the [PLACE], [B] gave a [OBJECT] to",
    "Then, [A] and [B] went to the [PLACE]. [B] gave a [OBJECT] to",
    "Then, [A] and [B] had a long argument. Afterwards [B] said to",
    "After [A] and [B] went to the [PLACE], [B] gave a [OBJECT] to",
    "While [A] and [B] were commuting to the [PLACE], [B] gave a [OBJECT] to",
    "When [A] and [B] got a [OBJECT] at the [PLACE], [B] decided to give it to",
    "Then, [A] and [B] were working at the [PLACE]. [B] decided to give a [OBJECT] to",
    "The [PLACE] [A] and [B] went to had a [OBJECT]. [B] gave it to",
]

# 100 common first names; each tokenizer keeps those that are one token as " Name".
NAMES = """
Aaron Adam Alan Alex Alice Amy Andrew Anna Anne Anthony Arthur Austin Ben Beth Brian Bruce Carl Carol
Charles Charlie Chris Claire Daniel David Diana Donald Edward Emily Emma Eric Frank Fred George Grace Greg
Hannah Harry Helen Henry Ian Jack Jacob Jake James Jane Jason Jeff Jennifer Jeremy Jessica John Jonathan
Joseph Julia Justin Karen Kate Katie Kelly Kevin Kyle Laura Leo Linda Lisa Louis Lucy Luke Maria Mark Martin
Mary Matthew Megan Michael Michelle Nancy Nick Nicole Oliver Paul Peter Rachel Richard Robert Ryan Sam Sarah
Scott Sean Simon Sophie Steven Susan Thomas Tim Tom Tony Victoria William
""".split()

PLACES = ["store", "garden", "restaurant", "school", "hospital", "office", "house", "station", "park", "library"]
# Consonant-initial, so that "a [OBJECT]" reads right.
OBJECTS = ["ring", "bone", "basketball", "computer", "necklace", "drink", "snack", "book", "cake", "gift"]

FIELDS = ("A", "B", "PLACE", "OBJECT")
FIELD_PATTERN = re.compile(r"\[(\w+)\]")
ORDERS = ("ABBA", "BABA")
CORRUPTIONS = ("ABC", "ABA")
MIN_NAMES = 5  # two per prompt, and three others for its ABC corruption


@dataclass(frozen=True)
class IOIPrompt:
    """One prompt: its text, the names at IO, S1 and S2 (s2 == s except in corruptions), and how it was made."""

    text: str
    io: str
    s: str
    s2: str
    place: str
    obj: str
    template: str
    order: str
    char_idx: dict[str, int] = field(repr=False)  # where each name ("IO", "S1", "S2") starts in `text`


def check_template(template: str) -> None:
    """Raise a one-sentence ValueError unless `template` is an IOI template (see the module docstring)."""
    fields = FIELD_PATTERN.findall(template)
    unknown = [name for name in fields if name not in FIELDS]
    if unknown:
        raise ValueError(f"template field [{unknown[0]}] is unknown; use [A], [B], [PLACE], [OBJECT].")
    names = [name for name in fields if name in ("A", "B")]
    if sorted(names) != ["A", "B", "B"] or names[-1] != "B":
        raise ValueError(
            f"template {template!r} must name [A] once and [B] twice, the second [B] last, "
            "as in 'When [A] and [B] went to the [PLACE], [B] gave a [OBJECT] to'."
        )
    # A name opening the text, or glued to a word, would not be the one token " Name".
    for match in FIELD_PATTERN.finditer(template):
        if match.group(1) in ("A", "B") and template[match.start() - 1 : match.start()] != " ":
            raise ValueError(f"template {template!r} must put a space before each of [A] and [B].")


def make_prompt(template: str, order: str, io: str, s: str, s2: str, place: str, obj: str) -> IOIPrompt:
    """Fill `template`: the first two name slots get IO and S1 in `order`, the last slot S2."""
    roles = iter(["IO", "S1", "S2"] if order == "ABBA" else ["S1", "IO", "S2"])
    values = {"IO": io, "S1": s, "S2": s2, "PLACE": place, "OBJECT": obj}
    text, char_idx, end = "", {}, 0
    for match in FIELD_PATTERN.finditer(template):
        text += template[end : match.start()]
        role = next(roles) if match.group(1) in ("A", "B") else match.group(1)
        char_idx[role] = len(text)
        text += values[role]
        end = match.end()
    char_idx = {role: char_idx[role] for role in ("IO", "S1", "S2")}
    return IOIPrompt(text + template[end:], io, s, s2, place, obj, template, order, char_idx)


def single_token_names(tokenizer: PreTrainedTokenizerBase) -> dict[str, int]:
    """The names of `NAMES` that `tokenizer` encodes as one token with a leading space, and that token's id."""
    ids = {name: tokenizer.encode(" " + name, add_special_tokens=False) for name in NAMES}
    return {name: token[0] for name, token in ids.items() if len(token) == 1}


class IOIDataset:
    """A batch of IOI prompts, tokenized and right-padded, with the positions of IO, S1, S2 and END."""

    tokens: Int[Tensor, "batch pos"]
    lengths: Int[Tensor, "batch"]
    io_tokens: Int[Tensor, "batch"]
    s_tokens: Int[Tensor, "batch"]
    word_idx: dict[str, Int[Tensor, "batch"]]

    def __init__(
        self,
        model_or_tokenizer: HookedTransformer | PreTrainedTokenizerBase,
        n_prompts: int = 60,
        templates: list[str] | str | None = None,
        seed: int = 0,
        prepend_bos: bool = True,
    ):
        """`n_prompts` prompts, half ABBA and half BABA, cycling through `templates` (default `TEMPLATES`)."""
        is_model = isinstance(model_or_tokenizer, HookedTransformer)
        self.tokenizer = model_or_tokenizer.tokenizer if is_model else model_or_tokenizer
        # Tensors live where the model runs, so that `model(ds.tokens)` works as is.
        self.device = model_or_tokenizer.cfg.device if is_model else "cpu"
        self.prepend_bos, self.seed = prepend_bos, seed
        templates = TEMPLATES if templates is None else templates
        self.templates = [templates] if isinstance(templates, str) else list(templates)
        if not isinstance(n_prompts, int) or n_prompts < 1:
            raise ValueError(f"n_prompts must be a positive integer, not {n_prompts!r}.")
        if not self.templates:
            raise ValueError("templates must hold at least one template, or be None for the default set.")
        for template in self.templates:
            check_template(template)
        self.name_ids = single_token_names(self.tokenizer)
        self.names = list(self.name_ids)
        if len(self.names) < MIN_NAMES:
            raise ValueError(
                f"only {len(self.names)} of the {len(NAMES)} candidate names are single tokens in this tokenizer; "
                f"IOI needs at least {MIN_NAMES}."
            )
        rng = random.Random(seed)
        prompts = []
        for i in range(n_prompts):
            # Consecutive pairs share a template, one prompt of each order: every even prefix is balanced.
            template = self.templates[(i // 2) % len(self.templates)]
            io, s = rng.sample(self.names, 2)
            prompts.append(make_prompt(template, ORDERS[i % 2], io, s, s, rng.choice(PLACES), rng.choice(OBJECTS)))
        self._tokenize(prompts)

    def _tokenize(self, prompts: list[IOIPrompt]) -> None:
        """Set `prompts` and the tensors: tokens, lengths, name ids and word positions."""
        self.prompts = prompts
        encoded = self.tokenizer(
            [prompt.text for prompt in prompts], add_special_tokens=False, return_offsets_mapping=True
        )
        bos = [self.tokenizer.bos_token_id] if self.prepend_bos else []
        rows, word_idx = [], {"IO": [], "S1": [], "S2": [], "END": []}
        for prompt, ids, offsets in zip(prompts, encoded["input_ids"], encoded["offset_mapping"]):
            for role, name in (("IO", prompt.io), ("S1", prompt.s), ("S2", prompt.s2)):
                # The token covering the name's first letter: some tokenizers count the leading space, some not.
                pos = next(i for i, (start, end) in enumerate(offsets) if start <= prompt.char_idx[role] < end)
                if ids[pos] != self.name_ids[name]:
                    raise ValueError(
                        f"{name!r} is not one token in {prompt.text!r}; end each name with a space or punctuation."
                    )
                word_idx[role].append(len(bos) + pos)
            word_idx["END"].append(len(bos) + len(ids) - 1)
            rows.append(bos + ids)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        width = max(len(row) for row in rows)
        tensor = partial(torch.tensor, device=self.device)
        self.tokens = tensor([row + [pad] * (width - len(row)) for row in rows])
        self.lengths = tensor([len(row) for row in rows])
        self.io_tokens = tensor([self.name_ids[prompt.io] for prompt in prompts])
        self.s_tokens = tensor([self.name_ids[prompt.s] for prompt in prompts])
        self.word_idx = {role: tensor(positions) for role, positions in word_idx.items()}
        self.word_idx["S1+1"] = self.word_idx["S1"] + 1  # where induction heads look from S2

    def corrupted(self, kind: str = "ABC") -> IOIDataset:
        """The same prompts, token-aligned with these, corrupted in one of two ways.

        "ABC": IO, S1 and S2 replaced by three other names each (no name information left).
        "ABA": only S2 replaced by the IO name (the repeated name, hence the answer, flips to S).
        """
        if kind not in CORRUPTIONS:
            raise ValueError(f"kind must be one of {CORRUPTIONS}, not {kind!r}.")
        rng = random.Random(f"{self.seed}-{kind}")
        prompts = []
        for p in self.prompts:
            if kind == "ABA":
                prompts.append(make_prompt(p.template, p.order, p.io, p.s, p.io, p.place, p.obj))
                continue
            c1, c2, c3 = rng.sample([name for name in self.names if name not in (p.io, p.s)], 3)
            prompts.append(make_prompt(p.template, p.order, c1, c2, c3, p.place, p.obj))
        new = copy.copy(self)
        new._tokenize(prompts)
        # Single-token names keep every other token in place in the tokenizers we know; check, never assume.
        if not torch.equal(new.lengths, self.lengths) or any(
            not torch.equal(new.word_idx[role], self.word_idx[role]) for role in self.word_idx
        ):
            raise RuntimeError("the corrupted prompts do not line up token by token with the clean ones in this tokenizer.")
        return new

    def __len__(self) -> int:
        """The number of prompts."""
        return len(self.prompts)

    def __getitem__(self, index: int | slice) -> IOIDataset:
        """The prompts at `index` as a dataset (an int gives a batch of one), padded to their own longest."""
        if isinstance(index, int):
            position = range(len(self))[index]  # IndexError past the end, which also ends iteration
            index = slice(position, position + 1)
        new = copy.copy(self)
        new._tokenize(self.prompts[index])
        return new

    def __repr__(self) -> str:
        """Size, orders, templates and seed."""
        abba = sum(prompt.order == "ABBA" for prompt in self.prompts)
        return (
            f"IOIDataset({len(self)} prompts: {abba} ABBA, {len(self) - abba} BABA; "
            f"{len(self.templates)} templates, {len(self.names)} names, seed={self.seed})"
        )
