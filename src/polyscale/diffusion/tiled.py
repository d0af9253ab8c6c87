"""Tiled denoising: run a denoiser on overlapping windows and average where they overlap (MultiDiffusion).

``TiledDenoiser(denoiser, tile_size=32, overlap=8)`` is itself a denoiser: ``(x, sigma, **cond) -> x0_hat``.
Each call covers every spatial axis with windows of ``tile_size`` whose starts are ``tile_size - overlap``
apart (the last window is moved back to end at the border, so every window is full size), denoises one window
at a time, and returns the per-position mean of the window outputs (Bar-Tal et al. 2023, the uniform-weight
MultiDiffusion step). Memory is that of one window, whatever the size of ``x``; an axis no longer than
``tile_size`` is taken whole. For a denoiser that is exactly local (each output depends on inputs within a
radius smaller than ``overlap / 2``) interior seams vanish; for a U-Net they are averaged out.
"""

from __future__ import annotations

import itertools

import torch
from torch import Tensor, nn


def tile_starts(size: int, tile: int, stride: int) -> list[int]:
    """Window starts covering ``range(size)`` with windows of ``tile``: 0, stride, ... and ``size - tile``."""
    if size <= tile:
        return [0]
    starts = list(range(0, size - tile + 1, stride))
    if starts[-1] != size - tile:
        starts.append(size - tile)
    return starts


class TiledDenoiser(nn.Module):
    """Denoiser wrapper: overlapping windows, outputs averaged (see the module docstring).

    Args:
        denoiser: any ``(x (B, C, *S), sigma (B,), **cond) -> (B, C, *S)`` denoiser.
        tile_size: window edge per spatial axis (an int for all axes).
        overlap: how many positions neighbouring windows share, ``0 <= overlap < tile_size``.
        size_multiple: window sizes the inner network accepts must divide by this (a U-Net's
            ``size_multiple``); ``tile_size`` is checked against it.
    """

    def __init__(
        self, denoiser: nn.Module, *, tile_size: int, overlap: int = 0, size_multiple: int = 1
    ) -> None:
        super().__init__()
        if not isinstance(tile_size, int) or tile_size < 1:
            raise ValueError(f"tile_size must be an integer >= 1, got {tile_size!r}")
        if not isinstance(overlap, int) or not 0 <= overlap < tile_size:
            raise ValueError(f"overlap must be an integer in [0, tile_size={tile_size}), got {overlap!r}")
        if tile_size % size_multiple:
            raise ValueError(
                f"tile_size {tile_size} must be divisible by the network's size multiple {size_multiple}"
            )
        self.denoiser = denoiser
        self.tile_size, self.overlap = tile_size, overlap

    def windows(self, spatial: tuple[int, ...]) -> list[tuple[slice, ...]]:
        """The spatial slices of every window for an input of spatial shape ``spatial``."""
        stride = self.tile_size - self.overlap
        per_axis = [
            [slice(s, s + min(self.tile_size, n)) for s in tile_starts(n, self.tile_size, stride)]
            for n in spatial
        ]
        return list(itertools.product(*per_axis))

    def forward(self, x: Tensor, sigma: Tensor, **cond) -> Tensor:
        if x.ndim < 3:
            raise ValueError(
                f"TiledDenoiser expects (B, C, *spatial) with >= 1 spatial axis, got {tuple(x.shape)}"
            )
        out = torch.zeros_like(x)
        count = torch.zeros(
            (1, 1, *x.shape[2:]), dtype=x.dtype, device=x.device
        )  # windows covering a position
        for window in self.windows(tuple(x.shape[2:])):
            index = (slice(None), slice(None), *window)
            out[index] += self.denoiser(x[index], sigma, **cond)
            count[index] += 1
        return out / count
