"""Pieces every sampler shares: input checks, the step loop with its progress bar, the callback payload."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import trange

Callback = Callable[[dict[str, Any]], None]
Denoiser = Callable[..., Tensor]


def prepare(x: Tensor, sigmas: Tensor) -> Tensor:
    """Check a batch-first floating ``x`` and a strictly decreasing 1-D schedule ending in 0; return the
    schedule on ``x``'s device and dtype (``(N + 1,)``)."""
    if x.ndim < 1 or x.shape[0] == 0 or not x.is_floating_point():
        raise ValueError(
            f"x must be a non-empty floating batch-first tensor (B, ...), got {x.dtype} {tuple(x.shape)}"
        )
    if sigmas.ndim != 1 or sigmas.shape[0] < 2:
        raise ValueError(f"sigmas must be a 1-D tensor of length >= 2, got shape {tuple(sigmas.shape)}")
    if sigmas[-1] != 0 or (sigmas[1:] >= sigmas[:-1]).any():
        values = sigmas.tolist()
        shown = values if len(values) <= 8 else f"{values[:3]} ... {values[-3:]}"
        raise ValueError(
            f"sigmas must be strictly decreasing and end in 0 (e.g. polyscale.diffusion.sigmas_karras), "
            f"got {shown}"
        )
    return sigmas.to(device=x.device, dtype=x.dtype)


def steps(sigmas: Tensor, disable: bool | None, desc: str | None = None) -> Iterable[int]:
    """Step indices ``0 .. len(sigmas) - 2`` with a tqdm bar unless ``disable``, labelled ``desc`` (default
    ``"sampling"``)."""
    return trange(len(sigmas) - 1, disable=disable, desc=desc or "sampling", leave=False)


def report(
    callback: Callback | None,
    i: int,
    sigma: Tensor,
    sigma_next: Tensor,
    x: Tensor,
    denoised: Tensor,
    **extra: Any,
) -> None:
    """Call ``callback({"i", "sigma", "sigma_next", "x", "denoised", **extra})`` if there is one."""
    if callback is not None:
        callback({"i": i, "sigma": sigma, "sigma_next": sigma_next, "x": x, "denoised": denoised, **extra})


def sigma_batch(sigma: Tensor, x: Tensor) -> Tensor:
    """The scalar level ``sigma`` as the ``(B,)`` tensor a denoiser receives."""
    return sigma.to(x.dtype).repeat(x.shape[0])  # () -> (B,), contiguous


def noise_like(x: Tensor, generator: torch.Generator | None) -> Tensor:
    """Standard normal noise shaped like ``x``, drawn from ``generator`` on the generator's device (so a CPU
    generator gives the same numbers whatever device ``x`` lives on), then moved to ``x``'s device."""
    device = generator.device if generator is not None else x.device
    return torch.randn(x.shape, generator=generator, device=device, dtype=x.dtype).to(x.device)
