"""Pieces every sampler shares: the step loop with its progress bar, and the callback payload."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import trange

Callback = Callable[[dict[str, Any]], None]


def check_inputs(x: Tensor, sigmas: Tensor) -> None:
    """Samplers need a batch-first ``x`` and a 1-D decreasing schedule ending in 0."""
    if x.ndim < 2:
        raise ValueError(f"x must be batch-first with at least 2 dims (B, ...), got shape {tuple(x.shape)}")
    if sigmas.ndim != 1 or sigmas.shape[0] < 2:
        raise ValueError(f"sigmas must be a 1-D tensor of length >= 2, got shape {tuple(sigmas.shape)}")
    if sigmas[-1] != 0 or (sigmas[1:] > sigmas[:-1]).any():
        raise ValueError("sigmas must be non-increasing and end in 0 (use polyscale.diffusion.sigmas_karras)")


def steps(sigmas: Tensor, disable: bool | None) -> range:
    """Step indices ``0 .. len(sigmas) - 2`` with a tqdm bar unless ``disable``."""
    return trange(len(sigmas) - 1, disable=disable, desc="sampling", leave=False)


def report(callback: Callback | None, i: int, sigma: Tensor, sigma_next: Tensor, x: Tensor, denoised: Tensor) -> None:
    if callback is not None:
        callback({"i": i, "sigma": sigma, "sigma_next": sigma_next, "x": x, "denoised": denoised})


def sigma_batch(sigma: Tensor, x: Tensor) -> Tensor:
    """The scalar level ``sigma`` as the ``(B,)`` tensor a denoiser receives."""
    return sigma.to(x.dtype) * x.new_ones(x.shape[0])


def noise_like(x: Tensor, generator: torch.Generator | None) -> Tensor:
    return torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
