"""Porous media: thresholded Gaussian random fields (periodic, any size, 1D/2D/3D)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from polyscale.data.base import GridDataset


def gaussian_random_field(
    num_samples: int, shape: tuple[int, ...], *, correlation_length: float, generator: torch.Generator | None = None
) -> Tensor:
    """White noise smoothed by a periodic Gaussian filter of std ``correlation_length`` voxels, ``(N, *shape)``.

    The filter is applied in Fourier space: ``F[k] *= exp(-2 pi^2 l^2 |k|^2)`` with ``k`` in cycles per voxel.
    """
    if correlation_length <= 0:
        raise ValueError(f"correlation_length must be positive, got {correlation_length}")
    noise = torch.randn((num_samples, *shape), generator=generator, dtype=torch.float64)
    freqs = torch.meshgrid(*(torch.fft.fftfreq(n, dtype=torch.float64) for n in shape), indexing="ij")
    k2 = sum(f**2 for f in freqs)  # (*shape) squared frequency
    transfer = torch.exp(-2 * math.pi**2 * correlation_length**2 * k2)
    axes = tuple(range(1, len(shape) + 1))
    field = torch.fft.ifftn(torch.fft.fftn(noise, dim=axes) * transfer, dim=axes).real
    return field / field.std(dim=axes, keepdim=True)


def porous_media(
    num_samples: int, *, size: int | tuple[int, ...] = 32, dims: int = 3, porosity: float = 0.3,
    correlation_length: float = 4.0, generator: torch.Generator | None = None
) -> GridDataset:
    """Binary porous media ``(N, 1, *shape)`` with values -1 (solid) and +1 (pore).

    Each sample's field is thresholded at its own ``1 - porosity`` quantile, so every sample has the requested
    pore fraction (up to one voxel). ``denormalize`` maps to {0, 1} (pore = 1).
    """
    if dims not in (1, 2, 3):
        raise ValueError(f"dims must be 1, 2 or 3, got {dims}")
    if not 0 < porosity < 1:
        raise ValueError(f"porosity must be in (0, 1), got {porosity}")
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    shape = (size,) * dims if isinstance(size, int) else tuple(size)
    if len(shape) != dims:
        raise ValueError(f"size {size!r} has {len(shape)} axes but dims={dims}")
    field = gaussian_random_field(num_samples, shape, correlation_length=correlation_length, generator=generator)
    flat = field.reshape(num_samples, -1)  # (N, prod(shape))
    n_pore = int(round(porosity * flat.shape[1]))
    threshold = flat.sort(dim=1, descending=True).values[:, n_pore - 1 : n_pore]  # (N, 1) n_pore-th largest
    pores = (flat >= threshold).reshape(field.shape)
    data = (pores.float() * 2 - 1)[:, None]  # (N, 1, *shape) in {-1, +1}
    return GridDataset(data, scale=0.5, shift=0.5)
