"""The kernel-operator interface every Sinkhorn backend meets, and the exact dense operator.

One convention for the whole package: ``k(x, y) = exp(-|x - y|^2 / epsilon)`` with the squared Euclidean
cost ``C(x, y) = |x - y|^2``. An operator holds the geometry of a batch of ``B`` problems with ``n`` source and
``m`` target points and knows how to apply ``K`` in the log domain:

``log_apply(h)[b, i] = log sum_j k(x_bi, y_bj) exp(h[b, j])``  (``(B, m) -> (B, n)``)

and its transpose. Sinkhorn (``polyscale.ot.sinkhorn``) only ever calls these, so a new backend is one new
class.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod

import torch
from torch import Tensor


def as_batch(points: Tensor, name: str) -> Tensor:
    """``(n, d)`` or ``(B, n, d)`` floating points as ``(B, n, d)``; a ``ValueError`` for any other shape or
    dtype, and for NaN or infinite coordinates (no cost, kernel or Sinkhorn potential exists for them)."""
    if not points.is_floating_point() or points.ndim not in (2, 3) or points.shape[-2] == 0:
        raise ValueError(
            f"{name} must be a non-empty floating tensor (n, d) or (B, n, d), got {points.dtype} "
            f"{tuple(points.shape)}"
        )
    check_finite(points, name)
    return points if points.ndim == 3 else points.unsqueeze(0)


def check_finite(points: Tensor, name: str) -> Tensor:
    """``points`` ``(n, d)`` or ``(B, n, d)`` unless a coordinate is NaN or infinite, then a ``ValueError``
    that counts the points concerned and names the first."""
    bad = ~torch.isfinite(points)
    if bool(bad.any()):
        rows = bad.any(-1)  # (n,) or (B, n)
        first = [int(i) for i in rows.nonzero()[0]]
        at = f"point {first[-1]}" + (f" of problem {first[0]}" if len(first) == 2 else "")
        raise ValueError(
            f"{name} has NaN or infinite coordinates ({int(rows.sum())} of its {rows.numel()} points, the first "
            f"is {at}); optimal transport needs finite points"
        )
    return points


def check_epsilon(epsilon: float) -> float:
    """``epsilon`` as a positive finite float, or a ``ValueError``."""
    epsilon = float(epsilon)
    if not math.isfinite(epsilon) or epsilon <= 0:
        raise ValueError(f"epsilon must be a positive finite number, got {epsilon}")
    return epsilon


def squared_distances(x: Tensor, y: Tensor) -> Tensor:
    """``|x_i - y_j|^2`` for ``x (B, n, d)``, ``y (B, m, d)`` -> ``(B, n, m)``, clamped at 0 (the expanded
    form ``|x|^2 + |y|^2 - 2 x.y`` can round below 0)."""
    xx = x.pow(2).sum(-1, keepdim=True)  # (B, n, 1)
    yy = y.pow(2).sum(-1).unsqueeze(-2)  # (B, 1, m)
    return (xx + yy - 2 * x @ y.transpose(-1, -2)).clamp_(min=0)


ABSORB = 10.0  # largest |h - h0| the absorbed dense kernel accepts before re-absorbing (see Dense)


def pick_side(kernel: KernelOperator, side: str) -> Tensor:
    """The source or the target points of ``kernel``."""
    if side not in ("source", "target"):
        raise ValueError(f"side must be 'source' or 'target', got {side!r}")
    return kernel.source_points() if side == "source" else kernel.target_points()


class KernelOperator(ABC):
    """Base class: the Gaussian kernel between the source points and the target points of ``B`` problems.

    Subclasses set ``epsilon``, ``shape = (B, n, m)`` and implement the abstract methods (``log_apply``,
    ``log_apply_t``, ``with_epsilon``, ``symmetric``, ``source_points``, ``target_points``,
    ``log_kernel_matrix``); ``average`` has a generic
    implementation on top of ``log_apply`` that subclasses may replace by a faster exact one.
    """

    epsilon: float
    shape: tuple[int, int, int]

    @abstractmethod
    def log_apply(self, h: Tensor) -> Tensor:
        """``(B, m)`` log-weights on the targets -> ``(B, n)``: ``log sum_j k(x_i, y_j) exp(h_j)``."""

    @abstractmethod
    def log_apply_t(self, h: Tensor) -> Tensor:
        """``(B, n)`` log-weights on the sources -> ``(B, m)``: ``log sum_i k(x_i, y_j) exp(h_i)``."""

    @abstractmethod
    def with_epsilon(self, epsilon: float) -> KernelOperator:
        """The same geometry (and the same random draws, for randomised backends) at another epsilon."""

    @abstractmethod
    def symmetric(self, side: str) -> KernelOperator:
        """The same backend between the ``side`` ("source" or "target") points and themselves (the
        symmetric problems of the Sinkhorn divergence)."""

    @abstractmethod
    def source_points(self) -> Tensor:
        """``(B, n, d)`` source coordinates."""

    @abstractmethod
    def target_points(self) -> Tensor:
        """``(B, m, d)`` target coordinates."""

    @abstractmethod
    def log_kernel_matrix(self) -> Tensor:
        """``(B, n, m)`` ``log k`` as this backend represents it (approximate for low-rank backends). Dense in
        memory: for small problems, tests and plots."""

    @property
    def dtype(self) -> torch.dtype:
        return self.source_points().dtype

    def squared_diameter(self) -> float:
        """An upper bound of ``max |x - y|^2`` over all pairs, the first epsilon of epsilon-scaling."""
        pts = torch.cat([self.source_points(), self.target_points()], dim=1)  # (B, n + m, d)
        span = pts.amax(dim=1) - pts.amin(dim=1)  # (B, d): bounding-box sides
        return float(span.pow(2).sum(-1).max())

    def average(self, h: Tensor, values: Tensor) -> Tensor:
        """Kernel-weighted mean of target ``values``: ``sum_j w_ij values_j`` with
        ``w_ij = k(x_i, y_j) exp(h_j) / sum_j' k(x_i, y_j') exp(h_j')``; ``h (B, m)``, ``values (B, m, c)`` ->
        ``(B, n, c)``. With ``h = log b + g / epsilon`` this is the barycentric projection of the plan.

        Generic version: each channel is shifted to be >= 1 so its log exists, averaged with ``log_apply`` and
        shifted back (``c + 1`` kernel applications).
        """
        base = self.log_apply(h)  # (B, n)
        low = values.amin(dim=1, keepdim=True)  # (B, 1, c)
        shifted = (values - low + 1).log()  # (B, m, c), >= 0
        out = []
        for c in range(values.shape[-1]):
            out.append((self.log_apply(h + shifted[..., c]) - base).exp())  # (B, n)
        return torch.stack(out, dim=-1) + low - 1


class Dense(KernelOperator):
    """Exact kernel on the full ``n x m`` cost matrix, stable at any epsilon.

    Stored mode (at most ``max_entries`` entries in ``(B, n, m)``): applications use the absorption trick
    (Schmitzer 2019, "Stabilized sparse scaling algorithms"). At a reference ``h0`` one log-sum-exp pass gives
    ``c_i = log sum_j k_ij e^{h0_j}`` and the row-normalised kernel ``Kt_ij = k_ij e^{h0_j - c_i}`` (entries
    in [0, 1]); while ``|h - h0| <= ABSORB`` an application is one matrix-vector product,
    ``log sum_j k_ij e^{h_j} = c_i + log sum_j Kt_ij e^{h_j - h0_j}``, exact to rounding (an entry of ``Kt``
    that underflowed is below ``e^-87`` of the row sum and multiplies at most ``e^ABSORB``). When ``h`` moves
    further, ``h0 = h`` is absorbed again. Sinkhorn's log-weights settle after a few iterations, so most
    applications are matrix products instead of log-sum-exps.

    Blockwise mode (larger problems): the cost is recomputed ``block`` rows at a time at every application,
    every reduction a log-sum-exp, ``O(n + m)`` memory.
    """

    def __init__(
        self,
        x: Tensor,
        y: Tensor,
        epsilon: float,
        *,
        max_entries: int = 2**28,
        block: int = 2048,
        _cost: Tensor | None = None,
    ) -> None:
        self.x, self.y = as_batch(x, "x"), as_batch(y, "y")
        if self.x.shape[0] != self.y.shape[0] or self.x.shape[-1] != self.y.shape[-1]:
            raise ValueError(
                f"x and y must share batch size and dimension, got {tuple(self.x.shape)} and {tuple(self.y.shape)}"
            )
        self.epsilon = check_epsilon(epsilon)
        self.shape = (self.x.shape[0], self.x.shape[1], self.y.shape[1])
        self.max_entries, self.block = max_entries, block
        b, n, m = self.shape
        self._absorbed: dict[bool, tuple[Tensor, Tensor, Tensor]] = {}  # transpose -> (h0, c, Kt)
        self.cost = (
            _cost
            if _cost is not None
            else (squared_distances(self.x, self.y) if b * n * m <= max_entries else None)
        )

    def with_epsilon(self, epsilon: float) -> Dense:
        return Dense(self.x, self.y, epsilon, max_entries=self.max_entries, block=self.block, _cost=self.cost)

    def symmetric(self, side: str) -> Dense:
        p = pick_side(self, side)
        return Dense(p, p, self.epsilon, max_entries=self.max_entries, block=self.block)

    def source_points(self) -> Tensor:
        return self.x

    def target_points(self) -> Tensor:
        return self.y

    def _logits_rows(self, start: int, stop: int, transpose: bool) -> Tensor:
        """Rows ``start:stop`` of ``-C / epsilon`` (or of ``-C^T / epsilon``): ``(B, rows, m)`` (or
        ``(B, rows, n)``)."""
        if self.cost is not None:
            c = self.cost.transpose(-1, -2) if transpose else self.cost
            return c[:, start:stop] / -self.epsilon
        if transpose:
            return squared_distances(self.y[:, start:stop], self.x) / -self.epsilon
        return squared_distances(self.x[:, start:stop], self.y) / -self.epsilon

    def _reduce(self, h: Tensor, transpose: bool, values: Tensor | None = None) -> Tensor:
        rows = self.shape[2] if transpose else self.shape[1]
        out = []
        for start in range(0, rows, self.block):
            logits = h.unsqueeze(1) + self._logits_rows(start, start + self.block, transpose)
            if values is None:
                out.append(torch.logsumexp(logits, dim=-1))  # (B, rows)
            else:
                out.append(torch.softmax(logits, dim=-1) @ values)  # (B, rows, c)
        return torch.cat(out, dim=1)

    def _absorbed_apply(self, h: Tensor, transpose: bool) -> Tensor:
        """``log K e^h`` (or ``log K^T e^h``) through the absorbed kernel, re-absorbing when ``h`` has moved."""
        entry = self._absorbed.get(transpose)
        if entry is not None and entry[0].shape == h.shape:
            h0, c, kt = entry
            same_inf = torch.isneginf(h) == torch.isneginf(h0)  # zero weights stay zero
            delta = torch.where(torch.isneginf(h0), torch.zeros_like(h), h - h0)
            if bool(same_inf.all()) and float(delta.abs().max()) <= ABSORB:
                return c + (kt @ delta.exp().unsqueeze(-1)).squeeze(-1).log()  # (B, rows)
        rows = self.shape[2] if transpose else self.shape[1]
        kt = h.unsqueeze(1) + self._logits_rows(0, rows, transpose)  # (B, rows, cols) logits
        top = kt.amax(dim=-1, keepdim=True).clamp(
            min=torch.finfo(kt.dtype).min
        )  # (B, rows, 1); an empty row stays -inf below
        kt.sub_(top).exp_()  # one exponential per entry, in place
        total = kt.sum(dim=-1, keepdim=True)
        kt.div_(total)  # row-normalised
        c = (total.log() + top).squeeze(-1)  # (B, rows): log sum_j k_ij e^{h0_j}
        self._absorbed[transpose] = (h.clone(), c, kt)
        return c

    def log_apply(self, h: Tensor) -> Tensor:
        if self.cost is None:
            return self._reduce(h, transpose=False)
        return self._absorbed_apply(h, transpose=False)

    def log_apply_t(self, h: Tensor) -> Tensor:
        if self.cost is None:
            return self._reduce(h, transpose=True)
        return self._absorbed_apply(h, transpose=True)

    def average(self, h: Tensor, values: Tensor) -> Tensor:
        return self._reduce(h, transpose=False, values=values)

    def log_kernel_matrix(self) -> Tensor:
        return self._logits_rows(0, self.shape[1], transpose=False)
