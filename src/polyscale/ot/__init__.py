"""Entropic optimal transport at scale: one log-domain Sinkhorn, swappable kernel operators, barycentric
maps, and a Schrodinger-bridge correction step for samplers.

Kernel convention everywhere: ``k(x, y) = exp(-|x - y|^2 / epsilon)``.
"""

from polyscale.ot.bridge import SinkhornBridge, chain_callbacks
from polyscale.ot.config import KernelConfig, make_kernel
from polyscale.ot.grid import Grid
from polyscale.ot.kernels import Dense, KernelOperator
from polyscale.ot.lowrank import Nystrom, RandomFeatures
from polyscale.ot.sinkhorn import (
    ConvergenceWarning,
    SinkhornResult,
    barycentric_map,
    sinkhorn,
    sinkhorn_divergence,
)
from polyscale.registry import Registry

# KernelConfig.kind -> operator class (point clouds: (x, y, epsilon, ...); grid: (shape, epsilon, ...))
KERNELS: Registry[type[KernelOperator]] = Registry(
    "kind", {"dense": Dense, "grid": Grid, "random_features": RandomFeatures, "nystrom": Nystrom}
)

__all__ = [
    "KERNELS",
    "ConvergenceWarning",
    "Dense",
    "Grid",
    "KernelConfig",
    "KernelOperator",
    "Nystrom",
    "RandomFeatures",
    "SinkhornBridge",
    "SinkhornResult",
    "barycentric_map",
    "chain_callbacks",
    "make_kernel",
    "sinkhorn",
    "sinkhorn_divergence",
]
