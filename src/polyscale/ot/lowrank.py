"""Low-rank kernel operators: positive random features and Nystrom landmarks, ``O((n + m) r)`` per
application instead of ``O(n m)``.

Both keep the kernel as factors ``K ~ Phi_x Phi_y^T`` and compute in float64 (the factors' entries span many
orders of magnitude; float64 keeps ``exp`` from underflowing for ``|x - y|^2 / epsilon`` up to about 700).
Outputs come back in the dtype of the log-weights passed in.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from polyscale.ot.kernels import KernelOperator, as_batch, check_epsilon, pick_side, squared_distances


def _pair(x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    x, y = as_batch(x, "x"), as_batch(y, "y")
    if x.shape[0] != y.shape[0] or x.shape[-1] != y.shape[-1]:
        raise ValueError(
            f"x and y must share batch size and dimension, got {tuple(x.shape)} and {tuple(y.shape)}"
        )
    return x, y


def _check_rank(rank: int) -> int:
    if int(rank) != rank or rank < 1:
        raise ValueError(f"rank must be a positive integer, got {rank}")
    return int(rank)


def _log_matvec(left: Tensor, right: Tensor, h: Tensor, *, left_scale: Tensor, right_scale: Tensor) -> Tensor:
    """``log(L R^T exp(h))`` for row-normalised positive factors ``L = exp(log L - left_scale)`` ``(B, n, r)``
    and ``R`` ``(B, m, r)``, ``h (B, m)``; shifts by maxima so no intermediate overflows. -> ``(B, n)``."""
    w = h.to(right.dtype) + right_scale  # (B, m): the row scales of R move into the vector
    w_max = w.amax(dim=1, keepdim=True)
    t = (right.transpose(1, 2) @ (w - w_max).exp().unsqueeze(-1)).squeeze(-1)  # (B, r)
    z = t.log() + w_max  # (B, r): log of sum_j Phi_y[j, k] e^{h_j}
    z_max = z.amax(dim=1, keepdim=True).clamp(min=-1e300)  # all -inf (nothing reachable) stays -inf below
    out = (left @ (z - z_max).exp().unsqueeze(-1)).squeeze(-1).log() + z_max + left_scale  # (B, n)
    return out.to(h.dtype)


class RandomFeatures(KernelOperator):
    """Positive random features for ``exp(-|x - y|^2 / epsilon)`` (Scetbon & Cuturi 2020, "Linear time
    Sinkhorn divergences using positive features").

    The identity ``k(x, y) = (4 / (pi epsilon))^{d/2} int exp(-2|x - u|^2 / epsilon) exp(-2|y - u|^2 / epsilon) du``
    is importance-sampled with ``u ~ N(c, sigma^2 I)``, ``sigma^2 = q epsilon / 4``, giving features
    ``phi(x, u) = (2 q)^{d/4} exp(-2 |x - u|^2 / epsilon + |u - c|^2 / (epsilon q)) / sqrt(r)`` that are
    positive, so ``K ~ Phi_x Phi_y^T`` never has a negative entry and every log exists. ``c`` is the mean of
    all points; ``sigma^2`` is their mean per-coordinate variance plus ``epsilon / 8`` (our choice: the
    proposal covers the data cloud at any epsilon). The estimate is unbiased; its variance grows as epsilon
    shrinks relative to the data spread, so small epsilon needs a large ``rank``.

    Memory ``O((n + m) r)``; one application is two ``(n + m) x r`` matrix products.
    """

    def __init__(
        self,
        x: Tensor,
        y: Tensor,
        epsilon: float,
        *,
        rank: int = 512,
        generator: torch.Generator | None = None,
        _draws: Tensor | None = None,
    ) -> None:
        self.x, self.y = _pair(x, y)
        self.epsilon, self.rank = check_epsilon(epsilon), _check_rank(rank)
        b, n, d = self.x.shape
        self.shape = (b, n, self.y.shape[1])
        pts = torch.cat([self.x, self.y], dim=1).double()  # (B, n + m, d)
        self.center = pts.mean(dim=1, keepdim=True)  # (B, 1, d)
        spread = (pts - self.center).pow(2).mean(dim=(1, 2))  # (B,): mean per-coordinate variance
        if _draws is None:
            device = generator.device if generator is not None else pts.device
            _draws = torch.randn((b, self.rank, d), generator=generator, device=device, dtype=torch.float64)
        self.draws = _draws.to(pts.device)  # (B, r, d) standard normal, reused by with_epsilon
        sigma2 = spread + self.epsilon / 8  # (B,)
        q = 4 * sigma2 / self.epsilon  # (B,)
        u = self.center + sigma2.sqrt()[:, None, None] * self.draws  # (B, r, d)
        log_u = (d / 4) * (2 * q).log()[:, None] + (u - self.center).pow(2).sum(-1) / (
            self.epsilon * q[:, None]
        )
        log_u = log_u - 0.5 * math.log(self.rank)  # (B, r): the x-independent part of log phi
        self.fx, self.sx = self._factor(self.x.double(), u, log_u)
        self.fy, self.sy = self._factor(self.y.double(), u, log_u)

    def _factor(self, p: Tensor, u: Tensor, log_u: Tensor, block: int = 8192) -> tuple[Tensor, Tensor]:
        """Row-normalised ``exp(log phi - row max)`` ``(B, n, r)`` and the row maxima ``(B, n)``, built
        ``block`` rows at a time so the temporaries stay small next to the result."""
        out = p.new_empty(p.shape[0], p.shape[1], self.rank)
        scale = p.new_empty(p.shape[0], p.shape[1])
        for s in range(0, p.shape[1], block):
            log_phi = log_u.unsqueeze(1) - 2 * squared_distances(p[:, s : s + block], u) / self.epsilon
            scale[:, s : s + block] = log_phi.amax(dim=-1)  # (B, rows)
            out[:, s : s + block] = (log_phi - scale[:, s : s + block].unsqueeze(-1)).exp_()
        return out, scale

    def with_epsilon(self, epsilon: float) -> RandomFeatures:
        return RandomFeatures(self.x, self.y, epsilon, rank=self.rank, _draws=self.draws)

    def symmetric(self, side: str) -> RandomFeatures:
        p = pick_side(self, side)
        return RandomFeatures(p, p, self.epsilon, rank=self.rank, _draws=self.draws)

    def source_points(self) -> Tensor:
        return self.x

    def target_points(self) -> Tensor:
        return self.y

    def log_apply(self, h: Tensor) -> Tensor:
        return _log_matvec(self.fx, self.fy, h, left_scale=self.sx, right_scale=self.sy)

    def log_apply_t(self, h: Tensor) -> Tensor:
        return _log_matvec(self.fy, self.fx, h, left_scale=self.sy, right_scale=self.sx)

    def average(self, h: Tensor, values: Tensor) -> Tensor:
        w = h.double() + self.sy
        e = (w - w.amax(dim=1, keepdim=True)).exp().unsqueeze(-1)  # (B, m, 1)
        ones_and_values = torch.cat([e, e * values.double()], dim=-1)  # (B, m, 1 + c)
        sums = self.fx @ (self.fy.transpose(1, 2) @ ones_and_values)  # (B, n, 1 + c); row scales cancel
        return (sums[..., 1:] / sums[..., :1]).to(values.dtype)

    def log_kernel_matrix(self) -> Tensor:
        k = (self.fx @ self.fy.transpose(1, 2)).log() + self.sx.unsqueeze(-1) + self.sy.unsqueeze(1)
        return k.to(self.x.dtype)


class Nystrom(KernelOperator):
    """Nystrom landmark approximation ``K ~ K_xL K_LL^+ K_Ly`` with ``r`` landmarks drawn uniformly from the
    union of both point sets (Williams & Seeger 2001; for Sinkhorn, Altschuler et al. 2019).

    ``K_LL^+`` is the pseudo-inverse from an eigendecomposition, eigenvalues below ``rcond * max`` dropped.

    **Failure mode at small epsilon.** The factors are not positive: ``K_xL K_LL^+ K_Ly exp(h)`` can be zero
    or negative, and then its log does not exist. This happens when epsilon is small against the distance
    between neighbouring landmarks: a point far from every landmark gets an all-zero (underflowed) row of
    ``K_xL``, ``K_LL`` is nearly the identity, and the approximation no longer resembles ``K``. The operator
    then returns NaN (negative) or -inf (zero) log-values; ``sinkhorn`` stops at the first non-finite
    potential with ``converged=False`` and says why. Use random features (positive by construction) or more
    landmarks there.
    """

    def __init__(
        self,
        x: Tensor,
        y: Tensor,
        epsilon: float,
        *,
        rank: int = 512,
        rcond: float = 1e-10,
        generator: torch.Generator | None = None,
        _landmarks: Tensor | None = None,
    ) -> None:
        self.x, self.y = _pair(x, y)
        self.epsilon, self.rank, self.rcond = check_epsilon(epsilon), _check_rank(rank), rcond
        b, n, _ = self.x.shape
        m = self.y.shape[1]
        self.shape = (b, n, m)
        if _landmarks is None:
            if self.rank > n + m:
                raise ValueError(f"rank (landmarks) must be at most n + m = {n + m}, got {self.rank}")
            pick = torch.randperm(n + m, generator=generator, device=generator.device if generator else "cpu")
            _landmarks = torch.cat([self.x, self.y], dim=1)[:, pick[: self.rank].to(self.x.device)]
        self.landmarks = _landmarks.double()  # (B, r, d)
        k_ll = (-squared_distances(self.landmarks, self.landmarks) / self.epsilon).exp()  # (B, r, r)
        lam, vec = torch.linalg.eigh(k_ll)  # ascending eigenvalues
        keep = lam > self.rcond * lam[:, -1:]
        inv = torch.where(keep, 1 / lam.clamp(min=torch.finfo(lam.dtype).tiny), torch.zeros_like(lam))
        self.k_xl = (-squared_distances(self.x.double(), self.landmarks) / self.epsilon).exp()  # (B, n, r)
        self.k_yl = (-squared_distances(self.y.double(), self.landmarks) / self.epsilon).exp()  # (B, m, r)
        self.inner = vec @ (inv.unsqueeze(-1) * vec.transpose(1, 2))  # (B, r, r): K_LL^+

    def with_epsilon(self, epsilon: float) -> Nystrom:
        return Nystrom(self.x, self.y, epsilon, rank=self.rank, rcond=self.rcond, _landmarks=self.landmarks)

    def symmetric(self, side: str) -> Nystrom:
        p = pick_side(self, side)
        return Nystrom(p, p, self.epsilon, rank=self.rank, rcond=self.rcond, _landmarks=self.landmarks)

    def source_points(self) -> Tensor:
        return self.x

    def target_points(self) -> Tensor:
        return self.y

    def _apply(
        self, left: Tensor, right: Tensor, h: Tensor, values: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """``left K_LL^+ right^T (exp(h - max h) [* values])`` -> ``(B, rows, c)`` and the shift."""
        hd = h.double()
        h_max = hd.amax(dim=1, keepdim=True)
        e = (hd - h_max).exp().unsqueeze(-1)  # (B, m, 1)
        rhs = e if values is None else torch.cat([e, e * values.double()], dim=-1)
        return left @ (self.inner @ (right.transpose(1, 2) @ rhs)), h_max

    def log_apply(self, h: Tensor) -> Tensor:
        s, h_max = self._apply(self.k_xl, self.k_yl, h)
        return (s.squeeze(-1).log() + h_max).to(h.dtype)  # NaN where the approximation is negative

    def log_apply_t(self, h: Tensor) -> Tensor:
        s, h_max = self._apply(self.k_yl, self.k_xl, h)
        return (s.squeeze(-1).log() + h_max).to(h.dtype)

    def average(self, h: Tensor, values: Tensor) -> Tensor:
        s, _ = self._apply(self.k_xl, self.k_yl, h, values)
        return (s[..., 1:] / s[..., :1]).to(values.dtype)

    def log_kernel_matrix(self) -> Tensor:
        return (self.k_xl @ self.inner @ self.k_yl.transpose(1, 2)).log().to(self.x.dtype)
