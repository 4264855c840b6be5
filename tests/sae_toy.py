"""The toy setting of the SAE latent, steering and viz tests: the 2-layer character zoo model, a random TopK SAE
with `b_dec` at the data's median (so latents fire on some tokens and not others), and 12 rows of text."""

import pytest
import torch

import mikit
from mikit.sae import TopKSAE

HOOK = "blocks.1.hook_resid_pre"


def toy_model():
    return mikit.load_model("attn-only-2l", device="cpu")


def toy_sae(model) -> TopKSAE:
    torch.manual_seed(0)
    sae = TopKSAE(model.cfg.d_model, 64, k=4, metadata={"hook_name": HOOK})
    rows = model.to_tokens(["the cat sat on the mat", "induction heads copy the next token"])
    _, cache = model.run_with_cache(rows, names_filter=HOOK)
    sae.initialize_b_dec_(cache[HOOK][:, 1:].flatten(0, 1))
    return sae.eval()


def toy_rows(model):
    text = "The quick brown fox jumps over the lazy dog. " * 3
    return model.to_tokens([text[i : i + 40] for i in range(0, 60, 5)])  # (12, 41), BOS first


# Module-scoped fixtures for the test files that import them (`from sae_toy import model, sae, rows`).
@pytest.fixture(scope="module")
def model():
    return toy_model()


@pytest.fixture(scope="module")
def sae(model):
    return toy_sae(model)


@pytest.fixture(scope="module")
def rows(model):
    return toy_rows(model)
