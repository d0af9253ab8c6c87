"""Denoisers: EDM preconditioning around a raw network, and adapters for eps-/v-prediction networks.

Every class here is a denoiser: ``D(x, sigma, **cond) -> x0_hat`` with ``x = x0 + sigma * eps`` (sigma space).
"""

from __future__ import annotations

from torch import Tensor, nn

from polyscale.diffusion.schedules import sigma_to_t
from polyscale.diffusion.utils import append_dims, expand_sigma


class EDMPrecond(nn.Module):
    """Karras et al. (2022), Table 1: ``D(x, sigma) = c_skip x + c_out F(c_in x, c_noise)``.

    ``c_skip = sd^2 / (sigma^2 + sd^2)``, ``c_out = sigma sd / sqrt(sigma^2 + sd^2)``,
    ``c_in = 1 / sqrt(sigma^2 + sd^2)``, ``c_noise = log(sigma) / 4``, with ``sd = sigma_data``.
    The raw network is called as ``net(c_in * x, c_noise, **cond)``.
    """

    def __init__(self, net: nn.Module, *, sigma_data: float = 0.5) -> None:
        super().__init__()
        if sigma_data <= 0:
            raise ValueError(f"sigma_data must be positive, got {sigma_data}")
        self.net = net
        self.sigma_data = float(sigma_data)

    def forward(self, x: Tensor, sigma: Tensor | float, **cond) -> Tensor:
        sigma = expand_sigma(sigma, x)  # (B,)
        sd2 = self.sigma_data**2
        c_skip = sd2 / (sigma**2 + sd2)
        c_out = sigma * self.sigma_data / (sigma**2 + sd2).sqrt()
        c_in = 1 / (sigma**2 + sd2).sqrt()
        c_noise = sigma.clamp(min=1e-20).log() / 4
        f = self.net(append_dims(c_in, x.ndim) * x, c_noise, **cond)
        return append_dims(c_skip, x.ndim) * x + append_dims(c_out, x.ndim) * f.to(x.dtype)


class _DiscreteVP(nn.Module):
    """Shared part of the discrete VP adapters: VP input scaling and continuous timestep from sigma."""

    def __init__(self, net: nn.Module, alphas_cumprod: Tensor) -> None:
        super().__init__()
        if alphas_cumprod.ndim != 1:
            raise ValueError(f"alphas_cumprod must be 1-D, got shape {tuple(alphas_cumprod.shape)}")
        self.net = net
        self.register_buffer("alphas_cumprod", alphas_cumprod.double(), persistent=False)

    def _inputs(self, x: Tensor, sigma: Tensor | float) -> tuple[Tensor, Tensor, Tensor]:
        sigma = expand_sigma(sigma, x)  # (B,)
        c_in = append_dims(1 / (sigma**2 + 1).sqrt(), x.ndim)  # x_vp = sqrt(abar) x_sigma = x_sigma / sqrt(1+s^2)
        t = sigma_to_t(sigma, self.alphas_cumprod)
        return sigma, c_in * x, t


class DiscreteEpsDenoiser(_DiscreteVP):
    """A network trained to predict eps on a discrete VP chain, as a denoiser: ``x0 = x - sigma * eps(x_vp, t)``."""

    def forward(self, x: Tensor, sigma: Tensor | float, **cond) -> Tensor:
        sigma, x_vp, t = self._inputs(x, sigma)
        eps = self.net(x_vp, t, **cond).to(x.dtype)
        return x - append_dims(sigma, x.ndim) * eps


class DiscreteVDenoiser(_DiscreteVP):
    """A v-prediction network (``v = sqrt(abar) eps - sqrt(1-abar) x0``) as a denoiser.

    With ``x_vp = sqrt(abar) x0 + sqrt(1-abar) eps``: ``x0 = sqrt(abar) x_vp - sqrt(1-abar) v``.
    """

    def forward(self, x: Tensor, sigma: Tensor | float, **cond) -> Tensor:
        sigma, x_vp, t = self._inputs(x, sigma)
        v = self.net(x_vp, t, **cond).to(x.dtype)
        sqrt_ab = append_dims(1 / (sigma**2 + 1).sqrt(), x.ndim)
        sqrt_1mab = append_dims(sigma / (sigma**2 + 1).sqrt(), x.ndim)
        return sqrt_ab * x_vp - sqrt_1mab * v


def to_d(x: Tensor, sigma: Tensor, denoised: Tensor) -> Tensor:
    """Probability-flow ODE derivative ``dx/dsigma = (x - D(x, sigma)) / sigma`` (= eps estimate)."""
    return (x - denoised) / append_dims(sigma, x.ndim)


def eps_from_denoiser(denoiser, x: Tensor, sigma: Tensor | float, **cond) -> Tensor:
    """The eps prediction implied by a denoiser: ``(x - D(x, sigma)) / sigma``."""
    sigma = expand_sigma(sigma, x)
    return to_d(x, sigma, denoiser(x, sigma, **cond))


__all__ = ["EDMPrecond", "DiscreteEpsDenoiser", "DiscreteVDenoiser", "to_d", "eps_from_denoiser"]
