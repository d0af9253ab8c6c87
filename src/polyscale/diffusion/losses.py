"""Training losses. Each returns a **per-sample** loss of shape ``(B,)``; the training loop reduces.

Squared errors are averaged over every non-batch element, so a loss value does not grow with the resolution
(EDM's reference sums instead; that is a constant factor per resolution). ``x0`` may be any batch-first
tensor: ``(B, C, *spatial)`` grids or ``(N, F)`` node features, where every node is a sample.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from polyscale.diffusion.schedules import sigmas_from_alphas_cumprod
from polyscale.diffusion.utils import append_dims


def _per_sample_mean(err: Tensor) -> Tensor:
    return err.reshape(err.shape[0], -1).mean(dim=1)  # (B, ...) -> (B,)


def _check_x0(x0: Tensor) -> None:
    if x0.ndim < 1 or x0.shape[0] == 0 or not x0.is_floating_point():
        raise ValueError(
            f"x0 must be a non-empty floating batch-first tensor, got {x0.dtype} {tuple(x0.shape)}"
        )


def block_mean(x: Tensor, factor: int) -> Tensor:
    """Means of ``x (B, C, *spatial)`` over non-overlapping blocks of ``factor`` positions per spatial axis:
    ``(B, C, *(n // factor))``. Every spatial size must be a multiple of ``factor``."""
    spatial = x.shape[2:]
    if x.ndim < 3 or any(n % factor for n in spatial):
        raise ValueError(
            f"block means of {factor} per axis need (B, C, *spatial) with every spatial size a multiple of "
            f"{factor}, got shape {tuple(x.shape)}"
        )
    split = [d for n in spatial for d in (n // factor, factor)]
    blocks = x.reshape(*x.shape[:2], *split)
    return blocks.mean(dim=tuple(range(3, blocks.ndim, 2)))


class EDMLoss:
    """Karras et al. (2022) eq. 2 with Table 1's training choices.

    ``ln sigma ~ N(P_mean, P_std^2)``, ``n ~ N(0, I)``,
    ``loss = lambda(sigma) mean |D(x0 + sigma n, sigma) - x0|^2``
    with ``lambda(sigma) = (sigma^2 + sd^2) / (sigma sd)^2`` (``sd = sigma_data``), which makes the effective
    target of the raw network unit-variance at every sigma. Random draws, in order: ``(B,)`` normals for
    ``ln sigma``, then ``x0.shape`` normals for ``n``.

    Low-frequency term (grids only, off by default): ``lowpass_factor = f > 1`` adds
    ``lowpass_weight * lambda(sigma) * mean |block_mean_f(D - x0)|^2``, the error of the means over
    ``f^d`` blocks. In the plain loss the slowest components of the error, e.g. a volume's overall pore
    fraction, are a vanishing share of the voxel-wise mean; this term weights them up.
    """

    def __init__(
        self,
        *,
        P_mean: float = -1.2,
        P_std: float = 1.2,
        sigma_data: float = 0.5,
        lowpass_factor: int = 0,
        lowpass_weight: float = 0.0,
    ) -> None:
        if P_std <= 0 or sigma_data <= 0:
            raise ValueError(
                f"P_std and sigma_data must be positive, got P_std={P_std}, sigma_data={sigma_data}"
            )
        if lowpass_factor == 1 or lowpass_factor < 0 or not lowpass_weight >= 0:
            raise ValueError(
                "lowpass_factor must be 0 (off) or >= 2 and lowpass_weight >= 0, got "
                f"lowpass_factor={lowpass_factor}, lowpass_weight={lowpass_weight}"
            )
        self.P_mean, self.P_std, self.sigma_data = float(P_mean), float(P_std), float(sigma_data)
        self.lowpass_factor, self.lowpass_weight = int(lowpass_factor), float(lowpass_weight)

    def __call__(
        self, denoiser: Callable[..., Tensor], x0: Tensor, *, generator: torch.Generator | None = None, **cond
    ) -> Tensor:
        """``x0`` ``(B, ...)`` clean data -> per-sample loss ``(B,)``; ``cond`` goes to the denoiser."""
        _check_x0(x0)
        rnd = torch.randn(x0.shape[0], generator=generator, device=x0.device, dtype=x0.dtype)  # (B,)
        sigma = (rnd * self.P_std + self.P_mean).exp()
        weight = (sigma**2 + self.sigma_data**2) / (sigma * self.sigma_data) ** 2  # lambda(sigma), (B,)
        noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        denoised = denoiser(x0 + append_dims(sigma, x0.ndim) * noise, sigma, **cond)
        err = denoised.to(x0.dtype) - x0
        loss = _per_sample_mean(err**2)
        if self.lowpass_factor and self.lowpass_weight:
            loss = loss + self.lowpass_weight * _per_sample_mean(block_mean(err, self.lowpass_factor) ** 2)
        return weight * loss


class EpsLoss:
    """DDPM's simple loss (Ho et al. 2020, eq. 14): ``mean |eps_theta(x_t, t) - eps|^2`` per sample, with
    ``x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps`` and ``t`` uniform on ``{0, ..., T-1}``.

    ``eps_net(x_t, t, **cond)`` takes the VP-space input and ``t`` as a float tensor ``(B,)`` holding integers
    (the same call :class:`~polyscale.diffusion.precond.DiscreteEpsDenoiser` makes at sampling time).
    Random draws, in order: ``(B,)`` integers for ``t``, then ``x0.shape`` normals for ``eps``.
    """

    def __init__(self, alphas_cumprod: Tensor) -> None:
        sigmas_from_alphas_cumprod(alphas_cumprod)  # validates: 1-D, decreasing, in (0, 1)
        self.alphas_cumprod = alphas_cumprod.double()

    def __call__(
        self, eps_net: Callable[..., Tensor], x0: Tensor, *, generator: torch.Generator | None = None, **cond
    ) -> Tensor:
        """``x0`` ``(B, ...)`` clean data -> per-sample loss ``(B,)``; ``cond`` goes to the network."""
        _check_x0(x0)
        t = torch.randint(
            0, self.alphas_cumprod.shape[0], (x0.shape[0],), generator=generator, device=x0.device
        )
        abar = self.alphas_cumprod.to(x0.dtype).to(x0.device)[t]  # (B,)
        eps = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        x_t = append_dims(abar.sqrt(), x0.ndim) * x0 + append_dims((1 - abar).sqrt(), x0.ndim) * eps
        return _per_sample_mean((eps_net(x_t, t.to(x0.dtype), **cond).to(x0.dtype) - eps) ** 2)


__all__ = ["EDMLoss", "EpsLoss", "block_mean"]
