"""The part-of-speech probing task: one labelled row per lexicon word, at the word's own token, in both contexts."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import pytest
import standins  # tests/standins.py: GPT-2's real tokenizer files, offline
import torch
from transformers import GPT2TokenizerFast

import mikit
from mikit.datasets.probing import LEXICON, POS, PartOfSpeechDataset


@pytest.fixture(scope="module")
def gpt2_tokenizer():
    return GPT2TokenizerFast.from_pretrained(standins.gpt2_folder())


@pytest.mark.parametrize("context", ["sentences", "lists"])
def test_every_row_is_its_word_at_its_own_token(gpt2_tokenizer, context):
    ds = PartOfSpeechDataset(gpt2_tokenizer, n_sentences=40, seed=0, context=context)
    assert len(ds) == len(ds.words) == len(ds.sentence) == len(ds.position) and len(ds) >= 150
    for s, p, label, word in zip(ds.sentence.tolist(), ds.position.tolist(), ds.labels.tolist(), ds.words):
        assert gpt2_tokenizer.decode(ds.tokens[s, p]) == f" {word}" and word in LEXICON[POS[label]]
        assert f" {word}" in ds.texts[s]
    # BOS first, then the sentence as the tokenizer reads it whole; right padding after it
    for s, text in enumerate(ds.texts):
        row = [gpt2_tokenizer.bos_token_id] + gpt2_tokenizer.encode(text)
        assert ds.tokens[s, :ds.lengths[s]].tolist() == row
    assert set(ds.labels.tolist()) == {0, 1, 2} and len(set(ds.words)) > 40
    again = PartOfSpeechDataset(gpt2_tokenizer, n_sentences=40, seed=0, context=context)
    assert torch.equal(again.tokens, ds.tokens) and again.words == ds.words


def test_lists_draw_classes_evenly_and_classes_can_be_restricted(gpt2_tokenizer):
    ds = PartOfSpeechDataset(gpt2_tokenizer, n_sentences=100, context="lists")
    counts = torch.bincount(ds.labels)
    assert counts.min() > 0.25 * len(ds) and ds.texts[0].startswith("Words: ")
    binary = PartOfSpeechDataset(gpt2_tokenizer, n_sentences=30, classes=("noun", "verb"))
    assert binary.classes == ("noun", "verb") and set(binary.labels.tolist()) == {0, 1}
    assert all(word not in LEXICON["adjective"] for word in binary.words)
    assert "PartOfSpeechDataset(30 sentences" in repr(binary)


def test_gather_takes_each_word_or_the_token_before_it(gpt2_tokenizer):
    ds = PartOfSpeechDataset(gpt2_tokenizer, n_sentences=5)
    acts = torch.arange(ds.tokens.numel(), dtype=torch.float).view(*ds.tokens.shape, 1).expand(-1, -1, 3)
    rows = ds.gather(acts)
    assert rows.shape == (len(ds), 3)
    assert rows[:, 0].tolist() == (ds.sentence * ds.tokens.shape[1] + ds.position).float().tolist()
    assert (ds.gather(acts, offset=-1)[:, 0] == rows[:, 0] - 1).all()


def test_bad_input_is_one_sentence(gpt2_tokenizer):
    ds = PartOfSpeechDataset(gpt2_tokenizer, n_sentences=3)
    for call, message in [
        (lambda: PartOfSpeechDataset(gpt2_tokenizer, n_sentences=0), "n_sentences must be a positive integer"),
        (lambda: PartOfSpeechDataset(gpt2_tokenizer, classes=("noun",)), "two or more of"),
        (lambda: PartOfSpeechDataset(gpt2_tokenizer, classes=("noun", "adverb")), "two or more of"),
        (lambda: PartOfSpeechDataset(gpt2_tokenizer, context="poems"), "context must be one of"),
        (lambda: ds.gather(torch.zeros(3, 2, 4)), "batch and pos"),
        (lambda: ds.gather(torch.zeros(*ds.tokens.shape, 4), offset=-20), "outside their sentence"),
    ]:
        with pytest.raises(ValueError, match=message) as error:
            call()
        assert str(error.value).endswith(".") and ". " not in str(error.value)


def test_smollm2_reads_each_word_as_one_token_after_its_bos():
    model = mikit.load_model("smollm2-135m", device="cpu")
    ds = PartOfSpeechDataset(model, n_sentences=4, seed=1)
    assert (ds.tokens[:, 0] == 1).all() and model.tokenizer.decode(ds.tokens[0, 0]) == "<|im_start|>"
    assert all(model.tokenizer.decode(ds.tokens[s, p]) == f" {w}"
               for s, p, w in zip(ds.sentence.tolist(), ds.position.tolist(), ds.words))
    # right padding leaves every word's activations as they are when its sentence runs alone
    with torch.inference_mode():
        _, cache = model.run_with_cache(ds.tokens, names_filter="blocks.3.hook_resid_post")
        padded = ds.gather(cache["blocks.3.hook_resid_post"])
        short = int(ds.lengths.argmin())
        _, alone = model.run_with_cache(ds.tokens[short:short + 1, :ds.lengths[short]],
                                        names_filter="blocks.3.hook_resid_post")
    rows = (ds.sentence == short).nonzero().flatten()
    torch.testing.assert_close(padded[rows], alone["blocks.3.hook_resid_post"][0, ds.position[rows]],
                               atol=1e-4, rtol=1e-4)
