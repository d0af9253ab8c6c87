"""Statistics of binary porous media: porosity, the two-point correlation function and its length scale.

Inputs are in model space (pore near +1, solid near -1, as :func:`polyscale.data.porous_media` makes them, or
a sampler returns them); a voxel is pore when its value is > 0.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def binarize(x: Tensor) -> Tensor:
    """Model-space samples (pore near +1, solid near -1) -> {0, 1} float64 pore indicator, same shape."""
    return (x > 0).to(torch.float64)


def porosity(x: Tensor, *, per_sample: bool = False) -> Tensor:
    """Pore fraction of samples ``(N, C, *spatial)`` in model space.

    Returns:
        a scalar over all samples, or ``(N,)`` with ``per_sample=True``.
    """
    pores = binarize(x)
    return pores.flatten(1).mean(dim=1) if per_sample else pores.mean()


def _lag_lengths(spatial: tuple[int, ...], *, periodic: bool) -> Tensor:
    """Euclidean length of the lag vector at each position of the (padded) autocorrelation grid, float64.

    Periodic: position ``i`` on an axis of size ``n`` is the lag ``min(i, n - i)`` (minimal image).
    Non-periodic: the grid has size ``2n`` per axis; position ``i`` is the lag ``i`` for ``i < n`` and
    ``i - 2n`` otherwise (``i = n``, lag ``-n``, has no overlap and gets length ``inf``: never binned).
    """
    axes = []
    for n in spatial:
        i = torch.arange(2 * n if not periodic else n, dtype=torch.float64)
        lag = torch.minimum(i, n - i) if periodic else torch.where(i < n, i, i - 2 * n).abs()
        if not periodic:
            lag[n] = math.inf
        axes.append(lag)
    grids = torch.meshgrid(*axes, indexing="ij")
    return torch.stack(grids).pow(2).sum(dim=0).sqrt()  # (*grid)


def two_point_correlation(x: Tensor, *, max_radius: int | None = None, periodic: bool = True) -> Tensor:
    """Radially averaged two-point probability ``S2(r) = P(voxel and voxel + lag both pore)``, ``|lag| ~ r``.

    Computed from the FFT autocorrelation of the pore indicator, averaged over samples and over all integer
    lag vectors whose length rounds to ``r`` (``r = 0 .. max_radius``). ``S2(0)`` is the porosity; for a
    random medium ``S2(r) -> porosity^2`` at large ``r``.

    Args:
        x: ``(N, 1, *spatial)`` model-space samples, 1 to 3 spatial axes.
        max_radius: largest lag length (default: half the smallest spatial axis).
        periodic: True treats the samples as periodic (as :func:`polyscale.data.porous_media` makes them);
            False zero-pads and divides each lag by the number of voxel pairs that lie inside the sample
            (use it for samples with real boundaries, e.g. a sampler's output or a cropped scan).

    Returns:
        ``(max_radius + 1,)`` float64.
    """
    if x.ndim not in (3, 4, 5) or x.shape[1] != 1:
        raise ValueError(
            f"expected binary media of shape (N, 1, *spatial) with 1-3 spatial axes, got {tuple(x.shape)}"
        )
    pores = binarize(x)[:, 0]  # (N, *S)
    spatial = tuple(pores.shape[1:])
    max_radius = min(spatial) // 2 if max_radius is None else max_radius
    if not 0 <= max_radius <= (min(spatial) // 2 if periodic else min(spatial) - 1):
        limit = "half the smallest axis" if periodic else "the smallest axis - 1"
        raise ValueError(f"max_radius must be in [0, {limit}] for spatial shape {spatial}, got {max_radius}")
    axes = tuple(range(1, pores.ndim))
    if periodic:
        f = torch.fft.fftn(pores, dim=axes)
        auto = torch.fft.ifftn(f * f.conj(), dim=axes).real.mean(dim=0) / math.prod(spatial)  # (*S)
    else:
        padded = tuple(2 * n for n in spatial)
        f = torch.fft.fftn(pores, s=padded, dim=axes)
        ones = torch.fft.fftn(torch.ones(spatial, dtype=torch.float64), s=padded)
        pairs = torch.fft.ifftn(ones * ones.conj()).real.round()  # (*2S) voxel pairs per lag
        auto = torch.fft.ifftn(f * f.conj(), dim=axes).real.mean(dim=0) / pairs.clamp(min=1)  # (*2S)
    radius = _lag_lengths(spatial, periodic=periodic).flatten().round()  # (V,) rounded length of each lag
    keep = radius <= max_radius
    r = radius[keep].long()
    sums = torch.zeros(max_radius + 1, dtype=torch.float64).index_add_(0, r, auto.flatten()[keep])
    return sums / torch.bincount(r, minlength=max_radius + 1)


def normalised_correlation(s2: Tensor) -> Tensor:
    """``C(r) = (S2(r) - phi^2) / (phi - phi^2)`` with ``phi = S2(0)``: 1 at ``r = 0``, towards 0 far away.

    The shape of the two-point correlation without its porosity offset (two media of slightly different
    porosity but the same grain have the same ``C``), so its error measures the structure alone.

    Args:
        s2: ``(R,)`` from :func:`two_point_correlation`, with ``0 < S2(0) < 1``.
    """
    if s2.ndim != 1 or s2.shape[0] < 2:
        raise ValueError(f"expected a (R,) two-point correlation with R >= 2, got shape {tuple(s2.shape)}")
    phi = s2[0].double()
    if not 0 < float(phi) < 1:
        raise ValueError(f"S2(0) (the porosity) must be in (0, 1), got {float(phi)}")
    return (s2.double() - phi**2) / (phi - phi**2)


def correlation_length(s2: Tensor) -> Tensor:
    """Lag at which the normalised two-point correlation first drops to ``1/e``, a 0-d float64 tensor.

    With ``phi = S2(0)`` the porosity, ``C(r) = (S2(r) - phi^2) / (phi - phi^2)`` falls from 1 towards 0; the
    crossing of ``1/e`` is linearly interpolated between integer lags. ``inf`` if ``C`` stays above ``1/e``
    for every measured lag (measure further out with a larger ``max_radius``).

    Args:
        s2: ``(R,)`` from :func:`two_point_correlation`.
    """
    c = normalised_correlation(s2)  # (R,), c[0] = 1
    below = torch.nonzero(c <= math.exp(-1)).flatten()
    if below.numel() == 0:
        return torch.tensor(math.inf, dtype=torch.float64)
    j = int(below[0])  # first lag at or below 1/e; c[j - 1] > 1/e
    return (j - 1) + (c[j - 1] - math.exp(-1)) / (c[j - 1] - c[j])
