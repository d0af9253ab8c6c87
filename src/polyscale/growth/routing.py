"""*How* a sparse growth event picks its new connections: routing between activation extrema.

For a :class:`polyscale.nn.sparse_mlp.SparseMLP` with layers ``0`` (input) to ``L`` (output), given the high and
low extrema of its hidden layers (``polyscale.growth.extrema``):

- **Routes.** Each high extremum ``u`` in layer ``l`` sends new connections to low extrema ``v`` in later
  layers ``m = l + 1 ... l + 1 + skip`` (the network's search radius: only where a block ``m <- l``
  exists). It sends ``fan_out`` of them (drawn from 3 to 4), picked uniformly among the candidates, or,
  given ``scores`` (``{block: (out, in)}``, e.g. dense-gradient magnitudes), the candidates of largest
  ``|score|`` first.
- **Reciprocal.** A ``reciprocal`` share (20 %) of the routes run the other way round: a low extremum as
  the source feeding a high extremum downstream. That gives an under-used unit a way to become useful,
  while the forward direction feeds a dead unit from a saturated one.
- **Load balancing.** No unit receives more than ``max_incoming`` (5) new connections per event.
- **Regrowth only on inactive positions.** A pair that is already connected is never proposed again.
- **Budget.** At most ``allowance`` connections in all, the growth schedule's phase allowance.

The result maps block names to the flat positions to pass to ``SparseLinear.add_connections``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from polyscale.nn.sparse_mlp import SparseMLP


def plan_routes(
    net: SparseMLP,
    high: dict[int, Tensor],
    low: dict[int, Tensor],
    *,
    allowance: int,
    fan_out: tuple[int, int] = (3, 4),
    max_incoming: int = 5,
    reciprocal: float = 0.2,
    generator: torch.Generator | None = None,
    scores: dict[str, Tensor] | None = None,
) -> dict[str, Tensor]:
    """New connections ``{block name: flat positions (k,)}`` by the rules of the module docstring.
    ``high`` and ``low`` map hidden-layer indices (1 .. L - 1) to unit indices."""
    if allowance < 0 or max_incoming < 1 or not 0 <= reciprocal <= 1 or not 1 <= fan_out[0] <= fan_out[1]:
        raise ValueError(
            f"need allowance >= 0, max_incoming >= 1, reciprocal in [0, 1] and 1 <= fan_out[0] <= fan_out[1], "
            f"got {allowance}, {max_incoming}, {reciprocal}, {fan_out}"
        )
    hidden = range(1, len(net.sizes) - 1)
    for name, d in (("high", high), ("low", low)):
        if set(d) - set(hidden):
            raise ValueError(f"{name} extrema must be keyed by hidden layers {list(hidden)}, got {sorted(d)}")
    active = {name: set(block.flat_index.tolist()) for name, block in net.sparse_blocks().items()}
    incoming: dict[tuple[int, int], int] = {}
    planned: dict[str, list[int]] = {}
    total = 0
    # one route list per (source unit, direction); shuffled so the budget is not spent on the first layer
    sources = [(l, int(u), "forward") for l, units in high.items() for u in units]
    sources += [(l, int(u), "reciprocal") for l, units in low.items() for u in units]
    order = torch.randperm(len(sources), generator=generator).tolist()
    for k in order:
        layer, unit, direction = sources[k]
        if direction == "reciprocal" and torch.rand((), generator=generator) >= reciprocal:
            continue
        targets_of = low if direction == "forward" else high
        candidates = [
            (m, int(v))
            for m in range(layer + 1, len(net.sizes) - 1)
            if SparseMLP.block_name(m, layer) in net.blocks
            for v in targets_of.get(m, torch.zeros(0, dtype=torch.long))
        ]
        want = int(torch.randint(fan_out[0], fan_out[1] + 1, (), generator=generator))
        ranking = torch.randperm(len(candidates), generator=generator)
        if scores is not None and candidates:
            value = torch.tensor([
                float(scores[SparseMLP.block_name(m, layer)][v, unit].abs()) for m, v in candidates
            ])  # fmt: skip
            ranking = value.argsort(descending=True, stable=True)
        for c in ranking.tolist():
            if want == 0 or total >= allowance:
                break
            m, v = candidates[c]
            name = SparseMLP.block_name(m, layer)
            position = v * net.sizes[layer] + unit  # row = target unit, column = source unit
            if position in active[name] or incoming.get((m, v), 0) >= max_incoming:
                continue
            active[name].add(position)
            incoming[(m, v)] = incoming.get((m, v), 0) + 1
            planned.setdefault(name, []).append(position)
            total, want = total + 1, want - 1
    return {name: torch.tensor(sorted(p), dtype=torch.long) for name, p in planned.items()}
