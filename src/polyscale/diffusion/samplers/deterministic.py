"""Deterministic samplers of the probability-flow ODE ``dx/dsigma = (x - D(x, sigma)) / sigma`` on a sigma grid.

All take ``x`` already scaled to ``sigmas[0]`` (``x = randn * sigmas[0]``) and return the final sample.
"""

from __future__ import annotations

import torch
from torch import Tensor

from polyscale.diffusion.precond import to_d
from polyscale.diffusion.samplers._common import Callback, check_inputs, report, sigma_batch, steps


@torch.no_grad()
def sample_euler(
    denoiser, x: Tensor, sigmas: Tensor, *, generator=None, callback: Callback | None = None,
    disable: bool | None = None, cond: dict | None = None
) -> Tensor:
    """First-order Euler (Karras et al. 2022, Alg. 2 without the Heun correction). NFE = N."""
    check_inputs(x, sigmas)
    cond = cond or {}
    for i in steps(sigmas, disable):
        s, s_next = sigmas[i], sigmas[i + 1]
        denoised = denoiser(x, sigma_batch(s, x), **cond)
        report(callback, i, s, s_next, x, denoised)
        x = x + to_d(x, sigma_batch(s, x), denoised) * (s_next - s)
    return x


@torch.no_grad()
def sample_heun(
    denoiser, x: Tensor, sigmas: Tensor, *, generator=None, callback: Callback | None = None,
    disable: bool | None = None, cond: dict | None = None
) -> Tensor:
    """Heun's 2nd-order method (Karras et al. 2022, Alg. 1). The last step to sigma = 0 is Euler: NFE = 2N - 1."""
    check_inputs(x, sigmas)
    cond = cond or {}
    for i in steps(sigmas, disable):
        s, s_next = sigmas[i], sigmas[i + 1]
        denoised = denoiser(x, sigma_batch(s, x), **cond)
        report(callback, i, s, s_next, x, denoised)
        d = to_d(x, sigma_batch(s, x), denoised)
        x_euler = x + d * (s_next - s)
        if s_next == 0:
            x = x_euler
            continue
        d_next = to_d(x_euler, sigma_batch(s_next, x), denoiser(x_euler, sigma_batch(s_next, x), **cond))
        x = x + (d + d_next) / 2 * (s_next - s)  # trapezoidal rule (Alg. 1, line 8)
    return x


@torch.no_grad()
def sample_dpmpp_2m(
    denoiser, x: Tensor, sigmas: Tensor, *, generator=None, callback: Callback | None = None,
    disable: bool | None = None, cond: dict | None = None
) -> Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022, Alg. 2) in sigma space, with ``lambda = -log sigma``.

    First-order on the first step and on the final step to sigma = 0 (as diffusers' ``lower_order_final``).
    """
    check_inputs(x, sigmas)
    cond = cond or {}
    old_denoised = None
    for i in steps(sigmas, disable):
        s, s_next = sigmas[i], sigmas[i + 1]
        denoised = denoiser(x, sigma_batch(s, x), **cond)
        report(callback, i, s, s_next, x, denoised)
        if s_next == 0:
            x = denoised  # exact limit of the first-order update when sigma_next -> 0
        else:
            h = s.log() - s_next.log()  # lambda_next - lambda
            if old_denoised is None:
                d = denoised
            else:
                r = (sigmas[i - 1].log() - s.log()) / h  # h_last / h
                d = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * old_denoised
            x = (s_next / s) * x - torch.expm1(-h) * d
        old_denoised = denoised
    return x


@torch.no_grad()
def sample_ode_rk4(
    denoiser, x: Tensor, sigmas: Tensor, *, generator=None, callback: Callback | None = None,
    disable: bool | None = None, cond: dict | None = None
) -> Tensor:
    """Classical fixed-step RK4 on the probability-flow ODE across the sigma grid; the final step to
    sigma = 0 (where the ODE is singular) is the Euler step ``x = D(x, sigma)``. NFE = 4(N - 1) + 1."""
    check_inputs(x, sigmas)
    cond = cond or {}

    def f(x_: Tensor, s_: Tensor) -> Tensor:
        return to_d(x_, sigma_batch(s_, x_), denoiser(x_, sigma_batch(s_, x_), **cond))

    for i in steps(sigmas, disable):
        s, s_next = sigmas[i], sigmas[i + 1]
        denoised = denoiser(x, sigma_batch(s, x), **cond)
        report(callback, i, s, s_next, x, denoised)
        if s_next == 0:
            x = denoised
            continue
        h = s_next - s
        k1 = to_d(x, sigma_batch(s, x), denoised)
        k2 = f(x + h / 2 * k1, s + h / 2)
        k3 = f(x + h / 2 * k2, s + h / 2)
        k4 = f(x + h * k3, s_next)
        x = x + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
    return x
