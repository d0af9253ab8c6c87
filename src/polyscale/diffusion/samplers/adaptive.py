"""Adaptive probability-flow ODE solver: Dormand-Prince 5(4) with error control, in log-sigma time.

With ``u = log sigma`` the ODE ``dx/dsigma = (x - D) / sigma`` becomes ``dx/du = x - D(x, e^u)``, which is
well scaled over the whole range (sigma spans five decades).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from polyscale.diffusion.samplers._common import Callback, check_inputs, report, sigma_batch

# Dormand-Prince 5(4) Butcher tableau (Dormand & Prince 1980); FSAL: the last stage is the next first stage.
_C = (0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0, 1.0)
_A = (
    (),
    (1 / 5,),
    (3 / 40, 9 / 40),
    (44 / 45, -56 / 15, 32 / 9),
    (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
    (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
    (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84),
)
_B5 = (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84, 0.0)
_B4 = (5179 / 57600, 0.0, 7571 / 16695, 393 / 640, -92097 / 339200, 187 / 2100, 1 / 40)


@torch.no_grad()
def sample_ode_adaptive(
    denoiser, x: Tensor, sigmas: Tensor, *, rtol: float = 1e-3, atol: float = 1e-3, max_steps: int = 1000,
    generator=None, callback: Callback | None = None, disable: bool | None = None, cond: dict | None = None,
    info: dict | None = None
) -> Tensor:
    """Integrate the probability-flow ODE from ``sigmas[0]`` down to ``sigmas[-2]`` (the smallest non-zero level)
    with adaptive Dormand-Prince steps, then return ``D(x, sigmas[-2])``. Only the end points of ``sigmas`` matter.

    Error norm: RMS of ``err / (atol + rtol * max(|x|, |x_new|))`` per sample, max over the batch.
    If ``info`` is a dict it receives ``nfe``, ``accepted`` and ``rejected`` step counts.
    """
    check_inputs(x, sigmas)
    if rtol <= 0 or atol <= 0:
        raise ValueError(f"rtol and atol must be positive, got {rtol}, {atol}")
    cond = cond or {}
    nonzero = sigmas[sigmas > 0]
    u, u_end = math.log(float(nonzero[0])), math.log(float(nonzero[-1]))
    nfe, accepted, rejected = 0, 0, 0

    def f(x_: Tensor, u_: float) -> tuple[Tensor, Tensor]:
        nonlocal nfe
        nfe += 1
        denoised = denoiser(x_, sigma_batch(torch.tensor(math.exp(u_), device=x_.device), x_), **cond)
        return x_ - denoised, denoised

    k_first, denoised = f(x, u)
    h = -0.1 * (u - u_end) if u > u_end else 0.0
    while u > u_end and accepted + rejected < max_steps:
        h = max(h, u_end - u)  # h < 0: u decreases towards u_end
        ks = [k_first]
        for stage in range(1, 7):
            x_stage = x + h * sum(a * k for a, k in zip(_A[stage], ks, strict=False))
            k, d_stage = f(x_stage, u + _C[stage] * h)
            ks.append(k)
        x_new = x + h * sum(b * k for b, k in zip(_B5, ks, strict=True) if b != 0.0)
        err = h * sum((b5 - b4) * k for b5, b4, k in zip(_B5, _B4, ks, strict=True))
        scale = atol + rtol * torch.maximum(x.abs(), x_new.abs())
        ratio = (err / scale).reshape(x.shape[0], -1).pow(2).mean(dim=1).sqrt().max().item()  # (B,) -> max
        if ratio <= 1.0:
            report(callback, accepted, torch.tensor(math.exp(u)), torch.tensor(math.exp(u + h)), x, denoised)
            x, u = x_new, u + h
            k_first, denoised = ks[-1], d_stage  # FSAL: stage 7 was evaluated at (x_new, u + h)
            accepted += 1
        else:
            rejected += 1
        h = h * min(5.0, max(0.2, 0.9 * (max(ratio, 1e-10)) ** -0.2))
    if u > u_end:
        raise RuntimeError(f"ode_adaptive did not reach sigma={math.exp(u_end):.3g} within max_steps={max_steps}")
    if info is not None:
        info.update(nfe=nfe, accepted=accepted, rejected=rejected)
    return denoised
