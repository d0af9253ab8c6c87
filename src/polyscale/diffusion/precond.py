"""Denoisers: EDM preconditioning around a raw network, and adapters for networks trained on a discrete VP
chain. Every module here is a denoiser: ``D(x, sigma, **cond) -> x0_hat`` with ``x = x0 + sigma * eps``
(sigma space), ``x`` of shape ``(B, ...)`` and ``sigma`` a scalar or ``(B,)``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from polyscale.diffusion.schedules import log_sigmas_from_alphas_cumprod, sigma_to_t
from polyscale.diffusion.utils import append_dims, expand_sigma

Denoiser = Callable[..., Tensor]


class EDMPrecond(nn.Module):
    """Karras et al. (2022), Table 1: ``D(x, sigma) = c_skip x + c_out F(c_in x, c_noise)``.

    ``c_skip = sd^2 / (sigma^2 + sd^2)``, ``c_out = sigma sd / sqrt(sigma^2 + sd^2)``,
    ``c_in = 1 / sqrt(sigma^2 + sd^2)``, ``c_noise = log(sigma) / 4``, with ``sd = sigma_data``.
    The raw network is called as ``net(c_in * x, c_noise, **cond)`` with ``c_noise`` of shape ``(B,)``.
    """

    def __init__(self, net: nn.Module, *, sigma_data: float = 0.5) -> None:
        super().__init__()
        if sigma_data <= 0:
            raise ValueError(f"sigma_data must be positive, got {sigma_data}")
        self.net = net
        self.sigma_data = float(sigma_data)

    def forward(self, x: Tensor, sigma: Tensor | float, **cond) -> Tensor:
        """``x`` ``(B, ...)``, ``sigma`` scalar or ``(B,)`` -> ``x0_hat`` ``(B, ...)``."""
        sigma = expand_sigma(sigma, x)  # (B,)
        sd2 = self.sigma_data**2
        c_skip = sd2 / (sigma**2 + sd2)
        c_out = sigma * self.sigma_data / (sigma**2 + sd2).sqrt()
        c_in = 1 / (sigma**2 + sd2).sqrt()
        c_noise = sigma.clamp(min=1e-20).log() / 4  # sigma = 0 (the clean end) stays finite; c_out = 0 there
        f = self.net(append_dims(c_in, x.ndim) * x, c_noise, **cond)
        return append_dims(c_skip, x.ndim) * x + append_dims(c_out, x.ndim) * f.to(x.dtype)


class _DiscreteVP(nn.Module):
    """Shared part of the discrete-VP adapters.

    A VP chain has ``x_vp = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps``; with ``abar = 1 / (1 + sigma^2)``
    this is ``x_vp = x_sigma / sqrt(1 + sigma^2)`` (EDM's ``c_in``), and the network's timestep is
    ``t = sigma_to_t(sigma)`` (fractional between the trained levels, interpolated in log-sigma).
    """

    log_sigmas: Tensor  # a buffer

    def __init__(self, net: nn.Module, alphas_cumprod: Tensor) -> None:
        super().__init__()
        self.net = net
        self.register_buffer("log_sigmas", log_sigmas_from_alphas_cumprod(alphas_cumprod), persistent=False)

    @property
    def sigma_min(self) -> float:
        """The smallest trained noise level ``sigma_{t=0}`` (use as a schedule's ``sigma_min``)."""
        return float(self.log_sigmas[0].exp())

    @property
    def sigma_max(self) -> float:
        """The largest trained noise level ``sigma_{t=T-1}``."""
        return float(self.log_sigmas[-1].exp())

    def _vp_inputs(self, x: Tensor, sigma: Tensor | float) -> tuple[Tensor, Tensor, Tensor]:
        """Returns ``sigma`` ``(B,)``, ``x_vp`` ``(B, ...)`` and ``t`` ``(B,)``."""
        sigma = expand_sigma(sigma, x)  # (B,)
        x_vp = append_dims(1 / (sigma**2 + 1).sqrt(), x.ndim) * x
        # t in at least float32: half precision cannot tell timestep 999 from 1000
        t = sigma_to_t(sigma.to(torch.promote_types(sigma.dtype, torch.float32)), log_sigmas=self.log_sigmas)
        return sigma, x_vp, t


class DiscreteEpsDenoiser(_DiscreteVP):
    """An eps-prediction network ``net(x_vp, t, **cond) -> eps`` as a denoiser: ``x0 = x - sigma * eps``."""

    def forward(self, x: Tensor, sigma: Tensor | float, **cond) -> Tensor:
        """``x`` ``(B, ...)`` in sigma space, ``sigma`` scalar or ``(B,)`` -> ``x0_hat`` ``(B, ...)``."""
        sigma, x_vp, t = self._vp_inputs(x, sigma)
        eps = self.net(x_vp, t, **cond).to(x.dtype)
        return x - append_dims(sigma, x.ndim) * eps


class DiscreteVDenoiser(_DiscreteVP):
    """A v-prediction network (Salimans & Ho 2022; ``v = sqrt(abar) eps - sqrt(1 - abar) x0``) as a denoiser.

    From ``x_vp = sqrt(abar) x0 + sqrt(1 - abar) eps``: ``x0 = sqrt(abar) x_vp - sqrt(1 - abar) v``.
    """

    def forward(self, x: Tensor, sigma: Tensor | float, **cond) -> Tensor:
        """``x`` ``(B, ...)`` in sigma space, ``sigma`` scalar or ``(B,)`` -> ``x0_hat`` ``(B, ...)``."""
        sigma, x_vp, t = self._vp_inputs(x, sigma)
        v = self.net(x_vp, t, **cond).to(x.dtype)
        sqrt_abar = append_dims(1 / (sigma**2 + 1).sqrt(), x.ndim)
        sqrt_one_minus_abar = append_dims(sigma / (sigma**2 + 1).sqrt(), x.ndim)
        return sqrt_abar * x_vp - sqrt_one_minus_abar * v


class ClampedDenoiser(nn.Module):
    """A denoiser whose estimate is projected onto the data's range: ``clamp(D(x, sigma), low, high)``
    (diffusers' ``clip_sample``, for data known to lie in ``[low, high]``, e.g. +-1 labels).

    The true posterior mean ``E[x0 | x]`` of such data lies in the range, so the projection never moves a
    good estimate away from it; it stops one bad estimate (an input outside anything the network was trained
    on) from feeding values of 10^9 back into the sampler, whence through message passing to its neighbours."""

    def __init__(self, denoiser: Denoiser, *, low: float = -1.0, high: float = 1.0) -> None:
        super().__init__()
        if not low < high:
            raise ValueError(f"need low < high, got low={low}, high={high}")
        self.denoiser = denoiser
        self.low, self.high = float(low), float(high)

    def forward(self, x: Tensor, sigma: Tensor | float, **cond) -> Tensor:
        return self.denoiser(x, sigma, **cond).clamp(self.low, self.high)


def to_d(x: Tensor, sigma: Tensor | float, denoised: Tensor) -> Tensor:
    """Probability-flow ODE derivative ``dx/dsigma = (x - D(x, sigma)) / sigma`` (= the eps estimate).

    ``x``, ``denoised`` ``(B, ...)``, ``sigma`` scalar or ``(B,)`` (must be > 0) -> ``(B, ...)``.
    """
    return (x - denoised) / append_dims(expand_sigma(sigma, x), x.ndim)


def eps_from_denoiser(denoiser: Denoiser, x: Tensor, sigma: Tensor | float, **cond) -> Tensor:
    """The eps prediction implied by a denoiser: ``(x - D(x, sigma)) / sigma``. Shapes as :func:`to_d`."""
    sigma = expand_sigma(sigma, x)
    return to_d(x, sigma, denoiser(x, sigma, **cond))


__all__ = [
    "ClampedDenoiser",
    "DiscreteEpsDenoiser",
    "DiscreteVDenoiser",
    "EDMPrecond",
    "eps_from_denoiser",
    "to_d",
]
