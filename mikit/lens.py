"""The logit lens (nostalgebraist 2020) on nnsight language models (notebook 08), locally or on NDIF.

    lm = load_language_model()                                   # SmolLM2 offline (mikit.language_model)
    logprobs = logit_lens(lm, ["The Eiffel Tower is in the city of"])   # (layer, batch, d_vocab), last position
    top_tokens(lm, logprobs[:, 0])                                # each layer's best guess, as text

Each layer's residual stream at the last position is read as if it were the last one: through the model's
final norm and unembedding. Early layers give the input token back or noise; the answer appears some layers
before the end, which is where to look for the computation that produces it. (A tuned lens would learn a
translator per layer; the plain lens needs no training and reads what the unembedding can already see.)
"""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor

from mikit.language_model import gate_remote, module_at, n_layers


def logit_lens(
    model, prompts: str | list[str], *, layers: list[int] | None = None, remote: bool = False
) -> Float[Tensor, "layer batch d_vocab"]:
    """Log-probabilities at the last position read from the residual stream after each of `layers` (default all)."""
    layers = list(range(n_layers(model))) if layers is None else list(layers)
    if not layers or not all(0 <= layer < n_layers(model) for layer in layers):
        raise ValueError(f"layers must be a non-empty list of layers between 0 and {n_layers(model) - 1}; got {layers}.")
    gate_remote(remote)
    # Looked up here: the traced code runs on NDIF, which has no mikit.
    blocks = [module_at(model, f"blocks.{layer}.hook_resid_post") for layer in layers]
    norm, unembed = module_at(model, "ln_final.hook_normalized"), module_at(model, "unembed")
    with torch.no_grad(), model.trace(prompts, remote=remote):
        last = []
        for block in blocks:
            output = block.output
            last.append((output[0] if isinstance(output, tuple) else output)[:, -1])
        logprobs = unembed(norm(torch.stack(last))).log_softmax(-1).save()
    return logprobs


def top_tokens(model, logprobs: Float[Tensor, "layer d_vocab"], k: int = 1) -> list[list[str]]:
    """The `k` most likely tokens of each row of `logprobs` (e.g. one prompt's lens), decoded."""
    return [[model.tokenizer.decode([int(i)]) for i in row.topk(k).indices] for row in logprobs]


__all__ = ["logit_lens", "top_tokens"]
