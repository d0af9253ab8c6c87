"""*How* a sparse network grows at a growth event: extrema, routing, vertical cloning, surgery.

One :meth:`SparseGrower.grow` call, given the phase allowance the schedule granted:

1. finds each hidden layer's high and low activation extrema on a probe batch
   (:func:`polyscale.growth.extrema.activation_extrema`);
2. routes new connections between them (:func:`polyscale.growth.routing.plan_routes`: high -> low within
   the skip radius, fan-out 3-4, at most 5 new incoming per unit, 20 % reciprocal, inactive positions only)
   and adds them with weight ``init`` (0 by default, so the network's function is unchanged at the event);
3. with what the allowance has left, clones up to ``clones_per_event`` high extrema vertically into the
   adjacent layer (:meth:`polyscale.nn.sparse_mlp.SparseMLP.clone_units`, 0.7x weights, or the
   function-preserving variant with ``preserve_clones=True``). A clone's connections count against the
   allowance; cloning needs skip connections and is skipped on a network without them.

Opt-in, beyond the default rules (the defaults keep them off):

- ``structure_size`` (1): connections per *structure* of the schedule's allowance. The schedule counts the
  phase limits 10 / 50 / 200 in structures; with the default one structure is one connection, so a whole
  run adds at most 260 connections. With ``structure_size=k`` an event may add ``k`` times the allowance
  and the schedule is charged ``ceil(added / k)`` structures.
- ``rank="gradient"``: routes pick among a source's candidate targets by the dense-gradient magnitude
  ``|dL/dW|`` of the position (largest first) instead of uniformly. Needs ``gradients``, a function of
  the network returning ``{block: dL/dW}`` (:func:`polyscale.growth.regrowth.dense_gradients`).
- ``fill="gradient"``: what routes and clones leave of the allowance goes to the inactive positions with
  the largest ``|dL/dW|`` in every block, input and output blocks too. Block ``b`` gets a share in
  proportion to ``in_b + out_b`` (the Erdos-Renyi-kernel rule of RigL, capped by its inactive positions).
  Routing only joins hidden extrema, so this is how inputs and outputs get new connections.

The result lists the changed parameters, so the training loop can carry the optimizer state over.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from polyscale.growth.extrema import activation_extrema
from polyscale.growth.routing import plan_routes
from polyscale.nn.sparse import ParameterChange
from polyscale.nn.sparse_mlp import SparseMLP


@dataclass
class GrowthResult:
    """What one growth event did: connections added per block (routes, clones and fill together), units
    cloned, the extrema it saw (hidden layer -> units), the changed parameters, the structures to charge
    the schedule (``ceil(added / structure_size)``) and how many of the connections the fill placed."""

    added: int
    per_block: dict[str, int]
    clones: int
    high: dict[int, Tensor]
    low: dict[int, Tensor]
    changes: list[ParameterChange] = field(default_factory=list)
    structures: int = 0
    filled: int = 0


@torch.no_grad()
def layer_extrema(
    net: SparseMLP, x: Tensor, *, high: float = 0.95, low: float = 0.05
) -> tuple[dict[int, Tensor], dict[int, Tensor]]:
    """High and low extrema of every hidden layer of ``net`` on the probe batch ``x``."""
    hs = net.hidden_activations(x)
    highs, lows = {}, {}
    for layer in range(1, len(net.sizes) - 1):
        highs[layer], lows[layer] = activation_extrema(hs[layer], net.activation, high=high, low=low)
    return highs, lows


RANKS = ("random", "gradient")
FILLS = (None, "gradient")


@dataclass
class SparseGrower:
    """The growth-event procedure of the module docstring; every number is a parameter."""

    fan_out: tuple[int, int] = (3, 4)
    max_incoming: int = 5
    reciprocal: float = 0.2
    init: float = 0.0  # weight of a routed connection when it appears
    clones_per_event: int = 2
    clone_scale: float = 0.7
    preserve_clones: bool = False
    high: float = 0.95
    low: float = 0.05
    structure_size: int = 1  # connections per structure of the schedule's allowance (module docstring)
    rank: str = "random"  # how routes pick targets: "random" or "gradient"
    fill: str | None = None  # None or "gradient": place the allowance's leftover by |dL/dW|

    def __post_init__(self) -> None:
        if self.structure_size < 1:
            raise ValueError(f"structure_size must be >= 1, got {self.structure_size}")
        if self.rank not in RANKS:
            raise ValueError(f"rank must be one of {RANKS}, got {self.rank!r}")
        if self.fill not in FILLS:
            raise ValueError(f"fill must be one of {FILLS}, got {self.fill!r}")

    @property
    def needs_gradients(self) -> bool:
        """Whether :meth:`grow` needs ``gradients``."""
        return self.rank == "gradient" or self.fill == "gradient"

    def extrema(self, net: SparseMLP, x: Tensor) -> tuple[dict[int, Tensor], dict[int, Tensor]]:
        return layer_extrema(net, x, high=self.high, low=self.low)

    def grow(
        self,
        net: SparseMLP,
        x: Tensor,
        allowance: int,
        *,
        generator: torch.Generator | None = None,
        gradients: Callable[[SparseMLP], dict[str, Tensor]] | None = None,
    ) -> GrowthResult:
        """One growth event on ``net`` with at most ``allowance`` new structures (``allowance *
        structure_size`` connections); ``x`` is the probe batch. ``gradients(net)`` returns ``{block: dL/dW
        (out, in)}`` (e.g. :func:`polyscale.growth.regrowth.dense_gradients` on a batch), which
        ``rank="gradient"`` and ``fill="gradient"`` need; it is called again after cloning, which changes
        the blocks' shapes."""
        if self.needs_gradients and gradients is None:
            raise ValueError(
                f"rank={self.rank!r} / fill={self.fill!r} place connections by dense gradient: pass gradients "
                "(e.g. a call of polyscale.growth.regrowth.dense_gradients)"
            )
        high, low = self.extrema(net, x)
        budget = allowance * self.structure_size
        routes = plan_routes(
            net, high, low, allowance=budget, fan_out=self.fan_out, max_incoming=self.max_incoming,
            reciprocal=self.reciprocal, generator=generator,
            scores=gradients(net) if self.rank == "gradient" and gradients is not None else None,
        )  # fmt: skip
        changes: list[ParameterChange] = []
        per_block: dict[str, int] = {}
        for name, positions in routes.items():
            changes.append(net.connect(name, positions, torch.full((positions.numel(),), float(self.init))))
            per_block[name] = positions.numel()
        added = sum(per_block.values())
        clones = 0
        if net.skip >= 1 and self.clones_per_event > 0:
            candidates = [(layer, int(u)) for layer, units in high.items() for u in units]
            order = torch.randperm(len(candidates), generator=generator).tolist()
            for k in order:
                if clones >= self.clones_per_event:
                    break
                layer, unit = candidates[k]
                into = layer + 1 if layer + 1 < len(net.sizes) - 1 else layer - 1
                if into < 1:
                    continue
                cost = net.clone_connections(layer, unit, into)
                if cost == 0 or added + cost > budget:
                    continue
                before = {name: block.nnz for name, block in net.sparse_blocks().items()}
                _, clone_changes = net.clone_units(
                    layer, [unit], into, scale=self.clone_scale, preserve=self.preserve_clones
                )
                changes += clone_changes
                for name, block in net.sparse_blocks().items():
                    if block.nnz != before[name]:
                        per_block[name] = per_block.get(name, 0) + block.nnz - before[name]
                added += cost
                clones += 1
        filled = 0
        if self.fill == "gradient" and added < budget and gradients is not None:  # not None: checked above
            for name, positions in gradient_fill(net, gradients(net), budget - added).items():
                changes.append(
                    net.connect(name, positions, torch.full((positions.numel(),), float(self.init)))
                )
                per_block[name] = per_block.get(name, 0) + positions.numel()
                filled += positions.numel()
            added += filled
        structures = min(allowance, math.ceil(added / self.structure_size))
        return GrowthResult(added, per_block, clones, high, low, changes, structures, filled)


def gradient_fill(net: SparseMLP, dense_grads: dict[str, Tensor], budget: int) -> dict[str, Tensor]:
    """Up to ``budget`` new connections ``{block name: flat positions}``: block ``b`` gets
    ``budget * (in_b + out_b) / sum(in + out)`` (rounded down, at most its inactive positions), filled with
    its inactive positions of largest ``|dL/dW|``."""
    if budget < 0:
        raise ValueError(f"budget must be >= 0, got {budget}")
    weight = {name: b.in_features + b.out_features for name, b in net.sparse_blocks().items()}
    total = sum(weight.values())
    out = {}
    for name, block in net.sparse_blocks().items():
        pool = (~block.mask().flatten()).nonzero().squeeze(1)
        k = min(pool.numel(), budget * weight[name] // total)
        if k > 0:
            score = dense_grads[name].flatten()[pool].abs()
            out[name] = pool[score.argsort(descending=True)[:k]].sort().values
    return out
