"""Noise schedules as data: 1-D tensors of decreasing sigmas ending in 0, and discrete VP (DDPM) helpers.

Sigma space (EDM / k-diffusion): ``x_sigma = x0 + sigma * eps``. A discrete VP chain with cumulative products
``alphas_cumprod[t]`` (``abar_t``) maps to it by ``sigma_t = sqrt((1 - abar_t) / abar_t)`` and
``x_sigma = x_vp / sqrt(abar_t)``; conversely ``abar = 1 / (1 + sigma^2)``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

Device = torch.device | str | None

SPACINGS = ("leading", "trailing", "linspace")


def _check_range(n: int, sigma_min: float, sigma_max: float) -> None:
    if n < 1:
        raise ValueError(f"number of steps n must be >= 1, got {n}")
    if not 0 < sigma_min < sigma_max:
        raise ValueError(f"need 0 < sigma_min < sigma_max, got sigma_min={sigma_min}, sigma_max={sigma_max}")


def _finish(levels: Tensor, device: Device, dtype: torch.dtype | None) -> Tensor:
    """Append the final 0 to float64 ``levels`` ``(n,)`` and cast: ``(n + 1,)``."""
    sigmas = torch.cat([levels, levels.new_zeros(1)])
    return sigmas.to(device=device, dtype=dtype or torch.get_default_dtype())


def _ramp(n: int) -> Tensor:
    """``i / (n - 1)`` for ``i = 0 .. n-1`` (just ``[0]`` when ``n = 1``), float64 ``(n,)``."""
    return torch.linspace(0, 1, n, dtype=torch.float64) if n > 1 else torch.zeros(1, dtype=torch.float64)


def sigmas_karras(
    n: int,
    sigma_min: float,
    sigma_max: float,
    *,
    rho: float = 7.0,
    device: Device = None,
    dtype: torch.dtype | None = None,
) -> Tensor:
    """Karras et al. (2022) eq. 5:
    ``sigma_i = (sigma_max^(1/rho) + i/(n-1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho``.

    Returns ``(n + 1,)``: ``n`` decreasing levels from ``sigma_max`` to ``sigma_min``, then 0
    (a single level ``sigma_max`` when ``n = 1``). Computed in float64, returned in ``dtype`` (default dtype).
    """
    _check_range(n, sigma_min, sigma_max)
    if rho <= 0:
        raise ValueError(f"rho must be positive, got {rho}")
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return _finish((hi + _ramp(n) * (lo - hi)) ** rho, device, dtype)


def sigmas_exponential(
    n: int, sigma_min: float, sigma_max: float, *, device: Device = None, dtype: torch.dtype | None = None
) -> Tensor:
    """Levels evenly spaced in log-sigma from ``sigma_max`` to ``sigma_min``, then 0. Shape ``(n + 1,)``."""
    _check_range(n, sigma_min, sigma_max)
    lo, hi = math.log(sigma_min), math.log(sigma_max)
    return _finish((hi + _ramp(n) * (lo - hi)).exp(), device, dtype)


def sigmas_linear(
    n: int, sigma_min: float, sigma_max: float, *, device: Device = None, dtype: torch.dtype | None = None
) -> Tensor:
    """Levels evenly spaced in sigma from ``sigma_max`` to ``sigma_min``, then 0. Shape ``(n + 1,)``."""
    _check_range(n, sigma_min, sigma_max)
    return _finish(sigma_max + _ramp(n) * (sigma_min - sigma_max), device, dtype)


def _check_train_steps(num_train_timesteps: int) -> None:
    if num_train_timesteps < 2:
        raise ValueError(f"num_train_timesteps must be >= 2, got {num_train_timesteps}")


def betas_linear(num_train_timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> Tensor:
    """DDPM's (Ho et al. 2020) linear beta schedule, ``(T,)`` float64."""
    _check_train_steps(num_train_timesteps)
    if not 0 < beta_start < beta_end < 1:
        raise ValueError(
            f"need 0 < beta_start < beta_end < 1, got beta_start={beta_start}, beta_end={beta_end}"
        )
    return torch.linspace(beta_start, beta_end, num_train_timesteps, dtype=torch.float64)


def betas_scaled_linear(
    num_train_timesteps: int = 1000, beta_start: float = 0.00085, beta_end: float = 0.012
) -> Tensor:
    """Stable Diffusion's "scaled_linear" schedule: linear in ``sqrt(beta)``. ``(T,)`` float64."""
    if not 0 < beta_start < beta_end < 1:
        raise ValueError(
            f"need 0 < beta_start < beta_end < 1, got beta_start={beta_start}, beta_end={beta_end}"
        )
    return betas_linear(num_train_timesteps, beta_start**0.5, beta_end**0.5) ** 2


def betas_cosine(num_train_timesteps: int = 1000, s: float = 0.008, max_beta: float = 0.999) -> Tensor:
    """Nichol & Dhariwal (2021) eq. 17: ``abar(t) = cos^2((t/T + s) / (1 + s) * pi/2)``,
    ``beta_t = min(1 - abar((t+1)/T) / abar(t/T), max_beta)``. ``(T,)`` float64 (diffusers'
    "squaredcos_cap_v2")."""
    _check_train_steps(num_train_timesteps)
    if s < 0 or not 0 < max_beta < 1:
        raise ValueError(f"need s >= 0 and 0 < max_beta < 1, got s={s}, max_beta={max_beta}")
    t = torch.arange(num_train_timesteps + 1, dtype=torch.float64) / num_train_timesteps  # (T + 1,)
    abar = torch.cos((t + s) / (1 + s) * math.pi / 2) ** 2
    return (1 - abar[1:] / abar[:-1]).clamp(max=max_beta)


def alphas_cumprod_from_betas(betas: Tensor) -> Tensor:
    """``abar_t = prod_{s <= t} (1 - beta_s)``. ``(T,)`` -> ``(T,)`` float64."""
    if betas.ndim != 1 or betas.numel() < 2:
        raise ValueError(
            f"betas must be a 1-D tensor with at least 2 entries, got shape {tuple(betas.shape)}"
        )
    if not ((betas > 0) & (betas < 1)).all():
        raise ValueError(
            f"betas must lie in (0, 1), got min {betas.min().item()} and max {betas.max().item()}"
        )
    return torch.cumprod(1 - betas.double(), dim=0)


def _check_alphas_cumprod(alphas_cumprod: Tensor) -> None:
    if alphas_cumprod.ndim != 1 or alphas_cumprod.numel() < 2:
        raise ValueError(
            f"alphas_cumprod must be 1-D with >= 2 entries, got shape {tuple(alphas_cumprod.shape)}"
        )
    if (
        not ((alphas_cumprod > 0) & (alphas_cumprod < 1)).all()
        or (alphas_cumprod[1:] >= alphas_cumprod[:-1]).any()
    ):
        raise ValueError("alphas_cumprod must be strictly decreasing with values in (0, 1)")


def sigmas_from_alphas_cumprod(alphas_cumprod: Tensor) -> Tensor:
    """``sigma_t = sqrt((1 - abar_t) / abar_t)``, increasing in ``t``. ``(T,)`` -> ``(T,)``."""
    _check_alphas_cumprod(alphas_cumprod)
    return ((1 - alphas_cumprod) / alphas_cumprod).sqrt()


def log_sigmas_from_alphas_cumprod(alphas_cumprod: Tensor, device: Device = None) -> Tensor:
    """Increasing ``log sigma_t`` ``(T,)`` on ``device`` (default: that of ``alphas_cumprod``), in float64
    (float32 on MPS, which lacks float64). Precompute it once for :func:`sigma_to_t` / :func:`t_to_sigma`."""
    device = torch.device(device) if device is not None else alphas_cumprod.device
    work = torch.float32 if device.type == "mps" else torch.float64
    return sigmas_from_alphas_cumprod(alphas_cumprod.to(dtype=work).to(device)).log()  # cast before moving


def _float_dtype(v: Tensor) -> torch.dtype:
    return v.dtype if v.is_floating_point() else torch.get_default_dtype()


def sigma_to_t(
    sigma: Tensor, alphas_cumprod: Tensor | None = None, *, log_sigmas: Tensor | None = None
) -> Tensor:
    """Continuous timestep of ``sigma``: ``t`` interpolated linearly in log-sigma between the discrete levels
    (the convention of k-diffusion's discrete wrappers and diffusers' ``_sigma_to_t``).

    Give ``alphas_cumprod`` ``(T,)`` or the precomputed ``log_sigmas`` ``(T,)`` of
    :func:`log_sigmas_from_alphas_cumprod`. Sigmas outside the trained range are clamped to
    ``t in [0, T - 1]``.
    Any shape; returns ``sigma``'s shape and float dtype.
    """
    sigma = torch.as_tensor(sigma)
    log_sigmas = _resolve_log_sigmas(alphas_cumprod, log_sigmas, sigma.device)  # (T,) increasing
    log_sigma = sigma.to(log_sigmas.dtype).clamp(min=1e-30).log().reshape(-1)  # (M,)
    # low: the last level <= log_sigma, kept in [0, T-2] so that [low, low + 1] is a valid bracket
    low = (torch.searchsorted(log_sigmas, log_sigma, right=True) - 1).clamp(0, log_sigmas.shape[0] - 2)
    w = ((log_sigma - log_sigmas[low]) / (log_sigmas[low + 1] - log_sigmas[low])).clamp(0, 1)
    return (low + w).reshape(sigma.shape).to(_float_dtype(sigma))


def t_to_sigma(
    t: Tensor, alphas_cumprod: Tensor | None = None, *, log_sigmas: Tensor | None = None
) -> Tensor:
    """Inverse of :func:`sigma_to_t`: log-sigma interpolated linearly between integer timesteps.
    ``t`` is clamped to ``[0, T - 1]``. Any shape; returns ``t``'s shape and float dtype."""
    t = torch.as_tensor(t)
    log_sigmas = _resolve_log_sigmas(alphas_cumprod, log_sigmas, t.device)
    tt = t.to(log_sigmas.dtype).clamp(0, log_sigmas.shape[0] - 1)
    low = tt.floor().long().clamp(max=log_sigmas.shape[0] - 2)
    return torch.lerp(log_sigmas[low], log_sigmas[low + 1], tt - low).exp().to(_float_dtype(t))


def _resolve_log_sigmas(
    alphas_cumprod: Tensor | None, log_sigmas: Tensor | None, device: torch.device
) -> Tensor:
    if alphas_cumprod is not None and log_sigmas is None:
        return log_sigmas_from_alphas_cumprod(alphas_cumprod, device)
    if alphas_cumprod is not None or log_sigmas is None:
        raise ValueError("give exactly one of alphas_cumprod and log_sigmas")
    if log_sigmas.ndim != 1 or log_sigmas.numel() < 2:
        raise ValueError(f"log_sigmas must be 1-D with >= 2 entries, got shape {tuple(log_sigmas.shape)}")
    return log_sigmas.to(device)


def timesteps_vp(
    n: int, num_train_timesteps: int, *, spacing: str = "leading", steps_offset: int = 0
) -> Tensor:
    """The ``n`` decreasing integer timesteps diffusers' DDPM/DDIM/Euler/Heun schedulers pick, ``(n,)``
    int64.

    ``leading``: ``arange(n) * (T // n) + steps_offset``; ``trailing``: ``round(arange(T, 0, -T/n)) - 1``;
    ``linspace``: ``round(linspace(0, T - 1, n))`` (Euler/Heun keep linspace timesteps fractional and
    interpolate sigma linearly; DPM-Solver uses ``n + 1`` points: pass its ``timesteps`` to
    :func:`sigmas_at_timesteps`).
    ``steps_offset`` applies to ``leading`` only, as in diffusers.
    """
    _check_train_steps(num_train_timesteps)
    if not 1 <= n <= num_train_timesteps:
        raise ValueError(f"n must be in [1, {num_train_timesteps}], got {n}")
    if spacing == "leading":
        ts = torch.arange(n, dtype=torch.int64) * (num_train_timesteps // n) + steps_offset
        ts = ts.flip(0)
    elif spacing == "trailing":
        ts = (
            torch.arange(num_train_timesteps, 0, -num_train_timesteps / n, dtype=torch.float64).round().long()
            - 1
        )
    elif spacing == "linspace":
        ts = torch.linspace(0, num_train_timesteps - 1, n, dtype=torch.float64).round().long().flip(0)
    else:
        raise ValueError(f"spacing must be one of {SPACINGS}, got {spacing!r}")
    if ts.max() >= num_train_timesteps:
        raise ValueError(f"steps_offset={steps_offset} pushes timesteps past {num_train_timesteps - 1}")
    return ts


def sigmas_at_timesteps(
    timesteps: Tensor, alphas_cumprod: Tensor, *, dtype: torch.dtype | None = None
) -> Tensor:
    """Sigmas at given integer timesteps (any scheduler's choice, e.g. ``scheduler.timesteps``), then 0.

    ``(n,)`` strictly decreasing timesteps -> ``(n + 1,)`` sigmas in ``dtype`` (default dtype).
    """
    _check_alphas_cumprod(alphas_cumprod)
    ts = torch.as_tensor(timesteps)
    if ts.is_floating_point():
        if (ts != ts.round()).any():
            raise ValueError(f"timesteps must be integers, got {ts.tolist()}")
        ts = ts.long()
    if ts.ndim != 1 or ts.numel() < 1 or (ts[1:] >= ts[:-1]).any():
        raise ValueError(f"timesteps must be a non-empty strictly decreasing 1-D sequence, got {ts.tolist()}")
    if ts.min() < 0 or ts.max() >= alphas_cumprod.shape[0]:
        raise ValueError(f"timesteps must lie in [0, {alphas_cumprod.shape[0] - 1}], got {ts.tolist()}")
    levels = sigmas_from_alphas_cumprod(alphas_cumprod.double().cpu())[ts.cpu()]
    return _finish(levels, alphas_cumprod.device, dtype)


def sigmas_vp(
    n: int,
    alphas_cumprod: Tensor,
    *,
    spacing: str = "leading",
    steps_offset: int = 0,
    dtype: torch.dtype | None = None,
) -> Tensor:
    """Sigmas at the timesteps of :func:`timesteps_vp` (what diffusers would pick), then 0. ``(n + 1,)``."""
    ts = timesteps_vp(n, alphas_cumprod.shape[0], spacing=spacing, steps_offset=steps_offset)
    return sigmas_at_timesteps(ts, alphas_cumprod, dtype=dtype)
