"""Carry an optimizer's state across growth surgery: old entries keep their moments, new ones start at zero.

DESIGN.md: growth must never silently reset the Adam state of existing weights. A surgery that replaces a
parameter by a larger one returns where each old entry went; :func:`carry_over` swaps the parameter inside
the optimizer and moves every per-entry state tensor (Adam's ``exp_avg``, ``exp_avg_sq``, SGD's
``momentum_buffer``, ...) to the new layout, zeros at the new entries. Scalar state such as Adam's ``step``
is kept as it is.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def carry_over(optimizer: torch.optim.Optimizer, old: nn.Parameter, new: nn.Parameter, where: Tensor) -> None:
    """Replace ``old`` by ``new`` in ``optimizer``; ``where (old.numel(),)`` gives each old entry's index in
    the flattened ``new`` (``-1``: the entry was removed, and its state goes with it)."""
    if where.numel() != old.numel():
        raise ValueError(f"where must have one index per old entry ({old.numel()}), got {where.numel()}")
    found = False
    for group in optimizer.param_groups:
        for k, p in enumerate(group["params"]):
            if p is old:
                group["params"][k], found = new, True
    if not found:
        raise ValueError("the old parameter is not in the optimizer")
    state = optimizer.state.pop(old, None)
    if not state:
        return
    moved = {}
    for key, value in state.items():
        if torch.is_tensor(value) and value.shape == old.shape:
            fresh = torch.zeros_like(new, dtype=value.dtype)
            kept = where >= 0
            fresh.view(-1)[where[kept]] = value.reshape(-1)[kept]
            moved[key] = fresh
        else:
            moved[key] = value  # scalars (Adam's step) and anything not shaped like the parameter
    optimizer.state[new] = moved


def apply_changes(optimizer: torch.optim.Optimizer, changes: list) -> None:
    """:func:`carry_over` for every :class:`polyscale.nn.sparse.ParameterChange` a surgery returned, in order
    (a parameter replaced twice is followed through both changes)."""
    for change in changes:
        carry_over(optimizer, change.old, change.new, change.where)
