"""IOI techniques on SmolLM2: DLA by hand, END attention, and circuit faithfulness."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch

import mikit
from mikit import ioi
from mikit.datasets.ioi import IOIDataset

# Found in SmolLM2-135M by ranking heads with attribution patching (towards the ABC template means)
# and greedily pruning 25 → 20 heads on seed-0 prompts; measured to keep 123 % / 116 % of the
# logit difference on seed-1 / seed-2 prompts.
SMOLLM2_CIRCUIT = [
    (8, 0), (8, 1), (9, 2), (11, 8), (16, 0), (17, 4), (17, 5), (18, 0), (18, 1), (18, 2),
    (18, 6), (19, 2), (19, 4), (20, 0), (23, 1), (23, 3), (23, 7), (24, 4), (28, 1), (29, 1),
]


@pytest.fixture(scope="module")
def lm():
    return mikit.load_model("smollm2-135m", device="cpu")


@pytest.fixture(scope="module")
def data(lm):
    ds = IOIDataset(lm, n_prompts=24, seed=1)
    return ds, ds.corrupted("ABC")


def test_head_dla_matches_a_hand_computation(lm, data):
    ds, _ = data
    with torch.no_grad():
        _, cache = lm.run_with_cache(ds.tokens)
    dla = ioi.head_dla(cache, lm, ds)
    batch, end = torch.arange(len(ds)), ds.word_idx["END"]
    scale = cache["ln_final.hook_scale"][batch, end]  # (batch, 1)
    direction = lm.W_U[:, ds.io_tokens] - lm.W_U[:, ds.s_tokens]  # (d_model, batch)
    for layer, head in [(23, 3), (29, 0), (5, 2)]:
        out = cache["z", layer][batch, end, head] @ lm.W_O[layer, head] / scale
        want = torch.einsum("bd,db->b", out, direction).mean()
        torch.testing.assert_close(dla[layer, head], want, atol=1e-4, rtol=1e-4)


def test_attention_to_reads_the_end_row(data):
    ds, _ = data
    pos = int(ds.tokens.shape[1])
    pattern = torch.zeros(len(ds), 2, pos, pos)
    batch = torch.arange(len(ds))
    pattern[batch, 0, ds.word_idx["END"], ds.word_idx["IO"]] = 1.0
    pattern[batch, 1, ds.word_idx["END"], ds.word_idx["S2"]] = 1.0
    assert ioi.attention_to(pattern, ds, "IO").tolist() == [1.0, 0.0]
    assert ioi.attention_to(pattern, ds, "S2").tolist() == [0.0, 1.0]


def test_faithfulness_bounds(lm, data):
    ds, abc = data
    every_head = [(layer, head) for layer in range(lm.cfg.n_layers) for head in range(lm.cfg.n_heads)]
    assert ioi.faithfulness(lm, ds, every_head, abc) == pytest.approx(1.0, abs=1e-4)
    assert abs(ioi.faithfulness(lm, ds, [], abc)) < 0.2  # ablating every head removes the behaviour


def test_a_twenty_head_circuit_keeps_most_of_the_logit_diff(lm, data):
    ds, abc = data
    assert ioi.faithfulness(lm, ds, SMOLLM2_CIRCUIT, abc) >= 0.6


def test_template_means_need_a_matching_corruption(lm, data):
    ds, abc = data
    with torch.no_grad():
        _, cache = lm.run_with_cache(abc.tokens, names_filter=lambda name: name.endswith("hook_z"))
    other = IOIDataset(lm, n_prompts=4, seed=5, templates=["Afterwards [A] and [B] went to the [PLACE]. [B] gave a [OBJECT] to"])
    with pytest.raises(ValueError, match="no corrupted prompt has"):
        ioi.template_means(cache, abc, other)
