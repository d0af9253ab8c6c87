"""Node and edge conditioning of the positions stage of structure generation: side distances, the phase in a
lattice cell, multi-scale density excess, and :class:`PositionFeatures`, which builds all of them (and the
k-nearest-neighbour graph of the noisy positions) for :class:`~polyscale.diffusion.structure.PositionDenoiser`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from polyscale.data.graph_geometry import knn_edges, periodic_offsets

POSITION_EDGE_FEATURES = 3  # (dx, dy, |d|) of the source -> target vector, scaled by c_in


WALL_FEATURES = 4  # squashed distances of a node to the four sides of its graph's box


def wall_features(pos: Tensor, box: Tensor, c_in: Tensor) -> Tensor:
    """``(N, 4)`` features ``tanh(c_in d / 2)`` of each node's signed distances ``d`` to the sides of its box
    ``[0, W] x [0, H]`` (``box (N, 2)`` per node): near a side they locate the node, deep inside the box all four
    saturate at 1, so the interior stays translation-invariant and nothing depends on the box's size."""
    d = torch.stack([pos[:, 0], box[:, 0] - pos[:, 0], pos[:, 1], box[:, 1] - pos[:, 1]], dim=1)  # (N, 4)
    return torch.tanh(d * c_in[:, None] / 2)


# (cos, sin) of 2 pi x / period per axis: where a node sits inside the lattice's unit cell
PERIODIC_FEATURES = 4


def periodic_features(pos: Tensor, period: float) -> Tensor:
    """``(N, 4)`` features ``cos, sin(2 pi p / period)`` of each coordinate of ``pos (N, 2)``: a node's phase
    inside the unit cell of a lattice of spacing ``period`` whose sites sit at the integer multiples of
    ``period`` (the box's origin is a site). Invariant to translations by whole lattice vectors only, and
    local: it tells a node deep inside a large box where the sites are, which the side distances of
    :func:`wall_features` cannot (they saturate there), so lattice domains of different phase do not form."""
    if not (math.isfinite(period) and period > 0):
        raise ValueError(f"the lattice period must be > 0 (and finite), got {period}")
    angle = pos * (2 * torch.pi / period)  # (N, 2)
    return torch.cat([angle.cos(), angle.sin()], dim=1)


def density_features(
    pos: Tensor,
    batch: Tensor,
    box: Tensor,
    sigma: Tensor,
    scales: Sequence[float],
    *,
    margin: float = 0.0,
) -> Tensor:
    """``(N, 3 * len(scales))`` multi-scale density-excess features of positions ``pos (N, 2)`` (graph of each
    node ``batch (N,)``, boxes ``box (G, 2)``, noise level per graph ``sigma (G,)``): for each scale ``r``, the
    node count around each node in the window ``exp(-d^2 / 2 r^2)`` minus the count that unit density on the
    box grown by ``margin``, smoothed by the noise ``sigma``, puts there, and ``r`` times the two components
    of its gradient (where the surplus or the shortfall lies), each passed through ``asinh``.

    A message-passing denoiser averages over its neighbours and cannot count them: a lattice site claimed by
    two nodes and a hole three sites away look alike to it. On a noiseless grid (sites on the sides, margin
    0.5) this excess is exactly zero; one missing node reads as about ``-1`` beside it, so a node on a crowded
    site learns from it (with :class:`NodeJumps` in training) where the hole is. Local and translation-
    invariant inside the box, independent of the graph's size; O(N + A log A) per graph of box area A: counts
    binned on unit cells (cloud-in-cell), windows applied by FFT, read back by bilinear interpolation (about
    1 s for 10^6 nodes and two scales on one CPU core)."""
    scales = [float(r) for r in scales]
    if not scales or not all(math.isfinite(r) and r > 0 for r in scales):
        raise ValueError(f"density scales must be a non-empty list of values > 0 (and finite), got {scales}")
    if not (math.isfinite(margin) and margin >= 0):
        raise ValueError(f"the density margin must be a finite number >= 0, got {margin}")
    reach = max(int(np.ceil(3 * r)) for r in scales)
    pad = reach + 2  # cells beyond the box on each side; nodes further out are left out of both counts
    out = pos.new_zeros(pos.shape[0], 3 * len(scales))
    for g in range(box.shape[0]):
        idx = (batch == g).nonzero().squeeze(1)
        if idx.numel() == 0:
            continue
        w, h = float(box[g, 0]), float(box[g, 1])
        nx_, ny_ = (
            int(np.ceil(w)) + 2 * pad + 1,
            int(np.ceil(h)) + 2 * pad + 1,
        )  # cells, origin at (-pad, -pad)
        u = pos[idx] + pad
        corner = u.floor()
        frac = u - corner
        corner = corner.long()
        inside = (
            (corner[:, 0] >= 0) & (corner[:, 0] < nx_ - 1) & (corner[:, 1] >= 0) & (corner[:, 1] < ny_ - 1)
        )
        cx, cy, fx, fy = corner[inside, 0], corner[inside, 1], frac[inside, 0], frac[inside, 1]
        counts = pos.new_zeros(nx_ * ny_)
        for dx in (0, 1):
            for dy in (0, 1):
                weight = (fx if dx else 1 - fx) * (fy if dy else 1 - fy)
                counts.index_add_(0, (cx + dx) * ny_ + cy + dy, weight)
        # expected: unit density on [-margin, w + margin] x [-margin, h + margin] smoothed by the noise
        s = max(float(sigma[g]), 1e-3) * 2**0.5
        xs = torch.arange(nx_, dtype=pos.dtype, device=pos.device) - pad
        ys = torch.arange(ny_, dtype=pos.dtype, device=pos.device) - pad
        rx = (torch.erf((w + margin - xs) / s) - torch.erf((-margin - xs) / s)) / 2
        ry = (torch.erf((h + margin - ys) / s) - torch.erf((-margin - ys) / s)) / 2
        excess = counts.view(nx_, ny_) - rx[:, None] * ry[None, :]
        size = (nx_ + reach + 1, ny_ + reach + 1)  # zero padding: no window wraps around
        spectrum = torch.fft.rfft2(excess, s=size)
        ox = torch.arange(size[0], device=pos.device)
        oy = torch.arange(size[1], device=pos.device)
        ox = torch.where(ox > size[0] // 2, ox - size[0], ox).to(
            pos.dtype
        )  # signed offsets of a wrapped kernel
        oy = torch.where(oy > size[1] // 2, oy - size[1], oy).to(pos.dtype)
        planes = []
        for r in scales:
            window = torch.exp(-(ox[:, None] ** 2 + oy[None, :] ** 2) / (2 * r * r))
            window = window * ((ox.abs() <= reach)[:, None] & (oy.abs() <= reach)[None, :])
            for kernel in (window, -ox[:, None] / r * window, -oy[None, :] / r * window):
                planes.append(torch.fft.irfft2(spectrum * torch.fft.rfft2(kernel), s=size)[:nx_, :ny_])
        fields = torch.stack(planes).reshape(len(planes), -1)  # (3 * scales, cells)
        # bilinear read-back at every node of the graph (nodes beyond the cells read the nearest cell)
        cxa = corner[:, 0].clamp(0, nx_ - 2)
        cya = corner[:, 1].clamp(0, ny_ - 2)
        fxa = (u[:, 0] - cxa).clamp(0, 1)
        fya = (u[:, 1] - cya).clamp(0, 1)
        value = torch.zeros((), dtype=fields.dtype, device=fields.device)
        for dx in (0, 1):
            for dy in (0, 1):
                weight = (fxa if dx else 1 - fxa) * (fya if dy else 1 - fya)
                value = value + fields[:, (cxa + dx) * ny_ + cya + dy] * weight
        out[idx] = torch.asinh(value.T)
    return out


def position_cond_dim(period: float | None, density_scales: Sequence[float] = ()) -> int:
    """Node conditioning channels of a positions network: the side distances, plus the phase with a period,
    plus three density-excess channels per scale (:func:`density_features`)."""
    return WALL_FEATURES + (PERIODIC_FEATURES if period else 0) + 3 * len(density_scales)


@dataclass(frozen=True)
class PositionFeatures:
    """What a positions network reads about noisy positions: edges of the ``k``-nearest-neighbour graph with
    features ``c_in (x_dst - x_src, |x_dst - x_src|)`` and node features :func:`wall_features` (with
    ``period``, also :func:`periodic_features`; with ``density_scales``, also :func:`density_features` with
    ``density_margin``), ``c_in = 1 / sqrt(1 + sigma^2)``. Graphs flagged ``periodic`` are tori of period
    ``box``: k-NN and offsets by the minimum image, and no sides."""

    k: int = 8
    period: float | None = None
    density_scales: tuple[float, ...] = ()
    density_margin: float = 0.0

    def __post_init__(self) -> None:
        if self.period is not None and not (math.isfinite(self.period) and self.period > 0):
            raise ValueError(f"period must be None or > 0 (and finite), got {self.period}")
        scales = tuple(float(r) for r in self.density_scales)
        if not all(math.isfinite(r) and r > 0 for r in scales) or not (
            math.isfinite(self.density_margin) and self.density_margin >= 0
        ):
            raise ValueError(
                f"need density scales > 0 and density_margin >= 0 (all finite), got {list(scales)}, "
                f"{self.density_margin}"
            )
        object.__setattr__(self, "density_scales", scales)

    @property
    def node_cond_dim(self) -> int:
        """Node conditioning channels (:func:`position_cond_dim`)."""
        return position_cond_dim(self.period, self.density_scales)

    def __call__(
        self, pos: Tensor, batch: Tensor, box: Tensor, periodic: Tensor | None, sigma_node: Tensor,
        sigma_graph: Tensor,
    ) -> tuple[Tensor, Tensor, Tensor]:  # fmt: skip
        """Positions ``pos (N, 2)`` of graphs ``batch (N,)`` in boxes ``box (G, 2)`` (``periodic (G,)`` bool or
        None) at noise ``sigma_node (N,)`` / ``sigma_graph (G,)``: ``edge_index (2, 2E)`` (both directions),
        ``node_cond (N, node_cond_dim)`` and ``edge_cond (2E, 3)``."""
        period = (
            None if periodic is None or not bool(periodic.any()) else box * periodic.to(pos.dtype)[:, None]
        )
        edges = knn_edges(pos, batch, self.k, period=period)
        src, dst = torch.cat([edges, edges.flip(0)], dim=1)  # (2E,) both directions
        c_in = (1 + sigma_node**2).rsqrt()  # (N,)
        rel = pos[dst] - pos[src]  # (2E, 2)
        if period is not None:
            rel = periodic_offsets(rel, period[batch[src]])
        rel = rel * c_in[src, None]
        edge_cond = torch.cat([rel, rel.norm(dim=1, keepdim=True)], dim=1)  # (2E, 3)
        walls = wall_features(pos, box[batch], c_in)  # (N, 4)
        if periodic is not None and period is not None:  # a torus has no sides: it reads a box's inside
            walls = torch.where(periodic[batch, None], torch.ones_like(walls), walls)
        if self.period:
            walls = torch.cat([walls, periodic_features(pos, self.period)], dim=1)  # (N, 8)
        if self.density_scales:
            if period is not None:
                raise ValueError("density features need bounded boxes; this batch has periodic graphs (tori)")
            density = density_features(pos, batch, box, sigma_graph, self.density_scales,
                                       margin=self.density_margin)  # fmt: skip
            walls = torch.cat([walls, density], dim=1)
        return torch.stack([src, dst]), walls, edge_cond


__all__ = [
    "PERIODIC_FEATURES",
    "POSITION_EDGE_FEATURES",
    "WALL_FEATURES",
    "PositionFeatures",
    "density_features",
    "periodic_features",
    "position_cond_dim",
    "wall_features",
]
