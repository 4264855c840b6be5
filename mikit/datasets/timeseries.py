"""Synthetic time series whose class is decided by features known by construction, located in time.

    ds = make_timeseries(1000, seed=0)
    ds.series          # (batch, step): 48 values per series
    ds.labels          # (batch,): the class, 0-3 (CLASSES)
    ds.present         # (batch, feature): which of the 5 FEATURES each series has
    ds.feature_steps   # (batch, feature, step): the time steps each present feature covers
    ds.decisive_steps  # (batch, step): the time steps of the features that decide the class
    ds.tokens()        # (batch, pos): [BOS, 48 value tokens, CLS], what the zoo's classifier reads
    ds.with_feature("early_peak", False)   # the same series without their early peak (a counterfactual)

Every series is 48 steps of a smooth background (a random level, a linear trend, a slow sine wave) plus
noise, with up to five features drawn on top, each present with probability 1/2, independently:

    early_peak   a narrow upward spike (3 steps) somewhere in the EARLY window, steps 4-19     decides
    late_dip     a narrow downward spike (3 steps) somewhere in the LATE window, steps 28-43   decides
    late_peak    the same upward spike, but in the LATE window                                 distractor
    early_dip    the same downward spike, but in the EARLY window                              distractor
    level_shift  the whole series steps up or down by 0.8-1.5 at one step in 4-43              distractor

Spikes are 2.5-3.5 high over a noise of 0.2; two spikes in one window are 4 or more steps apart, and a level
shift stays 5 or more steps from every spike, so the features never overlap.

The class is `2 * early_peak + late_dip`: 0 "neither", 1 "late dip", 2 "early peak", 3 "both". So a classifier
must find spikes (a value far from its neighbours, not merely a high value: the background drifts), tell their
sign, *and* check when they happen: an upward spike decides the class in the early window and means nothing in
the late one. The distractors share the decisive features' shapes and windows, so a model that reads the
right shape anywhere, or anything in the right window, gets many series wrong. Where a spike sits inside its
window changes from series to series, so no fixed set of positions suffices: a transformer has to attend to
the spike's time steps.

Because the truth is known for every series, a method can be checked against it: the time steps that
activation patching or attention saliency point at (against `decisive_steps`), or the features an SAE finds
on the residual stream (against `present`, five binary features, and `feature_steps`).

Tokens follow Chronos (Ansari et al. 2024): each series is scaled (here centred and divided by its standard
deviation), clipped to [-4, 4] and quantised into N_BINS equal bins. Token ids: BOS = 0, CLS = 1, bins 2 ...
N_BINS + 1. The sequence is [BOS, step 0, ..., step 47, CLS], so time step t sits at position t + 1
(`step_position`) and the classifier reads its class at the last position, the CLS token.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from functools import cached_property

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

LENGTH = 48  # time steps per series
EARLY = (4, 20)  # [start, end) of the early window, in time steps
LATE = (28, 44)
SHIFT_STEPS = (4, 44)  # where a level shift may happen
FEATURES = ("early_peak", "late_dip", "late_peak", "early_dip", "level_shift")
DECISIVE = ("early_peak", "late_dip")  # the features that decide the class; the others are distractors
WINDOWS = {"early_peak": EARLY, "late_dip": LATE, "late_peak": LATE, "early_dip": EARLY, "level_shift": SHIFT_STEPS}
CLASSES = ("neither", "late dip", "early peak", "both")  # class = 2 * early_peak + late_dip

SPIKE = torch.tensor([0.5, 1.0, 0.5])  # a spike's shape over the 3 steps around its centre
SPIKE_HEIGHT = (2.5, 3.5)
SHIFT_SIZE = (0.8, 1.5)
NOISE = 0.2  # standard deviation of the white noise on every step

N_BINS = 32
CLIP = 4.0  # scaled values beyond ±CLIP share the outermost bins
BOS_ID, CLS_ID, FIRST_BIN_ID = 0, 1, 2
D_VOCAB = N_BINS + 2


def step_position(step: int | Tensor) -> int | Tensor:
    """The token position of time step `step` in `TimeSeriesDataset.tokens()` (one after the BOS)."""
    return step + 1


@dataclass(frozen=True)
class TimeSeriesDataset:
    """A batch of series, kept as a background plus features so that any feature can be switched on or off.

    Every series has a place and a size drawn for all five features, present or not (the spikes in one window
    never overlap), so `with_feature` can add or remove one without moving anything else.
    """

    background: Float[Tensor, "batch step"]  # level + trend + sine + noise, without any feature
    present: Bool[Tensor, "batch feature"]  # columns in FEATURES order
    centre: Int[Tensor, "batch feature"]  # a spike's middle step; a level shift's first shifted step
    size: Float[Tensor, "batch feature"]  # signed: spikes' heights, the shift's jump
    seed: int | None = None

    def __len__(self) -> int:
        return len(self.background)

    def __repr__(self) -> str:
        counts = torch.bincount(self.labels, minlength=len(CLASSES)).tolist()
        return f"TimeSeriesDataset({len(self)} series of {LENGTH} steps, per class {counts}, seed={self.seed})"

    def __getitem__(self, index: int | slice | Tensor) -> TimeSeriesDataset:
        """The series at `index` (a slice, a boolean mask or indices), as a dataset."""
        if isinstance(index, int):
            index = slice(index, index + 1 or None)
        return TimeSeriesDataset(
            self.background[index], self.present[index], self.centre[index], self.size[index], self.seed
        )

    @cached_property
    def feature_steps(self) -> Bool[Tensor, "batch feature step"]:
        """Where each present feature lies: a spike's 3 steps; a level shift's last step before and first after."""
        steps = torch.arange(LENGTH)
        offset = steps - self.centre[..., None]  # (batch, feature, step)
        spike = (offset >= -1) & (offset <= 1)
        shift = (offset >= -1) & (offset <= 0)
        is_shift = torch.tensor([name == "level_shift" for name in FEATURES])[None, :, None]
        return torch.where(is_shift, shift, spike) & self.present[..., None]

    @property
    def decisive_steps(self) -> Bool[Tensor, "batch step"]:
        """The time steps of the features that decide each series' class (none for class 0, "neither")."""
        return self.feature_steps[:, [FEATURES.index(name) for name in DECISIVE]].any(1)

    @cached_property
    def series(self) -> Float[Tensor, "batch step"]:
        """The values: the background with every present feature added."""
        steps = torch.arange(LENGTH)
        offset = steps - self.centre[..., None]  # (batch, feature, step)
        shape = torch.where((offset >= -1) & (offset <= 1), SPIKE[(offset + 1).clamp(0, 2)], 0.0)
        is_shift = torch.tensor([name == "level_shift" for name in FEATURES])[None, :, None]
        shape = torch.where(is_shift, (offset >= 0).float(), shape)
        return self.background + (shape * (self.size * self.present)[..., None]).sum(1)

    @property
    def labels(self) -> Int[Tensor, "batch"]:
        """The class of each series: 2 * early_peak + late_dip (see CLASSES)."""
        return labels_from_features(self.present)

    def tokens(self, n_bins: int = N_BINS) -> Int[Tensor, "batch pos"]:
        """[BOS, value tokens, CLS] per series: scaled, clipped to ±CLIP and quantised into `n_bins` bins (Chronos)."""
        return tokenize(self.series, n_bins)

    def with_feature(self, name: str, present: bool | Bool[Tensor, "batch"]) -> TimeSeriesDataset:
        """The same series with feature `name` switched on or off (everything else, noise included, unchanged).

        The values differ only at the feature's steps; the tokens may differ by a bin at a few other steps as
        well, since `tokens()` rescales each series by its own mean and standard deviation.
        """
        if name not in FEATURES:
            raise ValueError(f"no feature named {name!r}; the features are {', '.join(FEATURES)}.")
        column = torch.as_tensor(present, dtype=torch.bool).expand(len(self))
        flags = self.present.clone()
        flags[:, FEATURES.index(name)] = column
        return replace(self, present=flags)


def tokenize(series: Float[Tensor, "batch step"], n_bins: int = N_BINS) -> Int[Tensor, "batch pos"]:
    """[BOS, value tokens, CLS] per series: centred, divided by its standard deviation, clipped to ±CLIP and
    cut into `n_bins` equal bins, whose ids start at FIRST_BIN_ID."""
    if series.ndim != 2:
        raise ValueError(f"series must be a (batch, step) tensor, not one of shape {tuple(series.shape)}.")
    if not isinstance(n_bins, int) or n_bins < 2:
        raise ValueError(f"n_bins must be an integer of at least 2, not {n_bins!r}.")
    scaled = (series - series.mean(1, keepdim=True)) / series.std(1, keepdim=True).clamp_min(1e-6)
    bins = ((scaled.clamp(-CLIP, CLIP) + CLIP) / (2 * CLIP) * n_bins).long().clamp(0, n_bins - 1)
    bos = torch.full((len(series), 1), BOS_ID)
    cls = torch.full((len(series), 1), CLS_ID)
    return torch.cat([bos, bins + FIRST_BIN_ID, cls], 1)


def _uniform(low: float, high: float, shape: tuple[int, ...], gen: torch.Generator) -> Tensor:
    return low + (high - low) * torch.rand(shape, generator=gen)


def _centres_apart(window: tuple[int, int], n: int, gen: torch.Generator) -> tuple[Tensor, Tensor]:
    """Two spike centres per series inside `window`, each spike wholly inside it, at least 4 steps apart."""
    centres = torch.arange(window[0] + 1, window[1] - 1)  # a spike covers centre-1 .. centre+1
    first = centres[torch.randint(len(centres), (n,), generator=gen)]
    # Uniform over the centres far enough from the first: the largest of random scores on the allowed ones.
    allowed = (centres[None] - first[:, None]).abs() >= 4
    scores = torch.rand(n, len(centres), generator=gen).masked_fill(~allowed, -1.0)
    return first, centres[scores.argmax(1)]


def make_timeseries(n: int, seed: int = 0, *, p_feature: float = 0.5) -> TimeSeriesDataset:
    """`n` random series; each of the five FEATURES is present with probability `p_feature`, independently.

    The same `n` and `seed` always give the same series. With `p_feature = 0.5` the four classes are equally likely.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive integer (the number of series), not {n!r}.")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed must be an integer, not {seed!r}.")
    if not 0.0 <= p_feature <= 1.0:
        raise ValueError(f"p_feature is a probability, so it must lie in [0, 1], not {p_feature!r}.")
    gen = torch.Generator().manual_seed(seed)
    steps = torch.arange(LENGTH) / (LENGTH - 1)  # time in [0, 1]
    level = torch.randn(n, 1, generator=gen)
    slope = _uniform(-1.0, 1.0, (n, 1), gen)
    amplitude = _uniform(0.0, 0.6, (n, 1), gen)
    period = _uniform(24, 64, (n, 1), gen) / (LENGTH - 1)  # a slow wave: one cycle in 24-64 steps
    phase = _uniform(0, 2 * math.pi, (n, 1), gen)
    background = level + slope * steps + amplitude * torch.sin(2 * math.pi * steps / period + phase)
    background = background + NOISE * torch.randn(n, LENGTH, generator=gen)

    early_peak, early_dip = _centres_apart(EARLY, n, gen)
    late_dip, late_peak = _centres_apart(LATE, n, gen)
    spikes = torch.stack([early_peak, late_dip, late_peak, early_dip], 1)
    # A level shift keeps clear of every spike: a jump right beside one would hide it from its neighbours.
    candidates = torch.arange(*SHIFT_STEPS)
    offset = candidates[None, None] - spikes[..., None]  # (batch, spike, candidate)
    allowed = ~(offset.abs() <= 4).any(1)
    scores = torch.rand(n, len(candidates), generator=gen).masked_fill(~allowed, -1.0)
    centre = torch.cat([spikes, candidates[scores.argmax(1)][:, None]], 1)

    heights = _uniform(*SPIKE_HEIGHT, (n, 4), gen) * torch.tensor([1.0, -1.0, 1.0, -1.0])
    jump = _uniform(*SHIFT_SIZE, (n, 1), gen) * (torch.randint(2, (n, 1), generator=gen) * 2 - 1)
    size = torch.cat([heights, jump], 1)
    present = torch.rand(n, len(FEATURES), generator=gen) < p_feature
    return TimeSeriesDataset(background, present, centre, size, seed)


def detect_features(series: Float[Tensor, "batch step"], threshold: float = 1.5) -> Bool[Tensor, "batch feature"]:
    """A hand-written rule that finds the spikes from the values alone (no level shifts: column 4 is False).

    An upward spike at step t rises above both steps two away: `x[t] - max(x[t-2], x[t+2])` is about its height
    (2.5-3.5), while the slow background and the noise keep it well under `threshold` elsewhere; a downward spike
    mirrors it. This shows that the features can be read off the values, and is a baseline to compare with.
    """
    if series.ndim != 2 or series.shape[1] != LENGTH:
        raise ValueError(f"series must be a (batch, {LENGTH}) tensor, not one of shape {tuple(series.shape)}.")
    middle, before, after = series[:, 2:-2], series[:, :-4], series[:, 4:]
    rise = torch.full_like(series, -math.inf)
    fall = torch.full_like(series, -math.inf)
    rise[:, 2:-2] = middle - torch.maximum(before, after)
    fall[:, 2:-2] = torch.minimum(before, after) - middle
    found = torch.zeros(len(series), len(FEATURES), dtype=torch.bool)
    for i, name in enumerate(FEATURES[:4]):
        start, end = WINDOWS[name]
        contrast = rise if name.endswith("peak") else fall
        found[:, i] = contrast[:, start + 1 : end - 1].max(1).values > threshold  # over the possible centres
    return found


def labels_from_features(present: Bool[Tensor, "batch feature"]) -> Int[Tensor, "batch"]:
    """The class that the features `present` (columns in FEATURES order) decide: 2 * early_peak + late_dip."""
    return 2 * present[:, FEATURES.index("early_peak")].long() + present[:, FEATURES.index("late_dip")].long()
