"""Classifier-free guidance (Ho & Salimans 2022) as a denoiser wrapper.

``D_w(x, sigma, c) = D(x, sigma, null) + w * (D(x, sigma, c) - D(x, sigma, null))``: ``w = 1`` is the plain
conditional denoiser, ``w = 0`` the unconditional one, ``w > 1`` pushes samples towards what the condition
makes likely (sharper, more recognisable, less diverse). The network learned both terms when its
conditioning was dropped to the null value part of the time in training.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn

from polyscale.diffusion.utils import expand_sigma

Condition = dict[str, Tensor]


def _join(cond: Condition, uncond: Condition) -> Condition:
    """Each tensor of ``cond`` stacked on its unconditional counterpart along the batch axis."""
    return {key: torch.cat([value, uncond[key]]) for key, value in cond.items()}


class ClassifierFreeGuidance(nn.Module):
    """``D_w`` above around ``denoiser`` (any denoiser: ``D(x, sigma, **cond) -> x0_hat``).

    ``uncond(cond)`` returns the unconditional keyword arguments for the same batch (for a polyscale U-Net,
    ``net.null_condition``). Both passes run as one call on a doubled batch. ``scale == 1`` calls the
    denoiser once with ``cond`` and ``scale == 0`` once with ``uncond(cond)``, so those two are exactly the
    plain conditional and unconditional denoisers."""

    def __init__(
        self, denoiser: Callable[..., Tensor], *, scale: float, uncond: Callable[[Condition], Condition]
    ) -> None:
        super().__init__()
        if isinstance(scale, bool) or not isinstance(scale, int | float) or not math.isfinite(scale):
            raise ValueError(f"guidance scale must be a finite number, got {scale!r}")
        self.denoiser = denoiser
        self.scale = float(scale)
        self.uncond = uncond

    def forward(self, x: Tensor, sigma: Tensor | float, **cond: Tensor) -> Tensor:
        """``x`` ``(B, ...)``, ``sigma`` scalar or ``(B,)``, ``cond`` tensors with batch axis ``B``."""
        if not cond:
            raise ValueError(
                "classifier-free guidance needs a condition (class labels or a prompt), got none"
            )
        if self.scale == 1.0:
            return self.denoiser(x, sigma, **cond)
        if self.scale == 0.0:
            return self.denoiser(x, sigma, **self.uncond(cond))
        sigma = expand_sigma(sigma, x)  # (B,)
        both = self.denoiser(torch.cat([x, x]), torch.cat([sigma, sigma]), **_join(cond, self.uncond(cond)))
        conditional, unconditional = both.chunk(2)  # 2 x (B, ...)
        return unconditional + self.scale * (conditional - unconditional)


__all__ = ["ClassifierFreeGuidance"]
