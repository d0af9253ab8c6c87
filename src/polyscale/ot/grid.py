"""The Gaussian kernel on a regular 1D/2D/3D grid, applied one axis at a time.

On a grid the cost is a sum over axes, ``|x - y|^2 = sum_a (x_a - y_a)^2``, so the kernel factorises,
``K = K_1 (x) K_2 (x) K_3``, and applying ``K`` to a field of ``N^d`` values costs ``d`` one-dimensional
passes instead of one ``N^d x N^d`` product. Two ways to make a pass:

- ``"log"``: an exact log-sum-exp along the axis, ``out_i = logsumexp_j(h_j - (t_i - t_j)^2 / epsilon)``,
  ``O(N^(d+1))`` per application. Stable at every epsilon (no value is ever exponentiated outside a
  shifted log-sum-exp).
- ``"fft"``: exponentiate the field once (shifted by its maximum), convolve each axis with the sampled
  Gaussian by FFT, take the log. ``O(N^d log N)`` per application, but an FFT has absolute, not relative,
  error: entries far below the largest one are lost in round-off (about 1e-16 of the maximum in float64).
  Inside Sinkhorn the log-weights span about ``diameter^2 / epsilon``, so the FFT path is only accurate when
  ``diameter^2 / epsilon <= FFT_MAX_RANGE`` (20: every entry keeps a relative accuracy of about
  ``e^20 * 1e-16 ~ 5e-8``).

- ``"matmul"``: per line along the axis, shift by the line's maximum, exponentiate, multiply by the 1-D
  kernel matrix ``exp(-(t_i - t_j)^2 / epsilon)``, take the log (float64). Every term is non-negative, so
  there is no cancellation and the error is relative, except for terms below float64's smallest normal
  number (``e^-708``). The largest term of a line's sum is at least ``e^(-R_a)`` with
  ``R_a = extent_a^2 / epsilon``, so the lost terms are a share of at most ``N e^(R_a - 708)``: the path is
  exact to rounding while ``R_a <= MATMUL_MAX_RANGE`` (600) on every axis. ``O(N^(d+1))`` multiply-adds but
  only ``O(N^d)`` exponentials, which makes it far faster than the log path (POT's convolutional kernel is
  this product without the shift).

``backend="auto"`` takes the FFT path when its guard holds, else the matmul path when its guard holds, else the
log path. Asking for ``"fft"`` or ``"matmul"`` outside its guard is an error that names the smallest epsilon
it accepts. The FFT path also needs uniform spacing along every axis.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from polyscale.ot.kernels import KernelOperator, check_epsilon, pick_side, squared_distances

FFT_MAX_RANGE = 20.0  # largest diameter^2 / epsilon the FFT path accepts (see the module docstring)
MATMUL_MAX_RANGE = 600.0  # largest extent_a^2 / epsilon on any axis the matmul path accepts
_LOG_BLOCK = 2**24  # elements of one (rows, N, N) log-sum-exp block


class Grid(KernelOperator):
    """``k(x, y) = exp(-|x - y|^2 / epsilon)`` between the nodes of one regular grid and themselves.

    ``shape`` is the grid ``(N_1, ..., N_d)``, ``d`` in {1, 2, 3}; ``coordinates`` are its axes (1-D
    tensors), by default ``linspace(0, 1, N_a)`` on every axis (the convention of POT's convolutional
    kernels). Weights and log-weights are fields flattened to ``(B, N_1 * ... * N_d)`` in C order
    (``field.flatten(1)``); any batch size works with one operator.
    """

    def __init__(
        self,
        shape: Sequence[int],
        epsilon: float,
        *,
        coordinates: Sequence[Tensor] | None = None,
        backend: str = "auto",
        dtype: torch.dtype = torch.float64,
        device: torch.device | str | None = None,
    ) -> None:
        self.grid = tuple(int(s) for s in shape)
        if not 1 <= len(self.grid) <= 3 or min(self.grid) < 1:
            raise ValueError(f"shape must be 1 to 3 positive sizes, got {tuple(shape)}")
        if backend not in ("auto", "fft", "matmul", "log"):
            raise ValueError(f"backend must be 'auto', 'fft', 'matmul' or 'log', got {backend!r}")
        if coordinates is None:
            coordinates = [torch.linspace(0, 1, s, dtype=dtype, device=device) for s in self.grid]
        self.coordinates = [torch.as_tensor(t, dtype=dtype, device=device).flatten() for t in coordinates]
        for axis, t in enumerate(self.coordinates):
            if not bool(torch.isfinite(t).all()):
                raise ValueError(f"coordinates of axis {axis} must be finite, got {t.tolist()[:8]}")
        if [len(t) for t in self.coordinates] != list(self.grid):
            raise ValueError(
                f"coordinates must have lengths {list(self.grid)}, got {[len(t) for t in self.coordinates]}"
            )
        self.epsilon = check_epsilon(epsilon)
        n = math.prod(self.grid)
        self.shape = (1, n, n)
        self.requested_backend = backend
        self.range = sum(float(t.max() - t.min()) ** 2 for t in self.coordinates) / self.epsilon
        uniform = all(_is_uniform(t) for t in self.coordinates)
        if backend == "fft":
            if not uniform:
                raise ValueError("backend='fft' needs uniformly spaced coordinates on every axis")
            if self.range > FFT_MAX_RANGE:
                smallest = self.epsilon * self.range / FFT_MAX_RANGE
                raise ValueError(
                    f"epsilon={self.epsilon:.4g} is too small for the FFT path on this grid: it needs "
                    f"diameter^2 / epsilon <= {FFT_MAX_RANGE:g}, i.e. epsilon >= {smallest:.4g}; use "
                    f"backend='log' (exact at any epsilon) or 'auto'"
                )
        axis_range = max(float(t.max() - t.min()) ** 2 for t in self.coordinates) / self.epsilon
        if backend == "matmul" and axis_range > MATMUL_MAX_RANGE:
            raise ValueError(
                f"epsilon={self.epsilon:.4g} is too small for the matmul path on this grid: it needs "
                f"extent^2 / epsilon <= {MATMUL_MAX_RANGE:g} on every axis, i.e. epsilon >= "
                f"{self.epsilon * axis_range / MATMUL_MAX_RANGE:.4g}; use backend='log' or 'auto'"
            )
        if backend != "auto":
            self.backend = backend
        elif uniform and self.range <= FFT_MAX_RANGE:
            self.backend = "fft"
        else:
            self.backend = "matmul" if axis_range <= MATMUL_MAX_RANGE else "log"
        # per axis: log K_a (N_a, N_a) for the log path, the circular FFT of K_a's first row for the FFT path
        self.log_k = [-((t[:, None] - t[None, :]) ** 2) / self.epsilon for t in self.coordinates]
        self.k_hat = [torch.fft.rfft(_circular_row(lk[0]), n=2 * len(lk)) for lk in self.log_k]

    def with_epsilon(self, epsilon: float) -> Grid:
        return Grid(
            self.grid,
            epsilon,
            coordinates=self.coordinates,
            backend=self.requested_backend if epsilon <= self.epsilon else "auto",
            dtype=self.coordinates[0].dtype,
        )

    def symmetric(self, side: str) -> Grid:
        pick_side(self, side)  # validates side
        return self  # sources and targets are the same grid

    def source_points(self) -> Tensor:
        mesh = torch.meshgrid(*self.coordinates, indexing="ij")
        return torch.stack([m.flatten() for m in mesh], dim=-1).unsqueeze(0)  # (1, n, d)

    target_points = source_points

    def squared_diameter(self) -> float:
        return self.range * self.epsilon

    def log_apply(self, h: Tensor) -> Tensor:
        field = h.reshape(h.shape[0], *self.grid).to(self.coordinates[0].dtype)  # (B, N_1, ..., N_d)
        passes = {"log": self._log_pass, "fft": self._fft_pass, "matmul": self._matmul_pass}
        out = passes[self.backend](field)
        return out.reshape(h.shape).to(h.dtype)

    log_apply_t = log_apply  # the same grid on both sides: K is symmetric

    def _log_pass(self, field: Tensor) -> Tensor:
        for axis, lk in enumerate(self.log_k):
            moved = field.movedim(axis + 1, -1)  # (B, ..., N_a)
            lead = moved.shape[:-1]
            rows = moved.reshape(-1, 1, lk.shape[0])  # (L, 1, N_a)
            step = max(1, _LOG_BLOCK // lk.numel())
            parts = [torch.logsumexp(rows[s : s + step] + lk, dim=-1) for s in range(0, rows.shape[0], step)]
            field = torch.cat(parts).reshape(*lead, lk.shape[0]).movedim(-1, axis + 1)  # (L, N_a) -> back
        return field

    def _matmul_pass(self, field: Tensor) -> Tensor:
        for axis, lk in enumerate(self.log_k):
            moved = field.movedim(axis + 1, -1).double()  # (B, ..., N_a)
            top = moved.amax(dim=-1, keepdim=True).clamp(
                min=torch.finfo(moved.dtype).min
            )  # per line; all -inf stays -inf
            summed = (moved - top).exp() @ lk.double().exp().T  # (B, ..., N_a): sum_j e^{h_j - top} k_ij
            field = (summed.log() + top).to(field.dtype).movedim(-1, axis + 1)
        return field

    def _fft_pass(self, field: Tensor) -> Tensor:
        flat = field.flatten(1)
        top = flat.amax(dim=1).clamp(min=torch.finfo(flat.dtype).min)  # (B,); a field of all -inf stays -inf
        value = (field - top.reshape(-1, *[1] * len(self.grid))).exp()
        for axis, k_hat in enumerate(self.k_hat):
            n = field.shape[axis + 1]
            moved = value.movedim(axis + 1, -1)  # (B, ..., N_a)
            conv = torch.fft.irfft(torch.fft.rfft(moved, n=2 * n) * k_hat, n=2 * n)[..., :n]
            value = conv.movedim(-1, axis + 1)
        # round-off can leave tiny negative values where the true one is tiny and positive
        value = value.clamp(min=torch.finfo(value.dtype).tiny)
        return value.log() + top.reshape(-1, *[1] * len(self.grid))

    def log_kernel_matrix(self) -> Tensor:
        p = self.source_points()
        return -squared_distances(p, p) / self.epsilon  # (1, n, n)


def _is_uniform(t: Tensor) -> bool:
    if len(t) < 3:
        return True
    step = t[1:] - t[:-1]
    return bool((step - step.mean()).abs().max() <= 1e-6 * step.abs().mean())


def _circular_row(log_row: Tensor) -> Tensor:
    """``k[|t|]`` laid out for a circular convolution of length ``2 N``: ``[k0, k1, .., k_{N-1}, 0, k_{N-1},
    .., k1]``, so a zero-padded length-``2N`` circular convolution equals the linear one on the first ``N``."""
    k = log_row.exp()
    return torch.cat([k, k.new_zeros(1), k[1:].flip(0)])
