"""Noise schedules as data: 1-D tensors of decreasing sigmas ending in 0, and discrete VP (DDPM) helpers.

Sigma space (EDM / k-diffusion): ``x_sigma = x0 + sigma * eps``. A discrete VP chain with cumulative products
``alphas_cumprod[t]`` maps to it by ``sigma_t = sqrt((1 - a_t) / a_t)`` and ``x_sigma = x_vp / sqrt(a_t)``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def _check_range(n: int, sigma_min: float, sigma_max: float) -> None:
    if n < 1:
        raise ValueError(f"number of steps must be >= 1, got {n}")
    if not 0 < sigma_min < sigma_max:
        raise ValueError(f"need 0 < sigma_min < sigma_max, got sigma_min={sigma_min}, sigma_max={sigma_max}")


def _append_zero(sigmas: Tensor) -> Tensor:
    return torch.cat([sigmas, sigmas.new_zeros(1)])


def sigmas_karras(
    n: int, sigma_min: float, sigma_max: float, *, rho: float = 7.0, device: torch.device | str | None = None
) -> Tensor:
    """Karras et al. (2022) eq. 5: ``(sigma_max^(1/rho) + i/(n-1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho``.

    Returns ``(n + 1,)``: ``n`` decreasing levels from ``sigma_max`` to ``sigma_min``, then 0.
    """
    _check_range(n, sigma_min, sigma_max)
    ramp = torch.linspace(0, 1, n, dtype=torch.float64) if n > 1 else torch.zeros(1, dtype=torch.float64)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    sigmas = (hi + ramp * (lo - hi)) ** rho
    return _append_zero(sigmas).float().to(device)


def sigmas_exponential(
    n: int, sigma_min: float, sigma_max: float, *, device: torch.device | str | None = None
) -> Tensor:
    """Levels evenly spaced in log-sigma from ``sigma_max`` to ``sigma_min``, then 0. Shape ``(n + 1,)``."""
    _check_range(n, sigma_min, sigma_max)
    sigmas = torch.linspace(math.log(sigma_max), math.log(sigma_min), n, dtype=torch.float64).exp()
    return _append_zero(sigmas).float().to(device)


def sigmas_linear(n: int, sigma_min: float, sigma_max: float, *, device: torch.device | str | None = None) -> Tensor:
    """Levels evenly spaced in sigma from ``sigma_max`` to ``sigma_min``, then 0. Shape ``(n + 1,)``."""
    _check_range(n, sigma_min, sigma_max)
    return _append_zero(torch.linspace(sigma_max, sigma_min, n, dtype=torch.float64)).float().to(device)


def betas_linear(num_train_timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> Tensor:
    """DDPM's linear beta schedule, ``(T,)`` float64."""
    if num_train_timesteps < 2:
        raise ValueError(f"num_train_timesteps must be >= 2, got {num_train_timesteps}")
    if not 0 < beta_start < beta_end < 1:
        raise ValueError(f"need 0 < beta_start < beta_end < 1, got {beta_start}, {beta_end}")
    return torch.linspace(beta_start, beta_end, num_train_timesteps, dtype=torch.float64)


def betas_scaled_linear(
    num_train_timesteps: int = 1000, beta_start: float = 0.00085, beta_end: float = 0.012
) -> Tensor:
    """Stable Diffusion's "scaled linear" schedule: linear in sqrt(beta). ``(T,)`` float64."""
    return betas_linear(num_train_timesteps, beta_start**0.5, beta_end**0.5) ** 2


def betas_cosine(num_train_timesteps: int = 1000, *, s: float = 0.008, max_beta: float = 0.999) -> Tensor:
    """Nichol & Dhariwal (2021) cosine schedule: ``abar(t) = cos^2(((t/T) + s) / (1 + s) * pi/2)``."""
    if num_train_timesteps < 2:
        raise ValueError(f"num_train_timesteps must be >= 2, got {num_train_timesteps}")
    t = torch.arange(num_train_timesteps + 1, dtype=torch.float64) / num_train_timesteps
    abar = torch.cos((t + s) / (1 + s) * math.pi / 2) ** 2
    return (1 - abar[1:] / abar[:-1]).clamp(max=max_beta)


def alphas_cumprod_from_betas(betas: Tensor) -> Tensor:
    """``abar_t = prod_{s<=t} (1 - beta_s)``, ``(T,)``."""
    if betas.ndim != 1 or not ((betas > 0) & (betas < 1)).all():
        raise ValueError("betas must be a 1-D tensor with values in (0, 1)")
    return torch.cumprod(1 - betas.double(), dim=0)


def sigmas_from_alphas_cumprod(alphas_cumprod: Tensor) -> Tensor:
    """``sigma_t = sqrt((1 - abar_t) / abar_t)``, increasing in t. ``(T,)``."""
    return ((1 - alphas_cumprod) / alphas_cumprod) ** 0.5


def sigma_to_t(sigma: Tensor, alphas_cumprod: Tensor) -> Tensor:
    """Continuous timestep for ``sigma``: linear interpolation of t in log-sigma between the discrete levels
    (the convention of k-diffusion and diffusers' discrete Euler/Heun schedulers). Clamped to ``[0, T-1]``."""
    log_sigmas = sigmas_from_alphas_cumprod(alphas_cumprod).log().to(sigma.device)
    log_sigma = sigma.double().clamp(min=1e-20).log()
    dists = log_sigma[..., None] - log_sigmas  # (..., T)
    low = (dists >= 0).cumsum(dim=-1).argmax(dim=-1).clamp(max=log_sigmas.shape[0] - 2)
    lo, hi = log_sigmas[low], log_sigmas[low + 1]
    w = ((lo - log_sigma) / (lo - hi)).clamp(0, 1)
    return ((1 - w) * low + w * (low + 1)).to(sigma.dtype)


def t_to_sigma(t: Tensor, alphas_cumprod: Tensor) -> Tensor:
    """Inverse of :func:`sigma_to_t`: log-sigma interpolated linearly between integer timesteps."""
    log_sigmas = sigmas_from_alphas_cumprod(alphas_cumprod).log().to(t.device)
    t = t.double().clamp(0, log_sigmas.shape[0] - 1)
    low = t.floor().long().clamp(max=log_sigmas.shape[0] - 2)
    w = t - low
    return ((1 - w) * log_sigmas[low] + w * log_sigmas[low + 1]).exp().to(torch.get_default_dtype())


def timesteps_vp(n: int, num_train_timesteps: int, *, spacing: str = "leading", steps_offset: int = 0) -> Tensor:
    """The ``n`` integer timesteps (decreasing) diffusers' schedulers pick for inference.

    ``leading``: ``arange(n) * (T // n) + offset``; ``trailing``: ``round(arange(T, 0, -T/n)) - 1``;
    ``linspace``: ``round(linspace(0, T - 1, n))``.
    """
    if not 1 <= n <= num_train_timesteps:
        raise ValueError(f"n must be in [1, {num_train_timesteps}], got {n}")
    if spacing == "leading":
        ts = torch.arange(n, dtype=torch.float64) * (num_train_timesteps // n) + steps_offset
    elif spacing == "trailing":
        ts = torch.arange(num_train_timesteps, 0, -num_train_timesteps / n, dtype=torch.float64).round() - 1
        return ts.long()
    elif spacing == "linspace":
        ts = torch.linspace(0, num_train_timesteps - 1, n, dtype=torch.float64).round()
    else:
        raise ValueError(f"spacing must be 'leading', 'trailing' or 'linspace', got {spacing!r}")
    return ts.flip(0).long()


def sigmas_vp(
    n: int, alphas_cumprod: Tensor, *, spacing: str = "leading", steps_offset: int = 0
) -> Tensor:
    """Sigmas at the timesteps of :func:`timesteps_vp`, then 0. ``(n + 1,)`` float32."""
    ts = timesteps_vp(n, alphas_cumprod.shape[0], spacing=spacing, steps_offset=steps_offset)
    return sigmas_at_timesteps(ts, alphas_cumprod)


def sigmas_at_timesteps(timesteps: Tensor, alphas_cumprod: Tensor) -> Tensor:
    """Sigmas at given integer timesteps (any scheduler's choice, e.g. ``scheduler.timesteps``), then 0."""
    ts = torch.as_tensor(timesteps).long()
    if ts.ndim != 1 or (ts[1:] >= ts[:-1]).any():
        raise ValueError(f"timesteps must be a strictly decreasing 1-D sequence, got {ts.tolist()}")
    if ts.min() < 0 or ts.max() >= alphas_cumprod.shape[0]:
        raise ValueError(f"timesteps must lie in [0, {alphas_cumprod.shape[0] - 1}], got {ts.tolist()}")
    return _append_zero(sigmas_from_alphas_cumprod(alphas_cumprod)[ts]).float()
