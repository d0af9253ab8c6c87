"""Statistics of binary porous media: porosity and the two-point correlation function."""

from __future__ import annotations

import torch
from torch import Tensor


def binarize(x: Tensor) -> Tensor:
    """Model-space samples (pore near +1, solid near -1) -> {0, 1} pore indicator."""
    return (x > 0).to(torch.float64)


def porosity(x: Tensor) -> Tensor:
    """Pore fraction of samples ``(N, C, *spatial)`` in model space; a scalar over all samples."""
    return binarize(x).mean()


def two_point_correlation(x: Tensor, *, max_radius: int | None = None) -> Tensor:
    """Radially averaged two-point probability ``S2(r) = P(x and x + r both pore)`` (periodic), ``(R,)``.

    Computed with the FFT autocorrelation of the pore indicator, averaged over samples and over all lag vectors
    of integer length ``round(|r|) = r`` (``r = 0 .. max_radius``; default half the smallest axis).
    """
    pores = binarize(x)[:, 0]  # (N, *S)
    spatial = pores.shape[1:]
    axes = tuple(range(1, pores.ndim))
    f = torch.fft.fftn(pores, dim=axes)
    auto = torch.fft.ifftn(f * f.conj(), dim=axes).real.mean(dim=0) / pores[0].numel()  # (*S)
    lags = torch.meshgrid(
        *(torch.minimum(torch.arange(n), n - torch.arange(n)).double() for n in spatial), indexing="ij"
    )
    radius = torch.sqrt(sum(lag**2 for lag in lags)).round().long()  # (*S) integer lag length
    max_radius = max_radius if max_radius is not None else min(spatial) // 2
    r = radius.flatten()
    keep = r <= max_radius
    sums = torch.zeros(max_radius + 1, dtype=torch.float64).index_add_(0, r[keep], auto.flatten()[keep])
    counts = torch.bincount(r[keep], minlength=max_radius + 1)
    return sums / counts.clamp(min=1)
