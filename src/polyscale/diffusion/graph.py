"""Graphs as diffusion states: node and edge features packed into one ``(M, 1)`` tensor, so every sampler
(which only needs a tensor whose first axis is the batch and a ``sigma`` per row) runs on graphs unchanged.

A :class:`GraphLayout` records where each graph's numbers sit: ``M = N * node_dim + m * edge_dim`` rows, the
node block first (node-major), then one block per *undirected* edge (so the two directions of an edge can never
disagree). Per-graph scalars meet the rows through :meth:`GraphLayout.expand` (``sigma[batch]`` for nodes,
``sigma[batch[edge source]]`` for edges): the graph version of ``append_dims``.

:class:`PackedGraphNet` adapts a graph network ``net(x, edge_index, edge_attr, c_noise, *, batch, ...) ->
(node, edge)`` to the raw-network contract ``net(x_packed, c_noise_packed, **cond) -> (M, 1)`` that
:class:`~polyscale.diffusion.EDMPrecond` wraps; :func:`graph_edm_loss` is EDM's loss with one sigma per graph.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from polyscale.diffusion.sampling import SamplerConfig, run_sampler


@dataclass
class GraphLayout:
    """Where the features of a batch of graphs sit in a packed ``(M, 1)`` state.

    Attributes:
        edge_index: ``(2, 2m)`` directed edges: column ``k < m`` is undirected edge ``k`` one way, column
            ``m + k`` the same edge the other way (the layout :func:`polyscale.data.graphs.to_data` makes).
        batch: ``(N,)`` graph of each node, ``0 .. num_graphs - 1``.
        node_dim, edge_dim: features per node and per undirected edge.
    """

    edge_index: Tensor
    batch: Tensor
    node_dim: int
    edge_dim: int

    def __post_init__(self) -> None:
        if self.edge_index.ndim != 2 or self.edge_index.shape[0] != 2 or self.edge_index.shape[1] % 2:
            raise ValueError(
                f"edge_index must be (2, 2m) with both directions of each edge, got {tuple(self.edge_index.shape)}"
            )
        m = self.edge_index.shape[1] // 2
        if m and not torch.equal(self.edge_index[:, :m], self.edge_index[:, m:].flip(0)):
            raise ValueError("edge_index columns m..2m-1 must be columns 0..m-1 reversed (see GraphLayout)")
        if self.node_dim < 0 or self.edge_dim < 0 or self.node_dim + self.edge_dim == 0:
            raise ValueError(f"need node_dim + edge_dim >= 1, got {self.node_dim} and {self.edge_dim}")

    def to(self, device: torch.device | str, non_blocking: bool = False) -> GraphLayout:
        """The same layout with its index tensors on ``device`` (so batches move like tensors)."""
        return GraphLayout(
            self.edge_index.to(device, non_blocking=non_blocking),
            self.batch.to(device, non_blocking=non_blocking),
            self.node_dim,
            self.edge_dim,
        )

    @classmethod
    def from_undirected(cls, edges: Tensor, batch: Tensor, *, node_dim: int, edge_dim: int) -> GraphLayout:
        """Layout of undirected ``edges (2, m)`` (each listed once)."""
        return cls(torch.cat([edges, edges.flip(0)], dim=1), batch, node_dim, edge_dim)

    @property
    def num_nodes(self) -> int:
        return self.batch.shape[0]

    @property
    def num_edges(self) -> int:
        """Undirected edges ``m``."""
        return self.edge_index.shape[1] // 2

    @property
    def num_graphs(self) -> int:
        return int(self.batch.max()) + 1 if self.num_nodes else 0

    @property
    def size(self) -> int:
        """Rows ``M`` of the packed state."""
        return self.num_nodes * self.node_dim + self.num_edges * self.edge_dim

    def pack(self, node: Tensor | None, edge: Tensor | None) -> Tensor:
        """``node (N, node_dim)``, ``edge (m, edge_dim)`` -> ``(M, 1)``."""
        parts = []
        if self.node_dim:
            parts.append(_checked(node, (self.num_nodes, self.node_dim), "node features").reshape(-1))
        if self.edge_dim:
            parts.append(_checked(edge, (self.num_edges, self.edge_dim), "edge features").reshape(-1))
        return torch.cat(parts)[:, None]

    def unpack(self, x: Tensor) -> tuple[Tensor | None, Tensor | None]:
        """``(M, 1)`` -> ``node (N, node_dim)`` or None, ``edge (m, edge_dim)`` or None."""
        _checked(x, (self.size, 1), "packed graph state")
        split = self.num_nodes * self.node_dim
        node = x[:split].view(self.num_nodes, self.node_dim) if self.node_dim else None
        edge = x[split:].view(self.num_edges, self.edge_dim) if self.edge_dim else None
        return node, edge

    def row_graph(self) -> Tensor:
        """``(M,)`` graph of every row of the packed state."""
        edge_graph = self.batch[self.edge_index[0, : self.num_edges]]  # (m,)
        return torch.cat(
            [self.batch.repeat_interleave(self.node_dim), edge_graph.repeat_interleave(self.edge_dim)]
        )

    def expand(self, per_graph: Tensor) -> Tensor:
        """A per-graph scalar ``(G,)`` on every row, ``(M,)``."""
        return per_graph[self.row_graph()]

    def per_graph(self, per_row: Tensor) -> Tensor:
        """Inverse of :meth:`expand` for values constant within each graph: ``(M,)`` -> ``(G,)``."""
        out = per_row.new_zeros(self.num_graphs)
        return out.scatter(0, self.row_graph(), per_row)  # all rows of a graph agree: any one wins

    def graph_mean(self, per_row: Tensor) -> Tensor:
        """Mean over each graph's rows, ``(M,)`` -> ``(G,)``."""
        graphs = self.row_graph()
        total = per_row.new_zeros(self.num_graphs).index_add_(0, graphs, per_row)
        count = per_row.new_zeros(self.num_graphs).index_add_(0, graphs, torch.ones_like(per_row))
        return total / count.clamp(min=1)


def _checked(t: Tensor | None, shape: tuple[int, ...], what: str) -> Tensor:
    if t is None or tuple(t.shape) != shape:
        raise ValueError(f"{what} must have shape {shape}, got {None if t is None else tuple(t.shape)}")
    return t


class PackedGraphNet(nn.Module):
    """``net(x, edge_index, edge_attr, c_noise, *, batch, **cond) -> (node, edge)`` as a raw network on packed
    states: ``forward(x (M, 1), c_noise (M,), *, layout, **cond) -> (M, 1)``. The net sees both directions of
    every edge; its two edge outputs per undirected edge are averaged."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: Tensor, c_noise: Tensor, *, layout: GraphLayout, **cond) -> Tensor:
        node, edge = layout.unpack(x)
        c_node = layout.per_graph(c_noise)[layout.batch]  # (N,)
        if node is None:
            node = x.new_zeros(layout.num_nodes, 0)
        edge_attr = torch.cat([edge, edge]) if edge is not None else None  # (2m, edge_dim), both directions
        node_out, edge_out = self.net(node, layout.edge_index, edge_attr, c_node, batch=layout.batch, **cond)
        if edge_out is not None and layout.edge_dim:
            m = layout.num_edges
            edge_out = (edge_out[:m] + edge_out[m:]) / 2  # (m, edge_dim)
        return layout.pack(node_out if layout.node_dim else None, edge_out if layout.edge_dim else None)


def graph_edm_loss(
    denoiser: nn.Module,
    x0: Tensor,
    layout: GraphLayout,
    *,
    P_mean: float = -1.2,
    P_std: float = 1.2,
    sigma_data: float = 1.0,
    generator: torch.Generator | None = None,
    weight: Callable[[Tensor], Tensor] | None = None,
    perturb: Callable[..., Tensor] | None = None,
    **cond,
) -> Tensor:
    """EDM's loss with one ``ln sigma ~ N(P_mean, P_std^2)`` per graph: ``(G,)`` per-graph mean of
    ``lambda(sigma) |D(x0 + sigma n, sigma) - x0|^2`` over the graph's rows (``x0`` packed, ``(M, 1)``).
    ``weight(sigma)`` replaces EDM's ``lambda(sigma) = (sigma^2 + sd^2) / (sigma sd)^2`` when given (e.g.
    ``1 / sigma^2`` for an eps-parametrised denoiser). ``perturb(x, layout=, generator=)`` (optional) changes
    the noisy input while the target stays ``x0``: input perturbation against exposure bias (the sampler
    meets states the forward process never makes, and the denoiser learns to lead them back)."""
    g = layout.num_graphs
    sigma = (torch.randn(g, generator=generator, device=x0.device, dtype=x0.dtype) * P_std + P_mean).exp()
    rows = layout.expand(sigma)  # (M,)
    noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
    x = x0 + rows[:, None] * noise
    if perturb is not None:
        x = perturb(x, layout=layout, generator=generator)
    denoised = denoiser(x, rows, layout=layout, **cond)
    if weight is None:
        w = (rows**2 + sigma_data**2) / (rows * sigma_data) ** 2  # lambda(sigma), (M,)
    else:
        w = weight(rows)
    return layout.graph_mean(w * (denoised - x0).pow(2).sum(dim=1))  # (G,)


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


# the most nodes whose pair keys ``u * n + v`` (one int64 per undirected edge) cannot overflow: isqrt(2^63 - 1)
MAX_KEYED_NODES = math.isqrt(2**63 - 1)  # 3,037,000,499


def check_num_nodes(num_nodes: int, what: str = "the graph") -> int:
    """``num_nodes`` unless it is above :data:`MAX_KEYED_NODES` (then a ``ValueError`` naming the limit): edge
    sets are deduplicated and sorted through the 64-bit key ``u * num_nodes + v``."""
    if int(num_nodes) > MAX_KEYED_NODES:
        raise ValueError(
            f"{what} has {int(num_nodes):,} nodes, more than {MAX_KEYED_NODES:,}, the most whose node pairs "
            "u * n + v fit in a 64-bit integer key"
        )
    return int(num_nodes)


def check_edge_index(edge_index: Tensor, num_nodes: int, *, name: str = "edge_index") -> Tensor:
    """``edge_index`` itself if it is a ``(2, E)`` tensor of integer node ids (any integer dtype) in
    ``0 .. num_nodes - 1`` with ``num_nodes`` at most :data:`MAX_KEYED_NODES`; else a ``ValueError`` that
    names ``name`` and what is wrong. Floating-point ids are refused rather than truncated (1.7 is no node)."""
    if not isinstance(edge_index, Tensor):
        raise ValueError(f"{name} must be a tensor (2, E) of node ids, got {type(edge_index).__name__}")
    dtype = edge_index.dtype
    if dtype.is_floating_point or dtype.is_complex or dtype == torch.bool:
        raise ValueError(
            f"{name} must hold integer node ids (e.g. torch.long), got dtype {dtype}; convert it with "
            ".long() if it holds whole numbers"
        )
    if edge_index.ndim != 2 or edge_index.shape[0] != 2:
        raise ValueError(f"{name} must have shape (2, E), got {tuple(edge_index.shape)}")
    check_num_nodes(num_nodes, f"the graph of {name}")
    if edge_index.numel():
        lo, hi = int(edge_index.min()), int(edge_index.max())
        if lo < 0 or hi >= num_nodes:
            raise ValueError(
                f"{name} refers to node {lo if lo < 0 else hi}, outside the graph's nodes 0..{num_nodes - 1}"
            )
    return edge_index


def undirected_edges(edge_index: Tensor, num_nodes: int) -> tuple[Tensor, Tensor]:
    """Each undirected edge once, ``(2, m)`` with ``u < v``, and the edge of each column of ``edge_index``
    ``(E,)`` (both directions of an edge map to the same one). Self-loops are an error."""
    u, v = check_edge_index(edge_index, num_nodes).long()
    if bool((u == v).any()):
        raise ValueError("edge_index has self-loops; graph features are defined on edges between two nodes")
    key = torch.minimum(u, v) * num_nodes + torch.maximum(u, v)  # (E,) one id per undirected pair
    unique, inverse = torch.unique(key, return_inverse=True)
    return torch.stack([unique // num_nodes, unique % num_nodes]), inverse


def sample_packed(
    denoiser: nn.Module, layout: GraphLayout, x: Tensor, sampler: SamplerConfig, *,
    generator: torch.Generator | None = None, progress: bool = False, desc: str | None = None, **cond,
) -> Tensor:  # fmt: skip
    """Run ``sampler`` (:func:`~polyscale.diffusion.sampling.run_sampler`) from the packed start ``x (M, 1)``
    (already at noise ``sampler.sigma_max``), the denoiser called with ``layout`` and ``cond``; ``progress``
    shows a bar labelled ``desc``."""
    return run_sampler(
        denoiser,
        x,
        sampler,
        generator=generator,
        progress=progress,
        desc=desc,
        cond={"layout": layout, **cond},
    )


@torch.no_grad()
def sample_graph_features(
    denoiser: nn.Module,
    num_nodes: int,
    num_edges: int,
    node_dim: int,
    edge_dim: int,
    edge_index: Tensor,
    *,
    sampler: SamplerConfig | None = None,
    generator: torch.Generator | None = None,
    scale: float | None = None,
    progress: bool = False,
    desc: str | None = None,
) -> tuple[Tensor, Tensor]:
    """Generate node and edge features on the given connectivity: ``(node_features (num_nodes, node_dim),
    edge_features (num_edges, edge_dim))``, edge rows in the order of ``edge_index`` (``(2, num_edges)``; an
    undirected edge listed in both directions gets the same features twice).

    ``denoiser`` is a packed-graph denoiser (:func:`polyscale.pipelines.graph_nets.graph_denoiser`);
    ``sampler`` a :class:`~polyscale.diffusion.sampling.SamplerConfig` (default: Heun, 32 levels from 80);
    ``scale`` the user's scale factor ``s`` (default 1); ``progress`` shows a bar labelled ``desc``.
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
    sampler = sampler if sampler is not None else SamplerConfig()
    x = torch.randn(layout.size, 1, generator=generator, device=device) * sampler.sigma_max
    cond: dict = {}
    if scale is not None and not (math.isfinite(scale) and scale > 0):
        raise ValueError(f"scale must be a finite number > 0, got {scale}")
    if scale is not None:
        cond["scale"] = torch.tensor([float(scale)], device=device)
    out = sample_packed(
        denoiser, layout, x, sampler, generator=generator, progress=progress, desc=desc, **cond
    )
    node, edge = layout.unpack(out)
    node = node if node is not None else out.new_zeros(num_nodes, 0)
    edge = edge[inverse] if edge is not None else out.new_zeros(num_edges, 0)
    return node, edge
