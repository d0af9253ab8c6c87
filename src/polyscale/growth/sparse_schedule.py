"""*When* a sparse network grows: gradient-variance spikes, a credit economy, phases and
stabilisation. *How* it grows (extrema, routing, surgery) lives elsewhere; this module only decides.

The rules, each a parameter with its default:

- **Spike.** Per block, the variance of its gradient entries is measured once per epoch. A spike is a
  relative change of more than ``spike_threshold`` (50 %) against the previous epoch's value:
  ``|v_t - v_{t-1}| / v_{t-1} > 0.5``. The first epoch of a block only sets its reference.
- **Credits.** Every spike earns ``credits_per_spike`` (10). When the balance reaches ``growth_cost``
  (100), a growth event is due and its cost is spent; the rest carries over.
- **Phases.** ``coarse``, ``medium`` and ``fine`` allow ``phase_limits`` (10, 50, 200) new structures in
  total. A growth event may add at most what the current phase has left; when a phase's allowance is used up
  the next phase starts; after ``fine`` the schedule stops growing.
- **Stabilisation.** After a growth event, ``stabilisation_epochs`` (10) epochs pass with no spike counting
  and no growth, so the gradients settle after the surgery.
- **Termination.** ``done`` once ``max_epochs`` epochs have been seen, once every phase is used up, or when
  the caller reports that no activation extrema are left (``no_extrema=True``): then there is nothing to
  route from.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

PHASES = ("coarse", "medium", "fine")


def block_gradient_variances(blocks: dict[str, nn.Module] | nn.ModuleDict) -> dict[str, float]:
    """Variance of each block's current weight gradient (its active ``values``; blocks with fewer than two
    connections or no gradient are skipped), the signal :class:`SparseGrowthSchedule` watches. Feed it the
    gradients accumulated over an epoch, or a representative batch's."""
    out = {}
    for name, block in blocks.items():
        grad = getattr(block, "values", None)
        grad = None if grad is None else grad.grad
        if grad is not None and grad.numel() >= 2:
            out[name] = float(grad.double().var())
    return out


@dataclass
class GrowthDecision:
    """What one epoch's update decided: ``grow`` with at most ``allowance`` new structures in ``phase``; the
    blocks that spiked; the credit balance after the update; and why the schedule is done, if it is."""

    grow: bool
    allowance: int
    phase: str
    spikes: list[str]
    credits: float
    done: str | None = None


@dataclass
class SparseGrowthSchedule:
    """The decision rules of the module docstring, fed once per epoch with per-block gradient variances."""

    spike_threshold: float = 0.5  # relative change of a block's gradient variance that counts as a spike
    credits_per_spike: float = 10.0  # credits earned per spike
    growth_cost: float = 100.0  # credits a growth event costs
    phase_limits: tuple[int, int, int] = (10, 50, 200)  # new structures allowed in coarse / medium / fine
    stabilisation_epochs: int = 10  # epochs after a growth event with no counting and no growth
    max_epochs: int = 1000  # the schedule is done after this many epochs
    credits: float = 0.0
    epoch: int = 0
    phase_index: int = 0
    used_in_phase: int = 0
    quiet_until: int = 0
    previous: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.spike_threshold <= 0 or self.credits_per_spike <= 0 or self.growth_cost <= 0:
            raise ValueError(
                "spike_threshold, credits_per_spike and growth_cost must be positive, got "
                f"{self.spike_threshold}, {self.credits_per_spike}, {self.growth_cost}"
            )
        if len(self.phase_limits) != 3 or min(self.phase_limits) < 1:
            raise ValueError(f"phase_limits must be three positive counts, got {self.phase_limits}")
        if self.stabilisation_epochs < 0 or self.max_epochs < 1:
            raise ValueError(
                f"need stabilisation_epochs >= 0 and max_epochs >= 1, got {self.stabilisation_epochs}, "
                f"{self.max_epochs}"
            )

    @property
    def phase(self) -> str:
        return PHASES[min(self.phase_index, 2)]

    def allowance(self) -> int:
        """New structures the current phase still allows (0 once every phase is used up)."""
        if self.phase_index >= 3:
            return 0
        return self.phase_limits[self.phase_index] - self.used_in_phase

    def spikes(self, variances: dict[str, float]) -> list[str]:
        """Blocks whose gradient variance changed by more than the threshold; updates the references."""
        out = []
        for name, v in variances.items():
            if v < 0:
                raise ValueError(f"a variance cannot be negative, got {v} for block {name!r}")
            last = self.previous.get(name)
            if last is not None and last > 0 and abs(v - last) / last > self.spike_threshold:
                out.append(name)
            self.previous[name] = float(v)
        return out

    def update(self, variances: dict[str, float], *, no_extrema: bool = False) -> GrowthDecision:
        """One epoch: count spikes (outside stabilisation), earn credits, decide whether to grow."""
        self.epoch += 1
        spiked = self.spikes(variances)
        done = self._done(no_extrema)
        if done is not None:
            return GrowthDecision(False, 0, self.phase, spiked, self.credits, done)
        if self.epoch <= self.quiet_until:  # stabilising after the last growth event
            return GrowthDecision(False, 0, self.phase, spiked, self.credits)
        self.credits += self.credits_per_spike * len(spiked)
        grow = self.credits >= self.growth_cost
        if grow:
            self.credits -= self.growth_cost
        return GrowthDecision(grow, self.allowance() if grow else 0, self.phase, spiked, self.credits)

    def record_growth(self, added: int) -> None:
        """Report how many structures a growth event added: they use up the phase's allowance (moving to
        the next phase when it is spent) and start the stabilisation period."""
        if not 0 <= added <= self.allowance():
            raise ValueError(f"added must be in [0, {self.allowance()}] (the phase's allowance), got {added}")
        self.used_in_phase += added
        if self.used_in_phase >= self.phase_limits[self.phase_index]:
            self.phase_index, self.used_in_phase = self.phase_index + 1, 0
        self.quiet_until = self.epoch + self.stabilisation_epochs

    def _done(self, no_extrema: bool) -> str | None:
        if self.epoch > self.max_epochs:
            return f"epoch limit {self.max_epochs} reached"
        if self.phase_index >= 3:
            return "every phase's structure limit is used up"
        if no_extrema:
            return "no activation extrema left to route from"
        return None
