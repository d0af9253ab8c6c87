"""Prune-and-regrow at a fixed connectivity: SET (Mocanu et al. 2018) and RigL (Evci et al. 2020).

These are the dynamic-sparse baselines a grown network is compared with. At each update every block of a
:class:`polyscale.nn.sparse.SparseMLP` drops the ``fraction`` of its active connections with the smallest
magnitude and activates as many inactive positions, so its connection count stays the same:

- ``"set"`` picks the new positions uniformly at random;
- ``"rigl"`` picks the inactive positions with the largest dense-gradient magnitude ``|dL/dW|`` on a batch
  (:func:`dense_gradients`).

New connections start at weight 0 and with zero optimizer state (apply the returned changes with
:func:`polyscale.training.optimizer_state.apply_changes`). :func:`cosine_fraction` is RigL's decay of the
update fraction over training.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from polyscale.growth.routing import sparse_blocks
from polyscale.nn.sparse import ParameterChange, SparseMLP

METHODS = ("set", "rigl")


def cosine_fraction(step: int, total: int, start: float = 0.3) -> float:
    """RigL's update fraction ``start / 2 * (1 + cos(pi * step / total))``."""
    return start / 2 * (1 + math.cos(math.pi * min(step, total) / max(total, 1)))


def dense_gradients(
    net: SparseMLP, x: Tensor, y: Tensor, loss_fn: Callable[[Tensor, Tensor], Tensor]
) -> dict:
    """``{block name: dL/dW (out, in)}``, the gradient for every position, active or not, on ``(x, y)``.

    A block's output is one term of its layer's pre-activation ``z``, so ``dL/dW = (dL/dz)^T h_in``."""
    inputs: dict[str, Tensor] = {}
    outputs: dict[str, Tensor] = {}
    hooks = []
    for name, block in net.blocks.items():

        def hook(module, args, out, name=name):
            inputs[name] = args[0].detach()
            out.retain_grad()
            outputs[name] = out

        hooks.append(block.register_forward_hook(hook))
    try:
        loss_fn(net(x), y).backward()
    finally:
        for h in hooks:
            h.remove()
    net.zero_grad(set_to_none=True)
    grads = {}
    for name in net.blocks:
        grad = outputs[name].grad
        if grad is None:
            raise RuntimeError(f"block {name!r} got no gradient: its output does not reach the loss")
        grads[name] = grad.T @ inputs[name]
    return grads


def prune_and_regrow(
    net: SparseMLP,
    fraction: float,
    method: str,
    *,
    dense_grads: dict[str, Tensor] | None = None,
    generator: torch.Generator | None = None,
) -> list[ParameterChange]:
    """One SET / RigL update of every block (module docstring); returns the changed parameters."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if not 0 <= fraction <= 1:
        raise ValueError(f"fraction must be in [0, 1], got {fraction}")
    if method == "rigl" and dense_grads is None:
        raise ValueError("rigl regrows by dense gradient: pass dense_grads (see dense_gradients)")
    changes = []
    for name, block in sparse_blocks(net).items():
        k = int(fraction * block.nnz)
        total = block.in_features * block.out_features
        if k == 0 or block.nnz >= total:
            continue
        old_values = block.values
        drop = block.flat_index[block.values.detach().abs().argsort()[:k]]
        inactive = ~block.mask().flatten()
        inactive[drop] = False  # a dropped position is not regrown in the same update
        pool = inactive.nonzero().squeeze(1)
        k = min(k, pool.numel())
        if method == "set":
            grow = pool[torch.randperm(pool.numel(), generator=generator)[:k]]
        else:
            if dense_grads is None:  # checked on entry
                raise ValueError("rigl regrows by dense gradient: pass dense_grads (see dense_gradients)")
            score = dense_grads[name].flatten()[pool].abs()
            grow = pool[score.argsort(descending=True)[:k]]
        drop = drop[:k]
        where_drop = block.remove_connections(drop)
        where_add = block.add_connections(grow, 0.0)
        where = torch.where(where_drop >= 0, where_add[where_drop.clamp(min=0)], where_drop)
        changes.append(ParameterChange(old_values, block.values, where))
    return changes
