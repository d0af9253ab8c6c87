"""Stopping a diverged run: non-finite losses, gradient norms or weights.

Every training loop (:func:`polyscale.training.train`, :class:`~polyscale.training.sparse_growth.SparseGrowthTrainer`,
:func:`~polyscale.training.depth_growth.train_lm`) checks each optimizer step's loss and gradient norm. A
step where either is NaN or infinite is *bad*: its update is skipped (the gradients are dropped, the
learning-rate schedule and the step counter still advance, so a resumed run stays identical to an
uninterrupted one). Up to ``max_bad_steps`` bad steps in a row are tolerated (0, the default: none); one
more stops the run with a :class:`DivergenceError`. Before any checkpoint or model is written the weights
themselves are checked, so a non-finite model is never saved and the last finite checkpoint is never pruned.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path

from torch import Tensor

from polyscale.io import first_non_finite


class DivergenceError(ValueError):
    """Training produced non-finite numbers. The message (one line) names where (the step), what was not
    finite (loss, gradient norm or a parameter), the likely cause and fix, and the last good checkpoint kept.

    Attributes: ``step`` (the step, or epoch, it happened at), ``what`` (the non-finite quantities),
    ``checkpoint`` (the newest checkpoint on disk, or None)."""

    def __init__(
        self,
        where: str,
        what: str,
        *,
        hint: str,
        checkpoint: Path | None,
        step: int,
        checkpoints_known: bool = True,
    ) -> None:
        self.step, self.what, self.checkpoint = step, what, checkpoint
        if checkpoint is not None:
            kept = f"; last good checkpoint kept: {checkpoint}"
        else:  # without a known run directory there is nothing to name
            kept = "; no checkpoint was written yet" if checkpoints_known else ""
        super().__init__(f"training diverged at {where}: {what}; {hint}{kept}")


def _shown(value: float) -> str:
    return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")


def non_finite(loss: float, grad_norm: float | None = None, *, grad_label: str = "gradient norm") -> str:
    """``"the loss is nan"``, ``"the gradient norm is inf"``, both joined by ``and``, or ``""`` when the
    values given are finite (``grad_norm=None``: not checked; ``grad_label`` names it)."""
    parts = []
    if not math.isfinite(loss):
        parts.append(f"the loss is {_shown(loss)}")
    if grad_norm is not None and not math.isfinite(grad_norm):
        parts.append(f"the {grad_label} is {_shown(grad_norm)}")
    return " and ".join(parts)


def non_finite_weights(groups: Iterable[tuple[str, Iterable[tuple[str, Tensor]]]]) -> str:
    """``"parameter 'w' of the EMA holds nan"`` for the first non-finite tensor among ``(label, named
    tensors)`` groups (label ``""`` for the model itself), or ``""`` when every one is finite."""
    for label, named in groups:
        found = first_non_finite(named)
        if found is not None:
            name, value = found
            return f"parameter {name!r}{f' of {label}' if label else ''} holds {value}"
    return ""


class BadSteps:
    """Counts bad steps in a row against the limit ``max_bad_steps``; ``count`` is saved in checkpoints."""

    def __init__(self, max_bad_steps: int, count: int = 0) -> None:
        if isinstance(max_bad_steps, bool) or not isinstance(max_bad_steps, int) or max_bad_steps < 0:
            raise ValueError(f"max_bad_steps must be an integer >= 0, got {max_bad_steps!r}")
        self.limit, self.count = max_bad_steps, count

    def record(self, problem: str) -> bool:
        """Count a bad step (``problem`` not empty) or reset the count (a good step); True when the run must
        stop: more than ``max_bad_steps`` bad steps in a row."""
        self.count = self.count + 1 if problem else 0
        return self.count > self.limit

    def describe(self, problem: str, key: str = "max_bad_steps") -> str:
        """``problem`` and, when bad steps may be skipped, how many came in a row (``key`` names the setting)."""
        if self.limit == 0:
            return problem
        return f"{problem} ({self.count} bad steps in a row, more than {key}={self.limit})"
