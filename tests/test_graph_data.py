"""Graph families and smooth fields on graphs: validity of each family, size-free scaling, exact unit variance,
the both-directions edge layout, error messages."""

from __future__ import annotations

import math

import networkx as nx
import numpy as np
import pytest
import torch

from polyscale.data.graphs import (
    GRAPH_FAMILIES,
    family_graph,
    field_covariance,
    field_graphs,
    geometric_graph,
    graph_fields,
    grid_graph,
    lobster_graph,
    planar_graph,
    smooth_field,
    to_data,
    to_networkx,
    torus_shape,
    tree_graph,
)


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


@pytest.mark.parametrize("n", [3, 20, 64, 500])
def test_planar_graphs_are_connected_planar_triangulations_at_unit_density(n):
    g = planar_graph(n, rng=rng(n))
    assert g.number_of_nodes() == n and nx.is_connected(g) and nx.check_planarity(g)[0]
    assert len(nx.get_node_attributes(g, "pos")) == n
    # a triangulation of n points with h on the hull has 3n - 3 - h edges: between 2n - 3 and 3n - 6
    assert 2 * n - 3 <= g.number_of_edges() <= 3 * n - 6
    pos = np.array([g.nodes[i]["pos"] for i in range(n)])
    assert pos.min() >= 0 and pos.max() <= math.sqrt(n)  # a square of area n: one node per unit area


def test_other_families():
    r = rng()
    g = grid_graph(3, 5)
    assert nx.is_isomorphic(g, nx.grid_2d_graph(3, 5)) and g.nodes[7]["pos"] == (1.0, 2.0)
    assert nx.is_tree(tree_graph(40, rng=r)) and tree_graph(40, rng=r).number_of_nodes() == 40
    lob = lobster_graph(50, rng=r)
    assert nx.is_tree(lob) and lob.number_of_nodes() == 50
    # a lobster: removing the leaves twice leaves a path
    core = lob.copy()
    for _ in range(2):
        core.remove_nodes_from(
            [v for v, d in dict(core.degree()).items() if d <= 1 and core.number_of_nodes() > 2]
        )
    assert max(dict(core.degree()).values(), default=0) <= 2
    geo = geometric_graph(4000, rng=r)
    pos = np.array([geo.nodes[i]["pos"] for i in range(4000)])
    side = math.sqrt(4000)
    interior = [i for i in range(4000) if (pos[i] > 3).all() and (pos[i] < side - 3).all()]
    assert abs(np.mean([geo.degree(i) for i in interior]) - 6.0) < 0.3  # the same mean degree at any size
    for family in GRAPH_FAMILIES:
        assert family_graph(family, 30, rng=r).number_of_nodes() in range(25, 36)


def test_smooth_field_has_unit_variance_at_every_node_and_is_smooth():
    g = grid_graph(12, 12)
    fields = np.stack([smooth_field(g, channels=4, steps=4, rng=rng(s)) for s in range(200)])  # (200, n, 4)
    var = fields.var(axis=(0, 2))  # per node, over 800 draws
    assert np.abs(var - 1).max() < 0.25 and abs(var.mean() - 1) < 0.05  # corners included: exact rescaling
    x = fields[..., 0]
    edges = np.array(list(g.edges))
    corr_neighbours = np.mean(x[:, edges[:, 0]] * x[:, edges[:, 1]])
    assert corr_neighbours > 0.6  # smooth: neighbours strongly correlated
    far = np.mean(x[:, 0] * x[:, 143])
    assert abs(far) < 0.2


def test_stationary_fields_have_bulk_statistics_at_the_border():
    g = grid_graph(6, 8)
    # channels are independent draws: 20,000 of them in one call
    x, e = graph_fields(g, node_dim=20_000, edge_dim=20_000, stationary=True, rng=rng(0))  # (48, D), (m, D)
    corner, centre = (0, 1), (3 * 8 + 3, 3 * 8 + 4)  # a corner node and its right neighbour; two central ones
    c_corner = np.mean(x[corner[0]] * x[corner[1]])
    c_centre = np.mean(x[centre[0]] * x[centre[1]])
    assert abs(c_corner - c_centre) < 0.04  # the same correlation at the border as inside (s.e. about 0.01)
    assert np.abs(x.var(1) - 1).max() < 0.05 and np.abs(e.var(1) - 1).max() < 0.05
    plain, _ = graph_fields(g, node_dim=20_000, edge_dim=1, rng=rng(1))
    assert (
        np.mean(plain[corner[0]] * plain[corner[1]]) - c_centre > 0.05
    )  # a bounded grid's corner is smoother
    with pytest.raises(ValueError, match="stationary fields need a grid graph"):
        graph_fields(planar_graph(30, rng=rng(0)), node_dim=1, edge_dim=1, stationary=True, rng=rng(0))


def test_field_covariance_matches_the_drawn_fields():
    for g, stationary in (
        (grid_graph(5, 6), True),
        (grid_graph(5, 6), False),
        (planar_graph(30, rng=rng(5)), False),
    ):
        cov = field_covariance(g, steps=3, stationary=stationary)
        x, _ = graph_fields(g, node_dim=40_000, edge_dim=1, steps=3, stationary=stationary, rng=rng(6))
        empirical = x.astype(np.float64) @ x.T.astype(np.float64) / x.shape[1]  # (n, n), s.e. about 0.005
        assert cov.shape == (g.number_of_nodes(),) * 2 and np.allclose(np.diag(cov), 1.0)
        assert np.abs(empirical - cov).max() < 0.03
    # the stationary field of a bounded grid is a crop of the bulk: the corner pair has the centre's correlation
    cov = field_covariance(grid_graph(5, 6), steps=3, stationary=True)
    assert abs(cov[0, 1] - cov[2 * 6 + 2, 2 * 6 + 3]) < 1e-12
    assert field_covariance(grid_graph(5, 6), steps=3)[0, 1] > cov[0, 1] + 0.05


def test_periodic_grids_are_tori_with_bulk_field_statistics():
    t = grid_graph(7, 9, periodic=True)
    assert nx.is_isomorphic(t, nx.grid_2d_graph(7, 9, periodic=True)) and t.graph["periodic"]
    assert set(dict(t.degree()).values()) == {4} and t.number_of_edges() == 2 * 63
    assert grid_graph(3, 5).graph["periodic"] is False
    with pytest.raises(ValueError, match="periodic grid needs rows >= 3 and cols >= 3, got 2 x 5"):
        grid_graph(2, 5, periodic=True)
    # fields on the torus: the neighbour correlation of the bulk of a large bounded grid's stationary field
    x, _ = graph_fields(t, node_dim=20_000, edge_dim=1, rng=rng(2))
    edges = np.array(list(t.edges))
    c_torus = np.mean(x[edges[:, 0]] * x[edges[:, 1]])
    big, _ = graph_fields(grid_graph(6, 8), node_dim=20_000, edge_dim=1, stationary=True, rng=rng(3))
    c_bulk = np.mean(big[3 * 8 + 3] * big[3 * 8 + 4])
    assert abs(c_torus - c_bulk) < 0.03 and np.abs(x.var(1) - 1).max() < 0.05
    small, _ = graph_fields(grid_graph(4, 4, periodic=True), node_dim=20_000, edge_dim=1, rng=rng(4))
    e4 = np.array(list(grid_graph(4, 4, periodic=True).edges))
    assert np.mean(small[e4[:, 0]] * small[e4[:, 1]]) - c_bulk > 0.04  # why tori keep sides >= 6: wrap-around
    shapes = [torus_shape(n, rng=rng(n)) for n in range(32, 65)]
    assert all(min(s) >= 6 for s in shapes)
    assert all(abs(r * c - max(n, 36)) <= 8 for (r, c), n in zip(shapes, range(32, 65), strict=True))
    with pytest.raises(ValueError, match="min_side must be >= 3"):
        torus_shape(40, rng=rng(), min_side=2)


def test_field_graphs_mix_tori_in_by_share():
    fg = field_graphs("grid", 200, min_nodes=32, max_nodes=64, periodic_share=0.5, seed=0)
    tori = [d for d in fg.graphs if bool((torch.bincount(d.edge_index[0]) == 4).all())]
    assert 70 < len(tori) < 130 and len(tori) < len(fg.graphs)
    with pytest.raises(ValueError, match="periodic_share needs the grid family, got family 'planar'"):
        field_graphs("planar", 4, min_nodes=20, max_nodes=30, periodic_share=0.5)
    with pytest.raises(ValueError, match=r"periodic_share must be in \[0, 1\], got 1.5"):
        field_graphs("grid", 4, min_nodes=20, max_nodes=30, periodic_share=1.5)


def test_field_graphs_layout_and_unit_variance_edges():
    fg = field_graphs("planar", 30, min_nodes=20, max_nodes=40, node_dim=2, edge_dim=3, seed=1)
    sizes = {d.num_nodes for d in fg.graphs}
    assert len(sizes) > 5 and min(sizes) >= 20 and max(sizes) <= 40  # mixed sizes
    edge_rows = []
    for d in fg.graphs:
        m = d.edge_index.shape[1] // 2
        assert torch.equal(d.edge_index[:, m:], d.edge_index[:, :m].flip(0))  # reverse directions follow
        assert torch.equal(d.edge_attr[:m], d.edge_attr[m:]) and d.x.shape == (d.num_nodes, 2)
        edge_rows.append(d.edge_attr[:m])
    assert abs(float(torch.cat(edge_rows).var()) - 1) < 0.15


def test_conversions_and_errors():
    g = planar_graph(10, rng=rng())
    d = to_data(g)
    back = to_networkx(d.edge_index, d.num_nodes)
    assert nx.utils.graphs_equal(nx.Graph(g.edges), nx.Graph(back.edges)) and d.pos.shape == (10, 2)
    with pytest.raises(ValueError, match="nodes must be the integers"):
        to_data(nx.relabel_nodes(g, {0: 100}))
    with pytest.raises(ValueError, match="planar graphs need an integer num_nodes >= 3, got 2"):
        planar_graph(2, rng=rng())
    with pytest.raises(ValueError, match="unknown graph family 'sbm'"):
        family_graph("sbm", 10, rng=rng())
