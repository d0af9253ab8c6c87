"""Porous media: thresholded Gaussian random fields (periodic, any size, 1D/2D/3D)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from polyscale.data.base import GridDataset


def gaussian_random_field(
    num_samples: int,
    shape: tuple[int, ...],
    *,
    correlation_length: float,
    generator: torch.Generator | None = None,
    stationary: bool = False,
) -> Tensor:
    """White noise smoothed by a periodic Gaussian filter of std ``l = correlation_length`` voxels.

    The filter is applied in Fourier space, ``F[k] *= exp(-2 pi^2 l^2 |k|^2)`` with ``k`` in cycles per voxel
    (the Fourier transform of ``exp(-|r|^2 / (2 l^2))``), so the field is periodic and any size works. Its
    covariance is ``exp(-|r|^2 / (4 l^2))`` (a Gaussian of std ``sqrt(2) l``).

    ``stationary=False``: each sample is rescaled to its own mean 0 and std 1 (which removes its lowest
    frequency, so statistics drift with the grid size). ``stationary=True``: the field is divided by its exact
    pointwise std ``sqrt(mean_k F[k]^2)`` and nothing else, so every voxel is standard normal and a window of
    any size of a large sample is distributed like a small sample (up to the wrap-around, negligible once the
    size is several ``l``).

    Returns:
        ``(num_samples, *shape)`` float64.
    """
    if not correlation_length > 0:
        raise ValueError(f"correlation_length must be positive, got {correlation_length}")
    noise = torch.randn((num_samples, *shape), generator=generator, dtype=torch.float64)
    freqs = torch.meshgrid(*(torch.fft.fftfreq(n, dtype=torch.float64) for n in shape), indexing="ij")
    k2 = torch.stack(freqs).pow(2).sum(dim=0)  # (*shape) squared frequency |k|^2
    transfer = torch.exp(-2 * math.pi**2 * correlation_length**2 * k2)  # (*shape)
    axes = tuple(range(1, len(shape) + 1))
    field = torch.fft.ifftn(torch.fft.fftn(noise, dim=axes) * transfer, dim=axes).real
    if stationary:  # variance of one voxel of (unit white noise) * transfer, by Parseval
        return field / transfer.pow(2).mean().sqrt()
    field = field - field.mean(dim=axes, keepdim=True)
    return field / field.std(dim=axes, keepdim=True)


def porous_media(
    num_samples: int,
    *,
    size: int | tuple[int, ...] = 32,
    dims: int = 3,
    porosity: float = 0.3,
    correlation_length: float = 4.0,
    generator: torch.Generator | None = None,
    stationary: bool = False,
) -> GridDataset:
    """Binary porous media ``(N, 1, *shape)`` with values -1 (solid) and +1 (pore).

    ``stationary=False`` (exact porosity): each sample is a :func:`gaussian_random_field` thresholded at its
    own ``1 - porosity`` quantile: the ``round(porosity * V)`` largest of its ``V`` voxels are pore, so every
    sample has the requested pore fraction up to half a voxel (``|error| <= 0.5 / V``). ``stationary=True``
    (one process at every size): the stationary field is thresholded at the fixed level
    ``Phi^-1(1 - porosity)``, so each voxel is pore with probability ``porosity``, a sample's pore fraction
    fluctuates around it, and small samples are statistically windows of large ones (what a model trained
    on small samples and sampled large needs). ``denormalize`` maps to {0, 1} (pore = 1); the grain
    size grows with ``correlation_length`` (see :func:`polyscale.metrics.porous.two_point_correlation`).

    Args:
        num_samples: ``N``.
        size: edge length, or the full spatial shape as a tuple of ``dims`` lengths.
        dims: 1, 2 or 3 spatial axes.
        porosity: pore fraction in (0, 1).
        correlation_length: std of the Gaussian smoothing filter in voxels (> 0).
        generator: source of the white noise (None: torch's default generator).
        stationary: fixed threshold on the stationary field instead of each sample's exact quantile.
    """
    if dims not in (1, 2, 3):
        raise ValueError(f"dims must be 1, 2 or 3, got {dims}")
    if not 0 < porosity < 1:
        raise ValueError(f"porosity must be in (0, 1), got {porosity}")
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    shape = (size,) * dims if isinstance(size, int) else tuple(size)
    if len(shape) != dims or any(int(s) != s or s < 1 for s in shape):
        raise ValueError(
            f"size must be a positive int or a tuple of {dims} positive ints (dims={dims}), got {size!r}"
        )
    volume = math.prod(shape)
    n_pore = int(round(porosity * volume))
    if not 0 < n_pore < volume:
        raise ValueError(
            f"a grid of {volume} voxels cannot have porosity {porosity} with both pores and solid "
            f"(it rounds to {n_pore} pore voxels); use a larger size"
        )
    field = gaussian_random_field(
        num_samples, shape, correlation_length=correlation_length, generator=generator, stationary=stationary
    )
    if stationary:
        level = torch.special.ndtri(torch.tensor(1 - porosity, dtype=torch.float64))
        data = ((field >= level).to(torch.float32) * 2 - 1)[:, None]  # (N, 1, *shape) in {-1, +1}
        return GridDataset(data, scale=0.5, shift=0.5)
    flat = field.reshape(num_samples, volume)  # (N, V)
    # the n_pore-th largest value of each sample = its (V - n_pore + 1)-th smallest, (N, 1)
    threshold = flat.kthvalue(volume - n_pore + 1, dim=1, keepdim=True).values
    pores = (flat >= threshold).reshape(field.shape)  # (N, *shape) bool
    data = (pores.to(torch.float32) * 2 - 1)[:, None]  # (N, 1, *shape) in {-1, +1}
    return GridDataset(data, scale=0.5, shift=0.5)
