"""Greater-Than prompts: one length, the 01 corruption, the metric in both tokenizer modes, SmolLM2's behaviour."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import pytest
import standins  # tests/standins.py: GPT-2's real tokenizer files, offline
import torch
from transformers import GPT2TokenizerFast

import mikit
from mikit.datasets.greater_than import GreaterThanDataset, probability_difference, tokenizer_mode


@pytest.fixture(scope="module")
def smollm2():
    return mikit.load_model("smollm2-135m", device="cpu")


@pytest.fixture(scope="module")
def gpt2_tokenizer():
    return GPT2TokenizerFast.from_pretrained(standins.gpt2_folder())


def test_gpt2_reads_two_digit_years_and_the_prompts_line_up(gpt2_tokenizer):
    ds = GreaterThanDataset(gpt2_tokenizer, n_prompts=30, seed=0, prepend_bos=False)
    assert ds.mode == tokenizer_mode(gpt2_tokenizer) == "two-digit" and len(ds.answer_tokens) == 100
    noun, century, yy = ds.prompts[0]
    assert ds.texts[0] == f"The {noun} lasted from the year {century}{yy:02d} to the year {century}"
    assert gpt2_tokenizer.decode(ds.tokens[0, -1]) == f" {century}"  # the next token is the two digits YY
    bad = ds.corrupted()
    assert bad.tokens.shape == ds.tokens.shape and (bad.yy == 1).all()
    changed = (bad.tokens != ds.tokens).any(0).nonzero().flatten().tolist()
    assert len(changed) == 1 and gpt2_tokenizer.decode(bad.tokens[0, changed[0]]) == "01"  # only YY moves
    assert [gpt2_tokenizer.decode(t) for t in ds.tokens[:, changed[0]]] == [f"{yy:02d}" for _, _, yy in ds.prompts]


def test_smollm2_reads_digits_and_predicts_later_years(smollm2):
    ds = GreaterThanDataset(smollm2, n_prompts=60, seed=0)
    assert ds.mode == "digit" and smollm2.to_str_tokens(ds.tokens[0])[-2:] == ["1", str(ds.prompts[0][1])[1]]
    with torch.no_grad():
        clean = probability_difference(smollm2(ds.tokens), ds)
        corrupted = probability_difference(smollm2(ds.corrupted().tokens), ds)
    print(f"\nSmolLM2 Greater-Than: probability difference {clean.mean():.2f} (01 prompts: {corrupted.mean():.2f})")
    assert clean.mean() > 0.3 and (clean > 0).float().mean() >= 0.9 and corrupted.mean() < clean.mean() - 0.5


def test_probability_difference_by_hand():
    class Two:  # a two-digit dataset whose answers are vocabulary ids 0..99
        mode, answer_tokens, yy = "two-digit", torch.arange(100), torch.tensor([32, 98])

    class Digit:  # a digit dataset whose answers are vocabulary ids 100..109
        mode, answer_tokens, yy = "digit", torch.arange(100, 110), torch.tensor([32, 38])

    logits = torch.randn(2, 3, 120)
    probs = logits[:, -1].softmax(-1)
    want = torch.stack([probs[0, 33:100].sum() - probs[0, :33].sum(), probs[1, 99] - probs[1, :99].sum()])
    torch.testing.assert_close(probability_difference(logits, Two()), want)
    # tens digit 3: digits 4-9 make the year later, 0-2 earlier, 3 leaves it open
    want = torch.stack([p[104:110].sum() - p[100:103].sum() for p in probs])
    torch.testing.assert_close(probability_difference(logits, Digit()), want)


def test_bad_input_is_one_sentence(gpt2_tokenizer):
    with pytest.raises(ValueError, match="n_prompts must be a positive integer"):
        GreaterThanDataset(gpt2_tokenizer, n_prompts=0)
