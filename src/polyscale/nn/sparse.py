"""Sparse layers for networks that start almost empty and grow (after "Structure Net").

``SparseLinear`` keeps only its active connections: ``values (nnz,)`` as the parameter and their
``(row, col)`` positions as a buffer, sorted row-major. Two execution paths compute the same thing:

- ``"masked"``: scatter the values into a dense ``(out, in)`` matrix and call ``F.linear``. Time and memory
  ``O(out * in)``, but one dense GEMM: the fast path for dense-ish layers.
- ``"sparse"``: a ``torch.sparse_coo_tensor`` times the input. ``O(nnz * batch)``: the fast path for very
  sparse layers.

``mode="auto"`` picks ``"sparse"`` at density at most ``sparse_below`` and ``"masked"`` above it. The default,
0.5 %, is the crossover measured by ``benchmarks/bench_sparse.py`` (2048 x 2048, batch 256, 2 CPU threads:
sparse is faster at 0.5 %, masked at 1 %; BENCHMARKS.md, "Sparse layers").

Initial connectivity. A layer starts with ``max(round(density * in * out), out * min_inputs)`` connections:
first every output unit gets ``min_inputs`` incoming connections from distinct random inputs (so no unit
starts with no input), then the rest are drawn uniformly among the positions still free. ``density=1e-4``
(0.01 %) by default. In a :class:`SparseMLP` the adjacent block after a hidden layer also gives every hidden
unit that has no outgoing connection yet ``min_outputs`` (1) of them, to random units of the next layer, so
no unit starts dangling either: without it most units of a wide layer feed nothing (a 256-unit layer sends
one connection to each of 10 outputs) and the network trains at chance level (BENCHMARKS.md, "Sparse
growth"). Connectivity then starts at ``density`` or at the per-unit minima, whichever is larger.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

MODES = ("auto", "masked", "sparse")


@dataclass
class ParameterChange:
    """What one surgery did to one parameter: ``old`` was replaced by ``new`` and old entry ``i`` now sits at
    flat index ``where[i]`` of ``new`` (``-1``: the entry was removed). Feed it to
    :func:`polyscale.training.optimizer_state.apply_changes` so old entries keep their optimizer moments and
    new ones start at zero."""

    old: nn.Parameter
    new: nn.Parameter
    where: Tensor


def initial_connections(
    in_features: int, out_features: int, *, density: float, min_inputs: int, generator: torch.Generator | None
) -> Tensor:
    """Sorted flat positions ``row * in + col`` of a new layer's connections (the rule in the module
    docstring)."""
    if not 0 <= density <= 1:
        raise ValueError(f"density must be in [0, 1], got {density}")
    if not 0 <= min_inputs <= in_features:
        raise ValueError(f"min_inputs must be in [0, in_features={in_features}], got {min_inputs}")
    total = in_features * out_features
    count = min(total, max(round(density * total), out_features * min_inputs))
    # every output unit: min_inputs distinct inputs (random keys, the smallest min_inputs per row)
    keys = torch.rand(out_features, in_features, generator=generator)
    cols = keys.argsort(dim=1)[:, :min_inputs]  # (out, min_inputs)
    chosen = (torch.arange(out_features)[:, None] * in_features + cols).flatten()
    extra = count - chosen.numel()
    if extra > 0:
        free = torch.ones(total, dtype=torch.bool)
        free[chosen] = False
        pool = free.nonzero().squeeze(1)
        pick = torch.randperm(pool.numel(), generator=generator)[:extra]
        chosen = torch.cat([chosen, pool[pick]])
    return chosen.sort().values


class SparseLinear(nn.Module):
    """``y = x W^T + b`` with only the active entries of ``W (out, in)`` stored and trained.

    ``x (..., in) -> (..., out)``. ``weight_scale``: active weights start ``U(-s, s)`` with
    ``s = weight_scale / sqrt(fan_in)``, ``fan_in`` the mean number of active inputs per unit (at least 1), so
    a sparse unit starts with the same output scale as a dense one.
    """

    flat_index: Tensor  # buffer (registered in __init__), replaced by the surgeries

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        density: float = 1e-4,
        min_inputs: int = 1,
        bias: bool = True,
        mode: str = "auto",
        sparse_below: float = 0.005,
        weight_scale: float = 1.0,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        if in_features < 1 or out_features < 1:
            raise ValueError(
                f"in_features and out_features must be positive, got {in_features}, {out_features}"
            )
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        self.in_features, self.out_features = in_features, out_features
        self.mode, self.sparse_below = mode, float(sparse_below)
        flat = initial_connections(
            in_features, out_features, density=density, min_inputs=min_inputs, generator=generator
        )
        self.register_buffer("flat_index", flat)  # (nnz,) sorted row * in + col
        fan_in = max(1.0, flat.numel() / out_features)
        bound = weight_scale / math.sqrt(fan_in)
        self.values = nn.Parameter((torch.rand(flat.numel(), generator=generator) * 2 - 1) * bound)
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None

    @property
    def nnz(self) -> int:
        return self.flat_index.numel()

    @property
    def density(self) -> float:
        return self.nnz / (self.in_features * self.out_features)

    def mask(self) -> Tensor:
        """``(out, in)`` boolean connectivity."""
        m = torch.zeros(self.out_features * self.in_features, dtype=torch.bool, device=self.flat_index.device)
        m[self.flat_index] = True
        return m.reshape(self.out_features, self.in_features)

    def dense_weight(self) -> Tensor:
        """``(out, in)`` weight with zeros at inactive positions (differentiable in ``values``)."""
        w = self.values.new_zeros(self.out_features * self.in_features)
        return w.index_put((self.flat_index,), self.values).reshape(self.out_features, self.in_features)

    def resolved_mode(self) -> str:
        if self.mode != "auto":
            return self.mode
        return "sparse" if self.density <= self.sparse_below else "masked"

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[-1] != self.in_features:
            raise ValueError(f"expected input (..., {self.in_features}), got {tuple(x.shape)}")
        if self.resolved_mode() == "masked":
            bias = None if self.bias is None else self.bias.to(x.dtype)
            return F.linear(x, self.dense_weight().to(x.dtype), bias)
        lead = x.shape[:-1]
        flat_x = x.reshape(-1, self.in_features)  # (N, in)
        rows, cols = self.flat_index // self.in_features, self.flat_index % self.in_features
        w = torch.sparse_coo_tensor(
            torch.stack([rows, cols]),
            self.values.to(x.dtype),
            (self.out_features, self.in_features),
            is_coalesced=True,  # flat_index is sorted and unique: row-major order is COO's canonical order
            check_invariants=False,
        )
        out = torch.sparse.mm(w, flat_x.T).T  # (N, out)
        if self.bias is not None:
            out = out + self.bias.to(x.dtype)
        return out.reshape(*lead, self.out_features)

    def add_connections(self, positions: Tensor, init: Tensor | float = 0.0) -> Tensor:
        """Surgery: activate the inactive flat positions ``row * in + col`` (``(k,)``) with initial weights
        ``init`` (``(k,)`` or a scalar; 0 keeps the layer's function unchanged).

        ``values`` becomes a new, larger parameter, so an optimizer must be told: the return value
        ``(nnz_old,)`` says where each old entry now sits in the new ``values``, which is what
        :func:`polyscale.training.optimizer_state.carry_over` needs to keep old moments and start the new
        entries at zero. Active positions, duplicates and out-of-range positions are errors.
        """
        positions = torch.as_tensor(positions, dtype=torch.long, device=self.flat_index.device).flatten()
        total = self.in_features * self.out_features
        if positions.numel() and (int(positions.min()) < 0 or int(positions.max()) >= total):
            raise ValueError(
                f"positions must lie in [0, {total}), got range [{positions.min()}, {positions.max()}]"
            )
        if positions.unique().numel() != positions.numel():
            raise ValueError("positions must be distinct")
        if self.mask().flatten()[positions].any():
            raise ValueError("regrowth picks inactive positions only; some positions are already active")
        init = torch.as_tensor(init, dtype=self.values.dtype, device=self.values.device).expand(
            positions.numel()
        )
        merged = torch.cat([self.flat_index, positions])
        order = merged.argsort()
        where = torch.empty_like(order)
        where[order] = torch.arange(
            order.numel(), device=order.device
        )  # where[j]: new slot of merged entry j
        values = torch.cat([self.values.detach(), init])[order]
        self.flat_index = merged[order]
        self.values = nn.Parameter(values)
        return where[: merged.numel() - positions.numel()]

    def remove_connections(self, positions: Tensor) -> Tensor:
        """Surgery: deactivate the active flat positions ``positions (k,)``. Returns ``where (nnz_old,)``: the
        new slot of every old entry, ``-1`` for the removed ones (see :class:`ParameterChange`)."""
        positions = torch.as_tensor(positions, dtype=torch.long, device=self.flat_index.device).flatten()
        slot = torch.searchsorted(self.flat_index, positions)
        inside = slot < self.nnz
        hit = (
            inside & (self.flat_index[slot.clamp(max=max(self.nnz - 1, 0))] == positions)
            if self.nnz
            else inside
        )
        if not bool(hit.all()):
            raise ValueError(
                f"can only remove active positions; {int((~hit).sum())} of {positions.numel()} are not"
            )
        if positions.unique().numel() != positions.numel():
            raise ValueError("positions must be distinct")
        keep = torch.ones(self.nnz, dtype=torch.bool, device=self.flat_index.device)
        keep[slot] = False
        where = torch.full((self.nnz,), -1, dtype=torch.long, device=self.flat_index.device)
        where[keep] = torch.arange(int(keep.sum()), device=self.flat_index.device)
        self.flat_index = self.flat_index[keep]
        self.values = nn.Parameter(self.values.detach()[keep])
        return where

    def resize(self, in_features: int, out_features: int) -> list[ParameterChange]:
        """Surgery: grow the layer to ``(out_features, in_features)`` with the new inputs and outputs appended
        at the end and unconnected (so the layer's function on the old units is unchanged). The stored
        ``values`` keep their order (row-major order is preserved); only the bias grows (new units get bias
        0). Returns the changed parameters."""
        if in_features < self.in_features or out_features < self.out_features:
            raise ValueError(
                f"resize only grows: ({self.out_features}, {self.in_features}) -> ({out_features}, {in_features})"
            )
        rows, cols = self.flat_index // self.in_features, self.flat_index % self.in_features
        self.flat_index = rows * in_features + cols
        self.in_features = in_features
        changes = []
        if out_features > self.out_features and self.bias is not None:
            old = self.bias
            self.bias = nn.Parameter(
                torch.cat([old.detach(), old.new_zeros(out_features - self.out_features)])
            )
            changes.append(ParameterChange(old, self.bias, torch.arange(old.numel(), device=old.device)))
        self.out_features = out_features
        return changes

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, nnz={self.nnz}, "
            f"density={self.density:.3g}, mode={self.mode}"
        )
