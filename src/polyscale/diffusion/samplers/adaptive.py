"""Adaptive probability-flow ODE solver: Dormand-Prince 5(4) with error control, in log-sigma time.

With ``u = log sigma`` the ODE ``dx/dsigma = (x - D(x, sigma)) / sigma`` becomes ``dx/du = x - D(x, e^u)``,
which is well scaled over the whole range (sigma spans several decades).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from polyscale.diffusion.samplers._common import Callback, Denoiser, Generators, prepare, report, sigma_batch

# Dormand & Prince (1980) 5(4) tableau. The last stage is evaluated at the accepted point (FSAL), so it is the
# next step's first stage and, at the end, the final denoised estimate.
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
_SAFETY, _MIN_FACTOR, _MAX_FACTOR = 0.9, 0.2, 5.0


def _combine(coeffs: tuple[float, ...], ks: list[Tensor]) -> Tensor:
    """``sum_j coeffs[j] * ks[j]`` over the non-zero coefficients."""
    terms = [c * k for c, k in zip(coeffs, ks, strict=False) if c != 0.0]
    return torch.stack(terms).sum(0) if len(terms) > 1 else terms[0]


@torch.no_grad()
def sample_ode_adaptive(
    denoiser: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    rtol: float = 1e-3,
    atol: float = 1e-3,
    max_steps: int = 1000,
    generator: Generators = None,
    callback: Callback | None = None,
    disable: bool | None = None,
    desc: str | None = None,
    cond: dict[str, Any] | None = None,
) -> Tensor:
    """Integrate the probability-flow ODE from ``sigmas[0]`` to ``sigmas[-2]`` (the smallest non-zero level)
    with adaptive Dormand-Prince steps, then return ``D(x, sigmas[-2])``; only those two entries of ``sigmas``
    matter.

    Error control: a step is accepted when, for every sample, the RMS over its elements of
    ``err / (atol + rtol * max(|x|, |x_new|))`` is <= 1 (one shared step size for the batch); the next step is
    scaled by ``0.9 * ratio^(-1/5)`` within ``[0.2, 5]``.

    Reporting: the callback dict has the usual keys plus ``nfe`` (denoiser calls so far) and ``rejected``
    (rejected steps so far). It is called once per accepted step (``i`` counts them) and once more for the
    final denoising step ``sigmas[-2] -> 0``, whose ``nfe`` is the total (no extra call: FSAL gives ``D``
    there).
    Raises ``RuntimeError`` if ``max_steps`` attempts do not reach ``sigmas[-2]``.
    The tqdm bar (unless ``disable``) shows the share of the log-sigma range covered. ``generator`` is unused
    (deterministic).
    """
    sigmas, cond = prepare(x, sigmas), cond or {}
    if rtol <= 0 or atol <= 0 or max_steps < 1:
        raise ValueError(f"need rtol > 0, atol > 0, max_steps >= 1, got {rtol}, {atol}, {max_steps}")
    u, u_end = math.log(float(sigmas[0])), math.log(float(sigmas[-2]))
    nfe = rejected = accepted = 0

    def f(x_: Tensor, u_: float) -> tuple[Tensor, Tensor]:
        """``dx/du`` and ``D`` at ``(x_, sigma = e^u_)``."""
        nonlocal nfe
        nfe += 1
        denoised = denoiser(x_, sigma_batch(x.new_tensor(math.exp(u_)), x_), **cond)
        return x_ - denoised, denoised

    k_first, denoised = f(x, u)
    h = 0.05 * (u_end - u)  # h < 0: u decreases towards u_end
    bar = tqdm(total=100.0, disable=disable, desc=desc or "sampling (adaptive)", leave=False, unit="%")
    span = max(u - u_end, 1e-12)
    while u > u_end:
        if accepted + rejected >= max_steps:
            bar.close()
            raise RuntimeError(
                f"ode_adaptive did not reach sigma={math.exp(u_end):.3g} in max_steps={max_steps} "
                f"(stopped at sigma={math.exp(u):.3g}); loosen rtol/atol or raise max_steps"
            )
        h = max(h, u_end - u)  # do not step past the end
        reaches_end = h == u_end - u
        ks, d_last = [k_first], denoised
        for stage in range(1, 7):
            k, d_last = f(x + h * _combine(_A[stage], ks), u + _C[stage] * h)
            ks.append(k)
        x_new = x + h * _combine(_B5, ks)
        err = h * _combine(tuple(b5 - b4 for b5, b4 in zip(_B5, _B4, strict=True)), ks)
        scale = atol + rtol * torch.maximum(x.abs(), x_new.abs())
        ratio = (err / scale).reshape(x.shape[0], -1).pow(2).mean(dim=1).sqrt().max().item()  # (B,) -> worst
        if ratio <= 1.0:
            u_next = u_end if reaches_end else u + h  # land on u_end exactly
            before = x.clone() if callback is not None else x
            report(
                callback,
                accepted,
                x.new_tensor(math.exp(u)),
                x.new_tensor(math.exp(u_next)),
                x,
                denoised,
                nfe=nfe,
                rejected=rejected,
            )
            moved = x - before  # a callback's in-place edit of x carries over to the accepted step
            x_new, d_last = x_new + moved, d_last + moved
            x, u, k_first, denoised = x_new, u_next, ks[-1], d_last  # FSAL: stage 7 was at (x_new, u + h)
            accepted += 1
            bar.update(100.0 * -h / span)
        else:
            rejected += 1
        h *= min(_MAX_FACTOR, max(_MIN_FACTOR, _SAFETY * max(ratio, 1e-10) ** -0.2))
    bar.close()
    report(callback, accepted, sigmas[-2], sigmas[-1], x, denoised, nfe=nfe, rejected=rejected)
    return denoised
