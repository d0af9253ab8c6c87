"""Stochastic samplers: DDIM (with eta), DDPM ancestral, and the VP-SDE predictor-corrector.

They run in sigma space (``x = x0 + sigma * eps``, ``x`` of shape ``(B, ...)``) and translate the VP formulas
with ``abar = 1 / (1 + sigma^2)`` and ``x_vp = sqrt(abar) * x``. Noise comes only from ``generator``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

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
def sample_ddim(
    denoiser: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    eta: float = 0.0,
    generator: Generators = None,
    callback: Callback | None = None,
    disable: bool | None = None,
    desc: str | None = None,
    cond: dict[str, Any] | None = None,
) -> Tensor:
    """DDIM (Song et al. 2021, eq. 12) with stochasticity ``eta`` in ``[0, 1]``. NFE = N.

    VP form: ``x_vp' = sqrt(abar') x0 + sqrt(1 - abar' - v) eps + sqrt(v) z`` with
    ``v = eta^2 (1 - abar') / (1 - abar) (1 - abar / abar')``. Dividing by ``sqrt(abar')`` and using
    ``abar = 1 / (1 + sigma^2)``: ``x' = x0 + sigma_down eps + sigma_up z`` with
    ``sigma_up = eta sigma' sqrt(sigma^2 - sigma'^2) / sigma`` and
    ``sigma_down = sqrt(sigma'^2 - sigma_up^2)``.
    ``eta = 0`` is deterministic and equals Euler; ``eta = 1`` is DDPM (see :func:`sample_ddpm`). The step to
    sigma = 0 returns ``x0`` and draws no noise.
    """
    sigmas, cond = prepare(x, sigmas), cond or {}
    if not 0 <= eta <= 1:
        raise ValueError(f"eta must be in [0, 1], got {eta}")
    for i in steps(sigmas, disable, desc):
        s, s_next = sigmas[i], sigmas[i + 1]
        denoised = denoiser(x, sigma_batch(s, x), **cond)
        report(callback, i, s, s_next, x, denoised)
        if s_next == 0:
            x = denoised
            continue
        eps = (x - denoised) / s
        sigma_up = eta * s_next * (s**2 - s_next**2).sqrt() / s
        sigma_down = (s_next**2 - sigma_up**2).clamp(min=0).sqrt()
        x = denoised + sigma_down * eps
        if eta > 0:
            x = x + sigma_up * noise_like(x, generator)
    return x


@torch.no_grad()
def sample_ddpm(
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
    """Ancestral DDPM sampling (Ho et al. 2020, Alg. 2, ``sigma_t^2 = beta~_t``) on any sub-sequence of
    levels.

    Each step samples the posterior ``q(x_{t'} | x_t, x0 = D(x_t))``, whose variance is
    ``(1 - abar') / (1 - abar) (1 - abar / abar')``: this is exactly DDIM with ``eta = 1`` (Song et al. 2021,
    Sec. 4.1) and, in sigma space, exactly k-diffusion's ``sample_euler_ancestral`` (``eta = 1``), whose
    ``sigma_up = sigma' sqrt(sigma^2 - sigma'^2) / sigma`` is the same number. Implemented as DDIM
    ``eta = 1``; matches diffusers' ``DDPMScheduler`` (``variance_type="fixed_small"``) draw for draw.
    NFE = N.
    """
    return sample_ddim(
        denoiser,
        x,
        sigmas,
        eta=1.0,
        generator=generator,
        callback=callback,
        disable=disable,
        desc=desc,
        cond=cond,
    )


def _batch_mean_norm(v: Tensor) -> Tensor:
    return v.reshape(v.shape[0], -1).norm(dim=1).mean()  # (B, ...) -> (B,) -> ()


@torch.no_grad()
def sample_pc(
    denoiser: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    snr: float = 0.16,
    corrector_steps: int = 1,
    generator: Generators = None,
    callback: Callback | None = None,
    disable: bool | None = None,
    desc: str | None = None,
    cond: dict[str, Any] | None = None,
) -> Tensor:
    """VP-SDE predictor-corrector (Song et al. 2021, "Score-based generative modeling through SDEs", Alg. 1
    with the reverse-SDE Euler-Maruyama predictor and the Langevin corrector of Alg. 5).

    VP SDE: ``dx_vp = -beta/2 x_vp dt + sqrt(beta) dw`` with ``abar(t) = exp(-int_0^t beta)``; between levels
    ``sigma > sigma'`` the integrated rate is
    ``delta = log(abar' / abar) = log((1 + sigma^2) / (1 + sigma'^2))``.
    The score comes from the denoiser (Tweedie): ``g = -(x_vp - sqrt(abar) D(x, sigma)) / (1 - abar)``.

    - Predictor: ``x_vp' = x_vp + (x_vp / 2 + g) delta + sqrt(delta) z``.
    - Corrector, ``corrector_steps`` times at the new level: ``x_vp <- x_vp + e g + sqrt(2 e) z`` with
      ``e = 2 (snr |z| / |g|)^2``, the norms being per-sample norms averaged over the batch as in the
      reference code. (A per-sample ``e(x)`` makes the chain's stationary density ``p / e`` instead of ``p``;
      the batch mean keeps ``e`` nearly state-free for large batches, at the price of coupling a batch's
      samples through one scalar.) Alg. 5's factor ``alpha_i = 1 - beta_i`` is taken as 1, its limit for
      fine chains.
    - The step to sigma = 0 returns the denoised mean ``D(x, sigmas[-2])``.

    State is kept in VP coordinates inside a step and returned in sigma space, ``x = x_vp / sqrt(abar)``.
    NFE = N + (N - 1) * corrector_steps.
    """
    sigmas, cond = prepare(x, sigmas), cond or {}
    if snr <= 0 or corrector_steps < 0:
        raise ValueError(
            f"need snr > 0 and corrector_steps >= 0, got snr={snr}, corrector_steps={corrector_steps}"
        )

    def score(x_vp: Tensor, s: Tensor) -> tuple[Tensor, Tensor]:
        abar = 1 / (1 + s**2)
        denoised = denoiser(x_vp / abar.sqrt(), sigma_batch(s, x_vp), **cond)
        return -(x_vp - abar.sqrt() * denoised) / (1 - abar), denoised

    for i in steps(sigmas, disable, desc):
        s, s_next = sigmas[i], sigmas[i + 1]
        abar, abar_next = 1 / (1 + s**2), 1 / (1 + s_next**2)
        g, denoised = score(x * abar.sqrt(), s)
        report(callback, i, s, s_next, x, denoised)
        # after the callback, which may have moved x (and denoised with it, leaving g unchanged)
        x_vp = x * abar.sqrt()
        if s_next == 0:
            x = denoised
            continue
        delta = (abar_next / abar).log()  # int beta dt over the step, > 0
        x_vp = x_vp + (x_vp / 2 + g) * delta + delta.sqrt() * noise_like(x, generator)  # predictor
        for _ in range(corrector_steps):  # Langevin corrector at sigma_next
            g, _ = score(x_vp, s_next)
            z = noise_like(x, generator)
            e = 2 * (snr * _batch_mean_norm(z) / _batch_mean_norm(g).clamp(min=1e-20)) ** 2
            x_vp = x_vp + e * g + (2 * e).sqrt() * z
        x = x_vp / abar_next.sqrt()
    return x
