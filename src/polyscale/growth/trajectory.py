"""The geometry of a parameter trajectory, and the geometric extrapolation that initialises a new layer
(after AIether).

A trajectory is a window of snapshots ``W_0 .. W_T`` of one tensor (or of a whole layer, flattened and
concatenated), taken every ``collect_interval_steps`` optimizer steps. With velocities
``V_t = W_{t+1} - W_t`` (``t = 0 .. T-1``) and the chord ``d = W_T - W_0``:

- **Temporal stretch factor** ``tau = sum_t |V_t| / |d|`` (path length over direct distance). ``tau = 1`` on
  a straight path; it grows as the path wanders or turns back (stagnation: much motion, little progress).
- **Effective curvature** ``kappa = sum_t |V_perp,t| / sum_t |V_par,t|``, where ``V_par,t`` is the part of
  ``V_t`` along the chord's direction ``d / |d|`` and ``V_perp,t`` the rest. ``kappa = 0`` on a straight
  line; above 1 the motion is mostly sideways.
- **Dominant subspace.** The SVD of the velocity matrix ``V (T, D) = U S Vh`` gives its principal
  directions; the first ``k_subspace`` rows of ``Vh`` span the dominant subspace ``U_k`` (the method's
  "U"), and the next ``ell_orth`` are the secondary modes.

Extrapolation of one tensor (2-D matrices and 1-D vectors alike: both are flattened to ``D`` entries and
reshaped back)::

    W_new = W_last + beta(tau) * V_hat + gamma(kappa) * A_hat + eta(tau, kappa) * v_escape

- ``V_hat``: the mean velocity ``(W_T - W_0) / T`` projected on ``U_k`` (linear term);
- ``A_hat``: the mean acceleration ``(V_{T-1} - V_0) / (T - 1)`` projected on ``U_k`` (curvature term);
- ``v_escape``: the secondary modes summed with their singular values as weights, scaled to the mean
  velocity's norm, its sign chosen to agree with the last velocity (escape term);
- ``beta = beta0 / (tau + eps)``, ``gamma = gamma0 / (1 + kappa)``, and
  ``eta = eta0 * (tau - tau_crit) * (kappa - kappa_crit)`` only under stagnation (``tau > tau_crit`` and
  ``kappa > kappa_crit``), 0 otherwise.

``beta0 = gamma0 = eta0 = 0`` returns ``W_last`` itself (a copy of the last state).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

import torch
from torch import Tensor

from polyscale.growth.depth_schedule import check_geometry_thresholds


def _points(history: Tensor | list[Tensor]) -> Tensor:
    """``(n, D)`` float64 rows from a ``(n, *shape)`` tensor or a list of same-shaped tensors."""
    x = torch.stack(list(history)) if isinstance(history, list | tuple) else history
    if x.ndim < 2 or x.shape[0] < 2:
        raise ValueError(f"a trajectory needs at least 2 snapshots (n, *shape), got shape {tuple(x.shape)}")
    return x.detach().reshape(x.shape[0], -1).double()  # (n, D)


def stretch_factor(history: Tensor | list[Tensor], *, eps: float = 1e-12) -> float:
    """``tau = path length / direct distance`` of the trajectory (``inf`` when it returns to its start)."""
    w = _points(history)
    v = w[1:] - w[:-1]  # (T, D) velocities V_t
    path = float(v.norm(dim=1).sum())
    direct = float((w[-1] - w[0]).norm())
    if direct <= eps:
        return 1.0 if path <= eps else float("inf")
    return path / direct


def effective_curvature(history: Tensor | list[Tensor], *, eps: float = 1e-12) -> float:
    """``kappa = sum |V_perp| / sum |V_par|`` against the chord direction (``inf`` when no motion is along
    it, 0 for a trajectory that does not move)."""
    w = _points(history)
    v = w[1:] - w[:-1]  # (T, D)
    d = w[-1] - w[0]
    if float(d.norm()) <= eps:
        return 0.0 if float(v.norm()) <= eps else float("inf")
    u = d / d.norm()  # unit chord direction
    par = v @ u  # (T,) signed length of V_par,t
    perp = v - par[:, None] * u  # (T, D) V_perp,t
    return float(perp.norm(dim=1).sum()) / max(float(par.abs().sum()), eps)


@dataclass
class GeometricExtrapolator:
    """The extrapolation of the module docstring; every symbol is a field."""

    beta0: float = 0.1  # gain of the linear term: beta = beta0 / (tau + eps)
    gamma0: float = 0.15  # gain of the curvature term: gamma = gamma0 / (1 + kappa)
    eta0: float = 0.03  # gain of the escape term: eta = eta0 (tau - tau_crit)(kappa - kappa_crit)
    k_subspace: int = 10  # dimension of the dominant subspace U_k of the velocities
    ell_orth: int = 5  # secondary modes (after the first k) that make the escape direction
    tau_crit: float = 2.0  # stagnation needs tau above this ...
    kappa_crit: float = 0.5  # ... and kappa above this
    eps: float = 1e-8  # keeps beta finite

    def __post_init__(self) -> None:
        if self.k_subspace < 1 or self.ell_orth < 0:
            raise ValueError(
                f"need k_subspace >= 1 and ell_orth >= 0, got {self.k_subspace}, {self.ell_orth}"
            )
        for name in ("beta0", "gamma0", "eta0"):
            value = getattr(self, name)
            if not 0 <= value < math.inf:
                raise ValueError(f"{name} must be a finite gain >= 0 (0 turns its term off), got {value}")
        if not 0 < self.eps < math.inf:
            raise ValueError(f"eps must be a finite number > 0, got {self.eps}")
        check_geometry_thresholds(self.tau_crit, self.kappa_crit)

    def coefficients(self, tau: float, kappa: float) -> tuple[float, float, float]:
        """``(beta, gamma, eta)`` for the given geometry."""
        beta = self.beta0 / (tau + self.eps)  # beta(tau)
        gamma = self.gamma0 / (1 + kappa)  # gamma(kappa)
        stagnant = tau > self.tau_crit and kappa > self.kappa_crit
        eta = (
            self.eta0 * (tau - self.tau_crit) * (kappa - self.kappa_crit) if stagnant else 0.0
        )  # eta(tau, kappa)
        if tau == float("inf") or kappa == float("inf"):
            eta = self.eta0 if stagnant else 0.0  # the product would be infinite: keep the base gain
        return beta, gamma, eta

    def extrapolate(
        self, history: Tensor | list[Tensor], *, tau: float | None = None, kappa: float | None = None
    ) -> tuple[Tensor, dict]:
        """``(W_new, metrics)`` from the snapshots ``history`` (``(n, *shape)`` or a list, oldest first).
        ``tau`` and ``kappa`` default to this tensor's own; pass a whole layer's to use one geometry for
        all its tensors. ``W_new`` has the shape and dtype of the last snapshot."""
        last = history[-1]
        w = _points(history)  # (n, D) W_0 .. W_T
        tau = stretch_factor(w) if tau is None else tau
        kappa = effective_curvature(w) if kappa is None else kappa
        beta, gamma, eta = self.coefficients(tau, kappa)
        v = w[1:] - w[:-1]  # (T, D) V_t
        T = v.shape[0]
        _, s, vh = torch.linalg.svd(v, full_matrices=False)  # V = U S Vh; rows of vh: principal directions
        rank = int((s > s[0] * 1e-10).sum()) if s.numel() and s[0] > 0 else 0
        k = min(self.k_subspace, rank)
        basis = vh[:k]  # (k, D) U_k
        project = lambda x: basis.T @ (basis @ x)  # noqa: E731  onto U_k
        v_mean = (w[-1] - w[0]) / T  # mean velocity
        v_hat = project(v_mean) if k else torch.zeros_like(v_mean)  # V_hat
        a_mean = (v[-1] - v[0]) / (T - 1) if T >= 2 else torch.zeros_like(v_mean)  # mean acceleration
        a_hat = project(a_mean) if k else torch.zeros_like(a_mean)  # A_hat
        secondary = vh[k : min(k + self.ell_orth, rank)]  # (ell, D) secondary modes
        v_escape = torch.zeros_like(v_mean)
        if secondary.shape[0] and eta != 0.0:
            direction = (s[k : k + secondary.shape[0], None] * secondary).sum(0)
            if float(direction @ v[-1]) < 0:
                direction = -direction  # SVD signs are arbitrary: point along the last step
            v_escape = direction / direction.norm() * v_mean.norm()  # v_escape, at the mean speed
        delta = beta * v_hat + gamma * a_hat + eta * v_escape
        w_new = (w[-1] + delta).reshape(last.shape).to(last.dtype)
        if beta == gamma == eta == 0.0:
            w_new = last.detach().clone()  # exactly W_last
        metrics = {
            "tau": tau, "kappa": kappa, "beta": beta, "gamma": gamma, "eta": eta, "k": k,
            "secondary": int(secondary.shape[0]), "step_norm": float(delta.norm()),
        }  # fmt: skip
        return w_new, metrics


class TrajectoryWindow:
    """The last ``history_window_size`` snapshots of some named tensors, one taken every
    ``collect_interval_steps`` steps (:meth:`observe`). :meth:`layer_geometry` gives ``tau`` and ``kappa``
    of all the tensors together (one point in the concatenated space per snapshot)."""

    def __init__(self, history_window_size: int = 15, collect_interval_steps: int = 100) -> None:
        if history_window_size < 3 or collect_interval_steps < 1:
            raise ValueError(
                f"need history_window_size >= 3 and collect_interval_steps >= 1, got {history_window_size}, "
                f"{collect_interval_steps}"
            )
        self.size, self.interval = history_window_size, collect_interval_steps
        self.snapshots: deque[dict[str, Tensor]] = deque(maxlen=history_window_size)
        self.steps: deque[int] = deque(maxlen=history_window_size)

    def observe(self, step: int, tensors: dict[str, Tensor]) -> bool:
        """Take a snapshot (detached CPU copies) when ``step`` is a multiple of the interval; True if taken."""
        if step % self.interval:
            return False
        self.add(step, tensors)
        return True

    def add(self, step: int, tensors: dict[str, Tensor]) -> None:
        """Take a snapshot now, whatever the step."""
        if self.snapshots and set(tensors) != set(self.snapshots[-1]):
            raise ValueError("the tracked tensors changed; call reset() when the layer being tracked changes")
        self.snapshots.append({k: v.detach().to("cpu", copy=True) for k, v in tensors.items()})
        self.steps.append(step)

    def reset(self) -> None:
        self.snapshots.clear()
        self.steps.clear()

    def __len__(self) -> int:
        return len(self.snapshots)

    def history(self, name: str) -> list[Tensor]:
        return [s[name] for s in self.snapshots]

    def layer_geometry(self) -> tuple[float, float] | None:
        """``(tau, kappa)`` of the concatenated tensors, or None with fewer than 3 snapshots."""
        if len(self) < 3:
            return None
        points = stack_points(list(self.snapshots))
        return stretch_factor(points), effective_curvature(points)


def stack_points(snapshots: list[dict[str, Tensor]]) -> Tensor:
    """``(n, D)`` float64: each snapshot's tensors flattened and concatenated (in its key order), one row per
    snapshot, so a whole layer's trajectory is one point per snapshot."""
    return torch.stack([torch.cat([v.reshape(-1).double() for v in snap.values()]) for snap in snapshots])
