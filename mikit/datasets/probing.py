"""A word-level probing task: the part of speech of single-token words, in short sentences or in word lists.

    ds = PartOfSpeechDataset(model, n_sentences=80, seed=0)
    _, cache = model.run_with_cache(ds.tokens, names_filter=lambda name: name.endswith("hook_resid_post"))
    acts = ds.gather(cache["blocks.10.hook_resid_post"])     # (word, d_model): one row per labelled word
    ds.labels, ds.words                                       # class ids into ds.classes, and each row's word type

With `context="sentences"` every sentence is a template ("The {adjective} {noun} {verb} the {noun}.") filled from
a hand-written lexicon of unambiguous words: concrete nouns, past-tense transitive verbs, adjectives. With
`context="lists"` each row is a list of lexicon words ("Words: visited, pushed, baker, warm, chose."), each word's
class drawn uniformly, so nothing before a word tells its class. Each tokenizer keeps the words that are
one token with a leading space, so each labelled word is exactly one row. `ds.words` is the word type of each row:
give it to `mikit.probes` as the groups of a split and the types of a control task.

What a probe can lean on besides the word in sentences: its position in the template and its neighbours ("the"
before a noun). Templates of several shapes move the classes across positions, but a probe may still read the
context rather than the word; `gather(acts, offset=-1)` takes the token before each word, which a causal model
computed without seeing the word, as a context-only baseline.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence

import torch
from jaxtyping import Float, Int
from torch import Tensor
from transformer_lens import HookedTransformer
from transformers import PreTrainedTokenizerBase

POS = ("noun", "verb", "adjective")
LEXICON = {
    "noun": """dog cat table river teacher window garden apple doctor chair house bird car city child road ship horse
        book lamp forest farmer letter kitchen bottle mountain student painter bridge tree baker girl boy king queen
        sailor soldier village island""".split(),
    "verb": """ate saw found took gave made held built wrote sold bought broke drove chose kept met lost caught carried
        pushed watched painted cleaned opened closed visited followed moved dropped climbed washed fixed sent stole
        hid""".split(),
    "adjective": """red old small happy quiet bright heavy young tall cold green big tiny angry clever lazy brave dark
        warm strange proud gentle famous empty rich poor wild noisy busy sleepy""".split(),
}
# Classes sit at different positions and after different words from template to template.
TEMPLATES = (
    "The {adjective} {noun} {verb} the {noun}.",
    "Yesterday a {noun} {verb} my {adjective} {noun}.",
    "My {adjective} {noun} {verb} a {noun} in the {noun}.",
    "Every {noun} {verb} it, and the {adjective} {noun} {verb} them.",
    "A very {adjective} {noun} {verb} the {adjective} {noun} today.",
    "She {verb} one {noun}, and then he {verb} the {adjective} {noun}.",
    "It was {adjective}, so the {noun} {verb} it.",
)
SLOT = re.compile(r"\{(\w+)\}")
# "sentences" fill TEMPLATES; "lists" write "Words: red, dog, ate, …", each word's class drawn uniformly, so
# nothing before a word tells its class: a probe must read the word itself.
CONTEXTS = ("sentences", "lists")
LIST_LENGTH = 6


class PartOfSpeechDataset:
    """Template sentences (right-padded, BOS first) and one labelled row per lexicon word in them."""

    tokens: Int[Tensor, "batch pos"]
    sentence: Int[Tensor, "word"]
    position: Int[Tensor, "word"]
    labels: Int[Tensor, "word"]

    def __init__(
        self, model_or_tokenizer: HookedTransformer | PreTrainedTokenizerBase, n_sentences: int = 80, seed: int = 0,
        classes: Sequence[str] = POS, context: str = "sentences", prepend_bos: bool = True,
    ):
        is_model = isinstance(model_or_tokenizer, HookedTransformer)
        self.tokenizer = model_or_tokenizer.tokenizer if is_model else model_or_tokenizer
        device = model_or_tokenizer.cfg.device if is_model else "cpu"
        if not isinstance(n_sentences, int) or n_sentences < 1:
            raise ValueError(f"n_sentences must be a positive integer, not {n_sentences!r}.")
        unknown = [c for c in classes if c not in POS]
        if unknown or len(set(classes)) < 2:
            raise ValueError(f"classes must be two or more of {POS}, not {tuple(classes)!r}.")
        if context not in CONTEXTS:
            raise ValueError(f"context must be one of {CONTEXTS}, not {context!r}.")
        self.classes, self.seed, self.context = tuple(classes), seed, context
        encode = lambda text: self.tokenizer.encode(text, add_special_tokens=False)  # noqa: E731
        self.lexicon = {pos: [w for w in words if len(encode(f" {w}")) == 1] for pos, words in LEXICON.items()}
        short = [pos for pos, words in self.lexicon.items() if len(words) < 4]
        if short:
            raise ValueError(f"this tokenizer reads fewer than 4 {short[0]}s of the lexicon as one token each.")
        bos = [self.tokenizer.bos_token_id] if prepend_bos else []
        if prepend_bos and bos[0] is None:
            raise ValueError("this tokenizer has no BOS token; pass prepend_bos=False.")
        rng = random.Random(seed)
        rows, sentence, position, labels, self.words, self.texts = [], [], [], [], [], []
        for index in range(n_sentences):
            if context == "sentences":
                template = rng.choice(TEMPLATES)
            else:
                template = "Words:" + ",".join(" {%s}" % rng.choice(self.classes) for _ in range(LIST_LENGTH)) + "."
            fills = [rng.choice(self.lexicon[slot]) for slot in SLOT.findall(template)]
            pieces = SLOT.split(template)  # text, slot, text, slot, …, text
            text = ""
            for k, (slot, word) in enumerate(zip(pieces[1::2], fills)):
                text += pieces[2 * k] + word
                prefix = encode(text)
                if slot in self.classes:
                    sentence.append(index)
                    position.append(len(bos) + len(prefix) - 1)
                    labels.append(self.classes.index(slot))
                    self.words.append(word)
            text += pieces[-1]
            row = bos + encode(text)
            for s, p, w in zip(sentence, position, self.words):
                if s == index and self.tokenizer.decode(row[p]) != f" {w}":
                    raise RuntimeError(f"{w!r} is not one token where it stands in {text!r} in this tokenizer.")
            rows.append(row)
            self.texts.append(text)
        length = max(map(len, rows))
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        # Right padding: a causal model never lets a labelled word see the padding after it.
        self.tokens = torch.tensor([row + [pad] * (length - len(row)) for row in rows], device=device)
        self.lengths = torch.tensor([len(row) for row in rows], device=device)
        self.sentence = torch.tensor(sentence, device=device)
        self.position = torch.tensor(position, device=device)
        self.labels = torch.tensor(labels, device=device)

    def gather(self, acts: Float[Tensor, "batch pos d_model"], *, offset: int = 0) -> Float[Tensor, "word d_model"]:
        """One row of `acts` per labelled word, in the order of `labels` and `words`; `offset=-1` takes the
        token before each word instead (in a causal model it has not seen the word: a context-only baseline)."""
        if acts.ndim != 3 or acts.shape[:2] != self.tokens.shape:
            raise ValueError(f"acts must be (batch, pos, d_model) with batch and pos {tuple(self.tokens.shape)} "
                             f"as these tokens, not {tuple(acts.shape)}.")
        position = self.position + offset
        if position.min() < 0 or (position >= self.lengths[self.sentence]).any():
            raise ValueError(f"offset {offset} moves some words outside their sentence.")
        return acts[self.sentence.to(acts.device), position.to(acts.device)]

    def __len__(self) -> int:
        return len(self.labels)

    def __repr__(self) -> str:
        counts = torch.bincount(self.labels.cpu(), minlength=len(self.classes)).tolist()
        per_class = ", ".join(f"{n} {c}s" for c, n in zip(self.classes, counts))
        return (f"PartOfSpeechDataset({len(self.texts)} {self.context}, {len(self)} words: {per_class}; "
                f"{len(set(self.words))} word types, seed={self.seed})")
