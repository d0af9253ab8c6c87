"""Log-domain Sinkhorn, written once for every kernel operator; Sinkhorn divergence; barycentric maps.

Convention (GeomLoss's): with weights ``a (n,)``, ``b (m,)`` of equal mass and potentials ``f (n,)``,
``g (m,)`` in cost units, the plan is

``pi_ij = a_i b_j exp((f_i + g_j - |x_i - y_j|^2) / epsilon)``,

and Sinkhorn alternates the two soft-min updates

``f_i = -epsilon log sum_j b_j exp((g_j - C_ij) / epsilon)``,
``g_j = -epsilon log sum_i a_i exp((f_i - C_ij) / epsilon)``,

each one a ``KernelOperator.log_apply`` of ``log b + g / epsilon`` (or its transpose). After a ``g`` update the
column marginal is exact; the row marginal is ``a_i exp((f_i - f_i') / epsilon)`` with ``f'`` the next
``f`` update, so the stopping test costs no extra kernel application.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import torch
from torch import Tensor

from polyscale.ot.kernels import KernelOperator


class ConvergenceWarning(UserWarning):
    """Sinkhorn stopped before its marginal error reached the tolerance."""


@dataclass
class SinkhornResult:
    """Potentials and diagnostics of a (batch of) Sinkhorn problem(s); shapes are ``(B, ...)``, or without the
    batch axis when the problem was given without one.

    ``marginal_error`` is the L1 distance between the plan's row marginal and ``a`` (the column marginal is
    exact); ``converged`` is True when it is at most the tolerance for every problem of the batch;
    ``stop_reason`` says why the iteration ended.
    """

    f: Tensor
    g: Tensor
    a: Tensor
    b: Tensor
    kernel: KernelOperator
    iterations: int
    marginal_error: Tensor
    converged: bool
    stop_reason: str
    batched: bool

    @property
    def epsilon(self) -> float:
        return self.kernel.epsilon

    def _b(self, t: Tensor) -> Tensor:  # to the batched layout
        return t if self.batched else t.unsqueeze(0)

    def _out(self, t: Tensor) -> Tensor:  # back to the caller's layout
        return t if self.batched else t.squeeze(0)

    def _log_target_weights(self) -> Tensor:
        return self._b(self.b).log() + self._b(self.g) / self.epsilon  # (B, m)

    def plan(self) -> Tensor:
        """Dense plan ``(B, n, m)`` (``n m`` entries: small problems only)."""
        f, a = self._b(self.f), self._b(self.a)
        log_pi = (
            a.log().unsqueeze(-1) + f.unsqueeze(-1) / self.epsilon + self._log_target_weights().unsqueeze(1)
        )
        return self._out((log_pi + self.kernel.log_kernel_matrix()).exp())

    def row_marginal(self) -> Tensor:
        """``pi 1`` ``(B, n)`` without forming the plan."""
        f, a = self._b(self.f), self._b(self.a)
        return self._out(a * (f / self.epsilon + self.kernel.log_apply(self._log_target_weights())).exp())

    def col_marginal(self) -> Tensor:
        """``pi^T 1`` ``(B, m)`` without forming the plan."""
        log_src = self._b(self.a).log() + self._b(self.f) / self.epsilon
        return self._out(
            self._b(self.b) * (self._b(self.g) / self.epsilon + self.kernel.log_apply_t(log_src)).exp()
        )

    def barycentric(self, values: Tensor | None = None) -> Tensor:
        """Barycentric projection ``T(x_i) = sum_j pi_ij v_j / sum_j pi_ij`` of target ``values`` ``(B, m, c)``
        (default: the target points, which makes ``T`` the entropic transport map) -> ``(B, n, c)``."""
        v = self.kernel.target_points() if values is None else self._b(values)
        if v.shape[0] == 1 and self._b(self.g).shape[0] > 1:
            v = v.expand(self._b(self.g).shape[0], -1, -1)
        return self._out(self.kernel.average(self._log_target_weights(), v))

    @property
    def cost(self) -> Tensor:
        """Transport cost ``<pi, C> = sum_ij pi_ij |x_i - y_j|^2`` ``(B,)`` (or a scalar), without forming the
        plan: ``sum_i r_i |x_i|^2 + sum_j b_j |y_j|^2 - 2 sum_i r_i x_i . T(x_i)`` with ``r`` the row marginal
        and ``T`` the barycentric map, all on points centred at their common mean (against cancellation)."""
        x, y = self.kernel.source_points().double(), self.kernel.target_points().double()
        center = torch.cat([x, y], dim=1).mean(dim=1, keepdim=True)  # (B, 1, d)
        x, y = x - center, y - center
        t = self.kernel.average(self._log_target_weights(), y.to(self.kernel.dtype)).double()
        r = self._b(self.row_marginal()).double()
        b = self._b(self.b).double()
        out = (r * (x.pow(2).sum(-1) - 2 * (x * t).sum(-1))).sum(-1) + (b * y.pow(2).sum(-1)).sum(-1)
        return self._out(out)

    @property
    def value(self) -> Tensor:
        """Entropic OT value ``OT_epsilon(a, b) = <a, f> + <b, g>`` ``(B,)`` (the dual objective at the
        optimum, whose plan has unit mass), the quantity the Sinkhorn divergence is built from."""
        return self._out(
            (self._b(self.a) * self._b(self.f)).sum(-1) + (self._b(self.b) * self._b(self.g)).sum(-1)
        )


def _weights(w: Tensor | None, size: int, batch: int, name: str, like: Tensor) -> Tensor:
    if w is None:
        return torch.full((batch, size), 1.0 / size, dtype=like.dtype, device=like.device)
    if w.ndim == 1:
        w = w.unsqueeze(0)
    if w.ndim != 2 or w.shape[1] != size:
        raise ValueError(f"{name} must have shape ({size},) or (B, {size}), got {tuple(w.shape)}")
    if not torch.isfinite(w).all() or (w < 0).any():
        raise ValueError(f"{name} must be finite and non-negative")
    return w


def epsilon_schedule(start: float, epsilon: float, scaling: float) -> list[float]:
    """Geometric epsilon-scaling ``start, start * scaling, ...`` stopping above ``epsilon``, then ``epsilon``."""
    if not 0 < scaling < 1:
        raise ValueError(f"scaling must be in (0, 1), got {scaling}")
    if not (math.isfinite(start) and math.isfinite(epsilon) and epsilon > 0):
        raise ValueError(
            f"epsilon-scaling needs a finite start and a finite epsilon > 0, got start={start}, epsilon={epsilon}"
        )
    stages = max(0, math.ceil(math.log(epsilon / start) / math.log(scaling))) if start > epsilon else 0
    return [start * scaling**k for k in range(stages)] + [epsilon]


def sinkhorn(
    kernel: KernelOperator,
    a: Tensor | None = None,
    b: Tensor | None = None,
    *,
    tol: float = 1e-5,
    max_iter: int = 1000,
    scaling: float | None = 0.5,
    init: tuple[Tensor, Tensor] | SinkhornResult | None = None,
    warn: bool = True,
) -> SinkhornResult:
    """Solve entropic OT between ``a`` on the kernel's sources and ``b`` on its targets.

    ``a (n,)`` or ``(B, n)`` and ``b (m,)`` or ``(B, m)`` are non-negative weights of equal mass per problem
    (default uniform, mass 1). ``tol`` bounds the L1 row-marginal error; ``max_iter`` counts update pairs,
    epsilon-scaling stages included. ``scaling``: epsilon-scaling (annealing) from the squared diameter down
    to ``kernel.epsilon`` by this factor per stage, one update pair per stage (GeomLoss's schedule); ``None``
    starts at the target epsilon. ``init``: warm start from potentials ``(f, g)`` (shapes of ``a`` and ``b``)
    or an earlier result, for instance the previous step of a sampler; a warm start skips the annealing.

    Returns a :class:`SinkhornResult`; when the tolerance is not reached (or a potential stops being finite)
    ``converged`` is False and, unless ``warn=False``, a :class:`ConvergenceWarning` says so.
    """
    if not (math.isfinite(tol) and tol > 0) or max_iter < 1:
        raise ValueError(f"need a finite tol > 0 and max_iter >= 1, got tol={tol}, max_iter={max_iter}")
    kb, n, m = kernel.shape
    like = kernel.source_points()
    batched = (a is not None and a.ndim == 2) or (b is not None and b.ndim == 2) or kb > 1
    batch = max(
        kb,
        a.shape[0] if a is not None and a.ndim == 2 else 1,
        b.shape[0] if b is not None and b.ndim == 2 else 1,
    )
    a_, b_ = _weights(a, n, batch, "a", like), _weights(b, m, batch, "b", like)
    if kb not in (1, batch) or a_.shape[0] not in (1, batch) or b_.shape[0] not in (1, batch):
        raise ValueError(f"batch sizes do not match: kernel {kb}, a {a_.shape[0]}, b {b_.shape[0]}")
    a_, b_ = a_.expand(batch, n), b_.expand(batch, m)
    mass_a, mass_b = a_.sum(-1), b_.sum(-1)
    if ((mass_a - mass_b).abs() > 1e-5 * mass_a.clamp(min=1e-30)).any() or (mass_a <= 0).any():
        raise ValueError(
            f"a and b must have equal positive mass per problem, got {mass_a.tolist()} and {mass_b.tolist()}"
        )
    log_a, log_b = a_.log(), b_.log()  # -inf on zero weights: those points carry no mass
    eps = kernel.epsilon
    if init is not None:
        f, g = (init.f, init.g) if isinstance(init, SinkhornResult) else init
        f, g = f.reshape(batch, n).to(log_a), g.reshape(batch, m).to(log_a)
        stages = [eps]
    else:
        f, g = torch.zeros_like(log_a), torch.zeros_like(log_b)
        stages = [eps] if scaling is None else epsilon_schedule(kernel.squared_diameter(), eps, scaling)

    iterations = 0
    for eps_s in stages[:-1]:  # annealing: one update pair per stage
        k_s = kernel.with_epsilon(eps_s)
        f = -eps_s * k_s.log_apply(log_b + g / eps_s)
        g = -eps_s * k_s.log_apply_t(log_a + f / eps_s)
        iterations += 1
        del k_s  # free this stage's operator before the next one is built (low-rank factors are large)
    f_next = -eps * kernel.log_apply(log_b + g / eps)
    reason = "max_iter"
    error = torch.full((batch,), float("inf"), dtype=log_a.dtype, device=log_a.device)
    while iterations < max_iter:
        f = f_next
        g = -eps * kernel.log_apply_t(log_a + f / eps)
        f_next = -eps * kernel.log_apply(log_b + g / eps)
        iterations += 1
        error = (a_ * ((f - f_next) / eps).exp() - a_).abs().sum(-1)  # (B,) L1 row-marginal error
        if not (torch.isfinite(f_next).all() and torch.isfinite(g).all()) or not torch.isfinite(error).all():
            reason = (
                f"a potential became non-finite at iteration {iterations}: the kernel operator "
                f"({type(kernel).__name__}) returned log K exp(h) = NaN or -inf (for Nystrom: negative or "
                f"zero approximations at small epsilon)"
            )
            break
        if bool((error <= tol).all()):
            reason = "tol"
            break
    converged = reason == "tol"
    if not converged and warn:
        warnings.warn(
            f"sinkhorn did not converge ({type(kernel).__name__}, epsilon={eps:.4g}): stopped after "
            f"{iterations} iterations with marginal error {error.max().item():.3g} > tol={tol:g}; "
            f"reason: {reason}. Raise max_iter, raise epsilon, or use epsilon-scaling.",
            ConvergenceWarning,
            stacklevel=2,
        )
    shape = (lambda t: t) if batched else (lambda t: t.squeeze(0))
    return SinkhornResult(
        f=shape(f),
        g=shape(g),
        a=shape(a_),
        b=shape(b_),
        kernel=kernel,
        iterations=iterations,
        marginal_error=shape(error),
        converged=converged,
        stop_reason=reason,
        batched=batched,
    )


def sinkhorn_divergence(
    kernel: KernelOperator,
    a: Tensor | None = None,
    b: Tensor | None = None,
    **kwargs,
) -> Tensor:
    """Debiased Sinkhorn divergence ``S(a, b) = OT(a, b) - OT(a, a) / 2 - OT(b, b) / 2`` (Genevay et al. 2018;
    Feydy et al. 2019) with ``OT`` the entropic value of :meth:`SinkhornResult.value`; non-negative and zero
    when both measures are equal. The two symmetric problems use ``kernel.symmetric("source")`` and
    ``kernel.symmetric("target")``. ``kwargs`` go to :func:`sinkhorn`. -> ``(B,)`` or a scalar.
    """
    xy = sinkhorn(kernel, a, b, **kwargs)
    aa = sinkhorn(kernel.symmetric("source"), xy.a, xy.a, **kwargs)
    bb = sinkhorn(kernel.symmetric("target"), xy.b, xy.b, **kwargs)
    return xy.value - (aa.value + bb.value) / 2


def barycentric_map(result: SinkhornResult, values: Tensor | None = None) -> Tensor:
    """The entropic transport map ``x_i -> sum_j pi_ij y_j / sum_j pi_ij`` (see
    :meth:`SinkhornResult.barycentric`)."""
    return result.barycentric(values)
