"""Sparse growth surgery: regrowth on inactive positions, function preserved at zero init, optimizer state
carried over (old moments kept, new ones zero)."""

from __future__ import annotations

import pytest
import torch

from polyscale.nn.sparse import SparseLinear
from polyscale.training.optimizer_state import carry_over


def trained_layer(steps=5):
    layer = SparseLinear(30, 20, density=0.1, generator=torch.Generator().manual_seed(0))
    opt = torch.optim.Adam(layer.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        opt.zero_grad()
        layer(torch.randn(8, 30, generator=g)).pow(2).sum().backward()
        opt.step()
    return layer, opt


def test_zero_init_growth_preserves_the_function_and_adds_only_inactive_positions():
    layer, _ = trained_layer()
    x = torch.randn(6, 30)
    before, old_nnz = layer(x), layer.nnz
    inactive = (~layer.mask().flatten()).nonzero().squeeze(1)[:25]
    where = layer.add_connections(inactive)
    assert layer.nnz == old_nnz + 25 and torch.equal(layer.flat_index, layer.flat_index.sort().values)
    assert torch.allclose(layer(x), before, atol=1e-6)
    assert where.shape == (old_nnz,)
    with pytest.raises(ValueError, match="inactive positions only"):
        layer.add_connections(inactive[:1])
    with pytest.raises(ValueError, match="distinct"):
        layer.add_connections(torch.tensor([0, 0]))
    with pytest.raises(ValueError, match=r"must lie in \[0, 600\)"):
        layer.add_connections(torch.tensor([600]))


def test_adam_state_of_old_connections_survives_and_new_ones_start_at_zero():
    layer, opt = trained_layer()
    old_param = layer.values
    old_state = {k: v.clone() if torch.is_tensor(v) else v for k, v in opt.state[old_param].items()}
    old_values, old_index = old_param.detach().clone(), layer.flat_index.clone()
    inactive = (~layer.mask().flatten()).nonzero().squeeze(1)[::7][:10]
    where = layer.add_connections(inactive, init=0.05)
    carry_over(opt, old_param, layer.values, where)
    state = opt.state[layer.values]
    assert torch.equal(state["exp_avg"][where], old_state["exp_avg"])
    assert torch.equal(state["exp_avg_sq"][where], old_state["exp_avg_sq"])
    assert torch.equal(state["step"], old_state["step"])
    new_slots = torch.isin(layer.flat_index, inactive)
    assert int(new_slots.sum()) == 10
    assert torch.all(state["exp_avg"][new_slots] == 0) and torch.all(state["exp_avg_sq"][new_slots] == 0)
    assert torch.equal(layer.values.detach()[where], old_values) and torch.equal(
        layer.flat_index[where], old_index
    )
    assert torch.allclose(layer.values.detach()[new_slots], torch.full((10,), 0.05))
    # the optimizer keeps training the grown layer, new entries included
    opt.zero_grad()
    layer(torch.randn(8, 30)).pow(2).sum().backward()
    opt.step()
    assert not torch.allclose(layer.values.detach()[new_slots], torch.full((10,), 0.05))


def test_carry_over_checks_its_arguments():
    layer, opt = trained_layer(1)
    with pytest.raises(ValueError, match="one index per old entry"):
        carry_over(opt, layer.values, layer.values, torch.arange(3))
    stranger = torch.nn.Parameter(torch.zeros(layer.nnz))
    with pytest.raises(ValueError, match="not in the optimizer"):
        carry_over(opt, stranger, stranger, torch.arange(layer.nnz))
