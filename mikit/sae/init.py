"""Initialisation helpers for SAEs: the geometric median of a sample of activations (Weiszfeld's algorithm)."""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor


def geometric_median(
    points: Float[Tensor, "batch d_in"], tol: float = 1e-6, max_iter: int = 200
) -> Float[Tensor, "d_in"]:
    """The point minimising the sum of Euclidean distances to `points`, by Weiszfeld's algorithm.

    Args:
        points: the sample, one point per row.
        tol: stop once an update moves the estimate by less than `tol` times the data's scale.
        max_iter: stop after this many updates even if not converged.
    """
    if points.ndim != 2 or points.shape[0] == 0:
        raise ValueError(f"points must be a non-empty (n, d) tensor; got shape {tuple(points.shape)}.")
    if tol <= 0 or max_iter < 1:
        raise ValueError(f"tol must be positive and max_iter at least 1; got tol={tol}, max_iter={max_iter}.")
    # Double precision: the weights 1/distance get huge near a data point.
    pts = points.detach().to(torch.float64)
    scale = (pts - pts.mean(dim=0)).norm(dim=-1).mean().clamp_min(1e-12)
    median = pts.mean(dim=0)  # the mean is a good start and the optimum when the points are symmetric
    for _ in range(max_iter):
        # Weiszfeld: the next estimate is the average of the points weighted by 1 / distance. Clamping the
        # distance keeps a point that coincides with the estimate from dividing by zero (it then dominates,
        # which is right: the median is often a data point).
        weights = 1.0 / (pts - median).norm(dim=-1).clamp_min(1e-10 * scale)
        new_median = (weights[:, None] * pts).sum(dim=0) / weights.sum()
        step = (new_median - median).norm()
        median = new_median
        if step < tol * scale:
            break
    return median.to(points.dtype)
