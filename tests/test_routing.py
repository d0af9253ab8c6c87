"""Routing between extrema: radius, fan-out, load balancing, reciprocal share, budget, inactive-only."""

from __future__ import annotations

import pytest
import torch

from polyscale.growth.routing import plan_routes
from polyscale.nn.sparse_mlp import SparseMLP


def network(skip=1):
    return SparseMLP(
        8, [20, 20, 20], 4, skip=skip, density=0.0, min_inputs=1, generator=torch.Generator().manual_seed(0)
    )


def decode(net, routes):
    """(source layer, source unit, target layer, target unit) of every planned connection."""
    out = []
    for name, positions in routes.items():
        target, source = (int(s) for s in name.split("<-"))
        for p in positions.tolist():
            out.append((source, p % net.sizes[source], target, p // net.sizes[source]))
    return out


def test_routes_respect_radius_fan_out_and_load_balancing():
    net = network(skip=1)
    high = {1: torch.tensor([0, 1, 2, 3])}
    low = {2: torch.tensor([5, 6]), 3: torch.tensor([7, 8, 9])}
    routes = plan_routes(
        net, high, low, allowance=1000, reciprocal=0.0, generator=torch.Generator().manual_seed(1)
    )
    edges = decode(net, routes)
    assert edges and all(s == 1 and t in (2, 3) for s, _, t, _ in edges)  # within radius: layer 1 -> 2, 3
    per_source = torch.bincount(torch.tensor([u for _, u, _, _ in edges]), minlength=4)
    assert per_source.max() <= 4 and per_source.min() >= 3  # fan-out 3 to 4, and 5 candidates are enough
    per_target = {}
    for _, _, t, v in edges:
        per_target[(t, v)] = per_target.get((t, v), 0) + 1
    assert max(per_target.values()) <= 5
    assert all((t, v) in {(2, 5), (2, 6), (3, 7), (3, 8), (3, 9)} for _, _, t, v in edges)


def test_no_skip_means_next_layer_only_and_budget_caps_the_total():
    net = network(skip=0)
    high = {1: torch.arange(10)}
    low = {2: torch.arange(10), 3: torch.arange(10)}
    routes = plan_routes(
        net, high, low, allowance=7, reciprocal=0.0, generator=torch.Generator().manual_seed(2)
    )
    edges = decode(net, routes)
    assert len(edges) == 7 and all(t == s + 1 for s, _, t, _ in edges)


def test_already_active_positions_are_never_proposed():
    net = network(skip=0)
    block = net.blocks["2<-1"]
    every = torch.arange(20 * 20)
    block.add_connections(every[~block.mask().flatten()])  # fill the block completely
    routes = plan_routes(
        net,
        {1: torch.arange(5)},
        {2: torch.arange(5)},
        allowance=100,
        generator=torch.Generator().manual_seed(3),
    )
    assert routes == {}


def test_reciprocal_share_runs_from_low_to_high():
    """Forward: high units 0-4 of layer 1 feed low units 15-19 of layer 2. Reciprocal: low units 10-14 of
    layer 1 feed high units 5-9 of layer 2, for about a fifth of them."""
    net = network(skip=0)
    high = {1: torch.arange(0, 5), 2: torch.arange(5, 10)}
    low = {1: torch.arange(10, 15), 2: torch.arange(15, 20)}
    used, trials = 0, 0
    for seed in range(40):
        edges = decode(
            net,
            plan_routes(
                net,
                high,
                low,
                allowance=10_000,
                reciprocal=0.2,
                generator=torch.Generator().manual_seed(seed),
            ),
        )
        for s, u, t, v in edges:
            assert (s, t) == (1, 2)
            assert (u < 5 and v >= 15) or (10 <= u < 15 and 5 <= v < 10)
        used += len({u for _, u, _, _ in edges if u >= 10})
        trials += 5
    assert 0.1 < used / trials < 0.3
    none = decode(
        net,
        plan_routes(
            net, high, low, allowance=10_000, reciprocal=0.0, generator=torch.Generator().manual_seed(0)
        ),
    )
    assert all(u < 5 for _, u, _, _ in none)


def test_bad_arguments_are_named():
    net = network()
    with pytest.raises(ValueError, match="hidden layers"):
        plan_routes(net, {0: torch.tensor([0])}, {}, allowance=5)
    with pytest.raises(ValueError, match="allowance >= 0"):
        plan_routes(net, {}, {}, allowance=-1)


def test_gradient_rank_sends_each_source_to_its_largest_score_targets():
    net = network(skip=0)
    high = {1: torch.tensor([0, 1])}
    low = {2: torch.arange(10)}
    scores = {name: torch.zeros(b.out_features, b.in_features) for name, b in net.blocks.items()}
    scores["2<-1"][7, 0], scores["2<-1"][2, 0], scores["2<-1"][9, 0] = 5.0, -4.0, 3.0  # |score| ranks
    scores["2<-1"][4, 1], scores["2<-1"][1, 1], scores["2<-1"][0, 1] = 9.0, 8.0, -7.0
    routes = plan_routes(
        net, high, low, allowance=1000, fan_out=(3, 3), reciprocal=0.0, scores=scores,
        generator=torch.Generator().manual_seed(0),
    )  # fmt: skip
    edges = decode(net, routes)
    assert sorted(v for _, u, _, v in edges if u == 0) == [2, 7, 9]
    assert sorted(v for _, u, _, v in edges if u == 1) == [0, 1, 4]
    random = decode(net, plan_routes(net, high, low, allowance=1000, fan_out=(3, 3), reciprocal=0.0,
                                     generator=torch.Generator().manual_seed(0)))  # fmt: skip
    assert len(random) == len(edges) == 6 and sorted(random) != sorted(edges)  # the scores made the choice
