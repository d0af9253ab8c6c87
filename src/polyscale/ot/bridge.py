"""Schrodinger-bridge correction for samplers: at chosen steps, pull the batch toward reference samples noised
to the same level, along the entropic transport map.

At step ``i`` with level ``sigma`` the batch ``x_t`` (``B`` samples, flattened to points in ``R^D``) and the
reference ``y_t = y_0 + sigma z`` (``M`` data samples, fresh noise ``z``) are coupled by entropic OT with
``k(x, y) = exp(-|x - y|^2 / epsilon(sigma))``; the barycentric projection ``T(x_i) = sum_j pi_ij y_j / sum_j
pi_ij`` is where the coupling sends ``x_i``, and the batch moves part of the way there,
``x_i <- x_i + step_size (T(x_i) - x_i)``.

The entropic map is biased: even between two copies of one distribution, ``T`` pulls each point toward the
local mean within the kernel's bandwidth and so shrinks the batch. ``debias=True`` (the default) subtracts
that blur, measured on the batch itself. It replaces ``T(x) - x`` by ``T_xy(x) - T_xx(x)``, where ``T_xx`` is
the batch's entropic map onto itself. That is a step along minus the gradient of the Sinkhorn divergence
(Feydy et al. 2019), and it is zero when the batch is distributed like the reference. On the eight-Gaussians
toy (BENCHMARKS.md, "Transport") the plain map collapses the modes and the debiased one does not.

``SinkhornBridge`` is a sampler callback (docs/architecture.md: corrections are callbacks, not sampler flags). It
edits ``x`` in place and moves ``denoised`` by the same displacement, so the sampler's velocity
``(x - denoised) / sigma`` is unchanged and the step continues from the moved batch: every sampler of
``polyscale.diffusion.samplers`` honours such an edit. It costs no denoiser evaluations.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from polyscale.ot.config import KernelConfig, make_kernel
from polyscale.ot.kernels import check_finite
from polyscale.ot.sinkhorn import SinkhornResult, sinkhorn


class SinkhornBridge:
    """Sampler callback applying the bridge step at the step indices ``steps``.

    - ``reference``: ``(M, ...)`` data samples shaped like one sample of the batch (grids are flattened, point
      clouds ``(M, D)`` used as they are).
    - ``steps``: step indices ``i`` at which to correct (the callback's ``info["i"]``); ``None``: every step
      with ``sigma_next > 0`` (the last step's output is the denoised mean and is left alone).
    - ``iterations``: Sinkhorn's ``max_iter`` per bridge step; ``tol`` its marginal tolerance. The potentials
      of one step warm-start the next.
    - ``step_size``: the fraction of the way to the barycentric projection, in [0, 1].
    - ``kernel``: a :class:`KernelConfig`; its epsilon is in data units at ``sigma = 0`` and, with
      ``scale_epsilon`` (default), grows like the spread of the noised reference,
      ``epsilon(sigma) = epsilon (s^2 + sigma^2) / s^2`` with ``s^2`` the reference's mean per-coordinate
      variance, so the regularisation stays the same relative to the point clouds at every level.
    - ``debias``: move along ``T_xy(x) - T_xx(x)`` instead of ``T_xy(x) - x`` (module docstring). This costs a
      second Sinkhorn solve, batch against itself.
    - ``generator``: the noise drawn for the reference.

    ``history`` lists one dict per correction (step, sigma, epsilon, iterations, converged, marginal error,
    mean displacement, seconds).
    """

    def __init__(
        self,
        reference: Tensor,
        *,
        kernel: KernelConfig,
        steps: Sequence[int] | None = None,
        step_size: float = 0.5,
        iterations: int = 50,
        tol: float = 1e-3,
        scale_epsilon: bool = True,
        debias: bool = True,
        generator: torch.Generator | None = None,
    ) -> None:
        if reference.ndim < 2 or reference.shape[0] < 2 or not reference.is_floating_point():
            raise ValueError(
                "reference must be a floating (M, ...) batch with M >= 2, "
                f"got {reference.dtype} {tuple(reference.shape)}"
            )
        if not 0 <= step_size <= 1:
            raise ValueError(f"step_size must be in [0, 1], got {step_size}")
        if iterations < 1:
            raise ValueError(f"iterations must be >= 1, got {iterations}")
        self.reference = check_finite(reference.flatten(1), "reference")  # (M, D)
        self.sample_shape = tuple(reference.shape[1:])
        self.kernel, self.steps = kernel, None if steps is None else {int(s) for s in steps}
        self.step_size, self.iterations, self.tol = float(step_size), int(iterations), float(tol)
        self.scale_epsilon, self.debias, self.generator = scale_epsilon, debias, generator
        self._last_self: SinkhornResult | None = None
        self.spread = float(self.reference.double().var(dim=0).mean())  # s^2
        self.history: list[dict[str, Any]] = []
        self._last: SinkhornResult | None = None

    def _config(self, epsilon: float) -> KernelConfig:
        k = self.kernel
        return KernelConfig(
            kind=k.kind, epsilon=epsilon, backend=k.backend, rank=k.rank, dense_limit=k.dense_limit
        )

    def epsilon_at(self, sigma: float) -> float:
        eps = self.kernel.resolved_epsilon
        return eps * (self.spread + sigma**2) / self.spread if self.scale_epsilon else eps

    def transport(self, x: Tensor, sigma: float) -> tuple[Tensor, SinkhornResult]:
        """The barycentric projection ``T(x)`` ``(B, D)`` of the flattened batch onto the reference noised to
        ``sigma``, and the Sinkhorn result behind it."""
        device = self.generator.device if self.generator is not None else self.reference.device
        z = torch.randn(
            self.reference.shape, generator=self.generator, device=device, dtype=self.reference.dtype
        )
        y = self.reference + sigma * z.to(self.reference.device)  # (M, D): reference at level sigma
        op = make_kernel(self._config(self.epsilon_at(sigma)), x.to(y.dtype), y, generator=self.generator)
        init = self._last if self._last is not None and self._last.f.shape == (x.shape[0],) else None
        result = sinkhorn(op, tol=self.tol, max_iter=self.iterations, init=init, warn=False)
        self._last = result
        return result.barycentric().to(x.dtype), result

    def __call__(self, info: dict[str, Any]) -> None:
        i, sigma, sigma_next = info["i"], float(info["sigma"]), float(info["sigma_next"])
        if (self.steps is None and sigma_next == 0) or (self.steps is not None and i not in self.steps):
            return
        x, denoised = info["x"], info["denoised"]
        if tuple(x.shape[1:]) != self.sample_shape:
            raise ValueError(
                f"the batch's samples have shape {tuple(x.shape[1:])}, the reference's {self.sample_shape}"
            )
        start = time.perf_counter()
        flat = x.reshape(x.shape[0], -1)  # (B, D)
        target, result = self.transport(flat, sigma)
        if self.debias:
            # Sinkhorn-divergence flow: subtract the batch's own entropic blur, T_xx(x) - x
            op = make_kernel(
                self._config(result.epsilon), flat.to(self.reference.dtype), flat.to(self.reference.dtype)
            )
            own = sinkhorn(op, tol=self.tol, max_iter=self.iterations, init=self._last_self, warn=False)
            self._last_self = own
            target = target - own.barycentric().to(x.dtype) + flat
        shift = (self.step_size * (target - flat)).reshape(x.shape)
        x.add_(shift)  # in place: the sampler continues from the moved batch
        denoised.add_(shift)  # same displacement: the velocity (x - denoised) / sigma is unchanged
        self.history.append(
            {
                "i": i,
                "sigma": sigma,
                "epsilon": result.epsilon,
                "iterations": result.iterations,
                "converged": result.converged,
                "marginal_error": float(result.marginal_error),
                "displacement": float(shift.flatten(1).norm(dim=1).mean()),
                "seconds": time.perf_counter() - start,
            }
        )


def chain_callbacks(*callbacks: Callable[[dict[str, Any]], None] | None) -> Callable[[dict[str, Any]], None]:
    """One sampler callback that calls each of ``callbacks`` (``None`` entries skipped) in order."""
    live = [c for c in callbacks if c is not None]

    def run(info: dict[str, Any]) -> None:
        for c in live:
            c(info)

    return run
