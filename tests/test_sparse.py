"""Sparse layers: both execution paths equal, the initial-connectivity rule, the network with skips."""

from __future__ import annotations

import pytest
import torch

from polyscale.nn.sparse import SparseLinear, initial_connections
from polyscale.nn.sparse_mlp import SparseMLP


@pytest.mark.parametrize("density", [1e-4, 0.01, 0.2, 1.0])
@pytest.mark.parametrize("shape", [(7,), (3, 5)])
def test_masked_and_sparse_paths_agree_in_value_and_gradient(density, shape):
    layer = SparseLinear(60, 30, density=density, generator=torch.Generator().manual_seed(0))
    x = torch.randn(*shape, 60, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    out, grads = {}, {}
    for mode in ("masked", "sparse"):
        layer.mode = mode
        layer.zero_grad()
        y = layer(x)
        (y * torch.arange(30, dtype=y.dtype)).sum().backward()
        out[mode], grads[mode] = y, (layer.values.grad.clone(), layer.bias.grad.clone())
    assert out["masked"].shape == (*shape, 30)
    assert torch.allclose(out["masked"], out["sparse"], atol=1e-10)
    assert all(
        torch.allclose(a, b, atol=1e-10) for a, b in zip(grads["masked"], grads["sparse"], strict=True)
    )
    # and both equal a dense layer with the masked weight
    ref = x @ layer.dense_weight().detach().T.double() + layer.bias.detach()
    assert torch.allclose(out["masked"], ref, atol=1e-10)


def test_auto_mode_follows_density():
    assert SparseLinear(1000, 1000, density=0.004).resolved_mode() == "sparse"
    assert SparseLinear(100, 100, density=0.01).resolved_mode() == "masked"
    assert SparseLinear(100, 100, density=0.3, sparse_below=0.5).resolved_mode() == "sparse"


def test_initial_connectivity_rule():
    g = torch.Generator().manual_seed(2)
    flat = initial_connections(500, 40, density=1e-4, min_inputs=1, generator=g)
    assert flat.numel() == 40  # round(1e-4 * 20000) = 2 < 40 units x 1 input
    rows = flat // 500
    assert torch.equal(rows.unique(), torch.arange(40))  # every unit has an input
    flat = initial_connections(500, 40, density=0.1, min_inputs=2, generator=g)
    assert flat.numel() == 2000 and flat.unique().numel() == 2000 and torch.equal(flat, flat.sort().values)
    assert torch.bincount(flat // 500, minlength=40).min() >= 2
    assert 0 <= int(flat.min()) and int(flat.max()) < 20000
    with pytest.raises(ValueError, match="density must be in"):
        initial_connections(5, 5, density=2.0, min_inputs=1, generator=None)
    with pytest.raises(ValueError, match="min_inputs"):
        initial_connections(5, 5, density=0.1, min_inputs=6, generator=None)


def test_mask_and_dense_weight_match():
    layer = SparseLinear(20, 10, density=0.3, generator=torch.Generator().manual_seed(3))
    m, w = layer.mask(), layer.dense_weight()
    assert int(m.sum()) == layer.nnz and torch.all(w[~m] == 0) and torch.all(w[m] != 0)
    assert abs(layer.density - layer.nnz / 200) < 1e-12


def test_sparse_mlp_equals_a_hand_computed_dense_network():
    torch.manual_seed(0)
    net = SparseMLP(
        12, [16, 8], 5, activation="sigmoid", skip=2, density=0.3, generator=torch.Generator().manual_seed(4)
    )
    assert sorted(net.blocks) == sorted(["1<-0", "2<-1", "2<-0", "3<-2", "3<-1", "3<-0"])
    x = torch.randn(9, 12)
    h = [x]
    for layer in (1, 2, 3):
        z = sum(h[s] @ net.blocks[f"{layer}<-{s}"].dense_weight().T for s in range(layer))
        z = z + net.blocks[f"{layer}<-{layer - 1}"].bias
        h.append(z if layer == 3 else torch.sigmoid(z))
    assert torch.allclose(net(x), h[-1], atol=1e-6)
    stats = net.connectivity_stats()
    assert stats["active"] == sum(b.nnz for b in net.blocks.values())
    assert stats["possible"] == 12 * 16 + 16 * 8 + 12 * 8 + 8 * 5 + 16 * 5 + 12 * 5
    assert abs(stats["ratio"] - stats["active"] / stats["possible"]) < 1e-12


@pytest.mark.parametrize("activation", ["tanh", "sigmoid", "relu"])
def test_sparse_mlp_runs_both_modes_with_empty_skip_blocks(activation):
    net = SparseMLP(
        40,
        [64, 64],
        10,
        activation=activation,
        skip=3,
        density=1e-4,
        generator=torch.Generator().manual_seed(5),
    )
    assert any(b.nnz == 0 for b in net.blocks.values())  # skip blocks start empty at 0.01 %
    x = torch.randn(4, 40)
    outs = []
    for mode in ("masked", "sparse"):
        for b in net.blocks.values():
            b.mode = mode
        outs.append(net(x))
    assert outs[0].shape == (4, 10) and torch.allclose(outs[0], outs[1], atol=1e-6)
    assert all(b.min() >= 1 for b in [torch.bincount(net.blocks["1<-0"].flat_index // 40, minlength=64)])


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="activation must be one of"):
        SparseMLP(4, [4], 2, activation="gelu")
    with pytest.raises(ValueError, match="skip must be 0 to 3"):
        SparseMLP(4, [4], 2, skip=4)
    with pytest.raises(ValueError, match="mode must be one of"):
        SparseLinear(4, 4, mode="csr")
    with pytest.raises(ValueError, match=r"expected input \(\.\.\., 4\)"):
        SparseLinear(4, 4)(torch.randn(2, 5))


def test_no_hidden_unit_starts_without_an_input_or_an_output():
    net = SparseMLP(40, [256, 256], 10, skip=1, density=1e-4, generator=torch.Generator().manual_seed(0))
    for layer in (1, 2):
        inc = net.blocks[SparseMLP.block_name(layer, layer - 1)]
        out = net.blocks[SparseMLP.block_name(layer + 1, layer)]
        assert (torch.bincount(inc.flat_index // inc.in_features, minlength=inc.out_features) >= 1).all()
        assert (torch.bincount(out.flat_index % out.in_features, minlength=out.in_features) >= 1).all()
    bare = SparseMLP(
        40, [256, 256], 10, density=1e-4, min_outputs=0, generator=torch.Generator().manual_seed(0)
    )
    assert bare.connectivity_stats()["active"] < net.connectivity_stats()["active"]
    with pytest.raises(ValueError, match="min_outputs"):
        SparseMLP(4, [3], 2, min_outputs=5)
