"""Sliced Wasserstein distance between two sets of samples of any shape (flattened per sample).

``SW_2(x, y)^2 = E_theta[ W_2^2(theta . x, theta . y) ]`` over directions ``theta`` uniform on the unit sphere
(Rabin et al. 2011; Bonneel et al. 2015). Each 1D ``W_2`` compares sorted projections; sets of different
sizes are compared at the same ``max(n, m)`` quantile levels (linear interpolation of the sorted values).
"""

from __future__ import annotations

import torch
from torch import Tensor


def _quantiles(sorted_values: Tensor, levels: Tensor) -> Tensor:
    """Linearly interpolated quantiles of each column of ``sorted_values (n, P)`` at ``levels (q,)`` in [0, 1]."""
    n = sorted_values.shape[0]
    pos = levels * (n - 1)  # (q,) fractional row index
    lo = pos.floor().long().clamp(max=n - 1)
    hi = (lo + 1).clamp(max=n - 1)
    w = (pos - lo.to(pos.dtype))[:, None]  # (q, 1)
    return sorted_values[lo] * (1 - w) + sorted_values[hi] * w  # (q, P)


def sliced_wasserstein(
    x: Tensor, y: Tensor, *, num_projections: int = 256, generator: torch.Generator | None = None
) -> float:
    """``SW_2`` between ``x (n, ...)`` and ``y (m, ...)`` (same per-sample shape), a Monte-Carlo estimate.

    Args:
        num_projections: random directions; the estimate's relative spread shrinks like ``1/sqrt(P)``.
        generator: randomness of the directions (pass the same seed to compare several models fairly).
    """
    if x.shape[1:] != y.shape[1:]:
        raise ValueError(
            f"samples must have the same per-sample shape, got {tuple(x.shape)} and {tuple(y.shape)}"
        )
    if x.shape[0] < 2 or y.shape[0] < 2:
        raise ValueError(f"need at least 2 samples on each side, got {x.shape[0]} and {y.shape[0]}")
    a = x.detach().double().cpu().flatten(1)  # (n, D)
    b = y.detach().double().cpu().flatten(1)  # (m, D)
    theta = torch.randn(a.shape[1], num_projections, generator=generator, dtype=torch.float64)  # (D, P)
    theta = theta / theta.norm(dim=0, keepdim=True)
    pa, pb = (a @ theta).sort(dim=0).values, (b @ theta).sort(dim=0).values  # (n, P), (m, P)
    levels = torch.linspace(0, 1, max(a.shape[0], b.shape[0]), dtype=torch.float64)
    diff = _quantiles(pa, levels) - _quantiles(pb, levels)  # (q, P)
    return float(diff.pow(2).mean().sqrt())
