"""Additive steering with an SAE latent, on the 2-layer character zoo model with a random TopK SAE."""

import pytest
import torch

from mikit.sae.steering import generate_steered, steering_hook
from sae_toy import model, sae  # noqa: F401  (tests/sae_toy.py; fixtures)


def test_steering_adds_the_scaled_direction_and_changes_generation_only_while_on(model, sae):
    x = torch.zeros(1, 3, model.cfg.d_model)
    torch.testing.assert_close(steering_hook(sae.W_dec[5], 2.5)(x, None)[0, 2], 2.5 * sae.W_dec[5])
    prompt = "The quick brown"
    plain = model.generate(prompt, max_new_tokens=12, do_sample=False, verbose=False)
    assert generate_steered(model, sae, 5, 0.0, prompt, max_new_tokens=12) == plain
    steered = generate_steered(model, sae, 5, 60.0, prompt, max_new_tokens=12)
    assert steered.startswith(prompt) and steered != plain
    assert model.generate(prompt, max_new_tokens=12, do_sample=False, verbose=False) == plain  # hook removed
    with pytest.raises(ValueError, match="not a hook point"):
        generate_steered(model, sae, 5, 1.0, prompt, hook_name="blocks.7.hook_resid_pre")
    with pytest.raises(ValueError, match=r"latent must be in \[0, 64\)"):
        generate_steered(model, sae, 64, 1.0, prompt)
