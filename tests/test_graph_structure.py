"""Structure generation: k-NN candidates against brute force, translation equivariance of the positions
denoiser, candidate labels, the two-stage sampler, and the `polyscale graph` command line end to end."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from polyscale.cli.main import main
from polyscale.data.graphs import planar_graph
from polyscale.diffusion.graph import GraphLayout
from polyscale.pipelines.graph import collate_graphs, graph_denoiser
from polyscale.pipelines.graph_experiment import load_graph_experiment
from polyscale.pipelines.graph_structure import (
    CandidateDataset,
    PositionDenoiser,
    candidate_geometry,
    edge_net,
    knn_edges,
    position_net,
    sample_edges,
    sample_positions,
)


def randomised(module: torch.nn.Module) -> torch.nn.Module:
    torch.manual_seed(0)
    for p in module.parameters():
        if p.abs().sum() == 0:
            torch.nn.init.normal_(p, std=0.3)
    return module


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


def test_position_denoiser_is_translation_equivariant():
    den = randomised(PositionDenoiser(position_net(hidden=16, num_layers=2, num_heads=2), k=5)).double()
    n = 40
    layout = GraphLayout(torch.zeros(2, 0, dtype=torch.long), torch.zeros(n, dtype=torch.long), 2, 0)
    x = torch.rand(2 * n, 1, dtype=torch.float64) * 6
    sigma = torch.full((2 * n,), 0.7, dtype=torch.float64)
    shift = torch.tensor([13.0, -4.0], dtype=torch.float64).repeat(n)[:, None]
    out = den(x, sigma, layout=layout)
    torch.testing.assert_close(den(x + shift, sigma, layout=layout), out + shift)
    assert (out - x).abs().max() > 1e-3  # it does move the points


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
    pos_den = randomised(PositionDenoiser(position_net(hidden=16, num_layers=1, num_heads=2), k=4))
    pos = sample_positions(pos_den, 30, steps=3, generator=torch.Generator().manual_seed(0))
    assert pos.shape == (30, 2) and torch.isfinite(pos).all()
    edge_den = graph_denoiser(randomised(edge_net(hidden=16, num_layers=1, num_heads=2)))
    g = sample_edges(edge_den, pos, k=6, steps=3, generator=torch.Generator().manual_seed(0))
    cands = {tuple(e) for e in knn_edges(pos, torch.zeros(30, dtype=torch.long), 6).T.tolist()}
    assert g.number_of_nodes() == 30 and all((min(u, v), max(u, v)) in cands for u, v in g.edges)
    with pytest.raises(ValueError, match="num_nodes must be >= 2, got 1"):
        sample_positions(pos_den, 1)


TINY = ["--set", "optimization.max_steps=2", "--set", "optimization.batch_size=4", "--set", "data.num_graphs=8",
        "--set", "model.hidden=16", "--set", "model.num_layers=1", "--set", "optimization.checkpoint_every=2",
        "--set", "optimization.log_every=1", "--set", "optimization.warmup_steps=1"]  # fmt: skip


def test_graph_cli_train_sample_evaluate(tmp_path, capsys):
    run = tmp_path / "planar"
    assert main(["graph", "train", "--preset", "graph_planar", "--output-dir", str(run), *TINY]) == 0
    assert (run / "positions" / "model" / "config.json").is_file() and (run / "edges" / "model").is_dir()
    out = tmp_path / "g.png"
    argv = ["graph", "sample", "--checkpoint", str(run), "--num-nodes", "150", "--num-graphs", "2"]
    assert main([*argv, "--timesteps", "2", "--output-file", str(out)]) == 0
    saved = np.load(out.with_suffix(".npz"))
    assert int(saved["num_nodes_0"]) == 150 and saved["pos_1"].shape == (150, 2)
    capsys.readouterr()
    argv = ["graph", "evaluate", "--checkpoint", str(run), "--sizes", "40", "90", "--num-graphs", "2"]
    assert main([*argv, "--timesteps", "2"]) == 0
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
    assert main(["graph", "sample", "--checkpoint", "/nonexistent"]) == 2
    assert "holds no graph model" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["graph", "sample", "--checkpoint", "x", "--num-nodes", "1"])
    assert "expected an integer >= 2, got 1" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["graph", "sample", "--checkpoint", "x", "--sampler", "foo"])
    assert "invalid choice" in capsys.readouterr().err
