"""Training losses. Each returns a **per-sample** loss of shape ``(B,)``; the training loop reduces."""

from __future__ import annotations

import torch
from torch import Tensor

from polyscale.diffusion.utils import append_dims


def _per_sample_mean(err: Tensor) -> Tensor:
    return err.reshape(err.shape[0], -1).mean(dim=1)  # (B, ...) -> (B,)


class EDMLoss:
    """Karras et al. (2022) eq. 8: ``lambda(sigma) |D(x0 + sigma n, sigma) - x0|^2`` with
    ``ln sigma ~ N(P_mean, P_std^2)`` and ``lambda = (sigma^2 + sd^2) / (sigma sd)^2``."""

    def __init__(self, *, P_mean: float = -1.2, P_std: float = 1.2, sigma_data: float = 0.5) -> None:
        if P_std <= 0 or sigma_data <= 0:
            raise ValueError(f"P_std and sigma_data must be positive, got {P_std}, {sigma_data}")
        self.P_mean, self.P_std, self.sigma_data = P_mean, P_std, sigma_data

    def __call__(self, denoiser, x0: Tensor, *, generator: torch.Generator | None = None, **cond) -> Tensor:
        b = x0.shape[0]
        rnd = torch.randn(b, generator=generator, device=x0.device, dtype=x0.dtype)  # (B,)
        sigma = (rnd * self.P_std + self.P_mean).exp()
        weight = (sigma**2 + self.sigma_data**2) / (sigma * self.sigma_data) ** 2
        noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        denoised = denoiser(x0 + append_dims(sigma, x0.ndim) * noise, sigma, **cond)
        return weight * _per_sample_mean((denoised.to(x0.dtype) - x0) ** 2)


class EpsLoss:
    """DDPM's simple loss ``E |eps_theta(x_t, t) - eps|^2``, ``x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps``,
    ``t`` uniform over the integer timesteps. ``eps_net(x_t, t, **cond)`` takes the VP-space input."""

    def __init__(self, alphas_cumprod: Tensor) -> None:
        if alphas_cumprod.ndim != 1:
            raise ValueError(f"alphas_cumprod must be 1-D, got shape {tuple(alphas_cumprod.shape)}")
        self.alphas_cumprod = alphas_cumprod.double()

    def __call__(self, eps_net, x0: Tensor, *, generator: torch.Generator | None = None, **cond) -> Tensor:
        b = x0.shape[0]
        num_t = self.alphas_cumprod.shape[0]
        t = torch.randint(0, num_t, (b,), generator=generator, device=x0.device)  # (B,)
        abar = self.alphas_cumprod.to(x0.device)[t].to(x0.dtype)
        eps = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        x_t = append_dims(abar.sqrt(), x0.ndim) * x0 + append_dims((1 - abar).sqrt(), x0.ndim) * eps
        return _per_sample_mean((eps_net(x_t, t.to(x0.dtype), **cond).to(x0.dtype) - eps) ** 2)
