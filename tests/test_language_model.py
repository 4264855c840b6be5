"""mikit.language_model: SmolLM2 in nnsight matches the HookedTransformer, one set of names across architectures,
and remote= reaches the trace behind a version gate (tested without a network)."""

import socket

import nnsight
import nnsight.ndif
import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

from mikit import language_model as lm_module
from mikit.language_model import (
    HOOK_NAMES,
    check_remote_version,
    load_language_model,
    module_path,
    n_layers,
    read,
    residual_stream,
    write,
)

pytestmark = pytest.mark.usefixtures("one_thread")

PROMPTS = ["When Mary and John went to the store, John gave a drink to", "The Eiffel Tower is in the city of"]


def _no_network(*args, **kwargs):
    raise AssertionError("offline use reached for the network")


@pytest.fixture(scope="module")
def smollm2():
    """SmolLM2 twice, loaded once per module with every socket connection refused: (nnsight model, HookedTransformer)."""
    import mikit

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(socket.socket, "connect", _no_network)
        patch.setattr(socket, "create_connection", _no_network)
        patch.setattr(lm_module, "check_remote_version", _no_network)
        return load_language_model(device="cpu"), mikit.load_model("smollm2-135m", device="cpu")


# ---- SmolLM2: the nnsight path and the HookedTransformer agree ------------------------------------


def test_smollm2_tokens_follow_the_hooked_transformer(smollm2):
    lm, ht = smollm2
    for prompt in PROMPTS:
        assert lm.tokenizer(prompt).input_ids == ht.to_tokens(prompt)[0].tolist()  # BOS <|im_start|> first
        assert lm.tokenizer(prompt, add_special_tokens=False).input_ids == ht.to_tokens(prompt, prepend_bos=False)[0].tolist()
    assert lm.tokenizer(PROMPTS[0]).input_ids[0] == lm_module.BOS_ID


def test_smollm2_residual_stream_matches_the_hooked_transformer(smollm2, monkeypatch):
    lm, ht = smollm2
    monkeypatch.setattr(socket.socket, "connect", _no_network)
    monkeypatch.setattr(lm_module, "check_remote_version", _no_network)  # remote=False never asks NDIF
    ours = residual_stream(lm, PROMPTS)  # one batch, padded on the left
    assert ours.shape[:2] == (30, 2)
    for i, prompt in enumerate(PROMPTS):
        tokens = ht.to_tokens(prompt)
        _, cache = ht.run_with_cache(tokens, names_filter=lambda name: name.endswith("hook_resid_post"))
        theirs = torch.stack([cache[f"blocks.{layer}.hook_resid_post"][0] for layer in range(30)])
        mine = ours[:, i, -tokens.shape[1]:]
        # In units of each position's RMS, which is what the next layer's RMSNorm reads: the BOS position's
        # residual reaches 2.5e4 (an attention sink), where float32's spacing alone is 2e-3.
        rms = theirs.pow(2).mean(-1, keepdim=True).sqrt()
        error = ((mine - theirs).abs() / rms).amax(dim=(1, 2))
        print(f"prompt {i}: max |nnsight - TL| / RMS per layer: max {error.max():.1e}, "
              f"absolute {(mine - theirs).abs().max():.1e} (BOS) / {(mine - theirs)[:, 1:].abs().max():.1e} (rest)")
        assert error.max() <= 1e-4, f"layers differ by up to {error.max():.1e} of the residual's RMS"


# ---- one set of names on tiny GPT-2 and Qwen2 -------------------------------------------------------


def _tiny(kind: str):
    """A 2-layer random GPT-2 or Qwen2 (d_model 32) in nnsight, with a word-level tokenizer: nothing downloaded."""
    torch.manual_seed(0)
    if kind == "gpt2":
        model = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=65, n_positions=64))
    else:
        model = Qwen2ForCausalLM(Qwen2Config(num_hidden_layers=2, hidden_size=32, intermediate_size=64,
                                             num_attention_heads=2, num_key_value_heads=1, vocab_size=65))
    words = Tokenizer(models.WordLevel({f"w{i}": i for i in range(64)} | {"[UNK]": 64}, unk_token="[UNK]"))
    words.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=words, name_or_path="tiny", eos_token="[UNK]")
    return nnsight.TransformersModel(model.eval(), tokenizer=tokenizer, task="text-generation")


@pytest.fixture(scope="module", params=["gpt2", "qwen2"])
def tiny(request):
    return _tiny(request.param)


def test_module_paths_per_architecture():
    gpt2, qwen2 = _tiny("gpt2"), _tiny("qwen2")
    want = {
        "blocks.1.hook_resid_post": ("transformer.h.1", "model.layers.1"),
        "blocks.0.hook_attn_out": ("transformer.h.0.attn", "model.layers.0.self_attn"),
        "blocks.1.hook_mlp_out": ("transformer.h.1.mlp", "model.layers.1.mlp"),
        "ln_final.hook_normalized": ("transformer.ln_f", "model.norm"),
        "unembed": ("lm_head", "lm_head"),
        "hook_embed": ("transformer.wte", "model.embed_tokens"),
    }
    for name, paths in want.items():
        assert (module_path(gpt2, name), module_path(qwen2, name)) == paths
    assert n_layers(gpt2) == n_layers(qwen2) == 2


def test_the_names_read_what_they_say(tiny):
    """resid_post[1] = resid_post[0] + attn_out[1] + mlp_out[1]; the unembedding of the final norm is the logits."""
    hf = tiny._module
    tokens = torch.tensor([[3, 14, 15, 9, 2]])
    with torch.no_grad(), tiny.trace(tokens):
        embed = read(tiny, "hook_embed").save()
        resid_0 = read(tiny, "blocks.0.hook_resid_post").save()
        attn_1 = read(tiny, "blocks.1.hook_attn_out").save()  # a tuple output in both: its first element
        mlp_1 = read(tiny, "blocks.1.hook_mlp_out").save()
        resid_1 = read(tiny, "blocks.1.hook_resid_post").save()
        normed = read(tiny, "ln_final.hook_normalized").save()
        logits = read(tiny, "unembed").save()
    with torch.no_grad():
        want = hf(tokens, output_hidden_states=True)
    embedding = hf.get_input_embeddings().weight
    torch.testing.assert_close(embed, embedding[tokens])
    torch.testing.assert_close(resid_0, want.hidden_states[1])  # the last hidden state is after the final norm
    torch.testing.assert_close(resid_1, resid_0 + attn_1 + mlp_1)
    torch.testing.assert_close(normed @ hf.lm_head.weight.T, want.logits)
    torch.testing.assert_close(logits, want.logits)


def test_write_replaces_the_activation_and_keeps_tuples(tiny):
    tokens = torch.tensor([[3, 14, 15, 9, 2]])
    with torch.no_grad(), tiny.trace(tokens):
        resid_0 = read(tiny, "blocks.0.hook_resid_post").save()
        write(tiny, "blocks.1.hook_attn_out", torch.zeros_like(read(tiny, "blocks.1.hook_attn_out")))
        mlp_1 = read(tiny, "blocks.1.hook_mlp_out").save()
        resid_1 = read(tiny, "blocks.1.hook_resid_post").save()
    torch.testing.assert_close(resid_1, resid_0 + mlp_1)
    vector = torch.randn(32)
    with torch.no_grad(), tiny.trace(tokens):
        write(tiny, "blocks.1.hook_resid_post", read(tiny, "blocks.1.hook_resid_post") + vector)
        steered = read(tiny, "ln_final.hook_normalized").save()
    with torch.no_grad(), tiny.trace(tokens):
        plain = read(tiny, "blocks.1.hook_resid_post").save()
    final_norm = lm_module._walk(tiny._module, module_path(tiny, "ln_final.hook_normalized"))
    with torch.no_grad():
        torch.testing.assert_close(steered, final_norm(plain + vector))


def test_residual_stream_on_a_batch_and_a_layer_subset(tiny):
    full = residual_stream(tiny, ["w1 w2 w3", "w4"])
    assert full.shape == (2, 2, 3, 32)
    torch.testing.assert_close(residual_stream(tiny, ["w1 w2 w3", "w4"], layers=[1])[0], full[1])
    # left padding: the short prompt's one token is its last position, and it reads as if alone
    torch.testing.assert_close(full[:, 1, -1], residual_stream(tiny, "w4")[:, 0, 0], atol=1e-5, rtol=1e-5)


def test_bad_names_get_one_sentence(tiny):
    with pytest.raises(ValueError, match=r"Unknown hook name 'blocks.0.hook_z': the names are hook_embed, "):
        module_path(tiny, "blocks.0.hook_z")
    with pytest.raises(ValueError, match="layer 2 is past the model's last layer, 1"):
        module_path(tiny, "blocks.2.hook_resid_post")
    bert_like = type("Model", (), {"config": type("Config", (), {"model_type": "bert"})()})()
    with pytest.raises(ValueError, match="No module names for model_type 'bert': known are gemma, "):
        module_path(bert_like, "unembed")


# ---- loading: names, modes and remote ---------------------------------------------------------------


def test_unknown_and_offline_model_names(monkeypatch):
    monkeypatch.setattr(socket.socket, "connect", _no_network)
    with pytest.raises(ValueError, match="Unknown model 'gpt2-small': the offline model is 'smollm2-135m'; .* 'gpt2'"):
        load_language_model("gpt2-small")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ValueError, match="'Qwen/Qwen2.5-0.5B' needs the Hugging Face Hub, which offline mode rules out"):
        load_language_model("Qwen/Qwen2.5-0.5B")
    with pytest.raises(ValueError, match="smollm2-135m runs here, not on NDIF"):
        load_language_model("smollm2-135m", remote=True)


class _Recorder:
    """Stands in for nnsight.TransformersModel: records how it was built."""

    def __init__(self, *args, **kwargs):
        self.args, self.kwargs = args, kwargs


def test_remote_hub_model_is_gated_and_builds_without_weights(monkeypatch):
    monkeypatch.setattr(nnsight, "TransformersModel", _Recorder)
    monkeypatch.setattr(lm_module, "_SERVER_VERSION", {})
    served = {"packages": {"nnsight": nnsight.__version__}}
    monkeypatch.setattr(nnsight.ndif, "get_remote_env", lambda force_refresh=False: served)
    model = load_language_model("meta-llama/Llama-3.1-8B", remote=True)
    # no dispatch and no device: nnsight builds the architecture on the meta device; NDIF holds the weights
    assert model.args == ("meta-llama/Llama-3.1-8B",) and model.kwargs == {"task": "text-generation"}
    served["packages"]["nnsight"] = "0.9.0"
    monkeypatch.setattr(lm_module, "_SERVER_VERSION", {})
    with pytest.raises(RuntimeError, match=r"`pip install nnsight==0\.9\.0`"):
        load_language_model("meta-llama/Llama-3.1-8B", remote=True)


def test_the_version_gate_says_what_to_install(monkeypatch):
    installed = nnsight.__version__
    assert check_remote_version(installed) == installed
    with pytest.raises(RuntimeError) as error:
        check_remote_version("0.5.9")
    message = str(error.value)
    assert message == (
        f"NDIF runs nnsight 0.5.9 but this Python has nnsight {installed}: run `pip install nnsight==0.5.9` and "
        "restart the kernel (a mismatched client fails remotely with an opaque serialization error, nnsight issue 570)."
    )
    # read from the server once per process, through nnsight's own /env call
    calls = []
    monkeypatch.setattr(lm_module, "_SERVER_VERSION", {})
    monkeypatch.setattr(nnsight.ndif, "get_remote_env",
                        lambda force_refresh=False: calls.append(1) or {"packages": {"nnsight": installed}})
    assert check_remote_version() == installed == check_remote_version() and len(calls) == 1

    def unreachable(force_refresh=False):
        raise OSError("no route to host")

    monkeypatch.setattr(lm_module, "_SERVER_VERSION", {})
    monkeypatch.setattr(nnsight.ndif, "get_remote_env", unreachable)
    with pytest.raises(ConnectionError, match=r"Could not read NDIF's nnsight version from https?://\S+/env \(OSError"):
        check_remote_version()


def test_residual_stream_passes_remote_to_the_trace(monkeypatch):
    """remote=True reaches model.trace (and the gate); the trace then serializes as for NDIF and runs here."""
    from nnsight.intervention.backends.local import LocalSimulationBackend

    tiny = _tiny("qwen2")
    asked, gated = [], []

    def backend(self, remote, blocking, job_id, verbose):
        asked.append(remote)
        return LocalSimulationBackend(self)  # nnsight's remote="local": the NDIF payload, run in this process

    monkeypatch.setattr(nnsight.TransformersModel, "_remote_backend", backend)
    monkeypatch.setattr(lm_module, "check_remote_version", lambda: gated.append(1))
    monkeypatch.setattr(socket.socket, "connect", _no_network)
    remote = residual_stream(tiny, ["w1 w2", "w3"], remote=True)
    assert asked == [True] and gated == [1]
    local = residual_stream(tiny, ["w1 w2", "w3"])
    assert asked == [True] and gated == [1]  # remote=False: neither the backend nor the gate
    torch.testing.assert_close(remote, local)


def test_every_trace_function_takes_remote():
    import ast
    import inspect

    tree = ast.parse(inspect.getsource(lm_module))
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef) and "model.trace(" in ast.unparse(node):
            remote = [arg for arg in node.args.kwonlyargs if arg.arg == "remote"]
            assert remote, f"{node.name} runs a trace without a remote= option"
            assert "remote=remote" in ast.unparse(node), f"{node.name} does not pass remote= to its trace"


def test_hook_names_are_in_forward_order():
    assert HOOK_NAMES.index("blocks.{layer}.hook_attn_out") < HOOK_NAMES.index("blocks.{layer}.hook_mlp_out") < \
        HOOK_NAMES.index("blocks.{layer}.hook_resid_post")


def test_the_smollm2_cache_round_trips(tmp_path, monkeypatch):
    """The first load converts and caches; the second reads the cache (here with a tiny Llama for the GGUF's model)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    llama = LlamaForCausalLM(LlamaConfig(num_hidden_layers=1, hidden_size=16, intermediate_size=32, num_attention_heads=2,
                                         num_key_value_heads=1, vocab_size=65, tie_word_embeddings=True)).eval()
    tokenizer = _tiny("gpt2").tokenizer
    tokenizer.bos_token = "w1"
    converted = []
    monkeypatch.setenv("MIKIT_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(lm_module, "load_hf_smollm2", lambda: converted.append(1) or (llama, tokenizer))
    first, _ = lm_module.load_smollm2_hf("cpu")
    second, reloaded = lm_module.load_smollm2_hf("cpu")
    assert converted == [1] and sorted(path.name for path in tmp_path.iterdir()) == [lm_module.SMOLLM2_HF_CACHE]
    assert second.lm_head.weight is second.model.embed_tokens.weight  # tied again after loading
    tokens = torch.tensor([[1, 5, 7]])
    with torch.no_grad():
        torch.testing.assert_close(second(tokens).logits, llama(tokens).logits, atol=0, rtol=0)
    assert reloaded("w5 w7").input_ids == [1, 5, 7]  # BOS prepended, as the HookedTransformer does


def test_a_hub_model_loads_with_its_weights_in_full_mode(tmp_path, monkeypatch):
    """The full-mode path (`TransformersModel(name, device_map=..., dispatch=True)`), on a saved tiny GPT-2 folder."""
    tiny = _tiny("gpt2")
    tiny._module.save_pretrained(tmp_path)
    tiny.tokenizer.save_pretrained(tmp_path)
    monkeypatch.setattr(lm_module, "offline_mode", lambda: False)
    monkeypatch.setattr(socket.socket, "connect", _no_network)
    loaded = load_language_model(str(tmp_path), device="cpu")
    assert loaded.dispatched and loaded.tokenizer.padding_side == "left"
    torch.testing.assert_close(residual_stream(loaded, "w1 w2 w3"), residual_stream(tiny, "w1 w2 w3"))
