"""Opt-in sparse growth beyond the default rules: structures of several connections, gradient fill of the
allowance's leftover, and growth combined with prune-and-regrow between events."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from polyscale.growth import SparseGrowthSchedule
from polyscale.growth.regrowth import dense_gradients
from polyscale.growth.sparse_grower import SparseGrower, gradient_fill
from polyscale.nn.sparse_mlp import SparseMLP
from polyscale.training.sparse_growth import SparseGrowthTrainer


def _net(seed: int = 0) -> SparseMLP:
    return SparseMLP(12, [16, 16], 5, skip=1, density=0.02, activation="tanh",
                     generator=torch.Generator().manual_seed(seed)).double()  # fmt: skip


def _data(n: int = 200, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 5, (n,), generator=g)
    return (torch.randn(5, 12, generator=g, dtype=torch.double) * 2)[y] + torch.randn(
        n, 12, generator=g, dtype=torch.double
    ), y


def test_gradient_fill_takes_block_shares_of_the_largest_inactive_gradients():
    net = _net()
    x, y = _data()
    grads = dense_gradients(net, x, y, F.cross_entropy)
    budget = 60
    fill = gradient_fill(net, grads, budget)
    weight = {n: b.in_features + b.out_features for n, b in net.blocks.items()}
    assert sum(p.numel() for p in fill.values()) <= budget
    for name, block in net.blocks.items():
        positions = fill.get(name, torch.zeros(0, dtype=torch.long))
        assert positions.numel() == budget * weight[name] // sum(weight.values())
        inactive = ~block.mask().flatten()
        assert inactive[positions].all()  # only inactive positions
        rest = inactive.clone()
        rest[positions] = False
        g = grads[name].abs().flatten()
        if positions.numel() and rest.any():
            assert g[positions].min() >= g[rest].max()  # the chosen ones have the largest |dL/dW|
    with pytest.raises(ValueError, match="budget"):
        gradient_fill(net, grads, -1)


def test_gradient_fill_is_capped_by_the_inactive_positions():
    net = SparseMLP(3, [2], 2, density=1.0).double()
    grads = {n: torch.ones(b.out_features, b.in_features, dtype=torch.double) for n, b in net.blocks.items()}
    assert gradient_fill(net, grads, 1000) == {}  # fully connected: nothing left to fill


def test_structures_of_several_connections_and_the_fill_spend_the_allowance():
    net = _net()
    x, y = _data()
    before = net.connectivity_stats()["active"]
    grower = SparseGrower(structure_size=8, fill="gradient", rank="gradient", clones_per_event=0,
                          high=0.6, low=0.4)  # fmt: skip
    result = grower.grow(net, x, 10, generator=torch.Generator().manual_seed(0),
                         gradients=lambda n: dense_gradients(n, x, y, F.cross_entropy))  # fmt: skip
    assert 0 < result.added <= 80 and result.filled > 0
    assert net.connectivity_stats()["active"] == before + result.added
    assert result.added == sum(result.per_block.values())
    assert result.structures == min(10, math.ceil(result.added / 8))
    assert set(result.per_block) & {"1<-0", "3<-2"}  # the fill reaches input and output blocks too
    with pytest.raises(ValueError, match="gradients"):
        grower.grow(net, x, 10)
    for bad in ({"structure_size": 0}, {"rank": "best"}, {"fill": "random"}):
        with pytest.raises(ValueError):
            SparseGrower(**bad)


def test_the_default_grower_charges_one_structure_per_connection():
    net = _net()
    x, _ = _data()
    result = SparseGrower(high=0.6, low=0.4).grow(net, x, 30, generator=torch.Generator().manual_seed(0))
    assert result.structures == result.added <= 30 and result.filled == 0


def test_growth_with_regrowth_prunes_between_events_at_the_reached_connectivity():
    x, y = _data(300)
    net = SparseMLP(12, [16, 16], 5, skip=1, density=0.05, activation="sigmoid",
                    generator=torch.Generator().manual_seed(0))  # fmt: skip
    schedule = SparseGrowthSchedule(credits_per_spike=100.0, stabilisation_epochs=1, spike_threshold=1e-6,
                                    phase_limits=(2, 3, 4))  # fmt: skip
    grower = SparseGrower(high=0.6, low=0.4, structure_size=5, fill="gradient", clones_per_event=0)
    trainer = SparseGrowthTrainer(net, (x[:240].float(), y[:240]), (x[240:].float(), y[240:]),
                                  schedule=schedule, grower=grower, regrowth="rigl", seed=0)  # fmt: skip
    history = []
    for _ in range(8):
        structure = {n: b.flat_index.clone() for n, b in trainer.net.blocks.items()}
        stats = trainer.train_epoch()
        history.append(stats)
        if not stats["grew"]:
            # prune-and-regrow: the count is kept, the positions move
            assert stats["connections_added"] == 0
            moved = any(
                not torch.equal(structure[n], b.flat_index)
                for n, b in trainer.net.blocks.items()
                if n in structure
            )
            assert moved
    grew = [h for h in history if h["grew"]]
    assert grew and trainer.connections_added == sum(h["connections_added"] for h in grew)
    assert trainer.connections_added <= 5 * (2 + 3 + 4)  # the phase limits, in structures of 5
    assert sum(h["connections_added"] for h in grew) > 2 + 3 + 4  # more than one connection per structure
    counts = [h["active"] for h in history]
    for a, b, h in zip(counts, counts[1:], history[1:], strict=False):
        assert b == a + h["connections_added"]  # connectivity changes only by growth
