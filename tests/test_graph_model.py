"""GraphDenoiser and packed graph states: permutation equivariance, locality, symmetric edges, scale-aware
temperature, batching = separate graphs, packing round trips, every sampler on given connectivity."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from polyscale.data.graph_datasets import GraphFeatureDataset, collate_graphs
from polyscale.data.graphs import field_graphs, grid_graph, planar_graph, to_data
from polyscale.diffusion import SAMPLERS
from polyscale.diffusion.graph import (
    GraphLayout,
    PackedGraphNet,
    graph_edm_loss,
    sample_graph_features,
    undirected_edges,
)
from polyscale.diffusion.sampling import SamplerConfig
from polyscale.nn.graph import GraphDenoiser, segment_softmax
from polyscale.pipelines.graph_nets import graph_denoiser


def randomised(net: GraphDenoiser) -> GraphDenoiser:
    """Give the zero-initialised heads and temperatures weights, so outputs depend on everything."""
    torch.manual_seed(1)
    for p in net.parameters():
        if p.abs().sum() == 0:
            torch.nn.init.normal_(p, std=0.3)
    return net.double()


def graph_inputs(n: int = 30, seed: int = 0):
    d = to_data(planar_graph(n, rng=np.random.default_rng(seed)))
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 2, generator=g, dtype=torch.float64)
    m = d.edge_index.shape[1] // 2
    e = torch.randn(m, 3, generator=g, dtype=torch.float64)
    return x, d.edge_index, torch.cat([e, e]), torch.full((n,), 0.3, dtype=torch.float64)


def test_segment_softmax_equals_dense_softmax():
    logits = torch.randn(7, 2, dtype=torch.float64)
    index = torch.tensor([0, 2, 0, 2, 2, 1, 0])
    out = segment_softmax(logits, index, 4)
    for seg in range(3):
        sel = index == seg
        torch.testing.assert_close(out[sel], logits[sel].softmax(0))


def test_permutation_equivariance_and_symmetric_edges():
    net = randomised(GraphDenoiser(node_dim=2, edge_dim=3, hidden=16, num_layers=2, num_heads=2))
    x, ei, e, c = graph_inputs()
    node, edge = net(x, ei, e, c)
    m = ei.shape[1] // 2
    torch.testing.assert_close(edge[:m], edge[m:])  # both directions of an edge agree
    perm = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(5))
    inv = torch.argsort(perm)  # new id of old node i is inv[i]
    cols = torch.randperm(ei.shape[1], generator=torch.Generator().manual_seed(6))
    node_p, edge_p = net(x[perm], inv[ei][:, cols], e[cols], c[perm])
    torch.testing.assert_close(node_p, node[perm])
    torch.testing.assert_close(edge_p, edge[cols])


def test_prediction_is_local_without_graph_context():
    """num_layers hops of message passing: a node further than that from a change does not see it."""
    net = randomised(GraphDenoiser(node_dim=1, hidden=16, num_layers=2, num_heads=2, global_context=False))
    d = to_data(grid_graph(1, 12))  # a path 0 - 1 - ... - 11
    x, c = torch.randn(12, 1, dtype=torch.float64), torch.zeros(12, dtype=torch.float64)
    y = x.clone()
    y[11] += 3.0
    a, b = net(x, d.edge_index, None, c)[0], net(y, d.edge_index, None, c)[0]
    # node 11's change reaches node 11 - 2 * (layers) at most (node + edge updates per layer)
    assert torch.equal(a[:6], b[:6]) and not torch.allclose(a[9:], b[9:])


def test_batched_graphs_equal_separate_calls():
    net = randomised(GraphDenoiser(node_dim=2, edge_dim=3, hidden=16, num_layers=2, num_heads=2))
    g1, g2 = graph_inputs(20, 1), graph_inputs(25, 2)
    outs = [net(*g) for g in (g1, g2)]
    m1, m2 = g1[1].shape[1] // 2, g2[1].shape[1] // 2
    ei = torch.cat([g1[1][:, :m1], g2[1][:, :m2] + 20], dim=1)
    ei = torch.cat([ei, ei.flip(0)], dim=1)
    e = torch.cat([g1[2][:m1], g2[2][:m2]])
    batch = torch.cat([torch.zeros(20), torch.ones(25)]).long()
    node, edge = net(torch.cat([g1[0], g2[0]]), ei, torch.cat([e, e]), torch.cat([g1[3], g2[3]]), batch=batch)
    torch.testing.assert_close(node, torch.cat([outs[0][0], outs[1][0]]))
    torch.testing.assert_close(edge[: m1 + m2], torch.cat([outs[0][1][:m1], outs[1][1][:m2]]))


def test_scale_aware_temperature():
    net = GraphDenoiser(node_dim=2, edge_dim=3, hidden=16, num_layers=1, num_heads=2).double()
    x, ei, e, c = graph_inputs()
    attn = net.layers[0].attn
    assert torch.equal(
        attn.temperature(torch.randn(5, 2, dtype=torch.float64)).exp(), torch.ones(5, 2).double()
    )
    net = randomised(net)
    one = net(x, ei, e, c, scale=torch.tensor([1.0]))[0]
    assert not torch.allclose(one, net(x, ei, e, c, scale=torch.tensor([4.0]))[0])  # s changes the logits
    torch.testing.assert_close(one, net(x, ei, e, c)[0])  # default s = 1


def test_errors_name_expected_and_received():
    net = GraphDenoiser(node_dim=2, edge_dim=3)
    x, ei, e, c = graph_inputs()
    with pytest.raises(ValueError, match=r"x must be \(N, node_dim=2\), got shape \(30, 3\)"):
        net(x[:, :1].repeat(1, 3).float(), ei, e.float(), c.float())
    with pytest.raises(ValueError, match=r"edge_attr must be \(E=\d+, edge_dim=3\), got None"):
        net(x.float(), ei, None, c.float())
    with pytest.raises(ValueError, match="need node_dim \\+ edge_dim >= 1"):
        GraphDenoiser(node_dim=0, edge_dim=0)
    with pytest.raises(ValueError, match="columns m..2m-1 must be columns 0..m-1 reversed"):
        GraphLayout(ei.flip(1)[:, 1:-1], torch.zeros(30, dtype=torch.long), 2, 3)


def test_packing_round_trip_and_per_graph_loss():
    fg = field_graphs("grid", 3, min_nodes=9, max_nodes=20, node_dim=2, edge_dim=1, seed=0)
    batch = collate_graphs([GraphFeatureDataset(fg.graphs, node_dim=2, edge_dim=1)[i] for i in range(3)])
    layout, x = batch["layout"], batch["x"]
    node, edge = layout.unpack(x)
    torch.testing.assert_close(node, torch.cat([d.x for d in fg.graphs]))
    torch.testing.assert_close(layout.pack(node, edge), x)
    sigma = torch.tensor([0.5, 2.0, 7.0])
    rows = layout.expand(sigma)
    torch.testing.assert_close(layout.per_graph(rows), sigma)
    net = GraphDenoiser(node_dim=2, edge_dim=1, hidden=16, num_layers=1, num_heads=2)
    loss = graph_edm_loss(graph_denoiser(net), x, layout, generator=torch.Generator().manual_seed(0))
    assert loss.shape == (3,) and torch.isfinite(loss).all()


@pytest.mark.parametrize("sampler", sorted(SAMPLERS))
def test_feature_sampling_on_given_connectivity_with_every_sampler(sampler):
    net = randomised(GraphDenoiser(node_dim=2, edge_dim=1, hidden=16, num_layers=2, num_heads=2)).float()
    den = graph_denoiser(net)
    d = to_data(planar_graph(40, rng=np.random.default_rng(0)))
    num_edges = d.edge_index.shape[1]
    node, edge = sample_graph_features(
        den, 40, num_edges, 2, 1, d.edge_index, sampler=SamplerConfig(sampler, 4),
        generator=torch.Generator().manual_seed(0),
    )  # fmt: skip
    m = num_edges // 2
    assert node.shape == (40, 2) and edge.shape == (num_edges, 1) and torch.isfinite(node).all()
    torch.testing.assert_close(edge[:m], edge[m:])  # one value per undirected edge, in the caller's order
    again = sample_graph_features(
        den, 40, num_edges, 2, 1, d.edge_index, sampler=SamplerConfig(sampler, 4),
        generator=torch.Generator().manual_seed(0),
    )  # fmt: skip
    torch.testing.assert_close(again[0], node)  # seeded


def test_undirected_edges_and_sample_errors():
    ei = torch.tensor([[0, 1, 2, 1], [1, 0, 1, 2]])
    edges, inverse = undirected_edges(ei, 3)
    assert edges.tolist() == [[0, 1], [1, 2]] and inverse.tolist() == [0, 0, 1, 1]
    with pytest.raises(ValueError, match="self-loops"):
        undirected_edges(torch.tensor([[0], [0]]), 3)
    den = graph_denoiser(GraphDenoiser(node_dim=1, edge_dim=1, hidden=8, num_layers=1, num_heads=2))
    with pytest.raises(ValueError, match=r"edge_index must have shape \(2, num_edges=5\), got \(2, 4\)"):
        sample_graph_features(den, 3, 5, 1, 1, ei)


def test_packed_net_averages_the_two_directions():
    class Asymmetric(torch.nn.Module):
        def forward(self, x, edge_index, edge_attr, c_noise, *, batch):
            return x, edge_index[0].double()[:, None]  # a different value per direction

    layout = GraphLayout.from_undirected(
        torch.tensor([[0], [1]]), torch.zeros(2, dtype=torch.long), node_dim=1, edge_dim=1
    )
    out = PackedGraphNet(Asymmetric())(torch.zeros(3, 1, dtype=torch.float64), torch.zeros(3), layout=layout)
    assert out[2, 0] == 0.5  # (0 + 1) / 2


def test_inference_in_edge_pieces_equals_one_piece(monkeypatch):
    """Without autograd, attention, edge updates and the edge head run over edges in pieces (bounded memory on
    huge graphs); the result equals the one-piece computation that training uses."""
    import polyscale.nn.graph as graph_module

    net = randomised(GraphDenoiser(node_dim=2, edge_dim=1, hidden=16, num_layers=2, num_heads=2)).double()
    d = to_data(planar_graph(50, rng=np.random.default_rng(0)))
    x = torch.randn(d.num_nodes, 2, dtype=torch.float64)
    attr = torch.randn(d.edge_index.shape[1], 1, dtype=torch.float64)
    c = torch.zeros(d.num_nodes, dtype=torch.float64)
    node, edge = net(x, d.edge_index, attr, c)  # autograd on: one piece
    monkeypatch.setattr(graph_module, "EDGE_CHUNK", 23)
    with torch.no_grad():
        node_p, edge_p = net(x, d.edge_index, attr, c)
    torch.testing.assert_close(node_p, node.detach())
    torch.testing.assert_close(edge_p, edge.detach())
