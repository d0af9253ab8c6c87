"""*When* networks grow (schedules, detectors), kept apart from *how* (surgery on a model)."""

from polyscale.growth.extrema import activation_extrema
from polyscale.growth.routing import plan_routes
from polyscale.growth.sparse_schedule import GrowthDecision, SparseGrowthSchedule, block_gradient_variances

__all__ = [
    "activation_extrema",
    "GrowthDecision",
    "SparseGrowthSchedule",
    "block_gradient_variances",
    "plan_routes",
]
