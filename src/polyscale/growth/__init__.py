"""*When* networks grow (schedules, detectors), kept apart from *how* (surgery on a model)."""

from polyscale.growth.depth_schedule import DETECTORS, LossPlateau, StagnationDetector, make_detector
from polyscale.growth.extrema import activation_extrema
from polyscale.growth.routing import plan_routes
from polyscale.growth.sparse_schedule import GrowthDecision, SparseGrowthSchedule, block_gradient_variances
from polyscale.growth.trajectory import GeometricExtrapolator, effective_curvature, stretch_factor

__all__ = [
    "DETECTORS",
    "GeometricExtrapolator",
    "GrowthDecision",
    "LossPlateau",
    "SparseGrowthSchedule",
    "StagnationDetector",
    "activation_extrema",
    "block_gradient_variances",
    "effective_curvature",
    "make_detector",
    "plan_routes",
    "stretch_factor",
]
