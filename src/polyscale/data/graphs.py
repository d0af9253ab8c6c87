"""Graph families built offline with networkx (planar, grid, tree, lobster, random geometric) and smooth
random fields on graphs, as PyTorch Geometric ``Data`` objects.

Every generator takes the number of nodes (or the grid shape) and a ``numpy.random.Generator``, so any size
can be drawn: training sets mix small sizes, evaluation draws the same family at the sampled size.

Node positions (``pos``) are in *density units*: the mean number of nodes per unit area is about one, so the
typical distance between neighbours does not depend on the graph size (a 64-node planar graph fills an 8x8
square, a 100,000-node one a 316x316 square). That is what lets a model of local structure trained on small
graphs be used on large ones. Graphs with positions record their domain, the box ``[0, W] x [0, H]`` the
positions were drawn in, as ``g.graph["box"] = (W, H)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import networkx as nx
import numpy as np
import torch
from scipy import sparse
from scipy.spatial import Delaunay, cKDTree
from torch import Tensor
from torch_geometric.data import Data

from polyscale.data.graph_geometry import check_edge_index
from polyscale.registry import Registry


def _check_nodes(num_nodes: int, minimum: int, family: str) -> None:
    if not isinstance(num_nodes, (int, np.integer)) or num_nodes < minimum:
        raise ValueError(f"{family} graphs need an integer num_nodes >= {minimum}, got {num_nodes!r}")


def planar_graph(num_nodes: int, *, rng: np.random.Generator) -> nx.Graph:
    """Delaunay triangulation of ``num_nodes`` uniform random points in a square (the SPECTRE/DiGress planar
    recipe, 64 nodes in the literature). Positions are scaled to a square of side ``sqrt(num_nodes)``."""
    _check_nodes(num_nodes, 3, "planar")
    points = rng.random((num_nodes, 2))  # (n, 2) in the unit square
    tri = Delaunay(points)
    g: nx.Graph = nx.Graph()
    g.add_nodes_from(range(num_nodes))
    for simplex in tri.simplices:  # (3,) vertex ids of one triangle
        a, b, c = (int(v) for v in simplex)
        g.add_edges_from([(a, b), (b, c), (a, c)])
    _set_positions(g, points * math.sqrt(num_nodes))
    g.graph["box"] = (math.sqrt(num_nodes), math.sqrt(num_nodes))
    return g


def grid_graph(rows: int, cols: int, *, periodic: bool = False) -> nx.Graph:
    """The ``rows x cols`` 2D grid graph (nodes ``r * cols + c``), positions on the unit lattice.

    ``periodic=True``: the torus, each row and column closed into a ring (every node has degree 4; needs
    ``rows, cols >= 3`` so that no two nodes are joined twice). ``g.graph["periodic"]`` records which."""
    if rows < 1 or cols < 1:
        raise ValueError(f"a grid needs rows >= 1 and cols >= 1, got {rows} x {cols}")
    if periodic and min(rows, cols) < 3:
        raise ValueError(f"a periodic grid needs rows >= 3 and cols >= 3, got {rows} x {cols}")
    g = nx.convert_node_labels_to_integers(nx.grid_2d_graph(rows, cols, periodic=periodic), ordering="sorted")
    r, c = np.divmod(np.arange(rows * cols), cols)
    _set_positions(g, np.stack([r, c], axis=1).astype(np.float64))
    g.graph["box"] = (float(rows - 1), float(cols - 1))
    g.graph["grid_shape"] = (rows, cols)
    g.graph["periodic"] = periodic
    return g


# below this side a smooth field wraps onto itself (neighbour correlation 0.89 at 4 x 8, 0.85 in the bulk)
TORUS_MIN_SIDE = 6


def torus_shape(
    num_nodes: int, *, rng: np.random.Generator, min_side: int = TORUS_MIN_SIDE
) -> tuple[int, int]:
    """A random ``rows x cols`` torus with both sides ``>= min_side`` and ``rows * cols`` close to
    ``num_nodes`` (at least ``min_side**2``): rows uniform over the sides that leave ``cols >= min_side``."""
    if min_side < 3:
        raise ValueError(f"min_side must be >= 3, got {min_side}")
    _check_nodes(num_nodes, 4, "torus")
    rows = int(rng.integers(min_side, max(min_side, num_nodes // min_side) + 1))
    return rows, max(min_side, round(num_nodes / rows))


def grid_shape(num_nodes: int, *, rng: np.random.Generator, aspect: float = 2.0) -> tuple[int, int]:
    """A random ``rows x cols`` with ``rows * cols`` close to ``num_nodes`` and ``1/aspect <= rows/cols <= aspect``."""
    _check_nodes(num_nodes, 4, "grid")
    ratio = math.exp(rng.uniform(-math.log(aspect), math.log(aspect)))  # rows / cols
    rows = max(2, round(math.sqrt(num_nodes * ratio)))
    cols = max(2, round(num_nodes / rows))
    return rows, cols


def tree_graph(num_nodes: int, *, rng: np.random.Generator) -> nx.Graph:
    """A uniformly random labelled tree on ``num_nodes`` nodes (from a random Pruefer sequence)."""
    _check_nodes(num_nodes, 2, "tree")
    if num_nodes == 2:
        return nx.path_graph(2)
    sequence = rng.integers(0, num_nodes, size=num_nodes - 2).tolist()
    return nx.from_prufer_sequence(sequence)


def lobster_graph(num_nodes: int, *, rng: np.random.Generator, p1: float = 0.7, p2: float = 0.7) -> nx.Graph:
    """A random lobster (a caterpillar whose legs may carry one more leaf) with exactly ``num_nodes`` nodes:
    a backbone path grows, each backbone node gets ``Geometric`` legs (``p1``), each leg a leaf with
    probability ``p2``, until the node budget is used."""
    _check_nodes(num_nodes, 2, "lobster")
    g = nx.path_graph(2)
    spine_end, n = 1, 2
    while n < num_nodes:
        # extend the spine, or hang a leg (and maybe a leaf on it) from the current spine end
        if rng.random() > p1:
            g.add_edge(spine_end, n)
            spine_end, n = n, n + 1
            continue
        g.add_edge(spine_end, n)
        leg, n = n, n + 1
        if n < num_nodes and rng.random() < p2:
            g.add_edge(leg, n)
            n += 1
    return g


def geometric_graph(num_nodes: int, *, rng: np.random.Generator, mean_degree: float = 6.0) -> nx.Graph:
    """Random geometric graph: ``num_nodes`` uniform points at unit density (a square of side
    ``sqrt(num_nodes)``), an edge between every two points closer than ``r`` with ``pi r^2 = mean_degree``, so
    the expected degree away from the border is ``mean_degree`` at every size."""
    _check_nodes(num_nodes, 2, "geometric")
    points = rng.random((num_nodes, 2)) * math.sqrt(num_nodes)
    radius = math.sqrt(mean_degree / math.pi)
    g: nx.Graph = nx.Graph()
    g.add_nodes_from(range(num_nodes))
    pairs = cKDTree(points).query_pairs(radius, output_type="ndarray")  # (m, 2)
    g.add_edges_from(pairs.tolist())
    _set_positions(g, points)
    g.graph["box"] = (math.sqrt(num_nodes), math.sqrt(num_nodes))
    return g


def _set_positions(g: nx.Graph, pos: np.ndarray) -> None:
    nx.set_node_attributes(g, {i: (float(p[0]), float(p[1])) for i, p in enumerate(pos)}, "pos")


def random_grid_graph(num_nodes: int, *, rng: np.random.Generator) -> nx.Graph:
    """A ``rows x cols`` grid with about ``num_nodes`` nodes (:func:`grid_shape`)."""
    return grid_graph(*grid_shape(num_nodes, rng=rng))


# name -> (num_nodes, *, rng) -> a graph of that family
GRAPH_FAMILIES: Registry[Callable[..., nx.Graph]] = Registry(
    "graph family",
    {
        "planar": planar_graph,
        "grid": random_grid_graph,
        "tree": tree_graph,
        "lobster": lobster_graph,
        "geometric": geometric_graph,
    },
)


def family_graph(family: str, num_nodes: int, *, rng: np.random.Generator) -> nx.Graph:
    """One graph of ``family`` (see ``GRAPH_FAMILIES``) with about ``num_nodes`` nodes (grids: the nearest
    ``rows x cols``; every other family: exactly ``num_nodes``)."""
    if family not in GRAPH_FAMILIES:
        raise ValueError(f"unknown graph family {family!r}; expected one of {GRAPH_FAMILIES}")
    return GRAPH_FAMILIES[family](num_nodes, rng=rng)


# ------------------------------------------------------------------------------------ smooth fields on graphs


def smoothing_operator(g: nx.Graph) -> sparse.csr_matrix:
    """The lazy random-walk average ``P = (I + A) / (1 + deg)`` (row-stochastic, ``(n, n)`` CSR)."""
    n = g.number_of_nodes()
    adj = nx.to_scipy_sparse_array(g, nodelist=range(n), format="csr", dtype=np.dtype(np.float64))
    walk = sparse.identity(n, format="csr") + adj
    return sparse.csr_matrix(sparse.diags(1.0 / np.asarray(walk.sum(axis=1)).ravel()) @ walk)


def field_operator(g: nx.Graph, *, steps: int = 4) -> sparse.csr_matrix:
    """``P^steps`` (:func:`smoothing_operator`) with every row scaled to unit norm, ``(n, n)`` CSR: applied to
    white noise it gives a field whose every node is exactly N(0, 1). Rows are local (``steps`` hops)."""
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    n = g.number_of_nodes()
    op = smoothing_operator(g)
    power = sparse.identity(n, format="csr")
    for _ in range(steps):
        power = sparse.csr_matrix(op @ power)
    norms = np.sqrt(np.asarray(power.multiply(power).sum(axis=1)).ravel())  # (n,) std of each node
    return sparse.csr_matrix(sparse.diags(1.0 / norms) @ power)


def smooth_field(g: nx.Graph, *, channels: int = 1, steps: int = 4, rng: np.random.Generator) -> np.ndarray:
    """A smooth Gaussian random field on the nodes, ``(n, channels)`` float32: white noise averaged ``steps``
    times by the lazy random walk, each node divided by its exact standard deviation (:func:`field_operator`),
    so every node is marginally N(0, 1) whatever the graph's size. No per-graph normalisation (which would tie
    the statistics to the size). Neighbours are correlated over about ``sqrt(steps)`` hops."""
    if channels < 1:
        raise ValueError(f"channels must be >= 1, got {channels}")
    noise = rng.standard_normal((g.number_of_nodes(), channels))
    return (field_operator(g, steps=steps) @ noise).astype(np.float32)


def _edge_array(g: nx.Graph) -> np.ndarray:
    """``(m, 2)`` int64 undirected edges (self-loops dropped)."""
    return np.array([(u, v) for u, v in g.edges if u != v], dtype=np.int64).reshape(-1, 2)


# --------------------------------------------------------------------------------------- PyG conversion


def to_data(g: nx.Graph, *, x: np.ndarray | None = None, edge_attr: np.ndarray | None = None) -> Data:
    """``Data`` with ``edge_index`` ``(2, 2m)`` holding both directions of each of the ``m`` undirected edges
    (``i -> j`` then ``j -> i`` in the same order), ``num_nodes``, ``pos`` ``(n, 2)`` when the graph has
    positions, ``x`` ``(n, F)`` and ``edge_attr`` ``(2m, F_e)`` (the per-undirected-edge rows repeated for
    both directions) when given. Nodes must be ``0 .. n-1``."""
    n = g.number_of_nodes()
    if set(g.nodes) != set(range(n)):
        raise ValueError("graph nodes must be the integers 0 .. n-1 (use nx.convert_node_labels_to_integers)")
    edges = _edge_array(g)  # (m, 2)
    edge_index = torch.from_numpy(np.concatenate([edges, edges[:, ::-1]]).T.copy())  # (2, 2m)
    data = Data(edge_index=edge_index, num_nodes=n)
    pos = nx.get_node_attributes(g, "pos")
    if len(pos) == n:
        data.pos = torch.tensor([pos[i] for i in range(n)], dtype=torch.float32)
    if x is not None:
        data.x = _rows(x, n, "x (node features)")
    if edge_attr is not None:
        e = _rows(edge_attr, len(edges), "edge_attr (edge features)")  # (m, F_e)
        data.edge_attr = torch.cat([e, e])  # (2m, F_e)
    return data


def _rows(values: np.ndarray, rows: int, what: str) -> Tensor:
    """``values`` as float32 ``(rows, F)``: a 2-D array as it is, anything else reshaped (an edgeless graph's
    ``(0, F)`` features keep their ``F``)."""
    t = torch.as_tensor(values, dtype=torch.float32)
    if t.ndim != 2:
        if t.numel() == 0 and rows == 0:
            return t.reshape(0, 0)
        t = t.reshape(rows, -1)
    if t.shape[0] != rows:
        raise ValueError(f"{what}: expected {rows} rows, got shape {tuple(t.shape)}")
    return t


def to_networkx(edge_index: Tensor, num_nodes: int) -> nx.Graph:
    """Undirected simple graph on ``0 .. num_nodes-1`` from an ``edge_index`` ``(2, E)`` of integer node ids
    (either or both directions; self-loops dropped; a float or out-of-range ``edge_index`` is a ``ValueError``,
    see :func:`~polyscale.data.graph_geometry.check_edge_index`)."""
    check_edge_index(edge_index, num_nodes)
    g: nx.Graph = nx.Graph()
    g.add_nodes_from(range(num_nodes))
    ei = edge_index.detach().cpu().numpy()
    g.add_edges_from((int(u), int(v)) for u, v in ei.T if u != v)
    return g


@dataclass(frozen=True)
class FieldGraphs:
    """Feature-generation data: graphs with smooth node and edge fields (see :func:`field_graphs`)."""

    graphs: list[Data]
    node_dim: int
    edge_dim: int


def field_graphs(
    family: str,
    num_graphs: int,
    *,
    min_nodes: int,
    max_nodes: int,
    node_dim: int = 1,
    edge_dim: int = 1,
    steps: int = 4,
    stationary: bool = False,
    periodic_share: float = 0.0,
    seed: int = 0,
) -> FieldGraphs:
    """``num_graphs`` graphs of ``family`` with sizes uniform in ``[min_nodes, max_nodes]``, node features a
    :func:`smooth_field` with ``node_dim`` channels and edge features the mean of an independent smooth field
    at the two ends (scaled to unit variance), ``edge_dim`` channels: local, smooth data on any connectivity
    (``stationary``: see :func:`graph_fields`).

    ``periodic_share`` (grids only): that share of the graphs are tori (:func:`torus_shape`, sides of at least
    ``TORUS_MIN_SIDE``). A torus has no border, so every node of it sees what a node deep inside a large grid
    sees: a model trained on small bounded grids alone meets such neighbourhoods only when sampling large ones."""
    if not 1 <= min_nodes <= max_nodes:
        raise ValueError(f"need 1 <= min_nodes <= max_nodes, got {min_nodes}, {max_nodes}")
    if not 0 <= periodic_share <= 1:
        raise ValueError(f"periodic_share must be in [0, 1], got {periodic_share}")
    if periodic_share and family != "grid":
        raise ValueError(f"periodic_share needs the grid family, got family {family!r}")
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(num_graphs):
        n = int(rng.integers(min_nodes, max_nodes + 1))
        if periodic_share and rng.random() < periodic_share:
            g = grid_graph(*torus_shape(n, rng=rng), periodic=True)
        else:
            g = family_graph(family, n, rng=rng)
        x, e = graph_fields(
            g, node_dim=node_dim, edge_dim=edge_dim, steps=steps, stationary=stationary, rng=rng
        )
        out.append(to_data(g, x=x, edge_attr=e))
    return FieldGraphs(out, node_dim, edge_dim)


def _field_host(g: nx.Graph, *, steps: int, stationary: bool) -> tuple[sparse.csr_matrix, np.ndarray | None]:
    """The field operator of the graph the fields are drawn on (``g``, or for stationary fields on a bounded
    grid the grid padded by ``steps`` on every side) and the node of that graph of each node of ``g`` (None:
    ``g`` itself)."""
    host, inner = g, None
    if stationary and not g.graph.get("periodic", False):
        if "grid_shape" not in g.graph:
            raise ValueError("stationary fields need a grid graph (grid_graph / family 'grid')")
        rows, cols = g.graph["grid_shape"]
        host = grid_graph(rows + 2 * steps, cols + 2 * steps)
        r, c = np.divmod(np.arange(rows * cols), cols)
        inner = (r + steps) * (cols + 2 * steps) + (c + steps)  # node of g -> node of the padded grid
    return field_operator(host, steps=steps), inner


def field_covariance(g: nx.Graph, *, steps: int = 4, stationary: bool = False) -> np.ndarray:
    """The exact covariance ``(n, n)`` (dense, float64) of each channel of the node fields :func:`graph_fields`
    draws on ``g``: the fields are Gaussian, so ``Sigma (Sigma + sigma^2 I)^-1`` is the ideal denoiser at noise
    ``sigma``, the reference a trained feature model is measured against. Dense: meant for graphs of a few
    thousand nodes."""
    op, inner = _field_host(g, steps=steps, stationary=stationary)
    rows = op if inner is None else op[inner]
    return np.asarray((rows @ rows.T).toarray(), dtype=np.float64)


def graph_fields(
    g: nx.Graph,
    *,
    node_dim: int,
    edge_dim: int,
    steps: int = 4,
    stationary: bool = False,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """Node features ``(n, node_dim)``, a :func:`smooth_field`, and edge features ``(m, edge_dim)`` (edges in
    ``g.edges`` order), the mean of an independent smooth field at the two ends rescaled to unit variance.

    ``stationary=True`` (grid graphs only): the fields are drawn on the grid padded by ``steps`` rows and
    columns on every side and restricted to ``g``, so every node's field is that of a node in an unbounded
    lattice (its ``steps``-hop smoothing window never meets the border): the same statistics at every node and
    at every grid size, as in a crop of a larger texture. Without it, nodes near the border average fewer
    neighbours and the correlations there differ from the bulk. A periodic grid (a torus) is stationary as it
    is: its fields are drawn on it directly, with or without ``stationary``."""
    op, inner = _field_host(g, steps=steps, stationary=stationary)
    n_host = op.shape[0]
    x = op @ rng.standard_normal((n_host, node_dim))  # (n_host, node_dim)
    y = op @ rng.standard_normal((n_host, edge_dim))
    edges = _edge_array(g)  # (m, 2)
    if inner is not None:
        x, y, edges = x[inner], y, inner[edges]
    # the mean of the two ends has variance (1 + rho_ij) / 2, rho_ij = row_i . row_j (exact, per edge)
    rho = np.asarray(op[edges[:, 0]].multiply(op[edges[:, 1]]).sum(axis=1)).ravel()  # (m,)
    e = (y[edges[:, 0]] + y[edges[:, 1]]) / np.sqrt(2 * (1 + rho))[:, None]  # (m, edge_dim), unit variance
    return x.astype(np.float32), e.astype(np.float32)
