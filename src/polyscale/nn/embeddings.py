"""Embeddings of the scalar noise level and of class labels."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


class SinusoidalEmbedding(nn.Module):
    """Transformer-style sinusoidal features of a scalar per sample: ``(B,) -> (B, dim)``."""

    def __init__(self, dim: int, *, max_period: float = 10000.0) -> None:
        super().__init__()
        if dim % 2:
            raise ValueError(f"embedding dim must be even, got {dim}")
        freqs = torch.exp(-math.log(max_period) * torch.arange(dim // 2) / (dim // 2))
        self.register_buffer("freqs", freqs, persistent=False)

    def forward(self, c: Tensor) -> Tensor:
        args = c.float()[:, None] * self.freqs[None, :]  # (B, dim/2)
        return torch.cat([args.cos(), args.sin()], dim=1)


class NoiseEmbedding(nn.Module):
    """Noise-level conditioning: sinusoidal features of ``c_noise`` then a 2-layer MLP. ``(B,) -> (B, out_dim)``.

    ``c_noise`` is whatever scalar the diffusion wrapper feeds (EDM's ``log(sigma)/4`` or a DDPM timestep); it is
    multiplied by ``scale`` first so both ranges produce useful frequencies (100 suits ``log(sigma)/4``).
    """

    def __init__(self, dim: int, out_dim: int, *, scale: float = 100.0) -> None:
        super().__init__()
        self.scale = scale
        self.features = SinusoidalEmbedding(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, out_dim), nn.SiLU(), nn.Linear(out_dim, out_dim))

    def forward(self, c_noise: Tensor) -> Tensor:
        return self.mlp(self.features(c_noise * self.scale))
