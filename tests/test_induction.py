"""The reference techniques of notebook 01 against hand-computed cases and TransformerLens itself."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
import torch.nn.functional as F

import mikit
from mikit import induction


@pytest.fixture(scope="module")
def toy():
    return mikit.load_model("attn-only-2l", device="cpu")


def ideal_pattern(pos: int, offset: int) -> torch.Tensor:
    """Every query attends fully `offset` tokens back (or to BOS when that is before the start)."""
    pattern = torch.zeros(1, 1, pos, pos)
    for q in range(pos):
        pattern[0, 0, q, max(q - offset, 0)] = 1.0
    return pattern


def test_detectors_on_ideal_patterns():
    n = 5
    assert induction.previous_token_scores(ideal_pattern(2 * n + 1, 1)).item() == 1.0
    assert induction.duplicate_token_scores(ideal_pattern(2 * n + 1, n), n).item() == 1.0
    assert induction.induction_scores(ideal_pattern(2 * n + 1, n - 1), n).item() == 1.0
    # each detector ignores the others' heads
    assert induction.induction_scores(ideal_pattern(2 * n + 1, n), n).item() == 0.0
    assert induction.duplicate_token_scores(ideal_pattern(2 * n + 1, 1), n).item() == 0.0


def test_attention_pattern_matches_transformer_lens(toy):
    _, cache = toy.run_with_cache(toy.to_tokens("induction heads copy"))
    for layer in range(toy.cfg.n_layers):
        ours = induction.attention_pattern(cache["q", layer], cache["k", layer])
        torch.testing.assert_close(ours, cache["pattern", layer], atol=1e-5, rtol=1e-4)


def test_per_token_loss_is_cross_entropy():
    logits, tokens = torch.randn(2, 6, 9), torch.randint(0, 9, (2, 6))
    want = F.cross_entropy(logits[:, :-1].reshape(-1, 9), tokens[:, 1:].reshape(-1), reduction="none")
    torch.testing.assert_close(induction.per_token_loss(logits, tokens), want.view(2, 5))


def test_repeated_tokens_layout(toy):
    tokens = induction.repeated_tokens(toy, seq_len=7, batch=3, seed=1)
    assert tokens.shape == (3, 15)
    assert (tokens[:, 0] == toy.tokenizer.bos_token_id).all()
    assert torch.equal(tokens[:, 1:8], tokens[:, 8:])
    assert not set(tokens[:, 1:].flatten().tolist()) & set(toy.tokenizer.all_special_ids)
    assert torch.equal(tokens, induction.repeated_tokens(toy, seq_len=7, batch=3, seed=1))


def test_logit_attribution_sums_to_the_logits(toy):
    tokens = induction.repeated_tokens(toy, seq_len=10, batch=2)
    logits, cache = toy.run_with_cache(tokens)
    components = cache.get_full_resid_decomposition(apply_ln=True, expand_neurons=False)
    dla = induction.logit_attribution(components, toy.W_U, tokens).sum(0) + toy.b_U[tokens[:, 1:]]
    correct = logits[:, :-1].gather(-1, tokens[:, 1:, None])[..., 0]
    torch.testing.assert_close(dla, correct, atol=1e-3, rtol=1e-3)


def test_composition_and_copying_scores():
    eye = torch.eye(4)
    assert induction.composition_score(eye, eye) == pytest.approx(0.5)  # ‖I‖_F = 2
    assert induction.composition_score(eye[:, :2] @ eye[:2], eye[:, 2:] @ eye[2:]) == 0.0
    assert induction.ov_copying_score(eye, eye, eye, eye) == 1.0
    assert induction.ov_copying_score(eye, eye, eye, -eye) == 0.0


def test_top_heads_order():
    scores = torch.tensor([[0.1, 0.9, 0.2], [0.8, 0.0, 0.95]])
    assert induction.top_heads(scores, 3) == [(1, 2), (0, 1), (1, 0)]


def test_toy_model_has_the_induction_circuit(toy):
    tokens = induction.repeated_tokens(toy, seq_len=30, batch=8)
    scores = induction.pattern_scores(toy, tokens, lambda p: induction.induction_scores(p, 30))
    assert scores[1].max() >= 0.8 and scores[0].max() < 0.5  # induction needs the second layer
    # The layer-1 induction heads back each other up; the layer-0 previous-token head feeds them all.
    text = toy.to_tokens("The previous-token head attends one character back, everywhere in the text.")
    prev_head = induction.top_heads(induction.pattern_scores(toy, text, induction.previous_token_scores)[:1], 1)[0]
    best_induction_head = induction.top_heads(scores, 1)[0]
    increase = induction.ablation_loss_increase(toy, tokens, 30)
    assert increase[prev_head] > 1.0 and max(increase.values()) == increase[prev_head]
    assert increase[best_induction_head] < 0.5


def test_random_composition_baseline_is_one_over_sqrt_d_model():
    # Notebook 01 reads K-composition scores against chance: about 1/sqrt(d_model), not 1/sqrt(d_head).
    d_model, d_head, gen = 128, 32, torch.Generator().manual_seed(0)

    def random_low_rank() -> torch.Tensor:
        return torch.randn(d_model, d_head, generator=gen) @ torch.randn(d_head, d_model, generator=gen)

    scores = torch.tensor([induction.composition_score(random_low_rank(), random_low_rank()) for _ in range(200)])
    assert abs(scores.mean().item() - d_model**-0.5) < 0.05 * d_model**-0.5
    assert scores.mean().item() < 0.6 * d_head**-0.5
