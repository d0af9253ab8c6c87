"""Embeddings of the scalar noise-conditioning value ``c_noise``."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


class SinusoidalEmbedding(nn.Module):
    """Transformer-style sinusoidal features of one scalar per sample: ``(B,) -> (B, dim)``.

    ``out[:, j] = cos(c * f_j)`` and ``out[:, dim/2 + j] = sin(c * f_j)`` with
    ``f_j = max_period^(-j / (dim/2))``, ``j = 0 .. dim/2 - 1`` (frequencies from 1 down to nearly
    ``1 / max_period``). Computed in float32 at least (float64 for float64 input) whatever the module's dtype,
    so half-precision models keep accurate features.
    """

    def __init__(self, dim: int, *, max_period: float = 10000.0) -> None:
        super().__init__()
        if dim < 2 or dim % 2:
            raise ValueError(f"embedding dim must be even and >= 2, got {dim}")
        self.dim, self.max_period = dim, max_period

    def forward(self, c: Tensor) -> Tensor:
        if c.ndim != 1:
            raise ValueError(f"expected one value per sample, shape (B,), got shape {tuple(c.shape)}")
        dtype = torch.promote_types(c.dtype, torch.float32)  # int timesteps / half -> float32, float64 stays
        half = self.dim // 2
        freqs = torch.exp(
            -math.log(self.max_period) / half * torch.arange(half, device=c.device, dtype=dtype)
        )
        args = c.to(dtype)[:, None] * freqs[None, :]  # (B, 1) * (1, dim/2) -> (B, dim/2)
        return torch.cat([args.cos(), args.sin()], dim=1)  # (B, dim)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, max_period={self.max_period}"


class NoiseEmbedding(nn.Module):
    """Noise-level conditioning: sinusoidal features of ``scale * c_noise``, then a 2-layer MLP.

    ``(B,) -> (B, out_dim)``. ``c_noise`` is whatever scalar the diffusion wrapper feeds (EDM's
    ``log(sigma) / 4``, about -1.6..1.1, or a DDPM timestep); the default ``scale = 100`` spreads EDM's small
    range over the frequencies (larger ranges only wrap the fast features, which the MLP tolerates).
    """

    def __init__(self, dim: int, out_dim: int, *, scale: float = 100.0) -> None:
        super().__init__()
        self.scale = scale
        self.features = SinusoidalEmbedding(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, out_dim), nn.SiLU(), nn.Linear(out_dim, out_dim))

    def forward(self, c_noise: Tensor) -> Tensor:
        c = c_noise.to(torch.promote_types(c_noise.dtype, torch.float32))  # scale in full precision
        features = self.features(c * self.scale)  # (B, dim), float32 or float64
        return self.mlp(features.to(self.mlp[0].weight.dtype))  # (B, out_dim)
