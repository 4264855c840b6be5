"""The tasks circuits are found for: clean and corrupted prompts of one shape, and the metric that measures the
behaviour on them. One call gives everything `attribute`, `acdc`, `faithfulness` and `scrub` need.

    task = tasks.ioi(model, n_prompts=16)                   # or tasks.greater_than(...), tasks.induction(...)
    scores = attribute(model, graph, task.clean, task.corrupted, task.metric, steps=10)
    kept = acdc(model, graph, task.clean, ablated_outputs(model, graph, task.corrupted), task.kl(model), 0.01)
    tasks.make("ioi", model)                                # by name, as `mikit project new` does

- **Greater-Than** (Hanna et al. 2023; notebook 06): "The war lasted from the year 1732 to the year 17";
  the metric is the probability of later years minus that of earlier ones (next digit for digit tokenizers,
  see `mikit.datasets.greater_than`); corrupted: the start year ends in 01.
- **IOI** (Wang et al. 2022; notebook 02): "When Mary and John went to the store, John gave a drink to";
  the metric is the logit difference IO − S at each prompt's last token; corrupted: "ABC", three other names.
  Prompts of different templates are right-padded, and each is read at its own last token.
- **Induction** (notebook 01): `[BOS, r, r]` for a random string r; the metric is the mean log-probability of
  the repeated half; corrupted: the first half is another random string, so there is nothing to copy.
- **Time series** (the zoo's `timeseries-classifier`, `mikit.datasets.timeseries`): series that have a deciding
  feature (default: the late dip); corrupted: the same series without it (same noise), so the class changes;
  the metric is the logit of the clean class minus that of the corrupted one, at the CLS position.

Every metric is higher when the model does the task, and is the mean over prompts (what attribution sums).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
from jaxtyping import Int
from torch import Tensor
from transformer_lens import HookedTransformer

from mikit import ioi as ioi_reference
from mikit.circuits.discovery import kl_to_clean
from mikit.circuits.edges import Metric
from mikit.circuits.sparse import induction_prompts, repeat_logprob
from mikit.datasets.greater_than import GreaterThanDataset, probability_difference
from mikit.datasets.ioi import IOIDataset


@dataclass(frozen=True)
class Task:
    """Token-aligned clean and corrupted prompts, the task metric (higher = the behaviour), the position each
    prompt's answer is read at, and the dataset they came from (None for induction)."""

    name: str
    clean: Int[Tensor, "batch pos"]
    corrupted: Int[Tensor, "batch pos"]
    metric: Metric
    positions: Int[Tensor, "batch"] | int
    dataset: Any = None

    def kl(self, model: HookedTransformer) -> Metric:
        """ACDC's metric for this task: KL from the clean model's next-token distribution at the answer positions."""
        with torch.no_grad():
            return kl_to_clean(model(self.clean), self.positions)

    def __repr__(self) -> str:
        return f"Task({self.name!r}, {len(self.clean)} prompts of {self.clean.shape[1]} tokens)"


def greater_than(model: HookedTransformer, n_prompts: int = 20, seed: int = 0) -> Task:
    """Greater-Than with the paper's "01" corruption and its probability difference (next digit for SmolLM2)."""
    ds = GreaterThanDataset(model, n_prompts=n_prompts, seed=seed)
    return Task("greater-than", ds.tokens, ds.corrupted().tokens,
                lambda logits: probability_difference(logits, ds).mean(), -1, ds)


def ioi(model: HookedTransformer, n_prompts: int = 16, seed: int = 0, corruption: str = "ABC") -> Task:
    """IOI with notebook 02's prompts and logit difference; `corruption` "ABC" (other names) or "ABA" (S2 → IO)."""
    ds = IOIDataset(model, n_prompts=n_prompts, seed=seed)
    return Task("ioi", ds.tokens, ds.corrupted(corruption).tokens,
                lambda logits: ioi_reference.logit_diff(logits, ds).mean(), ds.word_idx["END"], ds)


def induction(model: HookedTransformer, n_prompts: int = 16, half: int = 20, seed: int = 0) -> Task:
    """Induction on `[BOS, r, r]`: the log-probability of the repeated half (KL read at the last position)."""
    clean, corrupted = induction_prompts(model, n_prompts, half, seed)
    return Task("induction", clean, corrupted, repeat_logprob(clean), -1)


def timeseries(model: HookedTransformer, n_prompts: int = 16, seed: int = 0, feature: str = "late_dip") -> Task:
    """Series with the deciding `feature` ("late_dip" or "early_peak") against the same series without it."""
    from mikit.datasets.timeseries import DECISIVE, FEATURES, make_timeseries
    from mikit.timeseries import class_logit_diff

    if feature not in DECISIVE:
        raise ValueError(f"feature must be one that decides the class ({', '.join(DECISIVE)}), not {feature!r}.")
    pool = make_timeseries(4 * n_prompts, seed=seed)
    clean = pool[pool.present[:, FEATURES.index(feature)]][:n_prompts]
    corrupted = clean.with_feature(feature, False)
    device = model.cfg.device
    return Task("timeseries", clean.tokens().to(device), corrupted.tokens().to(device),
                class_logit_diff(clean.labels.to(device), corrupted.labels.to(device)), -1, clean)


TASKS: dict[str, Callable[..., Task]] = {
    "greater-than": greater_than, "ioi": ioi, "induction": induction, "timeseries": timeseries,
}


def make(name: str, model: HookedTransformer, **options: Any) -> Task:
    """The task called `name` (one of TASKS) on `model`."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; the circuit tasks are {', '.join(TASKS)}.")
    return TASKS[name](model, **options)
