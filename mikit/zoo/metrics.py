"""Measurements the zoo records for each model: induction and previous-token heads, repeat loss.

Repeated random sequences have the layout `[BOS, r_1 … r_n, r_1 … r_n]`, the same as in
`mikit.induction`, so the scores here match the ones students compute in the notebook.
"""

from __future__ import annotations

import torch
from jaxtyping import Float, Int
from torch import Tensor
from transformer_lens import HookedTransformer
from transformer_lens.utils import lm_cross_entropy_loss

from mikit.zoo.tokenizer import FIRST_CHAR_ID


def repeated_random_tokens(model: HookedTransformer, seq_len: int, batch: int, seed: int = 0) -> Int[Tensor, "batch pos"]:
    """`[BOS, r, r]` for `batch` random character sequences `r` of `seq_len` tokens."""
    gen = torch.Generator().manual_seed(seed)
    half = torch.randint(FIRST_CHAR_ID, model.cfg.d_vocab, (batch, seq_len), generator=gen)
    bos = torch.full((batch, 1), model.tokenizer.bos_token_id)
    return torch.cat([bos, half, half], dim=1).to(model.cfg.device)


def _patterns(model: HookedTransformer, tokens: Int[Tensor, "batch pos"]) -> Float[Tensor, "layer batch head q k"]:
    """Every layer's attention pattern on `tokens`, caching nothing else."""
    _, cache = model.run_with_cache(tokens, names_filter=lambda name: name.endswith("hook_pattern"))
    return torch.stack([cache["pattern", layer] for layer in range(model.cfg.n_layers)])


def _diagonal_score(patterns: Float[Tensor, "layer batch head q k"], offset: int, n_queries: int) -> Float[Tensor, "layer head"]:
    """Mean attention from each of the last `n_queries` queries to the key `offset` positions back."""
    diag = patterns.diagonal(offset=-offset, dim1=-2, dim2=-1)  # (layer, batch, head, q - offset)
    return diag[..., -n_queries:].mean(dim=(1, -1))


@torch.inference_mode()
def induction_scores(model: HookedTransformer, seq_len: int = 50, batch: int = 16, seed: int = 0) -> Float[Tensor, "layer head"]:
    """Per head: mean attention from the second copy of `[BOS, r, r]` to the token after the earlier copy."""
    patterns = _patterns(model, repeated_random_tokens(model, seq_len, batch, seed))
    return _diagonal_score(patterns, offset=seq_len - 1, n_queries=seq_len).cpu()


@torch.inference_mode()
def previous_token_scores(model: HookedTransformer, tokens: Int[Tensor, "batch pos"]) -> Float[Tensor, "layer head"]:
    """Per head: mean attention from every position after the first to the position just before it."""
    patterns = _patterns(model, tokens.to(model.cfg.device))
    return _diagonal_score(patterns, offset=1, n_queries=tokens.shape[1] - 1).cpu()


@torch.inference_mode()
def repeated_sequence_losses(model: HookedTransformer, seq_len: int = 50, batch: int = 16, seed: int = 0) -> tuple[float, float]:
    """Mean next-token loss on the first and on the second copy of `[BOS, r, r]`."""
    tokens = repeated_random_tokens(model, seq_len, batch, seed)
    loss = lm_cross_entropy_loss(model(tokens), tokens, per_token=True)  # (batch, 2 * seq_len)
    return loss[:, :seq_len].mean().item(), loss[:, seq_len:].mean().item()


@torch.inference_mode()
def text_loss(model: HookedTransformer, tokens: Int[Tensor, "batch pos"]) -> float:
    """Mean next-token loss on `tokens`."""
    return model(tokens.to(model.cfg.device), return_type="loss").item()


def _best_head(scores: Float[Tensor, "layer head"]) -> tuple[str, float]:
    """The highest-scoring head as `"L{layer}H{head}"`, with its score."""
    index = int(scores.argmax())
    layer, head = divmod(index, scores.shape[1])
    return f"L{layer}H{head}", round(scores.flatten()[index].item(), 4)


def summarize(model: HookedTransformer, text_tokens: Int[Tensor, "batch pos"], seq_len: int = 50, batch: int = 16) -> dict:
    """The headline numbers for a zoo model: best induction head, best layer-0 previous-token head, losses."""
    induction_head, induction = _best_head(induction_scores(model, seq_len, batch))
    prev_head, prev = _best_head(previous_token_scores(model, text_tokens)[:1])
    first, second = repeated_sequence_losses(model, seq_len, batch)
    return {
        "induction_score": induction,
        "induction_head": induction_head,
        "prev_token_score": prev,
        "prev_token_head": prev_head,
        "repeat_loss_first_half": round(first, 4),
        "repeat_loss_second_half": round(second, 4),
        "text_loss": round(text_loss(model, text_tokens), 4),
        "eval_seq_len": seq_len,
        "eval_batch": batch,
    }
