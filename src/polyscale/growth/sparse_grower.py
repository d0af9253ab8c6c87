"""*How* a sparse network grows at a growth event: extrema, routing, vertical cloning, surgery (issue 6).

One :meth:`SparseGrower.grow` call, given the phase allowance the schedule granted:

1. finds each hidden layer's high and low activation extrema on a probe batch
   (:func:`polyscale.growth.extrema.activation_extrema`);
2. routes new connections between them (:func:`polyscale.growth.routing.plan_routes`: high -> low within
   the skip radius, fan-out 3-4, at most 5 new incoming per unit, 20 % reciprocal, inactive positions only)
   and adds them with weight ``init`` (0 by default, so the network's function is unchanged at the event);
3. with what the allowance has left, clones up to ``clones_per_event`` high extrema vertically into the
   adjacent layer (:meth:`polyscale.nn.sparse.SparseMLP.clone_units`, 0.7x weights, or the
   function-preserving variant with ``preserve_clones=True``). A clone's connections count against the
   allowance; cloning needs skip connections and is skipped on a network without them.

Every structure counted against the allowance is one new connection. The result lists the changed
parameters, so the training loop can carry the optimizer state over.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from polyscale.growth.extrema import activation_extrema
from polyscale.growth.routing import plan_routes
from polyscale.nn.sparse import ParameterChange, SparseMLP


@dataclass
class GrowthResult:
    """What one growth event did: connections added per block (routes and clones together), units cloned,
    the extrema it saw (hidden layer -> units) and the changed parameters."""

    added: int
    per_block: dict[str, int]
    clones: int
    high: dict[int, Tensor]
    low: dict[int, Tensor]
    changes: list[ParameterChange] = field(default_factory=list)


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

    def extrema(self, net: SparseMLP, x: Tensor) -> tuple[dict[int, Tensor], dict[int, Tensor]]:
        return layer_extrema(net, x, high=self.high, low=self.low)

    def grow(
        self, net: SparseMLP, x: Tensor, allowance: int, *, generator: torch.Generator | None = None
    ) -> GrowthResult:
        """One growth event on ``net`` with at most ``allowance`` new connections; ``x`` is the probe batch."""
        high, low = self.extrema(net, x)
        routes = plan_routes(
            net, high, low, allowance=allowance, fan_out=self.fan_out, max_incoming=self.max_incoming,
            reciprocal=self.reciprocal, generator=generator,
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
                if cost == 0 or added + cost > allowance:
                    continue
                before = {name: block.nnz for name, block in net.blocks.items()}
                _, clone_changes = net.clone_units(
                    layer, [unit], into, scale=self.clone_scale, preserve=self.preserve_clones
                )
                changes += clone_changes
                for name, block in net.blocks.items():
                    if block.nnz != before[name]:
                        per_block[name] = per_block.get(name, 0) + block.nnz - before[name]
                added += cost
                clones += 1
        return GrowthResult(added, per_block, clones, high, low, changes)
