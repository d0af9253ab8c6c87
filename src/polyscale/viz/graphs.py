"""Pictures of graphs: one panel per graph, edges as line segments at the nodes' positions (the ``pos``
attribute; a spring layout for graphs without one), node colour from a scalar node feature when there is one.
Edges are drawn as one LineCollection, so 100,000-node graphs render in seconds."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import networkx as nx
import numpy as np

from polyscale.viz.grids import _figure_to_png


def _positions(g: nx.Graph) -> np.ndarray:
    pos = nx.get_node_attributes(g, "pos")
    if len(pos) != g.number_of_nodes():
        pos = nx.spring_layout(g, seed=0)
    nodes = list(g.nodes)
    return np.array([pos[v] for v in nodes], dtype=np.float64).reshape(len(nodes), 2)


def save_graph_grid(graphs: Sequence[nx.Graph], path: str | Path, *, ncols: int | None = None) -> Path:
    """Draw ``graphs`` (at most 16) in a grid of panels and write a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.collections import LineCollection

    graphs = list(graphs)[:16]
    if not graphs:
        raise ValueError("no graphs to draw")
    ncols = ncols or math.ceil(math.sqrt(len(graphs)))
    nrows = math.ceil(len(graphs) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3 * ncols, 3 * nrows), squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()
    for ax, g in zip(axes.flat, graphs, strict=False):
        index = {v: i for i, v in enumerate(g.nodes)}
        xy = _positions(g)
        n = len(xy)
        segments = np.array([[xy[index[u]], xy[index[v]]] for u, v in g.edges]).reshape(-1, 2, 2)
        width = 0.8 if n <= 200 else max(0.05, 0.8 * math.sqrt(200 / n))
        ax.add_collection(LineCollection(list(segments), colors="0.3", linewidths=width))
        x = nx.get_node_attributes(g, "x")
        size = 12 if n <= 200 else max(0.05, 2400 / n)
        if len(x) == n:  # colour by the first node feature
            colour = [float(np.atleast_1d(x[v])[0]) for v in g.nodes]
            ax.scatter(xy[:, 0], xy[:, 1], s=size, c=colour, cmap="coolwarm", zorder=2, linewidths=0)
        else:
            ax.scatter(xy[:, 0], xy[:, 1], s=size, c="tab:blue", zorder=2, linewidths=0)
        ax.set_title(f"{n} nodes, {g.number_of_edges()} edges", fontsize=8)
        ax.set_aspect("equal")
        ax.autoscale()
    return _figure_to_png(fig, path)


def save_graphs_npz(graphs: Sequence[nx.Graph], path: str | Path) -> Path:
    """Write graphs as a pickle-free ``.npz``: ``edges_i`` ``(m, 2)``, ``num_nodes_i``, and ``pos_i`` /
    ``x_i`` when every node has one (load with ``numpy.load(path)``, ``allow_pickle`` stays off)."""
    import io

    from polyscale.atomic import atomic_write_bytes

    arrays: dict[str, np.ndarray] = {}
    for i, g in enumerate(graphs):
        g = nx.convert_node_labels_to_integers(g, ordering="sorted")
        arrays[f"num_nodes_{i}"] = np.array(g.number_of_nodes())
        arrays[f"edges_{i}"] = np.array(list(g.edges), dtype=np.int64).reshape(-1, 2)
        for key in ("pos", "x"):
            values = nx.get_node_attributes(g, key)
            if len(values) == g.number_of_nodes() and values:
                arrays[f"{key}_{i}"] = np.array(
                    [np.atleast_1d(values[v]) for v in range(g.number_of_nodes())]
                )
    buf = io.BytesIO()
    np.savez(buf, allow_pickle=False, **arrays)  # numeric arrays only (the file is pickle-free)
    return atomic_write_bytes(Path(path).with_suffix(".npz"), buf.getvalue())
