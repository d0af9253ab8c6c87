"""Broadcasting helpers shared by schedules, preconditioning, losses and samplers."""

from __future__ import annotations

import torch
from torch import Tensor


def append_dims(v: Tensor | float, ndim: int) -> Tensor:
    """Broadcast a per-sample scalar against data of rank ``ndim``.

    Args:
        v: scalar, 0-d tensor, or tensor of shape ``(B,)``.
        ndim: rank of the data tensor it will meet (``x.ndim``).

    Returns:
        ``v`` viewed as ``(B, 1, ..., 1)`` (or ``()`` for a scalar) so that ``v * x`` broadcasts.
    """
    v = torch.as_tensor(v)
    if v.ndim == 0:
        return v
    if v.ndim != 1:
        raise ValueError(f"append_dims expects a scalar or a (B,) tensor, got shape {tuple(v.shape)}")
    if ndim < 1:
        raise ValueError(f"append_dims needs data of rank >= 1, got ndim={ndim}")
    return v[(...,) + (None,) * (ndim - 1)]  # (B,) -> (B, 1, ..., 1)


def expand_sigma(sigma: Tensor | float, x: Tensor) -> Tensor:
    """Return ``sigma`` as a ``(B,)`` tensor on ``x``'s device and dtype (scalars are repeated)."""
    sigma = torch.as_tensor(sigma, device=x.device, dtype=x.dtype)
    if sigma.ndim == 0:
        return sigma.expand(x.shape[0])
    if sigma.shape != (x.shape[0],):
        raise ValueError(f"sigma must be a scalar or of shape ({x.shape[0]},), got {tuple(sigma.shape)}")
    return sigma
