"""*When* a network grows a layer: a loss plateau, optionally confirmed by trajectory geometry.

Both detectors are fed once per check (every ``collect_interval_steps`` steps in the training loop) with
the step and the mean training loss since the last check.

- :class:`LossPlateau`: after ``warmup_steps`` steps, a check is *stagnant* when the loss improved on the
  best loss so far by less than ``threshold`` relative (``(best - loss) / best < threshold``). After
  ``patience`` stagnant checks in a row it fires. A firing restarts the warm-up, so a new layer gets
  ``warmup_steps`` steps before the next decision.
- :class:`StagnationDetector`: the same plateau rule, but a check only counts as stagnant when the
  trajectory geometry agrees: the stretch factor ``tau > tau_crit`` or the curvature ``kappa > kappa_crit``
  (:mod:`polyscale.growth.trajectory`). With no geometry yet (a window of fewer than 3 snapshots) a check
  does not count.

``max_growths`` caps the number of firings (``None``: no cap).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

from polyscale.registry import Registry


@dataclass
class LossPlateau:
    """Plateau of the training loss: ``patience`` checks in a row without a ``threshold`` relative gain."""

    warmup_steps: int = 400  # steps before the first decision, and after every growth
    patience: int = 3  # stagnant checks in a row that trigger growth
    threshold: float = 0.01  # relative improvement on the best loss below which a check is stagnant
    max_growths: int | None = None  # stop deciding after this many growths
    best: float | None = None
    stagnant: int = 0
    start: int = 0  # step at which the current warm-up began
    growths: int = 0

    def __post_init__(self) -> None:
        if self.warmup_steps < 0 or self.patience < 1 or not 0 <= self.threshold < math.inf:
            raise ValueError(
                f"need warmup_steps >= 0, patience >= 1, a finite threshold >= 0; got {self.warmup_steps}, "
                f"{self.patience}, {self.threshold}"
            )

    def _stagnant(self, loss: float, tau: float | None, kappa: float | None) -> bool:
        return self.best is not None and (self.best - loss) / abs(self.best) < self.threshold

    def update(self, step: int, loss: float, *, tau: float | None = None, kappa: float | None = None) -> bool:
        """One check; True when a layer should be inserted now."""
        if not math.isfinite(loss):
            shown = "NaN" if math.isnan(loss) else loss
            raise ValueError(f"the loss at step {step} is {shown}: training diverged before this check")
        if self.max_growths is not None and self.growths >= self.max_growths:
            return False
        if step - self.start < self.warmup_steps:
            self.best = loss if self.best is None else min(self.best, loss)
            return False
        if self._stagnant(loss, tau, kappa):
            self.stagnant += 1
        else:
            self.stagnant = 0
        self.best = loss if self.best is None else min(self.best, loss)
        if self.stagnant >= self.patience:
            self.growths += 1
            self.stagnant, self.best, self.start = 0, None, step
            return True
        return False


@dataclass
class StagnationDetector(LossPlateau):
    """:class:`LossPlateau` whose stagnant checks also need ``tau > tau_crit`` or ``kappa > kappa_crit``."""

    tau_crit: float = 2.0  # stretch factor above which the trajectory counts as stagnating (>= 1)
    kappa_crit: float = 0.5  # curvature above which it counts as stagnating (>= 0)

    def __post_init__(self) -> None:
        super().__post_init__()
        check_geometry_thresholds(self.tau_crit, self.kappa_crit)

    def _stagnant(self, loss: float, tau: float | None, kappa: float | None) -> bool:
        if tau is None or kappa is None:
            return False
        geometric = tau > self.tau_crit or kappa > self.kappa_crit
        return geometric and super()._stagnant(loss, tau, kappa)


def check_geometry_thresholds(tau_crit: float, kappa_crit: float) -> None:
    """Stagnation thresholds must be finite and reachable: the stretch factor (path over chord) is >= 1 and
    the curvature >= 0, so ``tau_crit`` below 1 or ``kappa_crit`` below 0 would call every trajectory
    stagnant."""
    if not 1 <= tau_crit < math.inf:
        raise ValueError(
            f"tau_crit must be a finite number >= 1 (the stretch factor path / chord is never below 1), "
            f"got {tau_crit}"
        )
    if not 0 <= kappa_crit < math.inf:
        raise ValueError(
            f"kappa_crit must be a finite number >= 0 (the curvature is never negative), got {kappa_crit}"
        )


DETECTORS: Registry[type[LossPlateau]] = Registry(
    "detector", {"stagnation": StagnationDetector, "plateau": LossPlateau}
)


def make_detector(name: str, **settings: Any) -> LossPlateau:
    """The detector ``name`` of :data:`DETECTORS` built from the ``settings`` among its fields (a plateau
    detector ignores ``tau_crit`` / ``kappa_crit``)."""
    cls = DETECTORS.lookup(name)
    known = {f.name for f in fields(cls) if f.init}
    return cls(**{k: v for k, v in settings.items() if k in known})
