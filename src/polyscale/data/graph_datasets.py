"""Graph training sets: graphs with node and edge features (:class:`GraphFeatureDataset`), the two stages of
structure generation (:class:`PositionDataset`, :class:`CandidateDataset`), and :func:`collate_graphs`,
which packs items into one diffusion state with its :class:`~polyscale.diffusion.graph.GraphLayout`."""

from __future__ import annotations

from collections.abc import Sequence

import networkx as nx
import torch
from torch import Tensor
from torch.utils.data import Dataset
from torch_geometric.data import Data

from polyscale.data.graph_geometry import candidate_conditioning, candidate_edges, check_edge_index
from polyscale.diffusion.graph import GraphLayout


class GraphFeatureDataset(Dataset):
    """Graphs with node and edge features as training items ``{"x": (n, node_dim), "edge": (m, edge_dim),
    "edges": (2, m)}`` (each undirected edge once). ``graphs`` are PyG ``Data`` objects whose ``edge_index``
    lists both directions in the :func:`polyscale.data.graphs.to_data` layout."""

    def __init__(self, graphs: Sequence[Data], *, node_dim: int, edge_dim: int) -> None:
        if not graphs:
            raise ValueError("no graphs")
        self.items = []
        for i, d in enumerate(graphs):
            check_edge_index(d.edge_index, d.num_nodes, name=f"graph {i}: edge_index")
            if d.edge_index.shape[1] % 2:
                raise ValueError(
                    f"graph {i}: edge_index must list both directions of each edge (2m columns, as "
                    f"polyscale.data.graphs.to_data writes them), got {d.edge_index.shape[1]} columns"
                )
            m = d.edge_index.shape[1] // 2
            if node_dim and d.x is None:
                raise ValueError(f"graph {i} has no x (node features), expected {node_dim} columns")
            if edge_dim and m and d.edge_attr is None:
                raise ValueError(f"graph {i} has no edge_attr (edge features), expected {edge_dim} columns")
            node = d.x if node_dim else torch.zeros(d.num_nodes, 0)
            edge = d.edge_attr[:m] if edge_dim and m else torch.zeros(m, edge_dim)
            if node.shape != (d.num_nodes, node_dim) or edge.shape != (m, edge_dim):
                raise ValueError(
                    f"graph {i}: expected x ({d.num_nodes}, {node_dim}) and edge_attr rows ({m}, {edge_dim}), "
                    f"got {tuple(node.shape)} and {tuple(edge.shape)}"
                )
            self.items.append({"x": node.float(), "edge": edge.float(), "edges": d.edge_index[:, :m].long()})
        self.node_dim, self.edge_dim = node_dim, edge_dim

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        return self.items[index]


def collate_graphs(items: list[dict[str, Tensor]]) -> dict:
    """Batch graph items into ``{"x": packed (M, 1), "layout": GraphLayout}`` (node ids offset per graph).

    Items with an ``"edge_cond"`` (clean per-edge conditioning: ``(m, F)`` for both directions alike, or
    ``(2m, F)`` with the ``m`` forward rows first) add ``"edge_cond"`` ``(2m_total, F)`` in the layout's edge
    order (all forward directions, then all reverse). Items with ``"triangles"`` (``(3, T)`` directed-edge ids
    in the item's own layout order) and ``"triangle_cond"`` ``(T, F)`` add both, ids renumbered to the batch
    (``"crossings"`` ``(2, X)`` and ``"crossing_cond"`` likewise); items with a ``"box"`` ``(2,)`` add ``"box"``
    ``(G, 2)``, and a ``"periodic"`` ``()`` flag ``"periodic"`` ``(G,)``.
    """
    if not items:
        raise ValueError("collate_graphs needs at least one graph item, got none")
    nodes, edges, lists, batch, offset = [], [], [], [], 0
    conds = [item["edge_cond"] for item in items] if "edge_cond" in items[0] else None
    for g, item in enumerate(items):
        n = item["x"].shape[0]
        nodes.append(item["x"])
        edges.append(item["edge"])
        lists.append(item["edges"] + offset)
        batch.append(torch.full((n,), g, dtype=torch.long))
        offset += n
    layout = GraphLayout.from_undirected(
        torch.cat(lists, dim=1),
        torch.cat(batch),
        node_dim=items[0]["x"].shape[1],
        edge_dim=items[0]["edge"].shape[1],
    )
    out = {"x": layout.pack(torch.cat(nodes), torch.cat(edges)), "layout": layout}
    if conds is not None:
        forward, reverse = [], []
        for item, cond in zip(items, conds, strict=True):
            m = item["edges"].shape[1]
            if cond.shape[0] not in (m, 2 * m):
                raise ValueError(f"edge_cond must have m={m} or 2m={2 * m} rows, got {tuple(cond.shape)}")
            forward.append(cond[:m])
            reverse.append(cond[m:] if cond.shape[0] == 2 * m else cond)
        out["edge_cond"] = torch.cat(forward + reverse)
    for name in ("box", "periodic"):  # per-graph domain (W, H) of the positions stage, and whether a torus
        if name in items[0]:
            out[name] = torch.stack([item[name] for item in items])
    for name, cond_name in (("triangles", "triangle_cond"), ("crossings", "crossing_cond")):
        if name not in items[0]:
            continue
        total = layout.num_edges
        renumbered, first = [], 0  # first: the item's first forward edge in the batch
        for item in items:
            m, t = item["edges"].shape[1], item[name]
            renumbered.append(torch.where(t < m, t + first, t - m + total + first))
            first += m
        out[name] = torch.cat(renumbered, dim=1)
        out[cond_name] = torch.cat([item[cond_name] for item in items])
    return out


def graph_positions(g: nx.Graph) -> Tensor:
    """``(n, 2)`` float32 node positions (the ``pos`` attribute the generators set)."""
    pos = nx.get_node_attributes(g, "pos")
    if len(pos) != g.number_of_nodes():
        raise ValueError("structure generation needs a 'pos' attribute (a 2D position) on every node")
    return torch.tensor([pos[i] for i in range(g.number_of_nodes())], dtype=torch.float32)


def graph_box(g: nx.Graph, pos: Tensor) -> tuple[Tensor, Tensor]:
    """Positions and their domain ``(W, H)``: ``g.graph["box"]`` as the generator recorded it, else the
    bounding box of the positions (moved to start at the origin)."""
    if "box" in g.graph:
        return pos, torch.tensor(g.graph["box"], dtype=torch.float32)
    pos = pos - pos.min(dim=0).values
    return pos, pos.max(dim=0).values


class PositionDataset(Dataset):
    """Items ``{"x": pos (n, 2), "edge": (0, 0), "edges": (2, 0), "box": (2,), "periodic": ()}`` for the
    positions stage. A torus grid (``g.graph["periodic"]``, :func:`~polyscale.data.graphs.grid_graph`) has as
    box its period ``(rows, cols)``, so its nodes fill the box at one per unit area like a bounded grid's."""

    def __init__(self, graphs: Sequence[nx.Graph]) -> None:
        self.items = []
        for g in graphs:
            periodic = bool(g.graph.get("periodic", False))
            if periodic:
                pos, box = graph_positions(g), torch.tensor(g.graph["grid_shape"], dtype=torch.float32)
            else:
                pos, box = graph_box(g, graph_positions(g))
            self.items.append(
                {"x": pos, "edge": torch.zeros(0, 0), "edges": torch.zeros(2, 0).long(), "box": box,
                 "periodic": torch.tensor(periodic)}
            )  # fmt: skip

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        return self.items[i]


class CandidateDataset(Dataset):
    """Items for the edge stage: candidates = :func:`candidate_edges` of the true positions, label +1 for an
    edge of the graph and -1 otherwise, plus the conditioning of :func:`candidate_conditioning` (candidate
    geometry per direction, the candidate graph's triangles and their geometry; with ``crossings=True`` the
    crossing candidate pairs too). ``coverage`` holds, per graph, the share of its edges among the
    candidates."""

    def __init__(
        self,
        graphs: Sequence[nx.Graph],
        *,
        k: int = 10,
        sectors: int = 0,
        hull: bool = False,
        max_length: float | None = None,
        crossings: bool = False,
    ) -> None:
        self.items, self.coverage = [], []
        for g in graphs:
            pos = graph_positions(g)
            batch = torch.zeros(len(pos), dtype=torch.long)
            cand = candidate_edges(
                pos, batch, k=k, sectors=sectors, hull=hull, max_length=max_length
            )  # (2, m)
            present = {(min(u, v), max(u, v)) for u, v in g.edges}
            label = torch.tensor([1.0 if (int(u), int(v)) in present else -1.0 for u, v in cand.T])[:, None]
            self.coverage.append(float((label > 0).sum()) / max(len(present), 1))
            item = {"x": torch.zeros(len(pos), 0), "edge": label, "edges": cand}
            self.items.append({**item, **candidate_conditioning(pos, cand, crossings=crossings)})

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        return self.items[i]


__all__ = [
    "CandidateDataset",
    "GraphFeatureDataset",
    "PositionDataset",
    "collate_graphs",
    "graph_box",
    "graph_positions",
]
