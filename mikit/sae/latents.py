"""An SAE's latents as data: a per-latent index of top activations, lookup by token, and logit effects.

    index = LatentIndex.build(model, sae, "blocks.15.hook_resid_pre", rows)   # one pass over rows
    index.save(folder); index = LatentIndex.load(folder)                       # shipped beside the SAE
    latents_for_token(index, model.tokenizer, " music")   # latents whose top examples sit on a word
    logit_effects(model, sae, 42)                          # the tokens its direction boosts and suppresses

The index keeps, for every latent, its `top_k` largest activations (row, position, value), how often it
fires and a histogram of its nonzero activations, plus the token rows themselves, so a dashboard needs
no model run. A latent's logit effects are W_dec[latent] @ W_U: the tokens whose logits its direction
raises and lowers most when added to the residual stream (the direct path only; with the final norm's
weights folded into W_U, as mikit's models are). The cards and the dashboard that show all this are
in `mikit.viz.sae`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from jaxtyping import Float, Int
from safetensors.torch import load_file, save_file
from torch import Tensor
from tqdm.auto import tqdm
from transformer_lens import HookedTransformer

from mikit.sae.architectures import SAE

INDEX_FILE = "latent_index.safetensors"


@dataclass
class LatentIndex:
    """Per-latent statistics of one SAE over a set of token rows (see the module docstring)."""

    tokens: Int[Tensor, "batch pos"]
    top_values: Float[Tensor, "d_sae top_k"]  # descending; 0 where a latent fired fewer than top_k times
    top_rows: Int[Tensor, "d_sae top_k"]
    top_positions: Int[Tensor, "d_sae top_k"]
    fire_counts: Int[Tensor, "d_sae"]
    histograms: Int[Tensor, "d_sae bins"]  # nonzero activations in bins of width top_values[:, 0] / bins

    @property
    def n_tokens(self) -> int:
        """Tokens scanned (BOS excluded)."""
        return self.tokens.shape[0] * (self.tokens.shape[1] - 1)

    @property
    def d_sae(self) -> int:
        return self.top_values.shape[0]

    def fire_frequency(self) -> Float[Tensor, "d_sae"]:
        """The fraction of scanned tokens on which each latent is nonzero."""
        return self.fire_counts.float() / self.n_tokens

    @classmethod
    @torch.no_grad()
    def build(
        cls, model: HookedTransformer, sae: SAE, hook_name: str, rows: Int[Tensor, "batch pos"], *,
        top_k: int = 20, bins: int = 32, batch_size: int = 16, progress: bool = True,
    ) -> LatentIndex:
        """Run `model` on `rows` (BOS first) up to `hook_name`, encode with `sae`, keep each latent's statistics."""
        if hook_name not in model.hook_dict:
            raise ValueError(f"{hook_name!r} is not a hook point of this model (e.g. 'blocks.0.hook_resid_pre').")
        if rows.ndim != 2 or rows.shape[1] < 2:
            raise ValueError(f"rows must be (n_rows, context >= 2) token ids, not shape {tuple(rows.shape)}.")
        layer = model.hook_dict[hook_name].layer() if hook_name.startswith("blocks.") else 0
        context = rows.shape[1]
        top_values = torch.zeros(sae.d_sae, top_k)
        top_places = torch.full((sae.d_sae, top_k), -1, dtype=torch.long)  # flat index row * context + position
        fire_counts = torch.zeros(sae.d_sae, dtype=torch.long)
        fired_latents, fired_values = [], []
        for start in tqdm(range(0, rows.shape[0], batch_size), desc="indexing latents", disable=not progress):
            batch = rows[start : start + batch_size]
            _, cache = model.run_with_cache(batch, names_filter=hook_name, stop_at_layer=layer + 1)
            latents = sae.encode(cache[hook_name][:, 1:].float())  # (B, T-1, d_sae)
            places = (torch.arange(start, start + batch.shape[0])[:, None] * context
                      + torch.arange(1, context)[None, :]).flatten()
            latents = latents.flatten(0, 1)
            # Running top-k per latent: this batch's activations compete with the best so far.
            values = torch.cat([top_values, latents.T], dim=1)
            candidates = torch.cat([top_places, places.expand(sae.d_sae, -1)], dim=1)
            top_values, chosen = values.topk(top_k, dim=1)
            top_places = candidates.gather(1, chosen)
            fired = latents.nonzero()
            fire_counts += torch.bincount(fired[:, 1], minlength=sae.d_sae)
            fired_latents.append(fired[:, 1])
            fired_values.append(latents[fired[:, 0], fired[:, 1]])
        latent_ids, values = torch.cat(fired_latents), torch.cat(fired_values)
        widths = (top_values[:, 0] / bins).clamp_min(1e-12)
        bin_ids = (values / widths[latent_ids]).long().clamp(0, bins - 1)
        histograms = torch.zeros(sae.d_sae * bins, dtype=torch.long)
        histograms.index_add_(0, latent_ids * bins + bin_ids, torch.ones_like(bin_ids))
        top_places = top_places.clamp_min(0)
        return cls(rows.clone(), top_values, top_places // context, top_places % context, fire_counts,
                   histograms.view(sae.d_sae, bins))

    def save(self, folder: str | Path) -> Path:
        """Write the index as `latent_index.safetensors` into `folder` (e.g. the SAE's own folder)."""
        path = Path(folder) / INDEX_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file({
            "tokens": self.tokens.int(), "top_values": self.top_values.half(), "top_rows": self.top_rows.int(),
            "top_positions": self.top_positions.short(), "fire_counts": self.fire_counts.int(),
            "histograms": self.histograms.int(),
        }, str(path))
        return path

    @classmethod
    def load(cls, folder: str | Path) -> LatentIndex:
        """Read an index written by `save`."""
        path = Path(folder) / INDEX_FILE
        if not path.exists():
            raise FileNotFoundError(f"no {INDEX_FILE} in {Path(folder)}: build one with LatentIndex.build(...).save(folder).")
        t = load_file(str(path))
        return cls(t["tokens"].long(), t["top_values"].float(), t["top_rows"].long(), t["top_positions"].long(),
                   t["fire_counts"].long(), t["histograms"].long())

    def examples(self, latent: int, n: int = 10) -> list[tuple[int, int, float]]:
        """The latent's `n` largest activations as (row, position, value), strongest first."""
        self._check_latent(latent)
        return [(int(r), int(p), float(v)) for r, p, v in
                zip(self.top_rows[latent, :n], self.top_positions[latent, :n], self.top_values[latent, :n]) if v > 0]

    def _check_latent(self, latent: int) -> None:
        if not isinstance(latent, int) or not 0 <= latent < self.d_sae:
            raise ValueError(f"latent must be an integer in [0, {self.d_sae}), not {latent!r}.")


def latents_for_token(index: LatentIndex, tokenizer, token: str, n: int = 5, top_k: int = 10) -> list[int]:
    """The `n` latents whose `top_k` strongest examples most often sit on `token` (e.g. " music"), best first.

    A way to find a latent for a concept on any SAE; latents with no such example are left out.
    """
    target = token.strip().lower()
    counts = []
    for latent in range(index.d_sae):
        tokens = [tokenizer.decode([int(index.tokens[r, p])]) for r, p, _ in index.examples(latent, top_k)]
        hits = sum(t.strip().lower() == target for t in tokens)
        if hits:
            counts.append((-hits, -float(index.top_values[latent, 0]), latent))
    return [latent for *_, latent in sorted(counts)[:n]]


@torch.no_grad()
def logit_effects(
    model: HookedTransformer, sae: SAE, latent: int, k: int = 10
) -> tuple[list[tuple[str, float]], list[tuple[str, float]]]:
    """The `k` tokens whose logits the latent's decoder direction raises most, and the `k` it lowers most."""
    if not 0 <= latent < sae.d_sae:
        raise ValueError(f"latent must be in [0, {sae.d_sae}), not {latent}.")
    direction = sae.W_dec[latent] / sae.W_dec[latent].norm()
    effects = direction.to(model.W_U.dtype) @ model.W_U  # (d_vocab,)
    top, bottom = effects.topk(k), effects.topk(k, largest=False)
    as_strings = lambda result: [(model.tokenizer.decode([int(i)]), float(v)) for v, i in zip(*result)]  # noqa: E731
    return as_strings(top), as_strings(bottom)
