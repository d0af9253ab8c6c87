"""Structure generation: graphs themselves, in two diffusion stages, with the number of nodes chosen at
sampling time.

1. **Positions.** Node positions in density units (about one node per unit area, see
   :mod:`polyscale.data.graphs`) are denoised by a :class:`PositionDenoiser`: a :class:`GraphDenoiser` on the
   k-nearest-neighbour graph of the *current noisy* positions, reading only relative positions (translation
   invariant, no absolute coordinate, no graph size), eps-parametrised so that ``D(x + t) = D(x) + t``.
   Sampling starts from uniform positions in a square of area ``n`` plus ``sigma_max`` noise: the domain is
   given, the local arrangement is generated.
2. **Edges.** Over a candidate set, the k-nearest-neighbour graph of the generated positions, edge existence
   (+1 / -1) is denoised by a :class:`GraphDenoiser` with edge features only, conditioned on the geometry of
   each candidate (the vector from one end to the other and its length, per direction, so every node knows
   where its candidate neighbours lie); the two directions' outputs are averaged, and candidates whose final
   value is positive become edges. The candidate set does not make validity automatic: a k-NN graph
   (k = 10 by default) has crossing edges and more edges than a planar graph may have, so planarity and
   connectivity are up to the model.
"""

from __future__ import annotations

from collections.abc import Sequence

import networkx as nx
import numpy as np
import torch
from scipy.spatial import cKDTree
from torch import Tensor, nn
from torch.utils.data import Dataset

from polyscale.diffusion.graph import GraphLayout
from polyscale.nn.graph import GraphDenoiser
from polyscale.pipelines.graph import sample_packed

POSITION_EDGE_FEATURES = 3  # (dx, dy, |d|) of the source -> target vector, scaled by c_in
CANDIDATE_FEATURES = 3  # (dx, dy, |d|) of each direction of a candidate


def knn_edges(pos: Tensor, batch: Tensor, k: int) -> Tensor:
    """Undirected k-nearest-neighbour edges within each graph, ``(2, m)`` int64 with ``u < v``, each once.

    ``pos (N, 2)``, ``batch (N,)``; a graph with ``n <= k`` nodes becomes complete. Built with a k-d tree
    per graph (``O(n log n)``), so 100,000 nodes take about a second.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    p = pos.detach().cpu().double().numpy()
    b = batch.detach().cpu().numpy()
    pairs = []
    for g in np.unique(b):
        ids = np.nonzero(b == g)[0]
        if len(ids) < 2:
            continue
        kk = min(k + 1, len(ids))
        _, nbr = cKDTree(p[ids]).query(p[ids], kk)  # (n, kk), column 0 is the point itself
        u = np.repeat(np.arange(len(ids)), kk - 1)
        v = nbr[:, 1:].reshape(-1)
        pairs.append(np.stack([ids[np.minimum(u, v)], ids[np.maximum(u, v)]]))
    if not pairs:
        return torch.zeros(2, 0, dtype=torch.long, device=pos.device)
    both = np.unique(np.concatenate(pairs, axis=1), axis=1)  # (2, m) sorted, unique
    return torch.from_numpy(both).long().to(pos.device)


def candidate_geometry(pos: Tensor, edges: Tensor) -> Tensor:
    """``(2m, 3)`` features of both directions of undirected candidates ``edges (2, m)`` in the layout order
    (the ``m`` edges ``u -> v``, then ``v -> u``): the vector from source to target and its length."""
    r = pos[edges[1]] - pos[edges[0]]  # (m, 2)
    length = r.norm(dim=1, keepdim=True)  # (m, 1)
    return torch.cat([torch.cat([r, length], 1), torch.cat([-r, length], 1)])


class PositionDenoiser(nn.Module):
    """Denoiser of packed positions ``(2N, 1)`` (layout ``node_dim=2, edge_dim=0``): ``D(x, sigma) = x - sigma
    * eps_hat``, ``eps_hat`` from ``net`` on the k-NN graph of the noisy positions with edge features
    ``c_in (x_dst - x_src, |x_dst - x_src|)``, ``c_in = 1 / sqrt(1 + sigma^2)``. ``net`` must be a
    :class:`GraphDenoiser` with ``node_dim=2``, ``edge_cond_dim=3`` and ``use_node_state=False``."""

    def __init__(self, net: GraphDenoiser, *, k: int = 8) -> None:
        super().__init__()
        cfg = net.config
        if (cfg.node_dim, cfg.edge_dim, cfg.edge_cond_dim, cfg.use_node_state) != (2, 0, 3, False):
            raise ValueError(
                "PositionDenoiser needs GraphDenoiser(node_dim=2, edge_dim=0, edge_cond_dim=3, "
                f"use_node_state=False), got {cfg}"
            )
        self.net, self.k = net, k

    def forward(
        self, x: Tensor, sigma: Tensor, *, layout: GraphLayout, scale: Tensor | None = None
    ) -> Tensor:
        pos, _ = layout.unpack(x)  # (N, 2)
        sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device).expand(x.shape[0])
        sigma_node = layout.per_graph(sigma)[layout.batch]  # (N,)
        edges = knn_edges(pos, layout.batch, self.k)
        src, dst = torch.cat([edges, edges.flip(0)], dim=1)  # (2E,) both directions
        c_in = (1 + sigma_node**2).rsqrt()  # (N,)
        rel = (pos[dst] - pos[src]) * c_in[src, None]  # (2E, 2)
        edge_cond = torch.cat([rel, rel.norm(dim=1, keepdim=True)], dim=1)  # (2E, 3)
        c_noise = sigma_node.clamp(min=1e-20).log() / 4
        eps, _ = self.net(
            torch.zeros_like(pos), torch.stack([src, dst]), None, c_noise,
            batch=layout.batch, edge_cond=edge_cond, scale=scale,
        )  # fmt: skip
        return x - sigma[:, None] * layout.pack(eps, None)


def eps_weight(sigma: Tensor) -> Tensor:
    """Loss weight ``1 / sigma^2``: with ``D = x - sigma eps_hat`` the loss is then ``|eps_hat - eps|^2``."""
    return sigma.pow(-2)


# ------------------------------------------------------------------------------------------------ datasets


def graph_positions(g: nx.Graph) -> Tensor:
    """``(n, 2)`` float32 node positions (the ``pos`` attribute the generators set)."""
    pos = nx.get_node_attributes(g, "pos")
    if len(pos) != g.number_of_nodes():
        raise ValueError("structure generation needs a 'pos' attribute (a 2D position) on every node")
    return torch.tensor([pos[i] for i in range(g.number_of_nodes())], dtype=torch.float32)


def centred(pos: Tensor) -> Tensor:
    """Positions moved so their bounding box starts at the origin (a shift: the model does not see it)."""
    return pos - pos.min(dim=0).values


class PositionDataset(Dataset):
    """Items ``{"x": pos (n, 2), "edge": (0, 0), "edges": (2, 0)}`` for the positions stage."""

    def __init__(self, graphs: Sequence[nx.Graph]) -> None:
        self.items = [
            {"x": centred(graph_positions(g)), "edge": torch.zeros(0, 0), "edges": torch.zeros(2, 0).long()}
            for g in graphs
        ]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        return self.items[i]


class CandidateDataset(Dataset):
    """Items for the edge stage: candidates = k-NN graph of the true positions, label +1 for an edge of the
    graph and -1 otherwise, plus the geometry of both directions of each candidate (``edge_cond``, ``(2m, 3)``)."""

    def __init__(self, graphs: Sequence[nx.Graph], *, k: int = 10) -> None:
        self.items, self.coverage = [], []
        for g in graphs:
            pos = graph_positions(g)
            cand = knn_edges(pos, torch.zeros(len(pos), dtype=torch.long), k)  # (2, m)
            present = {(min(u, v), max(u, v)) for u, v in g.edges}
            label = torch.tensor([1.0 if (int(u), int(v)) in present else -1.0 for u, v in cand.T])[:, None]
            self.coverage.append(float((label > 0).sum()) / max(len(present), 1))
            self.items.append(
                {
                    "x": torch.zeros(len(pos), 0),
                    "edge": label,
                    "edges": cand,
                    "edge_cond": candidate_geometry(pos, cand),
                }
            )

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        return self.items[i]


# ------------------------------------------------------------------------------------------------ sampling


@torch.no_grad()
def sample_positions(
    denoiser: nn.Module,
    num_nodes: int,
    *,
    sampler: str = "heun",
    steps: int = 32,
    sigma_max: float = 3.0,
    sigma_min: float = 0.002,
    rho: float = 7.0,
    generator: torch.Generator | None = None,
    progress: bool = False,
) -> Tensor:
    """``(num_nodes, 2)`` positions: uniform in a square of area ``num_nodes`` plus ``sigma_max`` noise,
    denoised by a :class:`PositionDenoiser` (wrapped as needed) with any sampler."""
    if num_nodes < 2:
        raise ValueError(f"num_nodes must be >= 2, got {num_nodes}")
    device = next(denoiser.parameters()).device
    layout = GraphLayout(
        torch.zeros(2, 0, dtype=torch.long, device=device),
        torch.zeros(num_nodes, dtype=torch.long, device=device),
        2,
        0,
    )
    side = num_nodes**0.5
    start = torch.rand(num_nodes, 2, generator=generator, device=device) * side
    x = start.reshape(-1, 1) + sigma_max * torch.randn(2 * num_nodes, 1, generator=generator, device=device)
    out = sample_packed(
        denoiser, layout, x, sampler=sampler, steps=steps, sigma_max=sigma_max, sigma_min=sigma_min, rho=rho,
        generator=generator, progress=progress,
    )  # fmt: skip
    return out.view(num_nodes, 2)


@torch.no_grad()
def sample_edges(
    denoiser: nn.Module,
    pos: Tensor,
    *,
    k: int = 10,
    sampler: str = "heun",
    steps: int = 32,
    sigma_max: float = 80.0,
    sigma_min: float = 0.002,
    rho: float = 7.0,
    generator: torch.Generator | None = None,
    progress: bool = False,
) -> nx.Graph:
    """The graph on positions ``pos (n, 2)``: k-NN candidates, edge existence denoised by a packed edge
    denoiser (:func:`polyscale.pipelines.graph.graph_denoiser` around a ``GraphDenoiser(node_dim=0,
    edge_dim=1, edge_cond_dim=3)``), candidates ending above 0 kept."""
    n = pos.shape[0]
    batch = torch.zeros(n, dtype=torch.long, device=pos.device)
    cand = knn_edges(pos, batch, k)
    layout = GraphLayout.from_undirected(cand, batch, node_dim=0, edge_dim=1)
    geometry = candidate_geometry(pos, cand)
    x = torch.randn(cand.shape[1], 1, generator=generator, device=pos.device) * sigma_max
    out = sample_packed(
        denoiser, layout, x, sampler=sampler, steps=steps, sigma_max=sigma_max, sigma_min=sigma_min, rho=rho,
        generator=generator, progress=progress, edge_cond=geometry,
    )  # fmt: skip
    keep = cand[:, out[:, 0] > 0].cpu().numpy()
    g = nx.Graph()
    g.add_nodes_from(range(n))
    g.add_edges_from(keep.T.tolist())
    nx.set_node_attributes(g, {i: tuple(map(float, p)) for i, p in enumerate(pos.cpu().numpy())}, "pos")
    return g


def position_net(**kwargs) -> GraphDenoiser:
    """A :class:`GraphDenoiser` shaped for :class:`PositionDenoiser` (other arguments: width, depth, heads)."""
    return GraphDenoiser(node_dim=2, edge_dim=0, edge_cond_dim=3, use_node_state=False, **kwargs)


def edge_net(**kwargs) -> GraphDenoiser:
    """A :class:`GraphDenoiser` shaped for the edge stage."""
    return GraphDenoiser(node_dim=0, edge_dim=1, edge_cond_dim=CANDIDATE_FEATURES, **kwargs)


__all__ = [
    "CandidateDataset",
    "PositionDataset",
    "PositionDenoiser",
    "candidate_geometry",
    "edge_net",
    "eps_weight",
    "knn_edges",
    "position_net",
    "sample_edges",
    "sample_positions",
]
