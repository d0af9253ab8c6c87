"""Neighbourhood attention for 1D, 2D and 3D grids, in plain PyTorch (trains on CPU, forward and backward).

Each query attends to a window of ``k_1 x ... x k_d`` keys around it. As in NATTEN, windows are *clamped* at the
borders: along an axis of length ``L`` the window of position ``i`` starts at ``clamp(i - k//2, 0, L - k)``, so
every query sees a full window. With dilation ``r`` the axis splits into ``r`` interleaved groups
(positions ``i = g (mod r)``) and the same rule runs inside each group.

The fast path gathers the window of every query axis by axis with per-axis index tables (memory ``O(N k^d)``,
never ``O(N^2)``); :func:`neighborhood_attention_reference` is the slow, obviously correct masked full attention
used by the tests.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _as_tuple(value: int | tuple[int, ...], ndim: int, name: str) -> tuple[int, ...]:
    out = (value,) * ndim if isinstance(value, int) else tuple(value)
    if len(out) != ndim:
        raise ValueError(f"{name} needs one entry per spatial axis ({ndim}), got {value!r}")
    return out


def _check(q: Tensor, k: Tensor, v: Tensor, kernel: tuple[int, ...], dilation: tuple[int, ...]) -> None:
    if q.ndim not in (4, 5, 6):
        raise ValueError(f"q must be (B, heads, *spatial, head_dim) with 1-3 spatial axes, got {tuple(q.shape)}")
    if k.shape != q.shape or v.shape != q.shape:
        raise ValueError(f"q, k, v must share a shape, got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    for axis, (length, ks, r) in enumerate(zip(q.shape[2:-1], kernel, dilation, strict=True)):
        if r < 1:
            raise ValueError(f"dilation must be >= 1, got {r} on axis {axis}")
        if ks < 1 or (ks % 2 == 0 and ks * r != length):
            raise ValueError(f"kernel size must be odd (or span the whole axis), got {ks} on axis {axis}")
        if ks * r > length:
            raise ValueError(
                f"kernel {ks} x dilation {r} = {ks * r} exceeds axis {axis} of length {length}; "
                f"use a smaller kernel or a larger input"
            )


def window_starts(length: int, kernel: int, dilation: int = 1, device=None) -> Tensor:
    """Index of the first key of each query's window along one axis, ``(L,)`` (NATTEN's clamping rule)."""
    i = torch.arange(length, device=device)
    group, j = i % dilation, i // dilation  # dilation group and position inside it
    group_len = (length - group + dilation - 1) // dilation  # (L,) size of each query's group
    start_in_group = (j - kernel // 2).clamp(min=0)
    start_in_group = torch.minimum(start_in_group, group_len - kernel)
    return group + dilation * start_in_group


def _window_index(length: int, kernel: int, dilation: int, device) -> Tensor:
    """Key positions of every query's window along one axis, ``(L, k)``."""
    offsets = dilation * torch.arange(kernel, device=device)
    return window_starts(length, kernel, dilation, device)[:, None] + offsets  # (L, k)


def neighborhood_attention(
    q: Tensor, k: Tensor, v: Tensor, *, kernel_size: int | tuple[int, ...], dilation: int | tuple[int, ...] = 1,
    scale: float | None = None
) -> Tensor:
    """Neighbourhood attention.

    Args:
        q, k, v: ``(B, heads, *spatial, head_dim)`` with 1 to 3 spatial axes.
        kernel_size: odd window size, one int or one per axis (at most the axis length / dilation).
        dilation: spacing of the keys inside a window, one int or one per axis.
        scale: logit scale, default ``head_dim ** -0.5``.

    Returns:
        ``(B, heads, *spatial, head_dim)``.
    """
    spatial = q.shape[2:-1]
    nd = len(spatial)
    kernel = _as_tuple(kernel_size, nd, "kernel_size")
    dil = _as_tuple(dilation, nd, "dilation")
    _check(q, k, v, kernel, dil)
    scale = q.shape[-1] ** -0.5 if scale is None else scale

    index = _neighbor_index(tuple(spatial), kernel, dil, q.device)  # (N, K) flat key positions per query
    n, kk = index.shape
    qf = q.flatten(2, 1 + nd)  # (B, h, N, c)
    # One gather per tensor, landing directly in (B, h, N, K, c) layout (no permute copies).
    keys = k.flatten(2, 1 + nd).index_select(2, index.flatten()).unflatten(2, (n, kk))
    values = v.flatten(2, 1 + nd).index_select(2, index.flatten()).unflatten(2, (n, kk))
    logits = torch.einsum("zynx,zynkx->zynk", qf * scale, keys)  # (B, h, N, K)
    out = torch.einsum("zynk,zynkx->zynx", logits.softmax(dim=-1), values)  # (B, h, N, c)
    return out.unflatten(2, tuple(spatial))


def _neighbor_index(
    spatial: tuple[int, ...], kernel: tuple[int, ...], dilation: tuple[int, ...], device
) -> Tensor:
    """Flat (row-major) key positions of every query's window, ``(N, K)`` with ``K = prod(kernel)``.

    Built from the per-axis tables ``(L_a, k_a)``: position = sum_a index_a * stride_a, broadcast over the
    query grid ``(*S)`` and the window grid ``(*K)``.
    """
    nd = len(spatial)
    strides = [int(torch.tensor(spatial[a + 1 :]).prod()) for a in range(nd)]
    flat = torch.zeros((1,) * (2 * nd), dtype=torch.long, device=device)
    for a, (length, ks, r) in enumerate(zip(spatial, kernel, dilation, strict=True)):
        shape = [1] * (2 * nd)
        shape[a], shape[nd + a] = length, ks
        flat = flat + _window_index(length, ks, r, device).view(shape) * strides[a]  # broadcast to (*S, *K)
    n, kk = int(torch.tensor(spatial).prod()), int(torch.tensor(kernel).prod())
    return flat.expand(*spatial, *kernel).reshape(n, kk)  # (*S, *K) -> (N, K)


def neighborhood_mask(
    spatial: tuple[int, ...], kernel_size: int | tuple[int, ...], dilation: int | tuple[int, ...] = 1, device=None
) -> Tensor:
    """Boolean ``(N, N)`` mask (``N = prod(spatial)``): entry ``[query, key]`` is True iff the key lies in the
    query's window. Built from per-axis membership tests, not from the fast path's index tables."""
    nd = len(spatial)
    kernel = _as_tuple(kernel_size, nd, "kernel_size")
    dil = _as_tuple(dilation, nd, "dilation")
    mask = torch.ones((), dtype=torch.bool, device=device)
    for a, (length, ks, r) in enumerate(zip(spatial, kernel, dil, strict=True)):
        i = torch.arange(length, device=device)[:, None]  # query coordinate on this axis
        j = torch.arange(length, device=device)[None, :]  # key coordinate on this axis
        start = window_starts(length, ks, r, device)[:, None]
        same_group = (i % r) == (j % r)
        inside = (j >= start) & (j <= start + r * (ks - 1))
        axis_mask = same_group & inside  # (L, L)
        shape = [1] * (2 * nd)
        shape[a], shape[nd + a] = length, length
        mask = mask & axis_mask.view(shape)  # broadcast to (S1..Sd, S1..Sd)
    n = int(torch.tensor(spatial).prod())
    return mask.expand(*spatial, *spatial).reshape(n, n)  # (*S, *S) -> (N, N)


def neighborhood_attention_reference(
    q: Tensor, k: Tensor, v: Tensor, *, kernel_size: int | tuple[int, ...], dilation: int | tuple[int, ...] = 1,
    scale: float | None = None
) -> Tensor:
    """Slow reference: full attention over all positions with the window mask. ``O(N^2)`` memory; tests only."""
    spatial = tuple(q.shape[2:-1])
    nd = len(spatial)
    _check(q, k, v, _as_tuple(kernel_size, nd, "kernel_size"), _as_tuple(dilation, nd, "dilation"))
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    qf, kf, vf = (t.flatten(2, 1 + nd) for t in (q, k, v))  # (B, h, N, c)
    logits = (qf * scale) @ kf.transpose(-1, -2)  # (B, h, N, N)
    mask = neighborhood_mask(spatial, kernel_size, dilation, q.device)
    logits = logits.masked_fill(~mask, float("-inf"))
    out = logits.softmax(dim=-1) @ vf  # (B, h, N, c)
    return out.unflatten(2, spatial)


class NeighborhoodAttention(nn.Module):
    """Multi-head neighbourhood self-attention on a channel-first grid ``(B, C, *spatial)``.

    Projections are 1x1 (linear on channels); no normalisation inside (the caller adds it). When an axis of the
    input is shorter than ``kernel_size * dilation``, the window on that axis shrinks to the whole axis
    (dilation 1), so the same weights run on inputs of any size.
    """

    def __init__(
        self, channels: int, *, dims: int, kernel_size: int | tuple[int, ...], num_heads: int = 4,
        dilation: int = 1, qkv_bias: bool = True
    ) -> None:
        super().__init__()
        if dims not in (1, 2, 3):
            raise ValueError(f"dims must be 1, 2 or 3, got {dims}")
        if channels % num_heads != 0:
            raise ValueError(f"channels ({channels}) must be divisible by num_heads ({num_heads})")
        self.kernel_size = _as_tuple(kernel_size, dims, "kernel_size")
        if any(ks < 1 or ks % 2 == 0 for ks in self.kernel_size):
            raise ValueError(f"kernel_size must be odd and positive, got {kernel_size!r}")
        self.channels, self.dims, self.num_heads, self.dilation = channels, dims, num_heads, dilation
        self.qkv = nn.Linear(channels, 3 * channels, bias=qkv_bias)
        self.proj = nn.Linear(channels, channels)

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim != self.dims + 2:
            raise ValueError(f"expected input of rank {self.dims + 2} (B, C, *spatial), got shape {tuple(x.shape)}")
        if x.shape[1] != self.channels:
            raise ValueError(f"expected {self.channels} channels, got {x.shape[1]}")
        spatial = x.shape[2:]
        kernel, dilation = [], []
        for length, ks in zip(spatial, self.kernel_size, strict=True):
            fits = ks * self.dilation <= length
            kernel.append(ks if fits else min(ks, length))
            dilation.append(self.dilation if fits else 1)
        h = x.movedim(1, -1)  # (B, *S, C)
        qkv = self.qkv(h).unflatten(-1, (3, self.num_heads, -1))  # (B, *S, 3, heads, c)
        qkv = qkv.movedim(-3, 0).movedim(-2, 2)  # (3, B, heads, *S, c)
        out = neighborhood_attention(qkv[0], qkv[1], qkv[2], kernel_size=tuple(kernel), dilation=tuple(dilation))
        out = out.movedim(1, -2).flatten(-2)  # (B, *S, heads * c)
        return self.proj(out).movedim(-1, 1)  # (B, C, *S)


def full_attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """Plain full attention over all grid positions via ``scaled_dot_product_attention`` (benchmark peer)."""
    nd = q.ndim - 3
    spatial = q.shape[2:-1]
    out = F.scaled_dot_product_attention(*(t.flatten(2, 1 + nd) for t in (q, k, v)))  # (B, h, N, c)
    return out.unflatten(2, spatial)
