"""``KernelConfig``: which kernel operator to build, and the ``auto`` rule that picks one by problem size."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from polyscale.ot.grid import Grid
from polyscale.ot.kernels import Dense, KernelOperator, as_batch
from polyscale.ot.lowrank import Nystrom, RandomFeatures

KINDS = ("auto", "dense", "grid", "random_features", "nystrom")
BACKENDS = ("auto", "fft", "matmul", "log")


@dataclass
class KernelConfig:
    """How to build the kernel ``k(x, y) = exp(-|x - y|^2 / epsilon)`` of a transport problem."""

    kind: str = "auto"  # auto | dense | grid | random_features | nystrom; auto: see make_kernel
    epsilon: float | None = None  # entropic regularisation, in squared data units
    bandwidth: float | None = (
        None  # alternative to epsilon: the length at which k = 1/e, epsilon = bandwidth^2
    )
    backend: str = "auto"  # grid passes: auto | fft | matmul | log (polyscale.ot.grid explains the switch)
    rank: int = 512  # random features or Nystrom landmarks
    dense_limit: int = 10**8  # auto: dense up to this many (batch x n x m) pairs, random features above

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {self.backend!r}")
        if (self.epsilon is None) == (self.bandwidth is None):
            raise ValueError(
                f"give exactly one of epsilon and bandwidth, got epsilon={self.epsilon}, bandwidth={self.bandwidth}"
            )
        if self.bandwidth is not None and not (math.isfinite(self.bandwidth) and self.bandwidth > 0):
            raise ValueError(f"bandwidth must be a finite number > 0, got {self.bandwidth}")
        if not (math.isfinite(self.resolved_epsilon) and self.resolved_epsilon > 0):
            given = f"epsilon={self.epsilon}" if self.epsilon is not None else f"bandwidth={self.bandwidth}"
            raise ValueError(f"epsilon (or bandwidth) must be a finite number > 0, got {given}")
        if self.rank < 1 or self.dense_limit < 1:
            raise ValueError(f"rank and dense_limit must be positive, got {self.rank}, {self.dense_limit}")

    @property
    def resolved_epsilon(self) -> float:
        if self.epsilon is not None:
            return float(self.epsilon)
        if self.bandwidth is None:
            raise ValueError("give exactly one of epsilon and bandwidth, got neither")
        return float(self.bandwidth) ** 2

    def choose(self, pairs: int, on_grid: bool) -> str:
        """The kind ``auto`` resolves to: ``grid`` for grid problems, ``dense`` up to ``dense_limit`` pairs
        (exact, and fastest there), ``random_features`` above (linear memory and time)."""
        if self.kind != "auto":
            return self.kind
        if on_grid:
            return "grid"
        return "dense" if pairs <= self.dense_limit else "random_features"


def make_kernel(
    config: KernelConfig,
    x: Tensor | None = None,
    y: Tensor | None = None,
    *,
    grid: Sequence[int] | None = None,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float64,
) -> KernelOperator:
    """Build the operator ``config`` describes, between point clouds ``x (n, d) / (B, n, d)`` and ``y``, or on
    the regular grid ``grid`` (then ``x`` and ``y`` are not used; ``dtype`` is the grid's)."""
    if grid is not None and (x is not None or y is not None):
        raise ValueError("give either point clouds x and y or a grid shape, not both")
    if grid is None:
        if x is None or y is None:
            raise ValueError("give point clouds x and y, or grid=(N_1, ..., N_d)")
        xb, yb = as_batch(x, "x"), as_batch(y, "y")
        pairs = max(xb.shape[0], yb.shape[0]) * xb.shape[1] * yb.shape[1]
    else:
        pairs = 0
    kind, eps = config.choose(pairs, grid is not None), config.resolved_epsilon
    if kind == "grid":
        if grid is None:
            raise ValueError("kind='grid' needs grid=(N_1, ..., N_d)")
        return Grid(grid, eps, backend=config.backend, dtype=dtype)
    if grid is not None or x is None or y is None:  # without a grid, x and y were checked on entry
        raise ValueError(f"kind={kind!r} works on point clouds; for a grid use kind='grid' or 'auto'")
    if kind == "dense":
        return Dense(x, y, eps)
    if kind == "random_features":
        return RandomFeatures(x, y, eps, rank=config.rank, generator=generator)
    return Nystrom(x, y, eps, rank=config.rank, generator=generator)
