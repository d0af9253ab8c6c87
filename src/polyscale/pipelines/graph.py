"""Graph diffusion end to end: datasets of graphs with features, batching, the loss, and feature generation
on any given connectivity (``sample_graph_features``), with every sampler of the diffusion core.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset
from torch_geometric.data import Data

from polyscale.diffusion import EDMPrecond, get_sampler, sigmas_karras
from polyscale.diffusion.graph import GraphLayout, PackedGraphNet, graph_edm_loss
from polyscale.nn.graph import GraphDenoiser


class GraphFeatureDataset(Dataset):
    """Graphs with node and edge features as training items ``{"x": (n, node_dim), "edge": (m, edge_dim),
    "edges": (2, m)}`` (each undirected edge once). ``graphs`` are PyG ``Data`` objects whose ``edge_index``
    lists both directions in the :func:`polyscale.data.graphs.to_data` layout."""

    def __init__(self, graphs: Sequence[Data], *, node_dim: int, edge_dim: int) -> None:
        if not graphs:
            raise ValueError("no graphs")
        self.items = []
        for i, d in enumerate(graphs):
            m = d.edge_index.shape[1] // 2
            node = d.x if node_dim else torch.zeros(d.num_nodes, 0)
            edge = d.edge_attr[:m] if edge_dim else torch.zeros(m, 0)
            if node.shape != (d.num_nodes, node_dim) or edge.shape != (m, edge_dim):
                raise ValueError(
                    f"graph {i}: expected x ({d.num_nodes}, {node_dim}) and edge_attr rows ({m}, {edge_dim}), "
                    f"got {tuple(node.shape)} and {tuple(edge.shape)}"
                )
            self.items.append({"x": node.float(), "edge": edge.float(), "edges": d.edge_index[:, :m]})
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


def graph_denoiser(net: GraphDenoiser, *, sigma_data: float = 1.0) -> EDMPrecond:
    """EDM-preconditioned denoiser over packed graph states: ``D(x (M, 1), sigma (M,), *, layout)``."""
    return EDMPrecond(PackedGraphNet(net), sigma_data=sigma_data)


class GraphLoss:
    """The training loop's ``loss_fn`` for graphs: :func:`graph_edm_loss`, one value per graph (``weight``:
    the loss weight as a function of sigma, default EDM's ``lambda``; ``perturb``: an input perturbation)."""

    def __init__(
        self, *, P_mean: float = -1.2, P_std: float = 1.2, sigma_data: float = 1.0, weight=None, perturb=None
    ) -> None:
        self.P_mean, self.P_std, self.sigma_data, self.weight = P_mean, P_std, sigma_data, weight
        self.perturb = perturb

    def set_step(self, step: int) -> None:
        """Passed on to ``perturb`` when it follows the training step (``NodeJumps`` with a schedule)."""
        if hasattr(self.perturb, "set_step"):
            self.perturb.set_step(step)

    def __call__(
        self, model: nn.Module, x0: Tensor, *, generator: torch.Generator, layout: GraphLayout, **cond
    ):
        return graph_edm_loss(
            model, x0, layout, P_mean=self.P_mean, P_std=self.P_std, sigma_data=self.sigma_data,
            generator=generator, weight=self.weight, perturb=self.perturb, **cond,
        )  # fmt: skip


def undirected_edges(edge_index: Tensor, num_nodes: int) -> tuple[Tensor, Tensor]:
    """Each undirected edge once, ``(2, m)`` with ``u < v``, and the edge of each column of ``edge_index``
    ``(E,)`` (both directions of an edge map to the same one). Self-loops are an error."""
    if edge_index.ndim != 2 or edge_index.shape[0] != 2:
        raise ValueError(f"edge_index must be (2, num_edges), got shape {tuple(edge_index.shape)}")
    if edge_index.numel() and (int(edge_index.min()) < 0 or int(edge_index.max()) >= num_nodes):
        raise ValueError(f"edge_index refers to nodes outside 0..{num_nodes - 1}")
    u, v = edge_index.long()
    if bool((u == v).any()):
        raise ValueError("edge_index has self-loops; graph features are defined on edges between two nodes")
    key = torch.minimum(u, v) * num_nodes + torch.maximum(u, v)  # (E,) one id per undirected pair
    unique, inverse = torch.unique(key, return_inverse=True)
    return torch.stack([unique // num_nodes, unique % num_nodes]), inverse


def sample_packed(
    denoiser: nn.Module, layout: GraphLayout, x: Tensor, *, sampler: str, steps: int, sigma_max: float,
    sigma_min: float, rho: float, generator: torch.Generator | None, progress: bool,
    sampler_options: dict | None = None, **cond,
) -> Tensor:  # fmt: skip
    """Run sampler ``sampler`` (with keyword arguments ``sampler_options``, e.g. Heun's ``s_churn``) from the
    packed start ``x (M, 1)`` (already at noise ``sigma_max``) down a Karras schedule of ``steps`` levels, the
    denoiser called with ``layout`` and ``cond``."""
    sigmas = sigmas_karras(steps, sigma_min, sigma_max, rho=rho).to(x.device)
    fn = get_sampler(sampler)
    return fn(denoiser, x, sigmas, generator=generator, disable=not progress, cond={"layout": layout, **cond},
              **(sampler_options or {}))  # fmt: skip


@torch.no_grad()
def sample_graph_features(
    denoiser: nn.Module,
    num_nodes: int,
    num_edges: int,
    node_dim: int,
    edge_dim: int,
    edge_index: Tensor,
    *,
    sampler: str = "heun",
    steps: int = 32,
    sigma_min: float = 0.002,
    sigma_max: float = 80.0,
    rho: float = 7.0,
    generator: torch.Generator | None = None,
    scale: float | None = None,
    progress: bool = False,
) -> tuple[Tensor, Tensor]:
    """Generate node and edge features on the given connectivity: ``(node_features (num_nodes, node_dim),
    edge_features (num_edges, edge_dim))``, edge rows in the order of ``edge_index`` (``(2, num_edges)``; an
    undirected edge listed in both directions gets the same features twice).

    ``denoiser`` is a packed-graph denoiser (:func:`graph_denoiser`); ``sampler`` any name of
    :data:`polyscale.diffusion.SAMPLERS`; ``scale`` the user's scale factor ``s`` (default 1).
    """
    if edge_index.shape != (2, num_edges):
        raise ValueError(
            f"edge_index must have shape (2, num_edges={num_edges}), got {tuple(edge_index.shape)}"
        )
    if num_nodes < 1:
        raise ValueError(f"num_nodes must be >= 1, got {num_nodes}")
    device = next(denoiser.parameters()).device
    edges, inverse = undirected_edges(edge_index.to(device), num_nodes)
    layout = GraphLayout.from_undirected(
        edges, torch.zeros(num_nodes, dtype=torch.long, device=device), node_dim=node_dim, edge_dim=edge_dim
    )
    x = torch.randn(layout.size, 1, generator=generator, device=device) * sigma_max
    cond: dict = {}
    if scale is not None:
        cond["scale"] = torch.tensor([float(scale)], device=device)
    out = sample_packed(
        denoiser, layout, x, sampler=sampler, steps=steps, sigma_max=sigma_max, sigma_min=sigma_min, rho=rho,
        generator=generator, progress=progress, **cond,
    )  # fmt: skip
    node, edge = layout.unpack(out)
    node = node if node is not None else out.new_zeros(num_nodes, 0)
    edge = edge[inverse] if edge is not None else out.new_zeros(num_edges, 0)
    return node, edge
