"""Deterministic solvers of the probability-flow ODE ``dx/dsigma = (x - D(x, sigma)) / sigma`` on a sigma
grid. All take ``x`` of shape ``(B, ...)`` already scaled to ``sigmas[0]`` (``x = randn * sigmas[0]``) and a
schedule ``sigmas`` ``(N + 1,)`` ending in 0, and return the final sample ``(B, ...)``. The ODE is singular at
sigma = 0; every solver takes its last step, ``sigmas[-2] -> 0``, as the Euler step ``x = D(x, sigmas[-2])``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from polyscale.diffusion.precond import to_d
from polyscale.diffusion.samplers._common import Callback, Denoiser, prepare, report, sigma_batch, steps


@torch.no_grad()
def sample_euler(
    denoiser: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    generator: torch.Generator | None = None,
    callback: Callback | None = None,
    disable: bool | None = None,
    cond: dict[str, Any] | None = None,
) -> Tensor:
    """First-order Euler (Karras et al. 2022, Alg. 2 without churn or correction). NFE = N.

    Equal to DDIM with ``eta = 0`` (Song et al. 2021) once both are written in sigma space.
    ``generator`` is unused (deterministic); ``cond`` is passed to the denoiser as keyword arguments.
    """
    sigmas, cond = prepare(x, sigmas), cond or {}
    for i in steps(sigmas, disable):
        s, s_next = sigmas[i], sigmas[i + 1]
        denoised = denoiser(x, sigma_batch(s, x), **cond)
        report(callback, i, s, s_next, x, denoised)
        x = x + to_d(x, s, denoised) * (s_next - s)
    return x


@torch.no_grad()
def sample_heun(
    denoiser: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    generator: torch.Generator | None = None,
    callback: Callback | None = None,
    disable: bool | None = None,
    cond: dict[str, Any] | None = None,
) -> Tensor:
    """Heun's 2nd-order method (Karras et al. 2022, Alg. 1 with ``S_churn = 0``).

    The last step to sigma = 0 is plain Euler (Alg. 1, line 7), so NFE = 2N - 1.
    """
    sigmas, cond = prepare(x, sigmas), cond or {}
    for i in steps(sigmas, disable):
        s, s_next = sigmas[i], sigmas[i + 1]
        denoised = denoiser(x, sigma_batch(s, x), **cond)
        report(callback, i, s, s_next, x, denoised)
        d = to_d(x, s, denoised)  # Alg. 1, line 5
        x_euler = x + d * (s_next - s)  # line 6
        if s_next == 0:
            x = x_euler
            continue
        d_next = to_d(x_euler, s_next, denoiser(x_euler, sigma_batch(s_next, x), **cond))
        x = x + (d + d_next) / 2 * (s_next - s)  # trapezoidal rule, line 8
    return x


@torch.no_grad()
def sample_dpmpp_2m(
    denoiser: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    generator: torch.Generator | None = None,
    callback: Callback | None = None,
    disable: bool | None = None,
    cond: dict[str, Any] | None = None,
) -> Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022, Alg. 2), data prediction, in sigma space. NFE = N.

    With ``lambda = -log sigma`` and ``h_i = lambda_{i+1} - lambda_i`` the exact solution of the linear part
    gives ``x_{i+1} = (sigma_{i+1} / sigma_i) x_i - expm1(-h_i) D_i'`` where ``D_i'`` is ``D_i`` on the first
    step and the linear multistep extrapolation ``(1 + 1/(2 r)) D_i - 1/(2 r) D_{i-1}``,
    ``r = h_{i-1} / h_i``, afterwards. The final step to sigma = 0 is first order (``x = D``), as diffusers'
    ``lower_order_final``.
    """
    sigmas, cond = prepare(x, sigmas), cond or {}
    old_denoised = None  # multistep history lives only in this call
    for i in steps(sigmas, disable):
        s, s_next = sigmas[i], sigmas[i + 1]
        denoised = denoiser(x, sigma_batch(s, x), **cond)
        report(callback, i, s, s_next, x, denoised)
        if s_next == 0:
            x = denoised  # limit of the first-order update as h -> infinity
        else:
            h = s.log() - s_next.log()
            if old_denoised is None:
                d = denoised
            else:
                r = (sigmas[i - 1].log() - s.log()) / h  # h_{i-1} / h_i
                d = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * old_denoised
            x = (s_next / s) * x - torch.expm1(-h) * d
        old_denoised = denoised
    return x


@torch.no_grad()
def sample_ode_rk4(
    denoiser: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    generator: torch.Generator | None = None,
    callback: Callback | None = None,
    disable: bool | None = None,
    cond: dict[str, Any] | None = None,
) -> Tensor:
    """Classical fixed-step RK4 on ``dx/dsigma = (x - D) / sigma`` from each sigma to the next.

    The last step to sigma = 0 is the Euler step ``x = D(x, sigmas[-2])``. NFE = 4 (N - 1) + 1.
    """
    sigmas, cond = prepare(x, sigmas), cond or {}

    def f(x_: Tensor, s_: Tensor) -> Tensor:
        return to_d(x_, s_, denoiser(x_, sigma_batch(s_, x_), **cond))

    for i in steps(sigmas, disable):
        s, s_next = sigmas[i], sigmas[i + 1]
        denoised = denoiser(x, sigma_batch(s, x), **cond)
        report(callback, i, s, s_next, x, denoised)
        if s_next == 0:
            x = denoised
            continue
        h = s_next - s  # negative: sigma decreases
        k1 = to_d(x, s, denoised)
        k2 = f(x + h / 2 * k1, s + h / 2)
        k3 = f(x + h / 2 * k2, s + h / 2)
        k4 = f(x + h * k3, s_next)
        x = x + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
    return x
