"""*When* networks grow (schedules, detectors), kept apart from *how* (surgery on a model)."""

from polyscale.growth.sparse_schedule import GrowthDecision, SparseGrowthSchedule, block_gradient_variances

__all__ = ["GrowthDecision", "SparseGrowthSchedule", "block_gradient_variances"]
