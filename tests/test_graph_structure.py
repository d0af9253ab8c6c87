"""Structure generation: k-NN, sector and hull candidates against brute force, triangles against networkx, translation
equivariance of the positions denoiser inside its box, chunked triangle updates, candidate labels, the
two-stage sampler, crossing candidates against brute force and the crossing update, and the `polyscale graph`
command line end to end."""

from __future__ import annotations

import itertools
import json
import math
from functools import partial

import networkx as nx
import numpy as np
import pytest
import torch

from polyscale.cli.main import main
from polyscale.data import graph_features
from polyscale.data.graph_datasets import CandidateDataset, PositionDataset, collate_graphs, graph_positions
from polyscale.data.graph_features import wall_features
from polyscale.data.graph_geometry import (
    candidate_conditioning,
    candidate_crossings,
    candidate_edges,
    candidate_geometry,
    candidate_triangles,
    crossing_geometry,
    knn_edges,
    periodic_offsets,
    spatial_order,
    triangle_geometry,
)
from polyscale.data.graphs import grid_graph, planar_graph
from polyscale.diffusion import structure
from polyscale.diffusion.graph import GraphLayout, GraphLoss
from polyscale.diffusion.sampling import SamplerConfig
from polyscale.diffusion.structure import sample_edges, sample_positions
from polyscale.pipelines import graph_config, graph_sample, graph_train
from polyscale.pipelines.graph_config import load_graph_experiment
from polyscale.pipelines.graph_nets import (
    edge_net,
    graph_denoiser,
    position_net,
    reads_crossings,
    wrap_positions,
)
from polyscale.pipelines.graph_sample import load_graph_model


def edge_geometry(k: int) -> dict:
    """sample_edges' geometry: k-NN candidates, their conditioning, the Z-order."""
    return {"candidates": partial(candidate_edges, k=k), "conditioning": candidate_conditioning,
            "order": spatial_order}  # fmt: skip


def randomised(module: torch.nn.Module) -> torch.nn.Module:
    torch.manual_seed(0)
    for p in module.parameters():
        if p.abs().sum() == 0:
            torch.nn.init.normal_(p, std=0.3)
    return module


def test_candidate_edges_equal_brute_force_union_of_knn_sectors_and_hull():
    from scipy.spatial import ConvexHull

    gen = torch.Generator().manual_seed(1)
    pos = torch.cat([torch.rand(60, 2, generator=gen) * 8, torch.rand(25, 2, generator=gen) * 5])
    batch = torch.cat([torch.zeros(60), torch.ones(25)]).long()
    k, sectors, search = 3, 6, 10
    got = {
        tuple(e)
        for e in candidate_edges(pos, batch, k=k, sectors=sectors, hull=True, search=search).T.tolist()
    }
    want = {tuple(e) for e in knn_edges(pos, batch, k).T.tolist()}
    extra = set()
    for g in range(2):
        ids = torch.nonzero(batch == g).flatten().tolist()
        p = pos[ids].double().numpy()
        for i in range(len(ids)):
            d = np.linalg.norm(p - p[i], axis=1)
            d[i] = np.inf
            near = np.argsort(d)[:search]  # the search window
            best = {}
            for j in near:  # nearest first: the first of each cone wins
                angle = np.arctan2(*(p[j] - p[i])[::-1]) + np.pi
                best.setdefault(min(int(angle / (2 * np.pi) * sectors), sectors - 1), j)
            extra |= {(min(ids[i], ids[j]), max(ids[i], ids[j])) for j in best.values()}
        ring = [ids[v] for v in ConvexHull(p).vertices]
        extra |= {(min(a, b), max(a, b)) for a, b in zip(ring, ring[1:] + ring[:1], strict=True)}
    assert extra - want  # the sectors and the hull add candidates beyond the k-NN graph
    assert got == want | extra
    edges = candidate_edges(pos, batch, k=k, sectors=sectors, hull=True, search=search)
    assert bool((edges[0] < edges[1]).all())
    assert bool((edges[0] * 85 + edges[1]).diff().gt(0).all())  # sorted, each pair once
    capped = candidate_edges(pos, batch, k=k, sectors=sectors, hull=True, search=search, max_length=2.0)
    length = (pos[edges[1]] - pos[edges[0]]).norm(dim=1)
    assert 0 < int((length > 2.0).sum()) and {tuple(e) for e in capped.T.tolist()} == {
        tuple(e) for e in edges[:, length <= 2.0].T.tolist()
    }  # exactly the candidates up to the cap
    with pytest.raises(ValueError, match="max_length must be > 0"):
        candidate_edges(pos, batch, k=k, max_length=0.0)
    with pytest.raises(ValueError, match="sectors must be >= 0"):
        candidate_edges(pos, batch, k=k, sectors=-1)
    with pytest.raises(ValueError, match="k must be >= 1"):
        candidate_edges(pos, batch, k=0)


def test_sector_and_hull_candidates_cover_more_planar_edges_with_fewer_candidates():
    rng = np.random.default_rng(0)
    graphs = [planar_graph(n, rng=rng) for n in (40, 50, 60, 64)]
    plain = CandidateDataset(graphs, k=10)
    rich = CandidateDataset(graphs, k=8, sectors=8, hull=True)
    assert np.mean(rich.coverage) > np.mean(plain.coverage)
    assert np.mean(rich.coverage) > 0.98
    assert sum(it["edges"].shape[1] for it in rich.items) < sum(it["edges"].shape[1] for it in plain.items)
    # still not a planar candidate set: crossings remain for the model to resolve
    item = rich.items[0]
    assert candidate_crossings(graph_positions(graphs[0]), item["edges"]).shape[1] > 0


def test_knn_edges_equal_brute_force():
    pos = torch.rand(50, 2, generator=torch.Generator().manual_seed(0)) * 7
    batch = torch.cat([torch.zeros(30), torch.ones(15), torch.full((5,), 2)]).long()
    got = {tuple(e) for e in knn_edges(pos, batch, 4).T.tolist()}
    want = set()
    for g in range(3):
        ids = torch.nonzero(batch == g).flatten()
        d = torch.cdist(pos[ids], pos[ids]).fill_diagonal_(float("inf"))
        nbr = d.topk(min(4, len(ids) - 1), largest=False).indices
        for i, row in enumerate(nbr.tolist()):
            for j in row:
                a, b = int(ids[i]), int(ids[j])
                want.add((min(a, b), max(a, b)))
    assert got == want
    assert len([e for e in got if e[0] >= 45]) == 10  # a 5-node graph with k >= n - 1 is complete


def test_candidate_geometry_per_direction_and_its_batching():
    pos = torch.randn(6, 2)
    edges = torch.tensor([[0, 1, 2], [3, 4, 5]])
    geo = candidate_geometry(pos, edges)  # (6, 3): forward rows, then reverse rows
    torch.testing.assert_close(geo[:3, :2], pos[[3, 4, 5]] - pos[[0, 1, 2]])
    torch.testing.assert_close(geo[3:, :2], -geo[:3, :2])
    torch.testing.assert_close(geo[3:, 2], geo[:3, 2])
    torch.testing.assert_close(candidate_geometry(pos, edges.flip(0))[:3], geo[3:])
    items = [
        {"x": torch.zeros(6, 0), "edge": torch.ones(3, 1), "edges": edges, "edge_cond": geo},
        {"x": torch.zeros(6, 0), "edge": torch.ones(1, 1), "edges": edges[:, :1], "edge_cond": geo[[0, 3]]},
    ]
    batch = collate_graphs(items)
    # layout order: all forward directions (3 + 1), then all reverse ones
    torch.testing.assert_close(batch["edge_cond"], torch.cat([geo[:3], geo[[0]], geo[3:], geo[[3]]]))


def test_position_denoiser_is_translation_equivariant_inside_its_box():
    """Far from the box's sides the wall features saturate, so a shift of the points shifts the output; near a
    side the same shift changes what the model sees."""
    den = randomised(wrap_positions(position_net(hidden=16, num_layers=2, num_heads=2), k=5)).double()
    n = 40
    layout = GraphLayout(torch.zeros(2, 0, dtype=torch.long), torch.zeros(n, dtype=torch.long), 2, 0)
    x = torch.rand(2 * n, 1, dtype=torch.float64) * 6 + 500
    sigma = torch.full((2 * n,), 0.7, dtype=torch.float64)
    shift = torch.tensor([13.0, -4.0], dtype=torch.float64).repeat(n)[:, None]
    box = torch.tensor([[1000.0, 1000.0]], dtype=torch.float64)
    out = den(x, sigma, layout=layout, box=box)
    torch.testing.assert_close(den(x + shift, sigma, layout=layout, box=box), out + shift)
    assert (out - x).abs().max() > 1e-3  # it does move the points
    near = x - 497  # points 3..9 units from two sides
    moved = den(near + shift / 4, sigma, layout=layout, box=box) - den(near, sigma, layout=layout, box=box)
    assert (moved - shift / 4).abs().max() > 1e-4
    with pytest.raises(ValueError, match=r"box must be \(num_graphs=1, 2\), got \(2,\)"):
        den(x, sigma, layout=layout, box=box[0])


def test_periodic_knn_edges_equal_brute_force_by_the_minimum_image():
    """On a torus the k nearest neighbours are those of the minimum-image distance, wherever the points sit
    (wrapped or not); a plane in the same batch is unaffected."""
    g = torch.Generator().manual_seed(1)
    period = torch.tensor([[7.0, 5.0], [0.0, 0.0]])
    pos = torch.cat([torch.rand(30, 2, generator=g) * period[0] + torch.tensor([-14.0, 25.0]),
                     torch.rand(20, 2, generator=g) * 4])  # fmt: skip
    batch = torch.cat([torch.zeros(30), torch.ones(20)]).long()
    got = {tuple(e) for e in knn_edges(pos, batch, 4, period=period).T.tolist()}
    d = periodic_offsets(pos[:30, None] - pos[None, :30], period[0].expand(30, 30, 2)).norm(dim=2)
    nbr = d.fill_diagonal_(float("inf")).topk(4, largest=False).indices
    want = {(min(i, j), max(i, j)) for i, row in enumerate(nbr.tolist()) for j in row}
    want |= {tuple(e) for e in knn_edges(pos, batch, 4).T.tolist() if e[0] >= 30}
    assert got == want
    assert any(abs(pos[i, 0] - pos[j, 0]) > 3.5 for i, j in got if j < 30)  # some neighbours across the seam
    torch.testing.assert_close(
        periodic_offsets(torch.tensor([[6.5, -2.6]]), period[:1]), torch.tensor([[-0.5, 2.4]])
    )
    with pytest.raises(ValueError, match="each row of period"):
        knn_edges(pos, batch, 4, period=torch.tensor([[7.0, 0.0], [0.0, 0.0]]))


def test_position_denoiser_on_a_torus_has_no_seam():
    """A torus grid's positions come with their period as box; shifting every node by any vector of the lattice
    and wrapping some of them round the torus leaves what each node sees unchanged, so the output shifts
    with the input, and a torus reads no sides (a bounded grid of the same nodes does)."""
    den = randomised(
        wrap_positions(position_net(hidden=16, num_layers=2, num_heads=2, period=1.0), k=8, period=1.0)
    )
    den = den.double()
    torus = PositionDataset([grid_graph(6, 7, periodic=True)]).items[0]
    assert torus["box"].tolist() == [6.0, 7.0] and bool(torus["periodic"])
    n = 42
    layout = GraphLayout(torch.zeros(2, 0, dtype=torch.long), torch.zeros(n, dtype=torch.long), 2, 0)
    pos = torus["x"].double() + 0.2 * torch.randn(n, 2, generator=torch.Generator().manual_seed(0)).double()
    box, periodic, sigma = (
        torus["box"][None].double(),
        torch.tensor([True]),
        torch.full((2 * n,), 0.4).double(),
    )
    out = den(pos.reshape(-1, 1), sigma, layout=layout, box=box, periodic=periodic).view(n, 2)
    shift = torch.tensor([2.0, 3.0], dtype=torch.float64)
    moved = pos + shift
    wrap = moved[:, 0] >= 6  # these nodes go round the torus once
    moved[wrap, 0] -= 6
    out2 = den(moved.reshape(-1, 1), sigma, layout=layout, box=box, periodic=periodic).view(n, 2)
    torch.testing.assert_close(out2 - moved, out - pos)
    assert (out - pos).abs().max() > 1e-3
    bounded = den(pos.reshape(-1, 1), sigma, layout=layout, box=box, periodic=torch.tensor([False])).view(
        n, 2
    )
    assert (bounded - out).abs().max() > 1e-4
    with pytest.raises(ValueError, match=r"periodic must be \(num_graphs=1,\)"):
        den(pos.reshape(-1, 1), sigma, layout=layout, box=box, periodic=torch.tensor([True, False]))


def test_positions_stage_trains_on_the_tori_periodic_share_asks_for():
    cfg = load_graph_experiment("graph_grid", ["data.periodic_share=0.5", "model.position_density_scales=[]"])
    graphs = graph_train.training_graphs(cfg)
    mixed = graph_train.position_graphs(cfg, graphs)
    tori = [g for g in mixed if g.graph["periodic"]]
    assert 0.3 < len(tori) / len(mixed) < 0.7 and not any(g.graph["periodic"] for g in graphs)
    assert all(min(g.graph["grid_shape"]) >= 6 for g in tori)
    batch = collate_graphs([PositionDataset(mixed[:4]).items[i] for i in range(4)])
    assert batch["periodic"].tolist() == [g.graph["periodic"] for g in mixed[:4]]


def test_wall_features_saturate_inside_and_locate_the_border():
    pos = torch.tensor([[0.0, 5.0], [50.0, 50.0], [100.0, 2.0]])
    f = wall_features(pos, torch.tensor([[100.0, 100.0]]).expand(3, 2), torch.ones(3))
    torch.testing.assert_close(f[1], torch.ones(4))
    assert f[0, 0] == 0 and f[2, 1] == 0 and 0 < f[0, 2] < 1 and 0 < f[2, 2] < 1


def test_candidate_triangles_match_networkx_and_their_geometry():
    torch.manual_seed(0)
    n = 120
    pos = torch.rand(n, 2) * 11
    cand = knn_edges(pos, torch.zeros(n, dtype=torch.long), 7)
    tri = candidate_triangles(cand, n, chunk=17)  # several chunks
    layout_edges = torch.cat([cand, cand.flip(0)], dim=1)
    g = nx.Graph(cand.T.tolist())
    expected = set()
    for clique in (c for c in nx.enumerate_all_cliques(g) if len(c) == 3):
        for i, j in itertools.permutations(clique, 2):
            expected.add((i, j, next(x for x in clique if x not in (i, j))))
    got = []
    for a, b, c in tri.T.tolist():
        (i, j), (i2, k), (j2, k2) = (layout_edges[:, e].tolist() for e in (a, b, c))
        assert (i2, j2, k2) == (i, j, k)
        got.append((i, j, k))
    assert len(got) == len(set(got)) and set(got) == expected and len(expected) > 100
    f = triangle_geometry(pos, layout_edges, tri)
    i, j, k = (torch.tensor(v) for v in zip(*got, strict=True))
    angle = torch.atan2(f[:, 1], f[:, 0])  # the angle i k j
    u, w = pos[i] - pos[k], pos[j] - pos[k]
    torch.testing.assert_close(
        angle, torch.acos((u * w).sum(1) / (u.norm(dim=1) * w.norm(dim=1))), atol=1e-4, rtol=0
    )
    cross = (pos[j] - pos[i])[:, 0] * (pos[k] - pos[i])[:, 1] - (pos[j] - pos[i])[:, 1] * (pos[k] - pos[i])[
        :, 0
    ]
    assert torch.equal(f[:, 2], torch.sign(cross))
    with pytest.raises(ValueError, match="edges must be sorted"):
        candidate_triangles(cand.flip(1), n)


def test_triangle_update_chunked_equals_whole_and_collate_renumbers():
    torch.manual_seed(0)
    graphs = [planar_graph(n, rng=np.random.default_rng(n)) for n in (30, 45)]
    ds = CandidateDataset(graphs, k=8)
    batch = collate_graphs([ds[0], ds[1]])
    layout = batch["layout"]
    assert all(item["triangles"].shape[1] > 0 for item in ds.items)
    # every batched triangle still names edges i -> j, i -> k, j -> k
    (s_a, d_a), (s_b, k_b), (s_c, k_c) = (layout.edge_index[:, r] for r in batch["triangles"])
    assert torch.equal(s_a, s_b) and torch.equal(d_a, s_c) and torch.equal(k_b, k_c)
    net = randomised(edge_net(hidden=16, num_layers=2, num_heads=2)).double()
    m = layout.num_edges
    e = torch.randn(m, 1, dtype=torch.float64)
    args = (torch.zeros(layout.num_nodes, 0, dtype=torch.float64), layout.edge_index, torch.cat([e, e]),
            torch.zeros(layout.num_nodes, dtype=torch.float64))  # fmt: skip
    cond = dict(batch=layout.batch, edge_cond=batch["edge_cond"].double(), triangles=batch["triangles"],
                triangle_cond=batch["triangle_cond"].double())  # fmt: skip
    whole = net(*args, **cond)[1].detach()  # autograd path: all triangles at once, out of place
    with torch.no_grad():  # inference path: triangles and the pooled output in pieces
        for layer in net.layers:
            layer.triangle.chunk = 37
        chunked = net(*args, **cond)[1]
    torch.testing.assert_close(chunked, whole)
    cond.pop("triangles")
    with pytest.raises(ValueError, match="this model reads triangles"):
        net(*args, **cond)


def segments_cross(p: np.ndarray, e: tuple[int, int], f: tuple[int, int]) -> bool:
    """Brute force: the segments share exactly one interior point (strict orientation test)."""

    def turn(o, x, y) -> float:
        return float(np.sign((x[0] - o[0]) * (y[1] - o[1]) - (x[1] - o[1]) * (y[0] - o[0])))

    (a, b), (c, d) = (p[list(e)], p[list(f)])
    return turn(a, b, c) * turn(a, b, d) < 0 and turn(c, d, a) * turn(c, d, b) < 0


def test_candidate_crossings_match_brute_force():
    # the unit square with both diagonals: only the diagonals cross; sides meet at corners only
    square = torch.tensor([[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]])
    edges = torch.tensor([[0, 0, 0, 1, 1, 2], [1, 2, 3, 2, 3, 3]])
    assert candidate_crossings(square, edges).T.tolist() == [[1, 4]]  # (0, 2) crosses (1, 3)
    touching = torch.tensor([[0.0, 0.0], [2.0, 0.0], [1.0, 0.0], [1.0, 1.0]])  # T-junction: not a crossing
    assert candidate_crossings(touching, torch.tensor([[0, 2], [1, 3]])).shape == (2, 0)
    for n, k in ((64, 10), (150, 6)):
        pos = torch.rand(n, 2, generator=torch.Generator().manual_seed(n)) * n**0.5
        cand = knn_edges(pos, torch.zeros(n, dtype=torch.long), k)
        got = candidate_crossings(pos, cand)
        pairs = cand.T.tolist()
        p = pos.double().numpy()
        want = [
            [e, f]
            for e, f in itertools.combinations(range(len(pairs)), 2)
            if segments_cross(p, pairs[e], pairs[f])
        ]
        assert got.T.tolist() == want and len(want) > 50


def test_crossing_geometry_names_the_crossing_point_in_every_direction():
    pos = torch.rand(80, 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64) * 9
    cand = knn_edges(pos, torch.zeros(80, dtype=torch.long), 8)
    m = cand.shape[1]
    tuples, f = crossing_geometry(pos, cand, candidate_crossings(pos, cand))
    assert tuples.shape[0] == 2 and f.shape == (tuples.shape[1], 4) and tuples.shape[1] % 4 == 0
    layout = torch.cat([cand, cand.flip(0)], dim=1)  # directed edges in the layout order
    src, dst = pos[layout[0]], pos[layout[1]]
    a, b = tuples
    point_a = src[a] + f[:, :1] * (dst[a] - src[a])  # where the receiver meets the partner
    point_b = src[b] + f[:, 1:2] * (dst[b] - src[b])
    torch.testing.assert_close(point_a, point_b)
    assert bool(((f[:, :2] > 0) & (f[:, :2] < 1)).all()) and bool(((f[:, 2] > 0) & (f[:, 2] <= 1)).all())
    length = (dst - src).norm(dim=1)
    torch.testing.assert_close(f[:, 3], (length[b] / length[a]).log())
    assert bool(((a < m) == (b < m)).all())  # a forward receiver reads the forward partner


def test_crossing_update_reads_crossings_and_collate_renumbers_them():
    graphs = [planar_graph(n, rng=np.random.default_rng(n)) for n in (30, 45)]
    ds = CandidateDataset(graphs, k=8, crossings=True)
    assert all(item["crossings"].shape[1] > 0 for item in ds.items)
    batch = collate_graphs([ds[0], ds[1]])
    layout = batch["layout"]
    pos = (
        torch.cat([torch.tensor([g.nodes[i]["pos"] for i in range(len(g))]) for g in graphs]).double().numpy()
    )
    for a, b in batch["crossings"].T.tolist()[::7]:  # batched tuples still name two crossing segments
        e, f = (tuple(layout.edge_index[:, x].tolist()) for x in (a, b))
        assert segments_cross(pos, e, f)
    net = randomised(edge_net(crossings=True, hidden=16, num_layers=2, num_heads=2)).double()
    assert reads_crossings(graph_denoiser(net)) and not reads_crossings(graph_denoiser(edge_net(hidden=16)))
    e = torch.randn(layout.num_edges, 1, dtype=torch.float64)
    args = (torch.zeros(layout.num_nodes, 0, dtype=torch.float64), layout.edge_index, torch.cat([e, e]),
            torch.zeros(layout.num_nodes, dtype=torch.float64))  # fmt: skip
    cond = dict(batch=layout.batch, edge_cond=batch["edge_cond"].double(), triangles=batch["triangles"],
                triangle_cond=batch["triangle_cond"].double(), crossings=batch["crossings"],
                crossing_cond=batch["crossing_cond"].double())  # fmt: skip
    with torch.no_grad():
        out = net(*args, **cond)[1]
        none = net(
            *args,
            **{**cond, "crossings": batch["crossings"][:, :0], "crossing_cond": cond["crossing_cond"][:0]},
        )[1]
    assert not torch.allclose(out, none)  # the crossings reach the output
    cond.pop("crossings")
    with pytest.raises(ValueError, match=r"this model reads crossings \(crossing_cond_dim=4\)"):
        net(*args, **cond)


def test_candidates_label_the_graph_edges():
    graphs = [planar_graph(60, rng=np.random.default_rng(i)) for i in range(5)]
    ds = CandidateDataset(graphs, k=10)
    for g, item in zip(graphs, ds.items, strict=True):
        edges = {(min(u, v), max(u, v)) for u, v in g.edges}
        for (u, v), label in zip(item["edges"].T.tolist(), item["edge"][:, 0].tolist(), strict=True):
            assert (label > 0) == ((u, v) in edges)
        assert item["edges"].shape[1] > g.number_of_edges()  # more candidates than edges: not automatic
    assert min(ds.coverage) > 0.85


def test_two_stage_sampling_shapes():
    pos_den = randomised(wrap_positions(position_net(hidden=16, num_layers=1, num_heads=2), k=4))
    pos = sample_positions(
        pos_den, 30, SamplerConfig(steps=3, sigma_max=3.0), generator=torch.Generator().manual_seed(0)
    )
    assert pos.shape == (30, 2) and torch.isfinite(pos).all()
    wide = sample_positions(
        pos_den,
        30,
        SamplerConfig(steps=3, sigma_max=3.0),
        box=(20.0, 1.5),
        generator=torch.Generator().manual_seed(0),
    )
    assert wide[:, 0].std() > 2 * wide[:, 1].std()  # starts in (and is denoised in) the given box
    edge_den = graph_denoiser(randomised(edge_net(hidden=16, num_layers=1, num_heads=2)))
    g = sample_edges(
        edge_den, pos, SamplerConfig(steps=3), **edge_geometry(6), generator=torch.Generator().manual_seed(0)
    )
    cands = {tuple(e) for e in knn_edges(pos, torch.zeros(30, dtype=torch.long), 6).T.tolist()}
    assert g.number_of_nodes() == 30 and all((min(u, v), max(u, v)) in cands for u, v in g.edges)
    with pytest.raises(ValueError, match="num_nodes must be >= 2, got 1"):
        sample_positions(pos_den, 1, SamplerConfig())


def test_sample_edges_clamps_the_edge_estimates_to_the_labels(monkeypatch):
    """Two generated nodes on one lattice site (0.002 apart) give triangle side ratios of 10^3 and a raw edge
    estimate of 10^9 (a 10^5-node grid lost 73 % of its edges that way, spreading from one spot); the edge
    stage samples with the estimate clamped to the +-1 labels."""
    pos = torch.rand(30, 2, generator=torch.Generator().manual_seed(3)) * 5
    pos[1] = pos[0] + 0.002
    net = randomised(edge_net(hidden=16, num_layers=1, num_heads=2))
    net.edge_out.register_forward_hook(lambda module, inputs, out: out * 1e9)  # an exploding estimate
    seen = []
    real = structure.sample_packed

    def spy(denoiser, layout, x, sampler, **kwargs):
        cond = {k: v for k, v in kwargs.items() if k in ("edge_cond", "triangles", "triangle_cond")}
        x_in = torch.full_like(x, 3.0)
        seen.append(
            (denoiser(x_in, 2.0, layout=layout, **cond), denoiser.denoiser(x_in, 2.0, layout=layout, **cond))
        )
        return real(denoiser, layout, x, sampler, **kwargs)

    monkeypatch.setattr(structure, "sample_packed", spy)
    g = sample_edges(
        graph_denoiser(net),
        pos,
        SamplerConfig(steps=3),
        **edge_geometry(6),
        generator=torch.Generator().manual_seed(0),
    )
    clamped, raw = seen[0]
    assert raw.abs().max() > 1e6 and clamped.abs().max() <= 1.0 and g.number_of_nodes() == 30


def test_spatial_order_is_a_permutation_that_keeps_neighbours_close():
    pos = torch.rand(10_000, 2, generator=torch.Generator().manual_seed(0))
    order = spatial_order(pos)
    assert torch.equal(order.sort().values, torch.arange(10_000))
    step = (pos[order][1:] - pos[order][:-1]).norm(dim=1).mean()
    assert step < 0.05 < (pos[1:] - pos[:-1]).norm(dim=1).mean()  # random order: about 0.52
    assert torch.equal(spatial_order(torch.zeros(1, 2)), torch.arange(1))
    with pytest.raises(ValueError, match=r"pos must be \(n, 2\)"):
        spatial_order(torch.zeros(5, 3))


def test_sample_edges_does_not_depend_on_the_callers_node_labels():
    pos = torch.rand(40, 2, generator=torch.Generator().manual_seed(1)) * 6
    net = randomised(edge_net(hidden=16, num_layers=1, num_heads=2))
    # centred raw outputs (a label-free shift): both signs survive the clamp to [-1, 1], so edges are kept
    net.edge_out.register_forward_hook(lambda module, inputs, out: out - out.mean())
    edge_den = graph_denoiser(net)
    g = sample_edges(
        edge_den, pos, SamplerConfig(steps=3), **edge_geometry(6), generator=torch.Generator().manual_seed(0)
    )
    perm = torch.randperm(40, generator=torch.Generator().manual_seed(2))
    h = sample_edges(
        edge_den,
        pos[perm],
        SamplerConfig(steps=3),
        **edge_geometry(6),
        generator=torch.Generator().manual_seed(0),
    )
    relabelled = {tuple(sorted((int(perm[u]), int(perm[v])))) for u, v in h.edges}
    assert g.number_of_edges() > 0 and relabelled == {tuple(sorted(e)) for e in g.edges}
    assert all(h.nodes[i]["pos"] == tuple(map(float, pos[perm[i]])) for i in range(40))


TINY = ["--set", "optimization.max_steps=2", "--set", "optimization.batch_size=4", "--set", "data.num_graphs=8",
        "--set", "model.hidden=16", "--set", "model.num_layers=1", "--set", "optimization.checkpoint_every=2",
        "--set", "optimization.log_every=1", "--set", "optimization.warmup_steps=1",
        "--set", "diffusion.positions.max_steps=2"]  # fmt: skip


def test_graph_cli_train_sample_evaluate(tmp_path, capsys, monkeypatch):
    run = tmp_path / "planar"
    assert main(["graph", "train", "--preset", "graph_planar", "--output-dir", str(run), *TINY]) == 0
    assert (run / "positions" / "model" / "config.json").is_file() and (run / "edges" / "model").is_dir()
    data = load_graph_model(run).config.data
    assert (data.candidates_k, data.candidates_sectors, data.candidates_hull) == (8, 8, True)  # the preset's
    assert data.candidates_max_length == 8.0
    # an edge model retrained with another candidate rule samples with its own rule
    meta_file = run / "edges" / "model" / "config.json"
    meta = json.loads(meta_file.read_text())
    meta["metadata"]["graph_experiment"]["data"].update(candidates_k=5, candidates_sectors=0)
    meta_file.write_text(json.dumps(meta))
    data = load_graph_model(run).config.data
    assert (data.candidates_k, data.candidates_sectors, data.candidates_hull) == (5, 0, True)
    # the positions stage takes its own default sampler; an explicit one serves both stages
    model = load_graph_model(run)
    model = graph_sample.with_position_sampler(model, "euler", 3)
    seen = []
    real = graph_sample.sample_positions

    def spy(*args, **kwargs):
        seen.append((args[2].name, args[2].steps, args[2].options, kwargs["start_margin"]))
        return real(*args, **kwargs)

    monkeypatch.setattr(graph_sample, "sample_positions", spy)
    graph_sample.generate_graphs(model, 40, 1, steps=None)
    graph_sample.generate_graphs(model, 40, 1, sampler="ddim", steps=2)
    assert seen == [("euler", 3, {}, 0.0), ("ddim", 2, {}, 0.0)]
    # sampling overrides: churn reaches a Heun positions sampler only, the margin any sampler
    churned = graph_sample.with_sampling_overrides(
        model,
        [
            "positions.sampler.name=heun",
            "positions.sampler.options={s_churn: 10, s_tmin: 0.05, s_tmax: 1.0}",
            "diffusion.positions.start_margin=0.5",
        ],
    )
    assert model.config.diffusion.positions.sampler.options == {}  # the original is left alone
    graph_sample.generate_graphs(churned, 40, 1, sampler="heun", steps=2)
    graph_sample.generate_graphs(churned, 40, 1, sampler="euler", steps=2)
    assert seen[2:] == [
        ("heun", 2, {"s_churn": 10.0, "s_tmin": 0.05, "s_tmax": 1.0}, 0.5),
        ("euler", 2, {}, 0.5),
    ]
    with pytest.raises(ValueError, match=r"diffusion.\* fields only, got \['model.hidden=8'\]"):
        graph_sample.with_sampling_overrides(model, ["model.hidden=8"])
    with pytest.raises(ValueError, match="unknown option 'eta' for sampler 'euler'"):
        graph_sample.with_sampling_overrides(model, ["positions.sampler.options.eta=0.5"])
    out = tmp_path / "g.png"
    argv = ["graph", "sample", "--checkpoint", str(run), "--num-nodes", "150", "--num-graphs", "2"]
    assert main([*argv, "--timesteps", "2", "--output-file", str(out)]) == 0
    saved = np.load(out.with_suffix(".npz"))
    assert int(saved["num_nodes_0"]) == 150 and saved["pos_1"].shape == (150, 2)
    capsys.readouterr()
    argv = ["graph", "evaluate", "--checkpoint", str(run), "--sizes", "40", "90", "--num-graphs", "2"]
    assert main([*argv, "--timesteps", "2", "--set", "diffusion.positions.start_margin=0.5"]) == 0
    assert seen[-1][3] == 0.5
    table = capsys.readouterr().out
    assert "degree MMD2" in table and "orbit floor" in table and "valid" in table
    features = tmp_path / "features"
    assert main(["graph", "train", "--preset", "graph_features", "--output-dir", str(features), *TINY]) == 0
    assert main(["graph", "sample", "--checkpoint", str(features), "--num-nodes", "80", "--timesteps", "2",
                 "--output-file", str(tmp_path / "f.png")]) == 0  # fmt: skip
    assert np.load(tmp_path / "f.npz")["x_0"].shape == (80, 2)
    capsys.readouterr()
    argv = ["graph", "evaluate", "--checkpoint", str(features), "--sizes", "30", "--num-graphs", "2"]
    assert main([*argv, "--timesteps", "2"]) == 0
    table = capsys.readouterr().out
    assert "neighbour pair SW (model)" in table and "neighbour corr (floor)" in table


def test_graph_config_validation_and_cli_errors(capsys):
    with pytest.raises(ValueError, match="unknown graph preset 'sbm'"):
        load_graph_experiment("sbm")
    with pytest.raises(ValueError, match="data.min_nodes <= data.max_nodes"):
        load_graph_experiment("graph_planar", ["data.min_nodes=70"])
    with pytest.raises(ValueError, match="family"):
        load_graph_experiment("graph_planar", ["data.family=sbm"])
    with pytest.raises(ValueError, match="unknown sampler 'langevin'"):
        load_graph_experiment("graph_grid", ["diffusion.positions.sampler.name=langevin"])
    with pytest.raises(ValueError, match="unknown option 's_churn' for sampler 'pc'"):
        load_graph_experiment("graph_grid", ["diffusion.positions.sampler.name=pc"])
    grid = load_graph_experiment("graph_planar", ["diffusion.positions.sampler={name: pc, steps: 64}"])
    diff = grid.diffusion
    assert (diff.positions.sampler.name, diff.positions.sampler.steps, diff.edges.sampler.name) == (
        "pc",
        64,
        "heun",
    )
    with pytest.raises(ValueError, match="diffusion.positions.start must be one of"):
        load_graph_experiment("graph_grid", ["diffusion.positions.start=lattice"])
    with pytest.raises(ValueError, match="data.periodic_share must be in .* family 'planar'"):
        load_graph_experiment("graph_features", ["data.periodic_share=0.5"])
    with pytest.raises(ValueError, match=r"data.periodic_share must be in \[0, 1\].*got -0.1"):
        load_graph_experiment("graph_grid_features", ["data.periodic_share=-0.1"])
    with pytest.raises(ValueError, match="model.position_period must be None or > 0"):
        load_graph_experiment("graph_grid", ["model.position_period=-1"])
    with pytest.raises(ValueError, match="stages must be a non-empty subset"):
        graph_train.train_graph_experiment(load_graph_experiment("graph_grid"), "unused", stages=["nodes"])
    assert main(["graph", "sample", "--checkpoint", "/nonexistent"]) == 2
    assert "holds no graph model" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["graph", "sample", "--checkpoint", "x", "--num-nodes", "1"])
    assert "expected an integer >= 2, got 1" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["graph", "sample", "--checkpoint", "x", "--sampler", "foo"])
    assert "invalid choice" in capsys.readouterr().err


def test_stratified_start_puts_one_point_in_each_cell_and_matches_area_everywhere():
    """One uniform point per cell of an equal-area partition: exactly num_nodes points inside the box, and every
    axis-aligned region holds its area's worth of points to within its perimeter, where i.i.d. points miss by
    about sqrt(area)."""
    gen = torch.Generator().manual_seed(0)
    extent = torch.tensor([60.0, 40.0])
    n = 2400
    strat = structure.start_points(n, extent, start="stratified", generator=gen)
    iid = structure.start_points(n, extent, start="uniform", generator=gen)
    assert strat.shape == (n, 2) and bool((strat >= 0).all()) and bool((strat <= extent).all())
    half = (strat[:, 0] < 30).sum().item(), (iid[:, 0] < 30).sum().item()
    assert abs(half[0] - 1200) <= 40  # the cut runs through at most one cell per strip (40 strips)
    # 64 random rectangles of area about 100: stratified counts stay within the perimeter of the rectangle
    rng = np.random.default_rng(0)
    err_s, err_u = [], []
    for _ in range(64):
        lo = torch.tensor([rng.uniform(0, 50), rng.uniform(0, 30)])
        for points, err in ((strat, err_s), (iid, err_u)):
            inside = ((points >= lo) & (points < lo + 10)).all(dim=1).sum().item()  # a 10 x 10 square
            err.append(abs(inside - 100))
    assert max(err_s) <= 40 and np.mean(err_s) < 0.5 * np.mean(err_u)
    # a prime count still fills the box: strips of unequal cell counts
    odd = structure.start_points(47, torch.tensor([7.0, 7.0]), start="stratified", generator=gen)
    assert odd.shape == (47, 2) and bool((odd <= 7).all())
    with pytest.raises(ValueError, match="start must be one of"):
        structure.start_points(4, extent, start="lattice")


class _Still(torch.nn.Module):
    """D(x) = x: a sampler leaves the start where it is."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x, sigma, **cond):
        return x


def test_start_margin_grows_the_start_box_to_the_lattice_cells():
    """A 12 x 12 grid's sites fill [0, 11]^2; with a margin of 0.5 the stratified cells are exactly the sites'
    unit cells (rounding the start gives every site once), without it the start is squeezed inside."""
    box = (11.0, 11.0)
    euler = SamplerConfig("euler", 1, sigma_min=1e-7, sigma_max=1e-6)
    common = dict(box=box, start="stratified")
    grown = structure.sample_positions(
        _Still(), 144, euler, start_margin=0.5, generator=torch.Generator().manual_seed(0), **common
    )
    sites = grown.round().long()
    assert bool((sites >= 0).all() and (sites <= 11).all())
    assert len(torch.unique(sites[:, 0] * 12 + sites[:, 1])) == 144
    squeezed = structure.sample_positions(
        _Still(), 144, euler, generator=torch.Generator().manual_seed(0), **common
    )
    assert bool((squeezed >= 0).all() and (squeezed <= 11).all())
    assert len(torch.unique(squeezed.round().long()[:, 0] * 12 + squeezed.round().long()[:, 1])) < 144
    with pytest.raises(ValueError, match="start_margin must be >= 0"):
        structure.sample_positions(_Still(), 144, euler, start_margin=-1.0, **common)


def test_periodic_features_give_the_lattice_phase_and_the_denoiser_checks_its_width():
    """The phase features repeat with the period, tell sites from mid-cell points, and the positions denoiser
    with a period is equivariant to whole-period shifts deep inside its box but not to half-period ones."""
    pos = torch.tensor([[0.0, 0.0], [3.0, -2.0], [0.5, 0.25]])
    f = graph_features.periodic_features(pos, 1.0)
    torch.testing.assert_close(f[0], f[1], atol=1e-5, rtol=0)
    torch.testing.assert_close(f[2], torch.tensor([-1.0, 0.0, 0.0, 1.0]), atol=1e-6, rtol=0)
    den = randomised(
        wrap_positions(position_net(period=1.0, hidden=16, num_layers=2, num_heads=2), k=5, period=1.0)
    ).double()
    n = 40
    layout = GraphLayout(torch.zeros(2, 0, dtype=torch.long), torch.zeros(n, dtype=torch.long), 2, 0)
    x = torch.rand(2 * n, 1, dtype=torch.float64) * 6 + 500
    sigma = torch.full((2 * n,), 0.3, dtype=torch.float64)
    box = torch.tensor([[1000.0, 1000.0]], dtype=torch.float64)
    out = den(x, sigma, layout=layout, box=box)
    whole = torch.tensor([7.0, -3.0], dtype=torch.float64).repeat(n)[:, None]
    torch.testing.assert_close(den(x + whole, sigma, layout=layout, box=box), out + whole)
    half = torch.full_like(x, 0.5)
    assert (den(x + half, sigma, layout=layout, box=box) - out - half).abs().max() > 1e-4
    with pytest.raises(
        ValueError, match=r"period=1.0, density_scales=\[\]\) needs GraphDenoiser.*node_cond_dim=8"
    ):
        wrap_positions(position_net(hidden=16, num_layers=1, num_heads=2), period=1.0)
    with pytest.raises(ValueError, match="period must be None or > 0"):
        wrap_positions(position_net(hidden=16, num_layers=1, num_heads=2), period=0.0)


def test_grid_stages_train_apart_and_sample_with_the_phase_and_the_stratified_start(tmp_path, monkeypatch):
    """--stage trains one stage of a run at a time (the other stays untrained until its own call); the grid
    preset's phase period, density windows and stratified start reach the loaded model and the positions sampler."""
    run = tmp_path / "grid"
    base = ["graph", "train", "--preset", "graph_grid", "--output-dir", str(run), *TINY]
    assert main([*base, "--stage", "edges"]) == 0
    assert (run / "edges" / "model").is_dir() and not (run / "positions").exists()
    assert main([*base, "--stage", "positions"]) == 0
    model = load_graph_model(run)
    assert model.positions.features.period == 1.0 and model.config.diffusion.positions.start == "stratified"
    assert (
        model.positions.features.density_scales == (2.0, 4.0)
        and model.positions.features.density_margin == 0.5
    )
    seen = []
    real = graph_sample.sample_positions

    def spy(*args, **kwargs):
        seen.append(kwargs["start"])
        return real(*args, **kwargs)

    monkeypatch.setattr(graph_sample, "sample_positions", spy)
    (g,) = graph_sample.generate_graphs(model, 40, 1, steps=2)
    assert seen == ["stratified"] and g.number_of_nodes() in range(36, 45)
    # --position-sampler / --position-timesteps change the positions stage only
    calls = []
    monkeypatch.setattr(
        graph_sample,
        "sample_positions",
        lambda *a, **k: calls.append(("pos", a[2].name, a[2].steps)) or real(*a, **k),
    )
    real_edges = graph_sample.sample_edges
    monkeypatch.setattr(
        graph_sample,
        "sample_edges",
        lambda *a, **k: calls.append(("edges", a[2].name, a[2].steps)) or real_edges(*a, **k),
    )
    argv = ["graph", "sample", "--checkpoint", str(run), "--num-nodes", "30", "--num-graphs", "1"]
    argv += [
        "--position-sampler",
        "euler",
        "--position-timesteps",
        "3",
        "--output-file",
        str(tmp_path / "g.png"),
    ]
    assert main(argv) == 0
    assert calls == [("pos", "euler", 3), ("edges", "heun", 32)]


def test_node_jumps_move_the_chosen_share_of_nodes_by_at_most_max_jump_and_keep_the_target():
    n = 4000
    layout = GraphLayout(torch.zeros(2, 0, dtype=torch.long), torch.zeros(n, dtype=torch.long), 2, 0)
    x = torch.rand(2 * n, 1)
    out = structure.NodeJumps(rate=0.1, max_jump=2.0)(
        x, layout=layout, generator=torch.Generator().manual_seed(0)
    )
    step = (layout.unpack(out)[0] - layout.unpack(x)[0]).norm(dim=1)  # (N,)
    moved = step > 0
    assert 0.08 < moved.float().mean() < 0.12 and float(step.max()) <= 2.0 + 1e-5
    assert 0.8 < float(step[moved].mean()) < 1.2  # lengths uniform in [0, 2]
    # in the loss the jumped input meets the clean target: an identity denoiser pays exactly for the jumps
    seen = {}

    def identity(x_in, sigma, *, layout):
        seen["x"] = x_in
        return x_in

    jumps = structure.NodeJumps(rate=1.0, max_jump=1.0)
    loss = GraphLoss(P_mean=-8.0, P_std=1e-6, weight=lambda s: torch.ones_like(s), perturb=jumps)
    value = loss(identity, x, generator=torch.Generator().manual_seed(1), layout=layout)
    torch.testing.assert_close(
        value, (seen["x"] - x).pow(2).mean()[None], rtol=1e-4, atol=0
    )  # mean over rows
    assert 0.14 < float(value) < 0.19  # every node jumped: E|jump|^2 = 1/3 per node, 1/6 per packed row
    with pytest.raises(ValueError, match="need 0 <= rate <= 1"):
        structure.NodeJumps(rate=2.0)


def test_node_jumps_follow_their_schedule_step_by_step():
    n = 2000
    layout = GraphLayout(torch.zeros(2, 0, dtype=torch.long), torch.zeros(n, dtype=torch.long), 2, 0)
    x = torch.rand(2 * n, 1)
    jumps = structure.NodeJumps(rate=0.5, max_jump=9.0, schedule=[[0, 0.0], [10, 1.0], [20, 4.0]])

    def longest(step: int) -> float:
        jumps.set_step(step)
        out = jumps(x, layout=layout, generator=torch.Generator().manual_seed(0))
        return float((layout.unpack(out)[0] - layout.unpack(x)[0]).norm(dim=1).max())

    assert longest(0) == 0.0 and longest(9) == 0.0  # the first stretch has no jumps at all
    assert 0.9 < longest(10) <= 1.0 + 1e-5 and 0.9 < longest(19) <= 1.0 + 1e-5
    assert 3.6 < longest(20) <= 4.0 + 1e-5 and 3.6 < longest(10_000) <= 4.0 + 1e-5
    fixed = structure.NodeJumps(rate=0.5, max_jump=9.0)  # without a schedule max_jump holds throughout
    fixed.set_step(10_000)
    out = fixed(x, layout=layout, generator=torch.Generator().manual_seed(0))
    assert 8 < float((layout.unpack(out)[0] - layout.unpack(x)[0]).norm(dim=1).max()) <= 9.0 + 1e-5
    # the loss passes the loop's step on to its perturbation
    loss = GraphLoss(perturb=jumps)
    loss.set_step(12)
    assert jumps.current == 1.0
    for bad, match in (
        ([[1, 2.0]], "start at 0 and increase"),
        ([[0, 1.0], [0, 2.0]], "start at 0 and increase"),
        ([[0, -1.0]], "max_jump >= 0"),
        ([[0, 1.0, 3]], r"\[from_step, max_jump\] pairs"),
    ):
        with pytest.raises(ValueError, match=match):
            structure.NodeJumps(rate=0.1, schedule=bad)
    with pytest.raises(ValueError, match="start at 0"):
        graph_config.load_graph_experiment("graph_grid", ["diffusion.positions.jump_schedule=[[5, 1.0]]"])
    with pytest.raises(ValueError, match="positions.max_steps must be None or >= 1"):
        graph_config.load_graph_experiment("graph_grid", ["diffusion.positions.max_steps=0"])
    with pytest.raises(ValueError, match="positions.jump_schedule needs diffusion.positions.jump_rate > 0"):
        graph_config.load_graph_experiment("graph_grid", ["diffusion.positions.jump_rate=0"])


def test_positions_stage_takes_its_own_step_count(tmp_path):
    run = tmp_path / "grid"
    argv = ["graph", "train", "--preset", "graph_grid", "--output-dir", str(run), *TINY]
    argv += ["--set", "diffusion.positions.max_steps=3", "--set", "optimization.checkpoint_every=1"]
    assert main(argv) == 0
    assert sorted(p.name for p in (run / "positions" / "checkpoints").iterdir())[-1] == "step_00000003"
    assert sorted(p.name for p in (run / "edges" / "checkpoints").iterdir())[-1] == "step_00000002"


def test_density_features_count_the_surplus_and_the_shortfall_by_hand():
    """On an exact grid (sites on the box's sides, margin 0.5) the excess is 0 at every node; moving the node
    of one site onto another two sites away gives the crowded node the hand-computed excess
    ``1 - exp(-d^2 / 2 r^2)`` and gradient ``(d / r) exp(-d^2 / 2 r^2)`` (through asinh)."""
    rows, cols = 12, 9
    r, c = torch.meshgrid(torch.arange(rows), torch.arange(cols), indexing="ij")
    pos = torch.stack([r.flatten(), c.flatten()], 1).double()
    box = torch.tensor([[rows - 1.0, cols - 1.0]], dtype=torch.float64)
    batch = torch.zeros(len(pos), dtype=torch.long)
    tiny = torch.tensor([1e-4], dtype=torch.float64)
    f = graph_features.density_features(pos, batch, box, tiny, [2, 4], margin=0.5)
    assert f.shape == (rows * cols, 6) and f.abs().max() < 1e-9
    # without the half-spacing margin the box's edges read as a shortfall
    assert graph_features.density_features(pos, batch, box, tiny, [2], margin=0.0).abs().max() > 0.5
    moved = pos.clone()
    k = 5 * cols + 4
    moved[k] = torch.tensor([7.0, 4.0], dtype=torch.float64)  # from site (5, 4) to (7, 4)
    f = graph_features.density_features(moved, batch, box, tiny, [2, 4], margin=0.5)
    for i, scale in enumerate((2.0, 4.0)):
        near = math.exp(-(2.0**2) / (2 * scale**2))
        want = torch.tensor([1 - near, 2 / scale * near, 0.0], dtype=torch.float64).asinh()
        torch.testing.assert_close(f[k, 3 * i : 3 * i + 3], want, atol=1e-9, rtol=0)
    assert f[4 * cols + 4, 0] < -0.4  # the node beside the hole reads the shortfall


def test_density_features_are_the_same_alone_and_in_a_batch_and_check_their_input():
    """Each graph's features depend on its own nodes, box and noise level only, whatever else is in the batch;
    the positions denoiser needs the matching width and bounded boxes."""
    g = torch.Generator().manual_seed(0)
    a, b = torch.rand(30, 2, generator=g) * 5, torch.rand(50, 2, generator=g) * 7
    boxes = torch.tensor([[5.0, 5.0], [7.0, 7.0]])
    sigma = torch.tensor([0.3, 1.5])
    alone = [
        graph_features.density_features(p, torch.zeros(len(p), dtype=torch.long), boxes[i : i + 1],
                                         sigma[i : i + 1], [1.5, 3])
        for i, p in enumerate((a, b))
    ]  # fmt: skip
    batch = torch.cat([torch.zeros(30), torch.ones(50)]).long()
    both = graph_features.density_features(torch.cat([a, b]), batch, boxes, sigma, [1.5, 3])
    torch.testing.assert_close(both, torch.cat(alone))
    assert alone[0].abs().max() > 0.1
    with pytest.raises(ValueError, match="density scales must be a non-empty list of values > 0"):
        graph_features.density_features(a, batch[:30], boxes[:1], sigma[:1], [0.0])
    net = position_net(hidden=16, num_layers=1, num_heads=2, density_scales=[2, 4])
    with pytest.raises(ValueError, match=r"density_scales=\[2.0\]\) needs GraphDenoiser.*node_cond_dim=7"):
        wrap_positions(net, density_scales=[2])
    den = wrap_positions(net, k=4, density_scales=[2, 4], density_margin=0.5)
    n = 30
    layout = GraphLayout(torch.zeros(2, 0, dtype=torch.long), torch.zeros(n, dtype=torch.long), 2, 0)
    x, s = a.reshape(-1, 1), torch.full((2 * n,), 0.5)
    assert den(x, s, layout=layout, box=boxes[:1]).shape == (2 * n, 1)
    with pytest.raises(ValueError, match="density features need bounded boxes"):
        den(x, s, layout=layout, box=boxes[:1], periodic=torch.tensor([True]))


def test_positions_denoiser_with_density_features_is_permutation_equivariant():
    """The density features are a function of the node set: relabelling the nodes relabels the output."""
    den = randomised(
        wrap_positions(position_net(hidden=16, num_layers=2, num_heads=2, density_scales=[2]), k=5,
                         density_scales=[2], density_margin=0.5)
    ).double()  # fmt: skip
    n = 36
    layout = GraphLayout(torch.zeros(2, 0, dtype=torch.long), torch.zeros(n, dtype=torch.long), 2, 0)
    pos = torch.rand(n, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(3)) * 6
    box = torch.tensor([[6.0, 6.0]], dtype=torch.float64)
    sigma = torch.full((2 * n,), 0.4, dtype=torch.float64)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(4))
    out = den(pos.reshape(-1, 1), sigma, layout=layout, box=box).view(n, 2)
    out_p = den(pos[perm].reshape(-1, 1), sigma, layout=layout, box=box).view(n, 2)
    torch.testing.assert_close(out_p, out[perm])
    assert (out - pos).abs().max() > 1e-3


def test_density_scales_reach_the_trained_model_and_exclude_tori(tmp_path, capsys):
    """model.position_density_scales trains a positions model that loads back with the same features; tori
    (data.periodic_share) cannot be read that way and are refused before training."""
    run = tmp_path / "grid"
    base = ["graph", "train", "--preset", "graph_grid", "--output-dir", str(run), *TINY]
    dens = ["--set", "model.position_density_scales=[2, 4]", "--set", "model.position_density_margin=0.5"]
    assert main([*base, "--stage", "positions", *dens]) == 0
    assert main([*base, "--stage", "edges"]) == 0
    model = load_graph_model(run)
    assert (
        model.positions.features.density_scales == (2.0, 4.0)
        and model.positions.features.density_margin == 0.5
    )
    (g,) = graph_sample.generate_graphs(model, 40, 1, steps=2, seed=0)
    assert 30 <= g.number_of_nodes() <= 50 and all(
        "pos" in g.nodes[i] for i in g
    )  # grids: a near rows x cols
    assert main([*base, "--stage", "positions", *dens, "--set", "data.periodic_share=0.5"]) != 0
    assert "position_density_scales needs bounded boxes" in capsys.readouterr().err
