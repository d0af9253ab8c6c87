"""Prune-and-regrow at a fixed connectivity: SET (Mocanu et al. 2018) and RigL (Evci et al. 2020).

These are the dynamic-sparse baselines a grown network is compared with. At each update every block of a
:class:`polyscale.nn.sparse_mlp.SparseMLP` drops the ``fraction`` of its active connections with the smallest
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
from dataclasses import dataclass

import torch
from torch import Tensor

from polyscale.nn.sparse import ParameterChange
from polyscale.nn.sparse_mlp import SparseMLP
from polyscale.registry import Registry


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


@dataclass(frozen=True)
class RegrowthRule:
    """Where a prune-and-regrow update adds its connections: ``pick(pool, k, dense_grad, generator)`` returns
    ``k`` positions of ``pool`` (flat indices of inactive positions); ``dense_grad`` is the block's flattened
    ``dL/dW`` when ``needs_gradients``, else possibly ``None``."""

    pick: Callable[[Tensor, int, Tensor | None, torch.Generator | None], Tensor]
    needs_gradients: bool


def _random_positions(pool: Tensor, k: int, grad: Tensor | None, generator: torch.Generator | None) -> Tensor:
    return pool[torch.randperm(pool.numel(), generator=generator)[:k]]


def _largest_gradient(pool: Tensor, k: int, grad: Tensor | None, generator: torch.Generator | None) -> Tensor:
    if grad is None:
        raise ValueError("regrowth by gradient needs the block's dense gradient, got None")
    return pool[grad[pool].abs().argsort(descending=True)[:k]]


METHODS: Registry[RegrowthRule] = Registry(
    "method",
    {
        "set": RegrowthRule(_random_positions, needs_gradients=False),
        "rigl": RegrowthRule(_largest_gradient, needs_gradients=True),
    },
)


def prune_and_regrow(
    net: SparseMLP,
    fraction: float,
    method: str,
    *,
    dense_grads: dict[str, Tensor] | None = None,
    generator: torch.Generator | None = None,
) -> list[ParameterChange]:
    """One SET / RigL update of every block (module docstring); returns the changed parameters."""
    rule = METHODS.lookup(method)
    if not 0 <= fraction <= 1:
        raise ValueError(f"fraction must be in [0, 1], got {fraction}")
    if rule.needs_gradients and dense_grads is None:
        raise ValueError(f"{method} regrows by dense gradient: pass dense_grads (see dense_gradients)")
    changes = []
    for name, block in net.sparse_blocks().items():
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
        grads = None if dense_grads is None else dense_grads[name].flatten()
        grow = rule.pick(pool, k, grads, generator)
        drop = drop[:k]
        where_drop = block.remove_connections(drop)
        where_add = block.add_connections(grow, 0.0)
        where = torch.where(where_drop >= 0, where_add[where_drop.clamp(min=0)], where_drop)
        changes.append(ParameterChange(old_values, block.values, where))
    return changes
