"""Neighbourhood attention for 1D, 2D and 3D grids in plain PyTorch (forward and backward on CPU or GPU).

Each query attends to a window of ``k_1 x ... x k_d`` keys around it. As in NATTEN, windows are *clamped* at
the borders: along an axis of length ``L`` the window of position ``i`` starts at
``clamp(i - k//2, 0, L - k)``, so every query sees a full window. With dilation ``r`` the axis splits into
``r`` interleaved groups (positions ``i = g (mod r)``, NATTEN's rule) and the same clamped rule runs inside
each group, on group coordinates.

Fast path: tiles, dense inside a tile. Queries are cut into tiles of ``T`` per axis. The windows of a tile's
queries all lie inside one region of ``R = T + k - 1`` keys per axis, so each tile is ordinary dense attention
``(T^d queries) x (R^d keys)`` done by batched matmuls, with a mask keeping each query inside its own window;
the extra ``(R / k)^d`` work buys matrix-multiply speed instead of one tiny gather per query. Index tables are
built per axis (``(tiles, T)``, ``(tiles, R)``, ``(tiles, T, R)``) and combined by broadcasting. Tiles run in
chunks and backward recomputes the logits (as FlashAttention does), so memory is ``O(N c)`` plus one chunk,
never ``O(N^2)``. :func:`neighborhood_attention_reference` is the slow masked full attention of the tests.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from contextvars import ContextVar
from dataclasses import dataclass
from functools import reduce

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable
from torch.nn import functional as F

# Query tile edge per number of spatial axes: bigger tiles mean bigger matmuls but more masked-out work,
# ((T + k - 1) / k)^d. Measured fastest for k = 7 on CPU (2D 32^2 to 128^2, 3D 16^3 and 32^3, 1D 1k to 16k).
DEFAULT_TILE = {1: 16, 2: 4, 3: 4}
# Entries of logits plus gathered keys and values handled at once: bounds the working memory. Small on CPU
# (4 MiB of float32 stays in cache, which measured faster than bigger chunks), large on accelerators, where a
# chunk costs a few kernel launches.
_CHUNK_ELEMENTS = {"cpu": 2**20, "other": 2**24}
# Set by attention_chunk_elements(): one budget for every device while it is not None.
_CHUNK_OVERRIDE: ContextVar[int | None] = ContextVar("attention_chunk_elements", default=None)
Ints = tuple[int, ...]


def chunk_elements(device: torch.device | str) -> int:
    """The chunk budget (entries of logits plus gathered keys and values handled at once) attention uses on
    ``device``: the value of an enclosing :func:`attention_chunk_elements`, else the default for the device
    (:data:`_CHUNK_ELEMENTS`: small on CPU, large elsewhere)."""
    override = _CHUNK_OVERRIDE.get()
    if override is not None:
        return override
    return _CHUNK_ELEMENTS["cpu" if torch.device(device).type == "cpu" else "other"]


@contextmanager
def attention_chunk_elements(elements: int | None) -> Iterator[None]:
    """Within the block, neighbourhood attention handles at most ``elements`` entries at once on every device
    (``None``: the defaults). A smaller budget lowers the attention's working memory and costs speed; the
    results do not depend on it (up to rounding)."""
    if elements is not None and (isinstance(elements, bool) or not isinstance(elements, int) or elements < 1):
        raise ValueError(f"attention chunk elements must be an integer >= 1 or None, got {elements!r}")
    token = _CHUNK_OVERRIDE.set(elements)
    try:
        yield
    finally:
        _CHUNK_OVERRIDE.reset(token)


def _as_tuple(value: int | Ints, ndim: int, name: str) -> Ints:
    out = (value,) * ndim if isinstance(value, int) else tuple(value)
    if len(out) != ndim or not all(isinstance(v, int) for v in out):
        raise ValueError(f"{name} needs one int per spatial axis ({ndim}), got {value!r}")
    return out


def _validate(
    q: Tensor, k: Tensor, v: Tensor, kernel_size: int | Ints, dilation: int | Ints, *, odd: bool
) -> tuple[Ints, Ints]:
    """Check shapes and windows, return per-axis kernel and dilation; ``odd=False`` admits even kernels."""
    if q.ndim not in (4, 5, 6):
        raise ValueError(
            f"expected q of shape (B, heads, *spatial, head_dim) with 1-3 spatial axes, got {tuple(q.shape)}"
        )
    nd = q.ndim - 3
    kernel, dilation = _as_tuple(kernel_size, nd, "kernel_size"), _as_tuple(dilation, nd, "dilation")
    if k.shape != q.shape or v.shape != q.shape:
        raise ValueError(
            f"q, k, v must share one shape, got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
        )
    for axis, (length, ks, r) in enumerate(zip(q.shape[2:-1], kernel, dilation, strict=True)):
        if r < 1:
            raise ValueError(f"dilation must be >= 1, got {r} on spatial axis {axis}")
        if ks < 1 or (odd and ks % 2 == 0):
            raise ValueError(f"kernel size must be odd and >= 1, got {ks} on spatial axis {axis}")
        if ks * r > length:
            raise ValueError(
                f"kernel size {ks} x dilation {r} = {ks * r} exceeds spatial axis {axis} of length {length}; "
                "use a smaller kernel or a larger input"
            )
    return kernel, dilation


def window_starts(
    length: int, kernel: int, dilation: int = 1, *, device: torch.device | None = None
) -> Tensor:
    """First key position of every query's window along one axis, ``(L,)`` (NATTEN's clamping rule).

    Position ``i`` lies in dilation group ``g = i % r`` at group coordinate ``j = i // r``; its window starts
    at group coordinate ``clamp(j - k//2, 0, n_g - k)`` where ``n_g`` is the size of the group.
    """
    i = torch.arange(length, device=device)
    group, j = i % dilation, i // dilation
    group_len = (length - group + dilation - 1) // dilation  # (L,) size of each position's group
    start = torch.minimum((j - kernel // 2).clamp(min=0), group_len - kernel)
    return group + dilation * start


@dataclass(frozen=True)
class _AxisTiles:
    """Tiling of one axis into ``M`` tiles of ``T`` query slots, each reading a region of ``R`` key slots."""

    query: Tensor  # (M, T) query position per slot; slots past the end of a group repeat its last query
    key: Tensor  # (M, R) key position per region slot; slots past the end of a group repeat its last key
    blocked: Tensor  # (M, T, R) True where the key slot is outside the query slot's window (or a repeat)
    home: Tensor  # (L, 2) (tile, slot) that computes each position's output


def _axis_tiles(length: int, kernel: int, dilation: int, tile: int, device: torch.device) -> _AxisTiles:
    longest = -(-length // dilation)  # size of the largest dilation group
    t = min(tile, longest)
    span = min(t + kernel - 1, longest)  # region covering the windows of t consecutive queries of a group
    queries, keys, valid, tiles_before = [], [], [], 0
    home = torch.empty(length, 2, dtype=torch.long, device=device)
    for g in range(dilation):  # tiles never mix dilation groups; coordinates below are group coordinates
        n = -(-(length - g) // dilation)
        first = torch.arange(0, n, t, device=device)  # (m,) first query of each tile
        slots = first[:, None] + torch.arange(t, device=device)  # (m, t)
        start = (first - kernel // 2).clamp(min=0).clamp(max=n - kernel)  # window start of the first query
        # The region starts at the first query's window, pulled back so it ends inside the group when it can.
        region = torch.minimum(start, torch.full_like(start, n - span)).clamp(min=0)[:, None]
        region = region + torch.arange(span, device=device)  # (m, span)
        queries.append(g + dilation * slots.clamp(max=n - 1))
        keys.append(g + dilation * region.clamp(max=n - 1))
        valid.append(region < n)
        j = torch.arange(n, device=device)
        home[g::dilation] = torch.stack([tiles_before + j // t, j % t], dim=1)  # (n, 2) at positions g + r j
        tiles_before += len(first)
    query, key = torch.cat(queries), torch.cat(keys)
    starts = window_starts(length, kernel, dilation, device=device)[query][..., None]  # (M, T, 1)
    # Same group by construction, so "start <= key <= start + r (k - 1)" is exactly window membership.
    inside = (key[:, None, :] >= starts) & (key[:, None, :] <= starts + dilation * (kernel - 1))
    return _AxisTiles(query, key, ~(inside & torch.cat(valid)[:, None, :]), home)


def _spread(table: Tensor, axis: int, nd: int) -> Tensor:
    """View axis ``a``'s table ``(X, Y, ...)`` so it broadcasts into ``(X_0..X_{d-1}, Y_0..Y_{d-1}, ...)``."""
    shape = [1] * (nd * table.ndim)
    for i, size in enumerate(table.shape):
        shape[i * nd + axis] = size
    return table.view(shape)


@dataclass(frozen=True)
class _Plan:
    """Flat (row-major) index tables of the tiled computation over all axes."""

    query: Tensor  # (M, T^d) flat query positions of each tile
    key: Tensor  # (M, R^d) flat key positions of each tile's region
    home: Tensor  # (N,) flat index into (M * T^d) of the slot holding each position's output
    blocked: tuple[Tensor, ...]  # per axis (M_a, T_a, R_a); a key is blocked if blocked on any axis
    tiles: tuple[int, ...]  # M_a: tiles per axis; the M = prod(M_a) tiles are numbered row-major


def _plan(spatial: Ints, kernel: Ints, dilation: Ints, tile: Ints, device: torch.device) -> _Plan:
    nd = len(spatial)
    axes = [_axis_tiles(*args, device) for args in zip(spatial, kernel, dilation, tile, strict=True)]
    m = [ax.key.shape[0] for ax in axes]  # tiles per axis
    t = [ax.query.shape[1] for ax in axes]  # query slots per tile, per axis
    r = [ax.key.shape[1] for ax in axes]  # region length per axis
    pos_stride = [math.prod(spatial[a + 1 :]) for a in range(nd)]  # row-major strides of the grid
    tile_stride = [math.prod(m[a + 1 :]) * math.prod(t) for a in range(nd)]  # of the tile index, in slots
    slot_stride = [math.prod(t[a + 1 :]) for a in range(nd)]  # of the slot inside a tile
    # Broadcast the per-axis tables into N-D ones: (*M, *T), (*M, *R), (*M, *T, *R) and (*S).
    query = reduce(operator.add, [_spread(ax.query * pos_stride[a], a, nd) for a, ax in enumerate(axes)])
    key = reduce(operator.add, [_spread(ax.key * pos_stride[a], a, nd) for a, ax in enumerate(axes)])
    home = reduce(
        operator.add,
        [
            _spread(ax.home[:, 0] * tile_stride[a] + ax.home[:, 1] * slot_stride[a], a, nd)
            for a, ax in enumerate(axes)
        ],
    )
    mp, tp, rp = math.prod(m), math.prod(t), math.prod(r)
    return _Plan(
        query.expand(*m, *t).reshape(mp, tp),  # (*M, *T) -> (M, T^d)
        key.expand(*m, *r).reshape(mp, rp),  # (*M, *R) -> (M, R^d)
        home.expand(*spatial).reshape(-1),  # (*S) -> (N,)
        tuple(ax.blocked for ax in axes),
        tuple(m),
    )


def _blocked(plan: _Plan, sl: slice) -> Tensor:
    """``(m, T^d, R^d)``: True where a key lies outside its query's window, for the tiles in ``sl``, combined
    from the per-axis tables chunk by chunk (the full ``(M, T^d, R^d)`` mask is never stored)."""
    nd, tile = len(plan.tiles), torch.arange(sl.start, sl.stop, device=plan.key.device)  # (m,) tile index
    mask = None
    for a, table in enumerate(plan.blocked):
        coord = (tile // math.prod(plan.tiles[a + 1 :])) % plan.tiles[a]  # tile coordinate on axis a
        shape = [len(tile)] + [1] * (2 * nd)
        shape[1 + a], shape[1 + nd + a] = table.shape[1:]
        part = table[coord].view(shape)  # (m, T_a, R_a) -> broadcastable into (m, *T, *R)
        mask = part if mask is None else mask | part
    if mask is None:
        raise ValueError("a neighbourhood plan needs at least one axis")
    return mask.reshape(len(tile), plan.query.shape[1], plan.key.shape[1])  # (m, *T, *R) -> (m, T^d, R^d)


def _chunks(plan: _Plan, batch_heads: int, head_dim: int) -> list[slice]:
    """Slices of tiles (at least one each) whose logits and gathered keys and values fill the chunk budget."""
    (m, tp), rp = plan.query.shape, plan.key.shape[1]
    budget = chunk_elements(plan.key.device)
    step = max(1, budget // (batch_heads * rp * (tp + 2 * head_dim)))
    return [slice(i, min(i + step, m)) for i in range(0, m, step)]


def _gather(x: Tensor, index: Tensor) -> Tensor:
    """Rows of ``x`` ``(B, h, N, c)`` at a table of flat positions ``(m, P)`` -> ``(B, h, m, P, c)``."""
    rows = x.index_select(2, index.flatten())  # (B, h, m * P, c)
    return rows.unflatten(2, tuple(index.shape))  # (B, h, m * P, c) -> (B, h, m, P, c)


def _tile_logits(q: Tensor, k: Tensor, plan: _Plan, sl: slice) -> tuple[Tensor, Tensor, Tensor]:
    """Gathered ``qt (B, h, m, T^d, c)``, ``kt (B, h, m, R^d, c)`` and masked logits ``(B, h, m, T^d, R^d)``
    of the tiles in ``sl`` (``q`` already scaled)."""
    qt, kt = _gather(q, plan.query[sl]), _gather(k, plan.key[sl])
    return qt, kt, (qt @ kt.transpose(-1, -2)).masked_fill_(_blocked(plan, sl), float("-inf"))


class _TiledAttention(torch.autograd.Function):
    """Tiled neighbourhood attention on flattened grids, ``(B, h, N, c)`` -> ``(B, h, N, c)``, one chunk of
    tiles at a time. As in FlashAttention, backward keeps only the output and each row's log-sum-exp and
    recomputes the logits chunk by chunk: memory ``O(N c)`` plus one chunk, instead of ``O(N R^d)``."""

    @staticmethod
    def forward(ctx, q: Tensor, k: Tensor, v: Tensor, plan: _Plan, scale: float) -> Tensor:
        q = q * scale
        (b, h, _, c), (m, tp) = q.shape, plan.query.shape
        out, lse = q.new_empty(b, h, m, tp, c), q.new_empty(b, h, m, tp, 1)  # per tile slot
        for sl in _chunks(plan, b * h, c):
            _, _, logits = _tile_logits(q, k, plan, sl)  # (B, h, m, T^d, R^d)
            lse[:, :, sl] = logits.logsumexp(dim=-1, keepdim=True)
            out[:, :, sl] = logits.sub_(lse[:, :, sl]).exp_() @ _gather(v, plan.key[sl])  # softmax @ values
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.plan, ctx.scale = plan, scale
        return out.flatten(2, 3).index_select(2, plan.home)  # (B, h, M * T^d, c) -> (B, h, N, c)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, ...]:
        q, k, v, out, lse = ctx.saved_tensors
        plan: _Plan = ctx.plan
        # Only the slot computing a position's output receives its gradient (padding slots repeat a query):
        # (B, h, N, c) -> (B, h, M * T^d, c) -> (B, h, M, T^d, c)
        d_out = torch.zeros_like(out).flatten(2, 3).index_copy_(2, plan.home, grad).view_as(out)
        delta = (d_out * out).sum(dim=-1, keepdim=True)  # (B, h, M, T^d, 1): row sums of P * dP
        dq, dk, dv = torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)
        for sl in _chunks(plan, q.shape[0] * q.shape[1], q.shape[-1]):
            qt, kt, logits = _tile_logits(q, k, plan, sl)
            p = logits.sub_(lse[:, :, sl]).exp_()  # (B, h, m, T^d, R^d) softmax weights, recomputed
            do, vt = d_out[:, :, sl], _gather(v, plan.key[sl])
            keys, queries = plan.key[sl].flatten(), plan.query[sl].flatten()
            dv.index_add_(2, keys, (p.transpose(-1, -2) @ do).flatten(2, 3))  # P^T dO
            ds = p.mul_((do @ vt.transpose(-1, -2)).sub_(delta[:, :, sl]))  # dLogits = P (dP - delta)
            dq.index_add_(2, queries, (ds @ kt).flatten(2, 3))
            dk.index_add_(2, keys, (ds.transpose(-1, -2) @ qt).flatten(2, 3))
        return dq.mul_(ctx.scale), dk, dv, None, None


def _neighborhood_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    kernel: Ints,
    dilation: Ints,
    scale: float | None,
    tile_size: int | Ints | None,
) -> Tensor:
    """Validated-input core shared by the function and the module; ``q`` is ``(B, h, *S, c)``."""
    spatial = tuple(q.shape[2:-1])
    nd = len(spatial)
    tile = _as_tuple(DEFAULT_TILE[nd] if tile_size is None else tile_size, nd, "tile_size")
    if min(tile) < 1:
        raise ValueError(f"tile_size must be >= 1 per axis, got {tile_size!r}")
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    plan = _plan(spatial, kernel, dilation, tile, q.device)
    work = torch.promote_types(q.dtype, torch.float32)  # half precision inputs run in float32
    flat = [t.flatten(2, 1 + nd).to(work) for t in (q, k, v)]  # (B, h, *S, c) -> (B, h, N, c)
    # dtypes are chosen here, not by autocast (the meta device, used to trace memory, has no autocast)
    device_type = q.device.type
    no_autocast = (
        torch.autocast(device_type, enabled=False)
        if torch.amp.is_autocast_available(device_type)
        else nullcontext()
    )
    with no_autocast:
        out = _TiledAttention.apply(*flat, plan, scale)
    return out.to(q.dtype).unflatten(2, spatial)  # (B, h, N, c) -> (B, h, *S, c)


def neighborhood_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    kernel_size: int | tuple[int, ...],
    dilation: int | tuple[int, ...] = 1,
    scale: float | None = None,
    tile_size: int | tuple[int, ...] | None = None,
) -> Tensor:
    """Neighbourhood attention with NATTEN's clamped windows.

    Args:
        q, k, v: ``(B, heads, *spatial, head_dim)`` with 1 to 3 spatial axes.
        kernel_size: odd window size, one int or one per spatial axis; ``kernel * dilation <= axis length``.
        dilation: spacing of the keys inside a window, one int or one per spatial axis.
        scale: logit scale, default ``head_dim ** -0.5``.
        tile_size: queries per tile edge (speed/memory knob only; the result does not depend on it), default
            :data:`DEFAULT_TILE` for the number of spatial axes.

    Returns:
        ``(B, heads, *spatial, head_dim)``. Differentiable once (hand-written backward, no double backward);
        half-precision inputs are computed in float32 and the result cast back.
    """
    kernel, dil = _validate(q, k, v, kernel_size, dilation, odd=True)
    return _neighborhood_attention(q, k, v, kernel, dil, scale, tile_size)


def _axis_windows(length: int, kernel: int, dilation: int) -> list[list[int]]:
    """Plain-loop statement of the window rule: the key positions seen by each query of one axis."""
    windows = []
    for i in range(length):
        group = list(range(i % dilation, length, dilation))  # the query's dilation group
        j = group.index(i)
        start = min(max(j - kernel // 2, 0), len(group) - kernel)  # centred, then shifted inside the group
        windows.append(group[start : start + kernel])
    return windows


def neighborhood_mask(
    spatial: tuple[int, ...],
    kernel_size: int | tuple[int, ...],
    dilation: int | tuple[int, ...] = 1,
    *,
    device: torch.device | None = None,
) -> Tensor:
    """Boolean ``(N, N)`` mask, ``N = prod(spatial)``: ``[query, key]`` is True iff the key is in the query's
    window. Built from plain per-axis loops (:func:`_axis_windows`), independently of the fast path."""
    nd = len(spatial)
    kernel, dil = _as_tuple(kernel_size, nd, "kernel_size"), _as_tuple(dilation, nd, "dilation")
    axis_masks = []
    for a, (length, ks, r) in enumerate(zip(spatial, kernel, dil, strict=True)):
        m = torch.zeros(length, length, dtype=torch.bool)  # (query coordinate, key coordinate) on this axis
        for i, window in enumerate(_axis_windows(length, ks, r)):
            m[i, window] = True
        axis_masks.append(_spread(m, a, nd))  # (L_a, L_a) -> broadcastable into (*S, *S)
    n = math.prod(spatial)
    mask = reduce(torch.logical_and, axis_masks)  # inside the window on every axis: (*S, *S) after expand
    return mask.expand(*spatial, *spatial).reshape(n, n).to(device)  # (*S, *S) -> (N, N)


def neighborhood_attention_reference(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    kernel_size: int | tuple[int, ...],
    dilation: int | tuple[int, ...] = 1,
    scale: float | None = None,
) -> Tensor:
    """Slow reference: full attention over all ``N`` positions masked by :func:`neighborhood_mask`.

    ``O(N^2)`` memory, for tests only. Arguments and shapes as :func:`neighborhood_attention`, except that
    even kernel sizes are accepted too (the whole-axis windows :class:`NeighborhoodAttention` falls back to).
    """
    kernel, dil = _validate(q, k, v, kernel_size, dilation, odd=False)
    spatial, nd = tuple(q.shape[2:-1]), q.ndim - 3
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    qf, kf, vf = (t.flatten(2, 1 + nd) for t in (q, k, v))  # (B, h, *S, c) -> (B, h, N, c)
    logits = (qf * scale) @ kf.transpose(-1, -2)  # (B, h, N, N)
    logits = logits.masked_fill(~neighborhood_mask(spatial, kernel, dil, device=q.device), float("-inf"))
    return (logits.softmax(dim=-1) @ vf).unflatten(2, spatial)  # (B, h, N, c) -> (B, h, *S, c)


class NeighborhoodAttention(nn.Module):
    """Multi-head neighbourhood self-attention on a channel-first grid ``(B, C, *spatial)``.

    Projections are 1x1 (linear on channels); no normalisation inside (the caller adds it). The same weights
    run on inputs of any size: where an axis is too short for ``kernel_size * dilation``, the dilation on that
    axis drops to the largest that fits (``length // kernel_size``), and where the axis is shorter than
    ``kernel_size`` itself the window becomes the whole axis (full attention along it). This shrinking is the
    module's documented behaviour; the functional API raises instead.

    ``periodic=True`` treats every axis as a ring (for models of stationary data on a torus): the input is
    wrapped around by ``dilation * (kernel_size // 2)`` on each side before the neighbourhood attention, so
    every query's window is centred on it, also at the borders. An axis taken whole (shorter than the
    kernel) is not wrapped, so no key is counted twice.
    """

    def __init__(
        self,
        channels: int,
        *,
        dims: int,
        kernel_size: int | tuple[int, ...],
        num_heads: int = 4,
        dilation: int = 1,
        qkv_bias: bool = True,
        periodic: bool = False,
    ) -> None:
        super().__init__()
        if dims not in (1, 2, 3):
            raise ValueError(f"dims must be 1, 2 or 3, got {dims}")
        if num_heads < 1 or channels % num_heads != 0:
            raise ValueError(f"channels ({channels}) must be divisible by num_heads ({num_heads})")
        self.kernel_size = _as_tuple(kernel_size, dims, "kernel_size")
        if any(ks < 1 or ks % 2 == 0 for ks in self.kernel_size):
            raise ValueError(f"kernel_size must be odd and >= 1 on every axis, got {kernel_size!r}")
        if dilation < 1:
            raise ValueError(f"dilation must be >= 1, got {dilation}")
        self.channels, self.dims, self.num_heads, self.dilation = channels, dims, num_heads, dilation
        self.periodic = periodic
        self.qkv = nn.Linear(channels, 3 * channels, bias=qkv_bias)
        self.proj = nn.Linear(channels, channels)

    def window(self, spatial: tuple[int, ...]) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """Kernel and dilation used on an input of this spatial shape (shrunk where an axis is too short)."""
        kernel, dilation = [], []
        for length, ks in zip(spatial, self.kernel_size, strict=True):
            kernel.append(min(ks, length))
            dilation.append(max(1, min(self.dilation, length // ks)))
        return tuple(kernel), tuple(dilation)

    def forward(self, x: Tensor) -> Tensor:
        """``(B, C, *spatial)`` -> ``(B, C, *spatial)``."""
        if x.ndim != self.dims + 2:
            raise ValueError(
                f"expected input of rank {self.dims + 2} (B, C, *spatial) for dims={self.dims}, "
                f"got shape {tuple(x.shape)}"
            )
        if x.shape[1] != self.channels:
            raise ValueError(
                f"expected {self.channels} channels, got {x.shape[1]} (input shape {tuple(x.shape)})"
            )
        spatial = tuple(x.shape[2:])
        kernel, dilation = self.window(spatial)
        wrap = [0] * self.dims  # positions added on each side of each axis (periodic only)
        if self.periodic:
            wrap = [r * (k // 2) if k < n else 0 for n, k, r in zip(spatial, kernel, dilation, strict=True)]
            pads = [p for w in reversed(wrap) for p in (w, w)]  # F.pad order: last axis first
            x = F.pad(x, pads, mode="circular")  # (B, C, *(S + 2 wrap))
        qkv = self.qkv(x.movedim(1, -1))  # (B, *S, C) -> (B, *S, 3C)
        qkv = qkv.unflatten(-1, (3, self.num_heads, -1)).movedim(-2, 1)  # (B, heads, *S, 3, c)
        q, k, v = qkv.unbind(-2)  # 3 x (B, heads, *S, c)
        out = _neighborhood_attention(q, k, v, kernel, dilation, None, None)  # (B, heads, *S, c)
        out = out.movedim(1, -2).flatten(-2)  # (B, *S, heads, c) -> (B, *S, C)
        if self.periodic:  # keep the original grid; its windows are centred (the wrap covers half a window)
            core = (slice(None), *(slice(w, w + n) for w, n in zip(wrap, spatial, strict=True)))
            out = out[core]
        return self.proj(out).movedim(-1, 1)  # (B, *S, C) -> (B, C, *S)

    def extra_repr(self) -> str:
        return (
            f"channels={self.channels}, dims={self.dims}, kernel_size={self.kernel_size}, "
            f"num_heads={self.num_heads}, dilation={self.dilation}, periodic={self.periodic}"
        )
