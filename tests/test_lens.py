"""mikit.lens on tiny random GPT-2 and Qwen2 models, against the final norm and unembedding applied by hand."""

import pytest
import torch
from test_steering import PROMPTS, _hand_last_logits, _hf, tiny  # noqa: F401  (tiny is a fixture)

from mikit.lens import logit_lens, top_tokens

pytestmark = pytest.mark.usefixtures("one_thread")

def test_logit_lens_by_hand(tiny):
    hf, blocks = _hf(tiny)
    states = []
    hooks = [(block, lambda module, inputs, output: states.append(
        (output[0] if isinstance(output, tuple) else output)[:, -1])) for block in blocks]
    final = _hand_last_logits(tiny, PROMPTS, hooks)
    norm = hf.transformer.ln_f if hf.config.model_type == "gpt2" else hf.model.norm
    lens = logit_lens(tiny, PROMPTS)  # (layer, batch, d_vocab)
    with torch.no_grad():
        for layer, state in enumerate(states):
            torch.testing.assert_close(lens[layer], hf.lm_head(norm(state)).log_softmax(-1), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(lens[-1], final.log_softmax(-1), atol=1e-5, rtol=1e-5)  # the last layer is the model
    assert logit_lens(tiny, PROMPTS, layers=[1]).shape == (1, len(PROMPTS), 65)
    assert len(top_tokens(tiny, lens[:, 0], k=3)) == 2 and len(top_tokens(tiny, lens[:, 0], k=3)[0]) == 3
    with pytest.raises(ValueError, match="layers must be a non-empty list"):
        logit_lens(tiny, PROMPTS, layers=[5])
