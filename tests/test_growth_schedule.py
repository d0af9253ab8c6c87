"""The sparse-growth schedule on constructed gradient-variance signals."""

from __future__ import annotations

import pytest
import torch

from polyscale.growth import SparseGrowthSchedule, block_gradient_variances
from polyscale.nn.sparse_mlp import SparseMLP


def test_spike_is_a_relative_change_above_half():
    s = SparseGrowthSchedule()
    seen = [s.update({"a": v}).spikes for v in (1.0, 1.2, 1.9, 1.0, 0.4, 0.55)]
    # 1.2: +20 %, 1.9: +58 %, 1.0: -47 %, 0.4: -60 %, 0.55: +37.5 %
    assert seen == [[], [], ["a"], [], ["a"], []]


def test_blocks_are_tracked_separately():
    s = SparseGrowthSchedule()
    s.update({"a": 1.0, "b": 1.0})
    assert s.update({"a": 2.0, "b": 1.1}).spikes == ["a"]
    assert s.update({"a": 2.1, "b": 3.0}).spikes == ["b"]


def alternating(n_blocks):
    value = 1.0
    while True:
        yield {f"b{i}": value for i in range(n_blocks)}
        value = 3.0 if value == 1.0 else 1.0  # +200 % and -67 %: a spike every epoch after the first


def test_ten_spikes_buy_one_growth_event_and_credits_carry_over():
    s, signal = SparseGrowthSchedule(), alternating(1)
    decisions = [s.update(next(signal)) for _ in range(11)]
    assert [d.grow for d in decisions] == [False] * 10 + [True]  # epochs 2..11: ten spikes, 100 credits
    assert decisions[-1].allowance == 10 and decisions[-1].phase == "coarse" and decisions[-1].credits == 0
    s3, signal3 = SparseGrowthSchedule(), alternating(3)
    credits = [s3.update(next(signal3)).credits for _ in range(5)]
    assert credits == [0, 30, 60, 90, 20]  # 120 reached at epoch 5: grow, 20 carried over


def test_stabilisation_pauses_counting_after_growth():
    s, signal = SparseGrowthSchedule(stabilisation_epochs=10), alternating(1)
    for _ in range(11):
        d = s.update(next(signal))
    assert d.grow
    s.record_growth(4)
    quiet = [s.update(next(signal)) for _ in range(10)]  # epochs 12..21
    assert all(not d.grow and d.credits == 0 for d in quiet) and all(d.spikes for d in quiet)
    assert s.update(next(signal)).credits == 10  # epoch 22 counts again


def test_phases_use_up_their_structure_limits_in_order():
    s = SparseGrowthSchedule()
    assert (s.phase, s.allowance()) == ("coarse", 10)
    s.record_growth(10)
    assert (s.phase, s.allowance()) == ("medium", 50)
    s.record_growth(30)
    assert (s.phase, s.allowance()) == ("medium", 20)
    with pytest.raises(ValueError, match=r"added must be in \[0, 20\]"):
        s.record_growth(21)
    s.record_growth(20)
    assert (s.phase, s.allowance()) == ("fine", 200)
    s.record_growth(200)
    assert s.allowance() == 0 and "every phase" in s.update({"a": 1.0}).done


def test_termination_by_epoch_limit_or_missing_extrema():
    s = SparseGrowthSchedule(max_epochs=3)
    assert [s.update({"a": 1.0}).done for _ in range(4)][-1] == "epoch limit 3 reached"
    s = SparseGrowthSchedule()
    d = s.update({"a": 1.0}, no_extrema=True)
    assert not d.grow and d.done == "no activation extrema left to route from"


def test_bad_parameters_and_values_are_named():
    with pytest.raises(ValueError, match="must be positive"):
        SparseGrowthSchedule(growth_cost=0)
    with pytest.raises(ValueError, match="phase_limits"):
        SparseGrowthSchedule(phase_limits=(10, 0, 200))
    with pytest.raises(ValueError, match="cannot be negative"):
        SparseGrowthSchedule().update({"a": -1.0})


def test_block_gradient_variances_read_a_sparse_network():
    net = SparseMLP(10, [20], 3, skip=1, density=0.2, generator=torch.Generator().manual_seed(0))
    net(torch.randn(16, 10)).pow(2).sum().backward()
    v = block_gradient_variances(net.blocks)
    assert set(v) == {name for name, b in net.blocks.items() if b.nnz >= 2}
    for name, value in v.items():
        assert abs(value - float(net.blocks[name].values.grad.double().var())) < 1e-12
    assert SparseGrowthSchedule().update(v).spikes == []  # the first epoch only sets the references
