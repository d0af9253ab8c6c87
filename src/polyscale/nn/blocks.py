"""Building blocks of the N-D U-Net: residual block, attention block, down- and upsampling.

Every block takes ``(h, emb)`` so the U-Net can run (and checkpoint) them uniformly: ``h`` is a
channel-first grid ``(B, C, *spatial)`` with 1-3 spatial axes and ``emb`` the ``(B, E)`` conditioning
embedding (ignored by blocks that do not use it). Convolutions come from ``getattr(nn, f"Conv{dims}d")``:
one implementation for 1D/2D/3D.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from polyscale.nn.attention import NeighborhoodAttention

PADDING_MODES = ("zeros", "circular")


def conv_nd(
    dims: int, cin: int, cout: int, kernel: int = 3, *, stride: int = 1, padding_mode: str = "zeros"
) -> nn.Module:
    """``Conv{dims}d`` with "same" padding for odd kernels (halved size when ``stride=2`` on even sizes).

    ``padding_mode="circular"`` wraps each axis around (the input is a torus: no borders anywhere).
    """
    if padding_mode not in PADDING_MODES:
        raise ValueError(f"padding_mode must be one of {PADDING_MODES}, got {padding_mode!r}")
    conv = getattr(nn, f"Conv{dims}d")
    return conv(cin, cout, kernel, stride=stride, padding=kernel // 2, padding_mode=padding_mode)


NORMS = ("group", "layer")


class ChannelLayerNorm(nn.Module):
    """LayerNorm over the channels at each position: ``(B, C, *S) -> (B, C, *S)``, affine per channel.

    Unlike GroupNorm it pools nothing over space, so a network built on it is strictly local: its output at a
    position does not depend on the size of the input or on anything outside its receptive field.
    """

    def __init__(self, channels: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, h: Tensor) -> Tensor:
        mean = h.mean(dim=1, keepdim=True)
        var = h.var(dim=1, keepdim=True, unbiased=False)
        shape = (1, -1, *([1] * (h.ndim - 2)))
        return (h - mean) * torch.rsqrt(var + self.eps) * self.weight.view(shape) + self.bias.view(shape)


def make_norm(kind: str, groups: int, channels: int) -> nn.Module:
    """``"group"``: GroupNorm(groups, channels), statistics pooled over each sample's whole extent;
    ``"layer"``: :class:`ChannelLayerNorm`, statistics per position (``groups`` unused)."""
    if kind == "group":
        return nn.GroupNorm(groups, channels)
    if kind == "layer":
        return ChannelLayerNorm(channels)
    raise ValueError(f"norm must be one of {NORMS}, got {kind!r}")


def zero_(module: nn.Module) -> nn.Module:
    """Zero all parameters of ``module`` in place (residual branches then start as the identity)."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class ResBlock(nn.Module):
    """Norm-SiLU-conv, embedding as per-channel scale and shift, norm-SiLU-dropout-conv, plus skip.

    ``forward(h (B, C_in, *S), emb (B, E)) -> (B, C_out, *S)``. The second conv is zero-initialised, so a new
    block is the identity (or its 1x1 skip projection when the channel count changes).
    """

    def __init__(
        self,
        dims: int,
        cin: int,
        cout: int,
        emb: int,
        *,
        dropout: float,
        groups: int,
        padding_mode: str = "zeros",
        norm: str = "group",
    ) -> None:
        super().__init__()
        self.norm1 = make_norm(norm, groups, cin)
        self.conv1 = conv_nd(dims, cin, cout, padding_mode=padding_mode)
        self.emb = nn.Linear(emb, 2 * cout)
        self.norm2 = make_norm(norm, groups, cout)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = zero_(conv_nd(dims, cout, cout, padding_mode=padding_mode))
        self.skip = conv_nd(dims, cin, cout, kernel=1) if cin != cout else nn.Identity()

    def forward(self, h: Tensor, emb: Tensor) -> Tensor:
        x = self.conv1(F.silu(self.norm1(h)))  # (B, C_out, *S)
        scale, shift = self.emb(emb).unflatten(1, (2, -1)).unbind(1)  # (B, 2 C_out) -> 2 x (B, C_out)
        per_channel = (*scale.shape, *([1] * (h.ndim - 2)))  # (B, C_out, 1, ..., 1): broadcast over space
        x = self.norm2(x) * (1 + scale.view(per_channel)) + shift.view(per_channel)
        x = self.conv2(self.dropout(F.silu(x)))
        return self.skip(h) + x


class AttentionBlock(nn.Module):
    """Pre-norm residual neighbourhood attention: ``h + attn(norm(h))``, ``(B, C, *S) -> (B, C, *S)``.

    The output projection is zero-initialised, so a new block is the identity.
    """

    def __init__(
        self,
        dims: int,
        channels: int,
        *,
        kernel_size: int,
        num_heads: int,
        groups: int,
        periodic: bool = False,
        norm: str = "group",
    ) -> None:
        super().__init__()
        self.norm = make_norm(norm, groups, channels)
        self.attn = NeighborhoodAttention(
            channels, dims=dims, kernel_size=kernel_size, num_heads=num_heads, periodic=periodic
        )
        zero_(self.attn.proj)

    def forward(self, h: Tensor, emb: Tensor | None = None) -> Tensor:
        return h + self.attn(self.norm(h))


class Downsample(nn.Module):
    """Strided 3x..x3 convolution: ``(B, C, *S) -> (B, C, *S/2)`` (even sizes)."""

    def __init__(self, dims: int, channels: int, *, padding_mode: str = "zeros") -> None:
        super().__init__()
        self.conv = conv_nd(dims, channels, channels, stride=2, padding_mode=padding_mode)

    def forward(self, h: Tensor, emb: Tensor | None = None) -> Tensor:
        return self.conv(h)


class Upsample(nn.Module):
    """Nearest-neighbour upsampling by 2 then a 3x..x3 convolution: ``(B, C, *S) -> (B, C, *2S)``."""

    def __init__(self, dims: int, channels: int, *, padding_mode: str = "zeros") -> None:
        super().__init__()
        self.conv = conv_nd(dims, channels, channels, padding_mode=padding_mode)

    def forward(self, h: Tensor, emb: Tensor | None = None) -> Tensor:
        return self.conv(F.interpolate(h, scale_factor=2.0, mode="nearest"))
