"""Stochastic samplers: DDIM (with eta), DDPM ancestral, and the VP-SDE predictor-corrector.

They run in sigma space (``x = x0 + sigma * eps``) but their updates are the VP ones, using
``abar = 1 / (1 + sigma^2)`` and ``x_vp = sqrt(abar) * x``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from polyscale.diffusion.samplers._common import (
    Callback,
    check_inputs,
    noise_like,
    report,
    sigma_batch,
    steps,
)
from polyscale.diffusion.utils import append_dims


@torch.no_grad()
def sample_ddim(
    denoiser, x: Tensor, sigmas: Tensor, *, eta: float = 0.0, generator: torch.Generator | None = None,
    callback: Callback | None = None, disable: bool | None = None, cond: dict | None = None
) -> Tensor:
    """DDIM (Song et al. 2021, eq. 12) with stochasticity ``eta``.

    In VP space: ``x' = sqrt(abar') x0 + sqrt(1 - abar' - s^2) eps + s z`` with
    ``s = eta sqrt((1 - abar') / (1 - abar)) sqrt(1 - abar / abar')``. Dividing by ``sqrt(abar')`` gives the
    sigma-space update used here: ``x' = x0 + sigma_det eps + sigma_up z``, ``sigma_up = s / sqrt(abar')``,
    ``sigma_det = sqrt(sigma'^2 - sigma_up^2)``. ``eta = 0`` is deterministic (and equals Euler in sigma space).
    """
    check_inputs(x, sigmas)
    if eta < 0:
        raise ValueError(f"eta must be >= 0, got {eta}")
    cond = cond or {}
    for i in steps(sigmas, disable):
        s, s_next = sigmas[i], sigmas[i + 1]
        denoised = denoiser(x, sigma_batch(s, x), **cond)
        report(callback, i, s, s_next, x, denoised)
        if s_next == 0:
            x = denoised
            continue
        eps = (x - denoised) / s
        abar, abar_next = 1 / (1 + s**2), 1 / (1 + s_next**2)
        var = eta**2 * (1 - abar_next) / (1 - abar) * (1 - abar / abar_next)  # s^2 of eq. 16
        sigma_up = (var / abar_next).clamp(min=0).sqrt()
        sigma_det = (s_next**2 - sigma_up**2).clamp(min=0).sqrt()
        x = denoised + sigma_det * eps
        if eta > 0:
            x = x + sigma_up * noise_like(x, generator)
    return x


@torch.no_grad()
def sample_ddpm(
    denoiser, x: Tensor, sigmas: Tensor, *, generator: torch.Generator | None = None,
    callback: Callback | None = None, disable: bool | None = None, cond: dict | None = None
) -> Tensor:
    """DDPM ancestral sampling (Ho et al. 2020, Alg. 2): each step draws from the posterior
    ``q(x_{t'} | x_t, x0_hat)`` with variance ``beta~ = (1 - abar') / (1 - abar) (1 - abar / abar')`` — which is
    exactly DDIM with ``eta = 1`` (Song et al. 2021, Sec. 4.1), on any sub-sequence of levels."""
    return sample_ddim(denoiser, x, sigmas, eta=1.0, generator=generator, callback=callback, disable=disable,
                       cond=cond)


def _vp_score(x_vp: Tensor, denoised: Tensor, abar: Tensor) -> Tensor:
    """Score of the VP marginal: ``grad log p(x_vp) = -(x_vp - sqrt(abar) x0_hat) / (1 - abar)``."""
    return -(x_vp - abar.sqrt() * denoised) / (1 - abar)


def _per_sample_norm(v: Tensor) -> Tensor:
    return v.reshape(v.shape[0], -1).norm(dim=1)  # (B,)


@torch.no_grad()
def sample_pc(
    denoiser, x: Tensor, sigmas: Tensor, *, snr: float = 0.16, corrector_steps: int = 1,
    generator: torch.Generator | None = None, callback: Callback | None = None, disable: bool | None = None,
    cond: dict | None = None
) -> Tensor:
    """VP-SDE predictor-corrector (Song et al. 2021, "Score-based generative modeling through SDEs", Alg. 3/5).

    VP SDE: ``dx = -beta/2 x dt + sqrt(beta) dw``. Between two levels, ``int beta dt = log(abar' / abar) =: delta``.
    Predictor (reverse-time Euler-Maruyama): ``x' = x + (x / 2 + score(x)) delta + sqrt(delta) z``.
    Corrector (Langevin, Alg. 5): ``x <- x + e score(x) + sqrt(2 e) z`` with step
    ``e = 2 (snr |z| / |score|)^2`` per sample, ``corrector_steps`` times at each new level.
    All in VP coordinates ``x_vp = x / sqrt(1 + sigma^2)``; the final step to sigma = 0 returns ``D(x, sigma)``.
    """
    check_inputs(x, sigmas)
    if snr <= 0 or corrector_steps < 0:
        raise ValueError(f"need snr > 0 and corrector_steps >= 0, got snr={snr}, corrector_steps={corrector_steps}")
    cond = cond or {}

    def score(x_sigma: Tensor, s: Tensor) -> tuple[Tensor, Tensor]:
        abar = 1 / (1 + s**2)
        denoised = denoiser(x_sigma, sigma_batch(s, x_sigma), **cond)
        return _vp_score(x_sigma * abar.sqrt(), denoised, abar), denoised

    for i in steps(sigmas, disable):
        s, s_next = sigmas[i], sigmas[i + 1]
        g, denoised = score(x, s)
        report(callback, i, s, s_next, x, denoised)
        if s_next == 0:
            x = denoised
            continue
        abar, abar_next = 1 / (1 + s**2), 1 / (1 + s_next**2)
        delta = (abar_next / abar).log()  # integral of beta over the step (> 0)
        x_vp = x * abar.sqrt()
        x_vp = x_vp + (x_vp / 2 + g) * delta + delta.sqrt() * noise_like(x, generator)  # predictor
        for _ in range(corrector_steps):  # Langevin corrector at the new level
            g, _ = score(x_vp / abar_next.sqrt(), s_next)
            z = noise_like(x, generator)
            step = 2 * (snr * _per_sample_norm(z) / _per_sample_norm(g).clamp(min=1e-12)) ** 2  # (B,)
            step = append_dims(step, x.ndim)
            x_vp = x_vp + step * g + (2 * step).sqrt() * z
        x = x_vp / abar_next.sqrt()
    return x
