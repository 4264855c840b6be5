"""mikit.steering on tiny random GPT-2 and Qwen2 models: every quantity against a hand computation with plain
PyTorch hooks on the Hugging Face model, and remote= reaching the trace (nnsight's local simulation of NDIF)."""

import socket

import nnsight
import pytest
import torch
from test_language_model import _no_network, _tiny  # tests/test_language_model.py: the tiny models

from mikit import language_model as lm_module
from mikit import steering
from mikit.steering import (
    add_vector,
    function_vector,
    head_inputs,
    head_outputs,
    indirect_effects,
    steered_generation,
    steering_vector,
    top_heads,
)

pytestmark = pytest.mark.usefixtures("one_thread")

PROMPTS = ["w1 w2 w3 w4", "w5 w6", "w7 w8 w9"]


@pytest.fixture(scope="module", params=["gpt2", "qwen2"])
def tiny(request):
    return _tiny(request.param)


def _hf(model):
    """The Hugging Face model inside the nnsight wrapper, and its blocks."""
    hf = model._module
    blocks = hf.transformer.h if hf.config.model_type == "gpt2" else hf.model.layers
    return hf, blocks


def _o_proj(model, layer):
    hf, blocks = _hf(model)
    return blocks[layer].attn.c_proj if hf.config.model_type == "gpt2" else blocks[layer].self_attn.o_proj


def _encode(model, prompts):
    """Left-padded ids, and positions counted from each prompt's first real token, as nnsight passes them."""
    encoded = dict(model.tokenizer(prompts, return_tensors="pt", padding=True))
    encoded["position_ids"] = (encoded["attention_mask"].cumsum(-1) - 1).clamp(min=0)
    return encoded


def _hand_last_logits(model, prompts, hooks):
    """The last position's logits with plain forward hooks `[(module, hook)]` on the Hugging Face model."""
    hf, _ = _hf(model)
    handles = [module.register_forward_hook(hook) for module, hook in hooks]
    try:
        with torch.no_grad():
            return hf(**_encode(model, prompts)).logits[:, -1]
    finally:
        for handle in handles:
            handle.remove()


def _add_to_output(vector, last_only=False):
    def hook(module, inputs, output):
        hidden = output[0] if isinstance(output, tuple) else output
        hidden = hidden.clone()
        if last_only:
            hidden[:, -1] += vector
        else:
            hidden += vector
        return (hidden, *output[1:]) if isinstance(output, tuple) else hidden
    return hook


def test_steering_vector_is_the_mean_difference_at_the_last_token(tiny):
    positive, negative = ["w1 w2", "w3 w4 w5"], ["w6", "w7 w8"]
    _, blocks = _hf(tiny)
    states = []
    for prompts in (positive, negative):  # (GPT-2's last hidden_states entry has ln_f applied: hook the block)
        hook = (blocks[1], lambda module, inputs, output: states.append(
            (output[0] if isinstance(output, tuple) else output)[:, -1]))
        _hand_last_logits(tiny, prompts, [hook])
    want = states[0].mean(0) - states[1].mean(0)
    torch.testing.assert_close(steering_vector(tiny, positive, negative, layer=1), want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("positions", ["all", "last"])
def test_add_vector_adds_exactly_the_scaled_vector(tiny, positions):
    vector = torch.randn(32, generator=torch.Generator().manual_seed(0))
    _, blocks = _hf(tiny)
    got = add_vector(tiny, PROMPTS, vector, 0, scale=2.5, positions=positions)
    want = _hand_last_logits(tiny, PROMPTS, [(blocks[0], _add_to_output(2.5 * vector, positions == "last"))])
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    plain = add_vector(tiny, PROMPTS, vector, 0, scale=0.0)
    assert (got - plain).abs().max() > 1e-3  # the vector changes the output


def test_steered_generation_at_scale_zero_is_plain_greedy_decoding(tiny):
    hf, blocks = _hf(tiny)
    ids = tiny.tokenizer(["w1 w2"], return_tensors="pt")
    with torch.no_grad():
        plain = hf.generate(**ids, max_new_tokens=4, min_new_tokens=4, do_sample=False)[0, ids.input_ids.shape[1]:]
    vector = 5 * torch.randn(32, generator=torch.Generator().manual_seed(1))
    assert steered_generation(tiny, "w1 w2", vector, 0, scale=0.0, max_new_tokens=4) == tiny.tokenizer.decode(plain)
    handle = blocks[0].register_forward_hook(_add_to_output(vector))
    try:
        with torch.no_grad():
            steered = hf.generate(**ids, max_new_tokens=4, min_new_tokens=4, do_sample=False)[0, ids.input_ids.shape[1]:]
    finally:
        handle.remove()
    assert steered_generation(tiny, "w1 w2", vector, 0, max_new_tokens=4) == tiny.tokenizer.decode(steered)


def test_head_inputs_and_outputs_by_hand(tiny):
    captured = {}
    hooks = [(_o_proj(tiny, layer), lambda module, inputs, output, layer=layer: captured.__setitem__(layer, inputs[0]))
             for layer in range(2)]
    _hand_last_logits(tiny, PROMPTS, hooks)
    z = head_inputs(tiny, PROMPTS)  # (layer, batch, head, d_head)
    assert z.shape == (2, len(PROMPTS), 2, 16)
    for layer in range(2):
        torch.testing.assert_close(z[layer].flatten(-2), captured[layer][:, -1])
    mean_z = z.mean(1)
    outputs = head_outputs(tiny, mean_z)  # (layer, head, d_model)
    for layer in range(2):
        projection = _o_proj(tiny, layer)
        weight = projection.weight  # GPT-2's Conv1D is (in, out); a Linear is (out, in)
        weight = weight if tiny.config.model_type == "gpt2" else weight.T
        for head in range(2):
            want = mean_z[layer, head] @ weight[head * 16:(head + 1) * 16]  # its slice of W_O alone, no bias
            torch.testing.assert_close(outputs[layer, head], want, atol=1e-5, rtol=1e-5)
        # the heads' outputs plus the bias are the projection's output
        bias = projection.bias if projection.bias is not None else 0
        torch.testing.assert_close(outputs[layer].sum(0) + bias, projection(mean_z[layer].flatten()),
                                   atol=1e-5, rtol=1e-5)


def test_indirect_effect_of_each_head_by_hand(tiny):
    answers = torch.tensor([3, 9, 27])
    mean_z = head_inputs(tiny, ["w10 w11 w12", "w13 w14"]).mean(1)
    effects = indirect_effects(tiny, PROMPTS, answers, mean_z)
    rows = torch.arange(len(PROMPTS))
    baseline = _hand_last_logits(tiny, PROMPTS, []).softmax(-1)[rows, answers]
    for layer in range(2):
        for head in range(2):
            def patch(module, inputs, layer=layer, head=head):
                z = inputs[0].clone()
                z[:, -1, head * 16:(head + 1) * 16] = mean_z[layer, head]
                return (z, *inputs[1:])

            handle = _o_proj(tiny, layer).register_forward_pre_hook(patch)
            try:
                patched = _hand_last_logits(tiny, PROMPTS, []).softmax(-1)[rows, answers]
            finally:
                handle.remove()
            torch.testing.assert_close(effects[layer, head], (patched - baseline).mean(), atol=1e-6, rtol=1e-4)
    assert effects.abs().max() > 0


def test_function_vector_sums_the_top_heads_outputs(tiny):
    mean_z = head_inputs(tiny, PROMPTS).mean(1)
    outputs = head_outputs(tiny, mean_z)
    effects = torch.tensor([[0.1, 0.5], [0.3, -0.2]])
    heads = top_heads(effects, 2)
    assert heads == [(0, 1), (1, 0)]
    torch.testing.assert_close(function_vector(tiny, mean_z, heads), outputs[0, 1] + outputs[1, 0])
    assert top_heads(effects, 1, layers=[4, 7]) == [(4, 1)]


def test_bad_input_is_one_sentence(tiny):
    vector = torch.zeros(32)
    with pytest.raises(ValueError, match="layer must lie between 0 and 1"):
        add_vector(tiny, PROMPTS, vector, 2)
    with pytest.raises(ValueError, match="positions must be 'all' or 'last'"):
        add_vector(tiny, PROMPTS, vector, 0, positions="first")
    with pytest.raises(ValueError, match="at least one positive and one negative"):
        steering_vector(tiny, [], ["w1"], 0)
    with pytest.raises(ValueError, match="one answer per prompt"):
        indirect_effects(tiny, PROMPTS, torch.tensor([1]), torch.zeros(2, 2, 16))
    with pytest.raises(ValueError, match="k must lie between 1 and 4"):
        top_heads(torch.zeros(2, 2), 5)
    with pytest.raises(ValueError, match="must cover all 2 layers"):
        function_vector(tiny, torch.zeros(1, 2, 16), [(0, 0)])


def test_remote_reaches_every_trace_and_the_gate(monkeypatch):
    """remote=True: the gate runs, the trace goes through nnsight's NDIF serialization (run here), same results."""
    from nnsight.intervention.backends.local import LocalSimulationBackend

    tiny = _tiny("qwen2")
    asked, gated = [], []

    def backend(self, remote, blocking, job_id, verbose):
        asked.append(remote)
        return LocalSimulationBackend(self)

    monkeypatch.setattr(nnsight.TransformersModel, "_remote_backend", backend)
    monkeypatch.setattr(lm_module, "check_remote_version", lambda: gated.append(1))  # behind every trace's gate
    monkeypatch.setattr(socket.socket, "connect", _no_network)
    vector = torch.randn(32, generator=torch.Generator().manual_seed(2))
    mean_z = head_inputs(tiny, PROMPTS).mean(1)
    calls = {
        "steering_vector": lambda remote: steering_vector(tiny, ["w1 w2"], ["w3"], 1, remote=remote),
        "add_vector": lambda remote: add_vector(tiny, PROMPTS, vector, 0, remote=remote),
        "head_inputs": lambda remote: head_inputs(tiny, PROMPTS, remote=remote),
        "indirect_effects": lambda remote: indirect_effects(tiny, PROMPTS, torch.tensor([1, 2, 3]), mean_z,
                                                            remote=remote),
        "head_outputs": lambda remote: head_outputs(tiny, mean_z, remote=remote),
        "logit_lens": lambda remote: __import__("mikit.lens").lens.logit_lens(tiny, PROMPTS, remote=remote),
        "steered_generation": lambda remote: steered_generation(tiny, "w1 w2", vector, 0, max_new_tokens=3,
                                                                remote=remote),
    }
    for name, call in calls.items():
        asked.clear(), gated.clear()
        local = call(False)
        assert asked == [] and gated == [], name
        remote = call(True)
        assert asked and set(asked) == {True} and gated == [1], name
        if isinstance(local, str):
            assert remote == local, name
        else:
            torch.testing.assert_close(remote, local, msg=name)


def test_every_trace_function_takes_remote():
    import ast
    import inspect

    from mikit import lens

    tree = ast.Module(body=[*ast.parse(inspect.getsource(steering)).body, *ast.parse(inspect.getsource(lens)).body],
                      type_ignores=[])
    for node in ast.walk(tree):
        source = ast.unparse(node) if isinstance(node, ast.FunctionDef) else ""
        if any(call in source for call in ("model.trace(", "model.generate(", "model.session(")):
            assert any(arg.arg == "remote" for arg in node.args.kwonlyargs), f"{node.name} has no remote= option"
            assert "remote=remote" in source, f"{node.name} does not pass remote= to its trace"


def test_remote_smollm2_is_refused_before_any_trace():
    with pytest.raises(ValueError, match="runs here, not on NDIF"):
        lm_module.load_language_model(remote=True)

