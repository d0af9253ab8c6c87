"""Tiled denoising: run a denoiser on overlapping windows and average where they overlap (MultiDiffusion).

``TiledDenoiser(denoiser, tile_size=32, overlap=8)`` is itself a denoiser: ``(x, sigma, **cond) -> x0_hat``.
Each call covers every spatial axis with windows of ``tile_size`` whose starts are ``tile_size - overlap``
apart (the last window is moved back to end at the border, so every window is full size), denoises one window
at a time, and returns the per-position mean of the window outputs (Bar-Tal et al. 2023, the uniform-weight
MultiDiffusion step). Memory is that of one window, whatever the size of ``x``; an axis no longer than
``tile_size`` is taken whole. For a denoiser that is exactly local (each output depends on inputs within a
radius smaller than ``overlap / 2``) interior seams vanish; for a U-Net they are averaged out.

``periodic=True`` is for denoisers of periodic data (a U-Net with ``padding_mode="circular"``): the input is a
torus, windows wrap around its borders, and each window keeps only its core, the ``overlap // 2`` positions
at each edge being dropped (there the wrapped network sees the window's own far side, not the neighbours).
Cores tile every axis (the last one moved back, overlapping cores averaged), so a window never contributes
an edge position and the output is periodic like the input.
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
        periodic: wrap windows around the borders and keep each window's core (see the module docstring).
    """

    def __init__(
        self,
        denoiser: nn.Module,
        *,
        tile_size: int,
        overlap: int = 0,
        size_multiple: int = 1,
        periodic: bool = False,
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
        self.tile_size, self.overlap, self.periodic = tile_size, overlap, periodic

    def _periodic_windows(self, n: int) -> list[tuple[Tensor | None, slice, slice]]:
        """One axis of length ``n``, periodic: ``(input index or None = whole axis, core in the window, core
        in the output)`` per window."""
        if n <= self.tile_size:
            return [(None, slice(0, n), slice(0, n))]
        margin = self.overlap // 2
        core = self.tile_size - 2 * margin
        out: list[tuple[Tensor | None, slice, slice]] = []
        for s in tile_starts(n, core, core):
            index = torch.arange(s - margin, s - margin + self.tile_size) % n
            out.append((index, slice(margin, margin + core), slice(s, s + core)))
        return out

    def _forward_periodic(self, x: Tensor, sigma: Tensor, **cond) -> Tensor:
        out = torch.zeros_like(x)
        count = torch.zeros((1, 1, *x.shape[2:]), dtype=x.dtype, device=x.device)
        per_axis = [self._periodic_windows(n) for n in x.shape[2:]]
        for window in itertools.product(*per_axis):
            xw = x
            for axis, (index, _, _) in enumerate(window, start=2):
                if index is not None:
                    xw = xw.index_select(axis, index.to(x.device))
            keep = (slice(None), slice(None), *(w[1] for w in window))
            place = (slice(None), slice(None), *(w[2] for w in window))
            out[place] += self.denoiser(xw, sigma, **cond)[keep]
            count[place] += 1
        return out / count

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
        if self.periodic:
            return self._forward_periodic(x, sigma, **cond)
        out = torch.zeros_like(x)
        count = torch.zeros(
            (1, 1, *x.shape[2:]), dtype=x.dtype, device=x.device
        )  # windows covering a position
        for window in self.windows(tuple(x.shape[2:])):
            index = (slice(None), slice(None), *window)
            out[index] += self.denoiser(x[index], sigma, **cond)
            count[index] += 1
        return out / count
