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


def add_parameters(
    optimizer: torch.optim.Optimizer, params: list[nn.Parameter], *, group: int | None = None
) -> None:
    """Add new parameters (a grown layer) to a live optimizer: they join existing parameter groups, so
    learning-rate schedules that walk the groups keep working, and their state starts empty (Adam creates
    zero moments at their first step) while every existing parameter keeps its own.

    ``group`` picks the group for all of them. By default a matrix (``ndim >= 2``) joins the first group
    with ``weight_decay > 0`` and a vector the first group without, which is how GPT recipes split weight
    decay; with a single group everything goes there."""
    groups = optimizer.param_groups
    if group is not None and not 0 <= group < len(groups):
        raise ValueError(f"group must be in [0, {len(groups)}), got {group}")
    present = {id(p) for g in groups for p in g["params"]}
    for p in params:
        if id(p) in present:
            raise ValueError("a parameter is already in the optimizer; add_parameters is for new ones")
        if group is not None:
            k = group
        else:
            decays = [i for i, g in enumerate(groups) if g.get("weight_decay", 0) > 0]
            plain = [i for i, g in enumerate(groups) if g.get("weight_decay", 0) == 0]
            wanted = decays if p.ndim >= 2 else plain
            k = wanted[0] if wanted else 0
        groups[k]["params"].append(p)
        present.add(id(p))


def optimizer_state_tensors(
    model: nn.Module, optimizer: torch.optim.Optimizer, prefix: str = "optim."
) -> dict:
    """The optimizer's per-parameter state as flat CPU tensors ``{prefix}{parameter name}.{key}``, for a
    safetensors checkpoint (names from ``model.named_parameters()``, so a tied weight appears once)."""
    names = {id(p): n for n, p in model.named_parameters()}
    return {
        f"{prefix}{names[id(param)]}.{key}": torch.as_tensor(value).detach().cpu().contiguous()
        for param, state in optimizer.state.items()
        for key, value in state.items()
    }


def load_optimizer_state(
    model: nn.Module, optimizer: torch.optim.Optimizer, tensors: dict, prefix: str = "optim."
) -> None:
    """Put :func:`optimizer_state_tensors`' output back, for the parameters ``model`` has now. Per-entry
    state goes to each parameter's device; Adam's ``step`` count stays on the CPU, where Adam keeps it."""
    for name, param in model.named_parameters():
        head = f"{prefix}{name}."
        state = {k[len(head) :]: v for k, v in tensors.items() if k.startswith(head)}
        if state:
            optimizer.state[param] = {
                k: v.cpu() if k == "step" else v.to(param.device) for k, v in state.items()
            }
