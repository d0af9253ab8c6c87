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
from polyscale.diffusion.samplers._common import (
    Callback,
    Denoiser,
    Generators,
    noise_like,
    prepare,
    report,
    sigma_batch,
    steps,
)


@torch.no_grad()
def sample_euler(
    denoiser: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    generator: Generators = None,
    callback: Callback | None = None,
    disable: bool | None = None,
    desc: str | None = None,
    cond: dict[str, Any] | None = None,
) -> Tensor:
    """First-order Euler (Karras et al. 2022, Alg. 2 without churn or correction). NFE = N.

    Equal to DDIM with ``eta = 0`` (Song et al. 2021) once both are written in sigma space.
    ``generator`` is unused (deterministic); ``cond`` is passed to the denoiser as keyword arguments.
    """
    sigmas, cond = prepare(x, sigmas), cond or {}
    for i in steps(sigmas, disable, desc):
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
    generator: Generators = None,
    callback: Callback | None = None,
    disable: bool | None = None,
    desc: str | None = None,
    cond: dict[str, Any] | None = None,
    s_churn: float = 0.0,
    s_tmin: float = 0.0,
    s_tmax: float = float("inf"),
    s_noise: float = 1.0,
) -> Tensor:
    """Heun's 2nd-order method (Karras et al. 2022, Alg. 1; with ``s_churn > 0`` their stochastic Alg. 2).

    Churn: at each level ``s`` with ``s_tmin <= s <= s_tmax`` the state is first raised to
    ``s_hat = s (1 + gamma)``, ``gamma = min(s_churn / N, sqrt(2) - 1)``, by fresh noise of variance
    ``s_noise^2 (s_hat^2 - s^2)``, and the step runs from ``s_hat``. That noise lets samples leave states a
    deterministic path has frozen in, at no extra denoiser calls. ``s_churn = 0`` (the default) is Alg. 1.
    The last step to sigma = 0 is plain Euler (Alg. 1, line 7), so NFE = 2N - 1.
    """
    sigmas, cond = prepare(x, sigmas), cond or {}
    if s_churn < 0 or s_noise < 0 or s_tmin > s_tmax:
        raise ValueError(
            f"need s_churn >= 0, s_noise >= 0 and s_tmin <= s_tmax, got s_churn={s_churn}, s_noise={s_noise}, "
            f"s_tmin={s_tmin}, s_tmax={s_tmax}"
        )
    gamma_max = min(s_churn / max(len(sigmas) - 1, 1), 2**0.5 - 1)
    for i in steps(sigmas, disable, desc):
        s, s_next = sigmas[i], sigmas[i + 1]
        if gamma_max > 0 and s_tmin <= float(s) <= s_tmax:  # Alg. 2, lines 4-6
            s_hat = s * (1 + gamma_max)
            x = x + (s_hat**2 - s**2).sqrt() * s_noise * noise_like(x, generator)
            s = s_hat
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
    generator: Generators = None,
    callback: Callback | None = None,
    disable: bool | None = None,
    desc: str | None = None,
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
    for i in steps(sigmas, disable, desc):
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
    generator: Generators = None,
    callback: Callback | None = None,
    disable: bool | None = None,
    desc: str | None = None,
    cond: dict[str, Any] | None = None,
) -> Tensor:
    """Classical fixed-step RK4 on ``dx/dsigma = (x - D) / sigma`` from each sigma to the next.

    The last step to sigma = 0 is the Euler step ``x = D(x, sigmas[-2])``. NFE = 4 (N - 1) + 1.
    """
    sigmas, cond = prepare(x, sigmas), cond or {}

    def f(x_: Tensor, s_: Tensor) -> Tensor:
        return to_d(x_, s_, denoiser(x_, sigma_batch(s_, x_), **cond))

    for i in steps(sigmas, disable, desc):
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
