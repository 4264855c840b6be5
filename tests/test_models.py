"""mikit.models: SmolLM2 from its GGUF matches Hugging Face, caches safely, and bad names fail at once."""

import os

# Before anything imports huggingface_hub, which reads it once: these tests must never touch the network.
os.environ["HF_HUB_OFFLINE"] = "1"

import importlib
import json
import time

import pytest
import torch
from jaxtyping import Float, Int
from safetensors import safe_open
from torch import Tensor
from transformer_lens import HookedTransformer, HookedTransformerConfig

from mikit import models, storage

IOI_PROMPT = "When Mary and John went to the store, John gave a drink to"
PROMPTS = [IOI_PROMPT, "The capital of France is Paris, and the capital of Italy is"]


@pytest.fixture(scope="module")
def hf_smollm2():
    """The Hugging Face SmolLM2 and tokenizer, read from the GGUF once for the whole module (~30 s)."""
    return models.load_hf_smollm2()


@pytest.fixture(scope="module")
def smollm2(hf_smollm2) -> HookedTransformer:
    """`load_model("smollm2-135m")` from the default cache; if that is empty, fill it from `hf_smollm2`."""
    # Reusing the loaded HF model spares a second ~30 s read of the GGUF on a fresh machine.
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(models, "load_hf_smollm2", lambda: hf_smollm2)
        return models.load_model("smollm2-135m", device="cpu")


@torch.inference_mode()
def test_smollm2_matches_hugging_face(smollm2, hf_smollm2):
    hf_model, hf_tokenizer = hf_smollm2
    assert smollm2.to_str_tokens("When Mary and John") == ["<|im_start|>", "When", " Mary", " and", " John"]
    for prompt in PROMPTS:
        tokens = smollm2.to_tokens(prompt)
        assert tokens[0].tolist() == [1, *hf_tokenizer(prompt)["input_ids"]]
        diff = (smollm2(tokens) - hf_model(tokens).logits).abs().max().item()
        print(f"\nmax |logit difference| TransformerLens vs Hugging Face: {diff:.2e} on {prompt!r}")
        assert diff <= 1e-3


@torch.inference_mode()
def test_smollm2_cache_is_atomic_safe_and_fast(tmp_path, monkeypatch, hf_smollm2):
    monkeypatch.setenv("MIKIT_CACHE_DIR", str(tmp_path))
    hf_model = hf_smollm2[0]

    class CrashingTokenizer:
        def save_pretrained(self, folder):
            raise RuntimeError("disk full")

    # A crash halfway through writing leaves neither a cache nor its scratch folder behind.
    monkeypatch.setattr(models, "load_hf_smollm2", lambda: (hf_model, CrashingTokenizer()))
    with pytest.raises(RuntimeError, match="disk full"):
        models.load_model("smollm2-135m", device="cpu")
    assert list(tmp_path.iterdir()) == []

    monkeypatch.setattr(models, "load_hf_smollm2", lambda: hf_smollm2)
    start = time.perf_counter()
    first = models.load_model("smollm2-135m", device="cpu")
    print(f"\nSmolLM2 conversion from the loaded HF model, into an empty cache: {time.perf_counter() - start:.1f} s")

    folder = tmp_path / models.SMOLLM2_CACHE
    assert list(tmp_path.iterdir()) == [folder]
    files = {path.name: path for path in folder.iterdir()}
    assert {storage.WEIGHTS_FILE, storage.CONFIG_FILE, "tokenizer.json"} <= files.keys()
    # Only safetensors, JSON and the chat-template text: nothing that unpickles.
    assert {path.suffix for path in files.values()} <= {".safetensors", ".json", ".jinja"}
    for path in files.values():
        if path.suffix == ".json":
            json.loads(path.read_text())
    with safe_open(files[storage.WEIGHTS_FILE], framework="pt") as weights:
        assert "unembed.W_U" in weights.keys()

    monkeypatch.setattr(models, "load_hf_smollm2", lambda: pytest.fail("a cached load must not read the GGUF"))
    start = time.perf_counter()
    second = models.load_model("smollm2-135m", device="cpu")
    print(f"SmolLM2 load from the cache: {time.perf_counter() - start:.1f} s")
    tokens = second.to_tokens(PROMPTS)
    assert torch.equal(first(tokens), second(tokens))


@pytest.mark.parametrize("env", [{"HF_HUB_OFFLINE": "1"}, {"HF_HUB_OFFLINE": "", "MIKIT_MODE": "offline"}])
def test_hub_name_offline_fails_at_once(monkeypatch, env):
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    # "At once" means no network attempt at all: any connection or hub download would fail the test.
    def no_network(*args, **kwargs):
        raise AssertionError("offline mode touched the network")

    monkeypatch.setattr(models.socket, "create_connection", no_network)
    monkeypatch.setattr(models.HookedTransformer, "from_pretrained", no_network)
    assert not models.hub_available()
    with pytest.raises(ValueError) as error:
        models.load_model("gpt2-small")
    message = str(error.value)
    assert "'gpt2-small'" in message and "smollm2-135m" in message
    assert message.endswith(".") and ". " not in message  # one sentence


def test_unknown_name_lists_offline_models_and_mentions_the_hub():
    with pytest.raises(ValueError) as error:
        models.load_model("gpt-5")
    message = str(error.value)
    assert "'gpt-5'" in message and all(name in message for name in models.OFFLINE_MODELS)
    assert "hub" in message.lower()


def test_zoo_names_go_to_the_zoo(monkeypatch):
    import mikit.zoo

    calls = []

    def fake_load_zoo_model(name, device):
        calls.append((name, device))
        return torch.nn.Linear(1, 1).train()

    monkeypatch.setattr(mikit.zoo, "load_zoo_model", fake_load_zoo_model)
    assert "attn-only-2l" in models.OFFLINE_MODELS
    assert not models.load_model("attn-only-2l").training
    assert calls == [("attn-only-2l", "cuda" if torch.cuda.is_available() else "cpu")]


def induction_scores(
    model: HookedTransformer, tokens: Int[Tensor, "batch pos"], seq_len: int
) -> Float[Tensor, "layer head"]:
    """On `[BOS, r, r]`: mean attention from each second-copy token to the token after its first copy."""
    _, cache = model.run_with_cache(tokens, names_filter=lambda name: name.endswith("hook_pattern"))
    patterns = torch.stack([cache["pattern", layer] for layer in range(model.cfg.n_layers)])  # layer batch head q k
    # Query n + 1 + i (second copy of r_i) should attend to key 2 + i: seq_len - 1 positions back.
    return patterns.diagonal(offset=-(seq_len - 1), dim1=-2, dim2=-1)[..., -seq_len:].mean(dim=(1, -1))


@torch.inference_mode()
def test_smollm2_does_ioi_and_has_induction_heads(smollm2):
    logits = smollm2(IOI_PROMPT)[0, -1]
    logit_diff = (logits[smollm2.to_single_token(" Mary")] - logits[smollm2.to_single_token(" John")]).item()
    print(f"\nIOI logit difference ' Mary' - ' John': {logit_diff:.2f}")
    assert logit_diff > 0

    seq_len = 50
    random = torch.randint(1000, 20000, (8, seq_len), generator=torch.Generator().manual_seed(0))
    tokens = torch.cat([torch.full((8, 1), smollm2.tokenizer.bos_token_id), random, random], dim=1)
    scores = induction_scores(smollm2, tokens, seq_len)
    top = scores.flatten().topk(3)
    heads = [f"L{index // smollm2.cfg.n_heads}H{index % smollm2.cfg.n_heads}" for index in top.indices.tolist()]
    print("top induction heads:", ", ".join(f"{head} {score:.2f}" for head, score in zip(heads, top.values.tolist())))
    assert {"L18H6", "L17H3", "L17H4"} & set(heads)


def test_weights_are_stored_in_the_order_transformer_lens_multiplies_them(smollm2):
    """TransformerLens copies e.g. `W_U.T.contiguous()` in every forward pass; `load_model` makes those copies no-ops."""
    stored = {
        name: param.permute(models._PRODUCT_ORDER[name.rsplit(".", 1)[-1]]).is_contiguous()
        for name, param in smollm2.named_parameters()
        if name.rsplit(".", 1)[-1] in models._PRODUCT_ORDER
    }
    # Per layer W_Q, _W_K, _W_V, W_O, W_in, W_gate, W_out; then W_U.
    assert len(stored) == 7 * smollm2.cfg.n_layers + 1 and all(stored.values())


@pytest.mark.parametrize("grouped_gated", [True, False], ids=["llama-like", "gpt2-like"])
def test_product_layout_changes_no_result(grouped_gated):
    extra = dict(n_key_value_heads=2, act_fn="silu", gated_mlp=True, normalization_type="RMS",
                 positional_embedding_type="rotary") if grouped_gated else dict(act_fn="gelu")
    model = HookedTransformer(HookedTransformerConfig(n_layers=2, d_model=32, n_heads=4, d_head=8, d_mlp=64,
                                                      d_vocab=50, n_ctx=16, seed=0, **extra)).eval()
    tokens = torch.randint(50, (2, 10), generator=torch.Generator().manual_seed(0))
    before = model(tokens)
    assert models._product_layout(model) is model
    assert torch.equal(model(tokens), before)


def test_list_models_names_every_model_with_where_it_runs_and_its_size(capsys):
    import mikit
    from mikit.zoo import ZOO_MODELS, load_zoo_model

    rows = mikit.list_models()
    printed = capsys.readouterr().out
    by_name = {row["name"]: row for row in rows}
    expected = {*ZOO_MODELS, "attn-only-2l-checkpoints", "smollm2-135m", "planted-induction", "sparse-attn-only-2l",
                "tiny-t2i", "tiny-captioner"}
    assert expected <= by_name.keys()
    assert all(name in printed for name in by_name)
    for name in expected:
        row = by_name[name]
        assert row["runs"] == "offline" and row["parameters"] > 0 and row["disk_mb"] > 0 and row["good_for"], row
    # Sizes are read from the files: the count matches the loaded model's parameters.
    assert by_name["attn-only-2l"]["parameters"] == sum(p.numel() for p in load_zoo_model("attn-only-2l").parameters())
    assert by_name["smollm2-135m"]["disk_mb"] > 90  # the 4-bit GGUF file
    hub = [row for row in rows if row["runs"] == "full"]
    assert len(hub) == 1 and "gpt2-small" in hub[0]["load"] and "any TransformerLens hub" in hub[0]["name"]
    assert mikit.list_models(show=False) == rows and capsys.readouterr().out == ""
    # Every load call names a function that exists (importing its module, never running it).
    for row in rows:
        if row["load"].startswith("mikit."):
            path = row["load"].split("(")[0]
            module, _, function = path.rpartition(".")
            assert callable(getattr(importlib.import_module(module), function)), row["load"]
