"""Bad data and bad transport inputs are refused with a message that says what is wrong and where, instead of
being silently misread (a float edge id truncated to a node, NaN features) or failing deep inside."""

from __future__ import annotations

import math

import networkx as nx
import numpy as np
import pytest
import torch
from torch_geometric.data import Data

from polyscale.data.arrays import array_file
from polyscale.data.graph_datasets import GraphFeatureDataset, collate_graphs
from polyscale.data.graph_features import PositionFeatures, density_features, periodic_features
from polyscale.data.graph_geometry import (
    MAX_KEYED_NODES,
    candidate_triangles,
    check_edge_index,
    check_num_nodes,
)
from polyscale.data.graphs import graph_fields, to_data, to_networkx
from polyscale.data.images import image_folder
from polyscale.data.text import CharCorpus
from polyscale.ot import (
    Dense,
    Grid,
    KernelConfig,
    Nystrom,
    RandomFeatures,
    SinkhornBridge,
    make_kernel,
    sinkhorn,
)
from polyscale.ot.sinkhorn import epsilon_schedule

# ------------------------------------------------------------------------------------------ files and folders


def test_a_directory_is_not_an_array_file(tmp_path):
    with pytest.raises(ValueError, match="is a directory, expected a .npy or .npz file"):
        array_file(tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        array_file(tmp_path / "missing.npy")


def test_a_file_is_not_an_image_folder(tmp_path):
    path = tmp_path / "x.npy"
    np.save(path, np.zeros((2, 1, 4, 4), dtype=np.float32))
    with pytest.raises(ValueError, match=r"is a file, expected a folder of images \(.png, .jpg"):
        image_folder(path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        image_folder(tmp_path / "missing")


def test_an_image_over_pillows_pixel_limit_is_refused_by_name(tmp_path, monkeypatch):
    from PIL import Image

    Image.new("RGB", (30, 20)).save(tmp_path / "wide.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 250)  # 600 pixels > twice the limit: Pillow refuses
    with pytest.raises(ValueError) as caught:
        image_folder(tmp_path, size=8)
    message = str(caught.value)
    assert "wide.png' has 600 pixels, more than the 500 that Pillow reads" in message
    assert "PIL.Image.MAX_IMAGE_PIXELS = 250" in message
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10_000)  # within the limit: read as usual
    assert image_folder(tmp_path, size=8).data.shape == (1, 3, 8, 8)


def test_a_directory_is_not_a_text_file(tmp_path):
    with pytest.raises(ValueError, match="is a directory, expected a UTF-8 text file"):
        CharCorpus.from_file(tmp_path)


# ------------------------------------------------------------------------------------------------- graphs


def test_float_edge_ids_are_refused_not_truncated():
    edges = torch.tensor([[0.0, 1.7], [1.0, 2.0]])
    with pytest.raises(ValueError, match=r"edge_index must hold integer node ids .* got dtype torch.float32"):
        to_networkx(edges, 3)
    whole = torch.tensor([[0.0, 1.0], [1.0, 2.0]], dtype=torch.float64)  # whole numbers, still a float dtype
    with pytest.raises(ValueError, match="got dtype torch.float64"):
        to_networkx(whole, 3)
    assert sorted(to_networkx(whole.long(), 3).edges) == [(0, 1), (1, 2)]
    assert sorted(to_networkx(whole.to(torch.int32), 3).edges) == [(0, 1), (1, 2)]
    with pytest.raises(ValueError, match="got dtype torch.bool"):
        check_edge_index(torch.ones(2, 3, dtype=torch.bool), 4)


def test_edge_ids_outside_the_graph_or_of_the_wrong_shape_are_refused():
    with pytest.raises(ValueError, match=r"refers to node 3, outside the graph's nodes 0..2"):
        to_networkx(torch.tensor([[0, 3], [1, 2]]), 3)
    with pytest.raises(ValueError, match="refers to node -1"):
        check_edge_index(torch.tensor([[0, -1], [1, 2]]), 3)
    with pytest.raises(ValueError, match=r"must have shape \(2, E\), got \(3, 2\)"):
        check_edge_index(torch.zeros(3, 2, dtype=torch.long), 3)


def test_node_counts_beyond_64_bit_pair_keys_are_refused():
    assert MAX_KEYED_NODES == 3_037_000_499
    assert (MAX_KEYED_NODES - 1) * MAX_KEYED_NODES + MAX_KEYED_NODES - 1 <= 2**63 - 1
    assert check_num_nodes(MAX_KEYED_NODES) == MAX_KEYED_NODES
    with pytest.raises(ValueError, match="more than 3,037,000,499"):
        check_num_nodes(MAX_KEYED_NODES + 1)
    with pytest.raises(ValueError, match="more than 3,037,000,499"):
        candidate_triangles(torch.tensor([[0], [1]]), 2**40)


def test_feature_graphs_with_float_edges_name_the_graph():
    good = Data(edge_index=torch.tensor([[0, 1], [1, 0]]), num_nodes=2, x=torch.zeros(2, 1),
                edge_attr=torch.zeros(2, 1))  # fmt: skip
    bad = Data(edge_index=torch.tensor([[0.0, 1.0], [1.0, 0.0]]), num_nodes=2, x=torch.zeros(2, 1),
               edge_attr=torch.zeros(2, 1))  # fmt: skip
    with pytest.raises(ValueError, match=r"graph 1: edge_index must hold integer node ids .* torch.float32"):
        GraphFeatureDataset([good, bad], node_dim=1, edge_dim=1)
    one_way = Data(
        edge_index=torch.tensor([[0], [1]]), num_nodes=2, x=torch.zeros(2, 1), edge_attr=torch.zeros(1, 1)
    )
    with pytest.raises(ValueError, match="graph 0: edge_index must list both directions"):
        GraphFeatureDataset([one_way], node_dim=1, edge_dim=1)
    no_features = Data(edge_index=torch.tensor([[0, 1], [1, 0]]), num_nodes=2, x=torch.zeros(2, 1))
    with pytest.raises(ValueError, match="graph 0 has no edge_attr"):
        GraphFeatureDataset([no_features], node_dim=1, edge_dim=1)


def test_edgeless_graphs_convert_and_collate():
    g = nx.empty_graph(4)
    x, e = graph_fields(g, node_dim=2, edge_dim=1, rng=np.random.default_rng(0))
    assert x.shape == (4, 2) and e.shape == (0, 1)
    d = to_data(g, x=x, edge_attr=e)
    assert d.edge_index.shape == (2, 0) and d.edge_attr.shape == (0, 1)
    no_edge_attr = Data(edge_index=torch.zeros(2, 0, dtype=torch.long), num_nodes=3, x=torch.ones(3, 2))
    items = GraphFeatureDataset([d, no_edge_attr], node_dim=2, edge_dim=1)
    batch = collate_graphs([items[0], items[1]])
    assert batch["layout"].num_edges == 0
    assert batch["x"].shape == (7 * 2, 1)  # node features only
    with pytest.raises(ValueError, match="at least one graph item"):
        collate_graphs([])


@pytest.mark.parametrize("period", [0.0, -1.0, math.nan, math.inf])
def test_a_lattice_period_must_be_finite_and_positive(period):
    with pytest.raises(ValueError, match=r"the lattice period must be > 0 \(and finite\)"):
        periodic_features(torch.rand(3, 2), period)
    with pytest.raises(ValueError, match=r"period must be None or > 0 \(and finite\)"):
        PositionFeatures(period=period)


@pytest.mark.parametrize("scale", [0.0, -1.0, math.nan, math.inf])
def test_density_scales_must_be_finite_and_positive(scale):
    pos, batch, box = torch.rand(3, 2), torch.zeros(3, dtype=torch.long), torch.full((1, 2), 2.0)
    with pytest.raises(ValueError, match=r"list of values > 0 \(and finite\)"):
        density_features(pos, batch, box, torch.ones(1), [1.0, scale])
    with pytest.raises(ValueError, match=r"need density scales > 0 and density_margin >= 0 \(all finite\)"):
        PositionFeatures(density_scales=(scale,))
    with pytest.raises(ValueError, match="finite number >= 0"):
        density_features(pos, batch, box, torch.ones(1), [1.0], margin=math.nan)


# ------------------------------------------------------------------------------------------ optimal transport


def _with(value: float) -> torch.Tensor:
    x = torch.randn(6, 2, dtype=torch.float64)
    x[4, 1] = value
    return x


@pytest.mark.parametrize("value", [math.inf, -math.inf, math.nan])
def test_kernels_refuse_points_that_are_not_finite(value):
    y = torch.randn(5, 2, dtype=torch.float64)
    bad = _with(value)
    pattern = r"has NaN or infinite coordinates \(1 of its 6 points, the first is point 4\)"
    with pytest.raises(ValueError, match="x " + pattern):
        Dense(bad, y, 0.1)
    with pytest.raises(ValueError, match="y " + pattern):
        Dense(y, bad, 0.1)
    with pytest.raises(ValueError, match=pattern):
        RandomFeatures(bad, y, 0.1, rank=8, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match=pattern):
        Nystrom(bad, y, 0.1, rank=4, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match=pattern):
        make_kernel(KernelConfig(epsilon=0.1), bad, y)
    with pytest.raises(ValueError, match=r"the first is point 4 of problem 1"):
        Dense(torch.stack([_with(0.0), bad]), torch.stack([y, y]), 0.1)
    with pytest.raises(ValueError, match="reference has NaN or infinite coordinates"):
        SinkhornBridge(bad.reshape(6, 1, 2), kernel=KernelConfig(epsilon=0.1))


def test_finite_points_still_solve():
    x, y = _with(0.0), torch.randn(5, 2, dtype=torch.float64)
    assert sinkhorn(Dense(x, y, 0.5)).converged


@pytest.mark.parametrize("value", [math.inf, math.nan, 0.0, -1.0])
def test_epsilon_and_tolerance_must_be_finite_and_positive(value):
    with pytest.raises(ValueError, match="finite number > 0"):
        KernelConfig(epsilon=value)
    with pytest.raises(ValueError, match="finite number > 0"):
        KernelConfig(bandwidth=value)
    with pytest.raises(ValueError, match="finite tol > 0"):
        sinkhorn(Dense(_with(0.0), _with(0.0), 0.5), tol=value)


def test_grid_coordinates_and_epsilon_scaling_must_be_finite():
    with pytest.raises(ValueError, match="coordinates of axis 1 must be finite"):
        Grid((2, 3), 0.1, coordinates=[torch.tensor([0.0, 1.0]), torch.tensor([0.0, math.inf, 2.0])])
    with pytest.raises(ValueError, match="finite start"):
        epsilon_schedule(math.inf, 0.1, 0.5)
    assert epsilon_schedule(4.0, 1.0, 0.5) == [4.0, 2.0, 1.0]
