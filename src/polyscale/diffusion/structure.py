"""Structure generation in two diffusion stages, graphs themselves with the number of nodes chosen at
sampling time. This module holds the diffusion side; the geometry the stages read is passed in (see
:mod:`polyscale.data.graph_geometry` and :mod:`polyscale.data.graph_features`).

1. **Positions.** Node positions in density units (about one node per unit area, see
   :mod:`polyscale.data.graphs`) are denoised by a :class:`PositionDenoiser`: a graph network on the
   k-nearest-neighbour graph of the *current noisy* positions, reading only relative positions (translation
   invariant, no absolute coordinate, no graph size), eps-parametrised so that ``D(x + t) = D(x) + t``.
   Nodes near the border of the graph's domain (a box, by default the square of area ``n``) also read their
   squashed distances to its sides, which saturate inside. With a ``period`` (lattices) every node also reads
   its phase in the unit cell, so the invariance is to shifts by whole lattice vectors. Sampling starts from
   :func:`start_points` in the box (i.i.d. or stratified) plus ``sigma_max`` noise: the domain is given, the
   local arrangement is generated.
2. **Edges.** Over a candidate set of the generated positions (the k-nearest-neighbour graph, optionally with
   the nearest neighbour per angular sector and the convex hull), edge existence (+1 / -1) is denoised by a
   graph network with edge features only, conditioned on the geometry of each candidate; the two directions'
   outputs are averaged, and candidates whose final value is positive become edges. The candidate set does
   not make validity automatic: it has crossing edges and more edges than a planar graph may have, so
   planarity and connectivity are up to the model.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import networkx as nx
import torch
from torch import Tensor, nn

from polyscale.diffusion.graph import GraphLayout, sample_packed
from polyscale.diffusion.precond import ClampedDenoiser
from polyscale.diffusion.sampling import SamplerConfig

# (pos (N, 2), batch (N,), box (G, 2), periodic (G,) or None, sigma per node (N,), per graph (G,))
#   -> (edge_index (2, 2E), node_cond (N, F), edge_cond (2E, 3)); e.g. polyscale.data.graph_features.PositionFeatures
PositionConditioning = Callable[
    [Tensor, Tensor, Tensor, Tensor | None, Tensor, Tensor], tuple[Tensor, Tensor, Tensor]
]
Order = Callable[[Tensor], Tensor]  # positions (n, 2) -> a permutation (n,) (e.g. a Z-order)


class PositionDenoiser(nn.Module):
    """Denoiser of packed positions ``(2N, 1)`` (layout ``node_dim=2, edge_dim=0``) in a box per graph
    (``box (G, 2)``: the domain ``[0, W] x [0, H]``): ``D(x, sigma) = x - sigma * eps_hat``, ``eps_hat`` from
    ``net`` on the graph and conditioning that ``features`` builds from the noisy positions
    (:class:`~polyscale.data.graph_features.PositionFeatures`). ``net(x, edge_index, None, c_noise, *, batch,
    node_cond, edge_cond, scale) -> (eps (N, 2), _)`` is a graph network with ``node_dim=2`` that ignores its
    node input (``use_node_state=False``; :func:`polyscale.pipelines.graph_nets.position_denoiser` checks
    its shape)."""

    def __init__(self, net: nn.Module, features: PositionConditioning) -> None:
        super().__init__()
        self.net, self.features = net, features

    def forward(
        self,
        x: Tensor,
        sigma: Tensor,
        *,
        layout: GraphLayout,
        box: Tensor,
        periodic: Tensor | None = None,
        scale: Tensor | None = None,
    ) -> Tensor:
        pos = _positions(layout, x)  # (N, 2)
        if box.shape != (layout.num_graphs, 2):
            raise ValueError(f"box must be (num_graphs={layout.num_graphs}, 2), got {tuple(box.shape)}")
        if periodic is not None and periodic.shape != (layout.num_graphs,):
            raise ValueError(
                f"periodic must be (num_graphs={layout.num_graphs},), got {tuple(periodic.shape)}"
            )
        sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device).expand(x.shape[0])
        sigma_node = layout.per_graph(sigma)[layout.batch]  # (N,)
        edge_index, node_cond, edge_cond = self.features(
            pos, layout.batch, box.to(x.dtype), periodic, sigma_node, layout.per_graph(sigma)
        )
        c_noise = sigma_node.clamp(min=1e-20).log() / 4
        eps, _ = self.net(
            torch.zeros_like(pos), edge_index, None, c_noise,
            batch=layout.batch, node_cond=node_cond, edge_cond=edge_cond, scale=scale,
        )  # fmt: skip
        return x - sigma[:, None] * layout.pack(eps, None)


def _positions(layout: GraphLayout, x: Tensor) -> Tensor:
    """The node positions ``(N, 2)`` of packed ``x``; a layout without node values is an error."""
    pos, _ = layout.unpack(x)
    if pos is None:
        raise ValueError(f"positions need a layout with node_dim=2, got node_dim={layout.node_dim}")
    return pos


class NodeJumps:
    """Input perturbation for the positions stage: each node, with probability ``rate``, moves by a distance
    uniform in ``[0, max_jump]`` in a uniform direction, while its target stays put. Sampling makes states the
    forward process never does (on a lattice: two nodes on one site and a hole a few sites away, frozen once
    the noise is low); with jumped nodes in training the denoiser learns to send such a node back to the
    free place. Packed positions ``x (2N, 1)`` in, the same shape out.

    ``schedule``: a curriculum of ``(from_step, max_jump)`` pairs, steps increasing from 0, that replaces
    ``max_jump`` from each step on (0: no jumps then). The training loop reports the step through
    :meth:`set_step` (via :class:`~polyscale.diffusion.graph.GraphLoss`), so a resumed run picks up the
    stage it was in."""

    def __init__(
        self, *, rate: float, max_jump: float = 2.0, schedule: Sequence[Sequence[float]] = ()
    ) -> None:
        if not 0 <= rate <= 1 or not max_jump > 0:
            raise ValueError(f"need 0 <= rate <= 1 and max_jump > 0, got rate={rate}, max_jump={max_jump}")
        self.schedule = check_jump_schedule(schedule)
        self.rate, self.max_jump = rate, max_jump
        self.set_step(0)

    def set_step(self, step: int) -> None:
        """Take the ``max_jump`` the schedule gives for ``step`` (no schedule: keep the fixed one)."""
        self.current = next((j for start, j in reversed(self.schedule) if step >= start), self.max_jump)

    def __call__(self, x: Tensor, *, layout: GraphLayout, generator: torch.Generator | None = None) -> Tensor:
        pos = _positions(layout, x)  # (N, 2)
        n = pos.shape[0]
        # (N, 3) uniforms per node: whether it jumps, how far, in which direction (drawn even when no node
        # jumps, so the noise that follows is the same at every stage of a schedule)
        u = torch.rand(n, 3, generator=generator, device=x.device, dtype=x.dtype)
        length = (u[:, 0] < self.rate) * u[:, 1] * self.current  # (N,), 0 for nodes that stay
        angle = u[:, 2] * 2 * torch.pi
        jump = torch.stack([angle.cos(), angle.sin()], dim=1) * length[:, None]  # (N, 2)
        return x + layout.pack(jump, None)


def check_jump_schedule(schedule: Sequence[Sequence[float]]) -> list[tuple[int, float]]:
    """``schedule`` as ``[(from_step, max_jump), ...]`` if it is a valid jump curriculum (pairs, the first
    from step 0, steps strictly increasing, jumps >= 0), else a ValueError saying what is wrong."""
    out = []
    for item in schedule:
        if len(item) != 2:
            raise ValueError(f"a jump schedule holds [from_step, max_jump] pairs, got {list(item)!r}")
        start, jump = item
        if start != int(start) or jump < 0:
            raise ValueError(f"a jump schedule needs integer steps and max_jump >= 0, got {list(item)!r}")
        out.append((int(start), float(jump)))
    if out and (out[0][0] != 0 or any(b[0] <= a[0] for a, b in zip(out, out[1:], strict=False))):
        raise ValueError(f"a jump schedule's steps must start at 0 and increase, got {[a for a, _ in out]}")
    return out


def eps_weight(sigma: Tensor) -> Tensor:
    """Loss weight ``1 / sigma^2``: with ``D = x - sigma eps_hat`` the loss is then ``|eps_hat - eps|^2``."""
    return sigma.pow(-2)


POSITION_STARTS = ("uniform", "stratified")


def start_points(
    num_nodes: int, extent: Tensor, *, start: str = "uniform", generator: torch.Generator | None = None
) -> Tensor:
    """``(num_nodes, 2)`` points in the box ``[0, W] x [0, H]`` (``extent = (W, H)``) that the positions
    sampler smears by ``sigma_max``. The smeared start should match the training marginal (data plus
    ``sigma_max`` noise) at scales above ``sigma_max`` too, where no local denoiser can fix it:

    - ``"uniform"``: i.i.d. points, whose counts in a region of area ``A`` vary by ``sqrt(A)``, as the nodes of
      planar (Delaunay of uniform points) and random geometric graphs do.
    - ``"stratified"``: one uniform point in each cell of a partition of the box into ``num_nodes`` cells of
      equal area (``r`` strips across ``H``, each cut into ``num_nodes // r`` or one more equal cells, ``r``
      chosen so cells are about square). Counts in any region then match its area to within its perimeter,
      as for a lattice. Inside a cell the point is uniform, so after ``sigma_max >= 1`` noise no trace of
      the cells is left (their structure factor is damped by ``exp(-(2 pi sigma_max)^2 / 2)``).
    """
    if start not in POSITION_STARTS:
        raise ValueError(f"start must be one of {POSITION_STARTS}, got {start!r}")
    device = extent.device
    if start == "uniform":
        return torch.rand(num_nodes, 2, generator=generator, device=device) * extent
    w, h = float(extent[0]), float(extent[1])
    strips = min(num_nodes, max(1, round((num_nodes * h / w) ** 0.5)))
    per_strip = torch.full((strips,), num_nodes // strips, dtype=torch.long)
    per_strip[: num_nodes % strips] += 1  # (strips,) cells per strip, summing to num_nodes
    strip = torch.repeat_interleave(torch.arange(strips), per_strip)  # (n,) strip of each cell
    first = torch.cumsum(per_strip, 0) - per_strip  # (strips,) index of each strip's first cell
    cell = torch.arange(num_nodes) - first[strip]  # (n,) cell within its strip
    u = torch.rand(num_nodes, 2, generator=generator, device=device)
    x = (cell.to(device) + u[:, 0]) / per_strip[strip].to(device) * w  # (n,) across the strip
    y = (strip.to(device) + u[:, 1]) / strips * h  # (n,) strips stacked along H
    return torch.stack([x, y], dim=1)


@torch.no_grad()
def sample_positions(
    denoiser: nn.Module,
    num_nodes: int,
    sampler: SamplerConfig,
    *,
    box: tuple[float, float] | None = None,
    start: str = "uniform",
    start_margin: float = 0.0,
    order: Order | None = None,
    generator: torch.Generator | None = None,
    progress: bool = False,
    desc: str | None = None,
) -> Tensor:
    """``(num_nodes, 2)`` positions in the domain ``box = (W, H)`` (default: a square of area ``num_nodes``):
    :func:`start_points` (``start``: ``"uniform"`` or ``"stratified"``) plus ``sampler.sigma_max`` noise, denoised
    by a :class:`PositionDenoiser` with ``sampler``. ``order``: a permutation of the start points applied
    before sampling (e.g. :func:`polyscale.data.graph_geometry.spatial_order`, for memory locality).

    ``start_margin``: the start points fill the box grown by this much on every side. A lattice whose sites
    lie on the box's sides (grids: ``rows x cols`` sites in ``[0, rows - 1] x [0, cols - 1]``) fills the box
    grown by half a spacing at one node per unit area, so ``0.5`` matches it; a start squeezed into the box
    itself is denser than the lattice inside (by 19 % for 12 x 12, 6 % for 32 x 32), a surplus no local
    denoiser can carry out to the sides. ``progress`` shows a bar labelled ``desc``."""
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
    extent = torch.tensor(box if box is not None else (side, side), dtype=torch.float32, device=device)
    if extent.shape != (2,) or bool((extent <= 0).any()):
        raise ValueError(f"box must be (W, H) with W, H > 0, got {box}")
    if start_margin < 0:
        raise ValueError(f"start_margin must be >= 0, got {start_margin}")
    points = (
        start_points(num_nodes, extent + 2 * start_margin, start=start, generator=generator) - start_margin
    )
    if order is not None:  # exchangeable points: e.g. a Z-order keeps neighbours' memory close
        points = points[order(points)]
    noise = torch.randn(2 * num_nodes, 1, generator=generator, device=device)
    x = points.reshape(-1, 1) + sampler.sigma_max * noise
    out = sample_packed(
        denoiser, layout, x, sampler, generator=generator, progress=progress, desc=desc, box=extent[None]
    )
    return out.view(num_nodes, 2)


@torch.no_grad()
def sample_edges(
    denoiser: nn.Module,
    pos: Tensor,
    sampler: SamplerConfig,
    *,
    candidates: Callable[[Tensor, Tensor], Tensor],
    conditioning: Callable[[Tensor, Tensor], dict[str, Tensor]],
    order: Order | None = None,
    generator: torch.Generator | None = None,
    progress: bool = False,
    desc: str | None = None,
) -> nx.Graph:
    """The graph on positions ``pos (n, 2)``: candidates ``candidates(pos, batch) -> (2, m)`` (``u < v``, each
    once; e.g. :func:`polyscale.data.graph_geometry.candidate_edges`), edge existence denoised by a packed edge
    denoiser (:func:`polyscale.pipelines.graph_nets.graph_denoiser` around an edge network) conditioned on
    ``conditioning(pos, cand)`` (e.g. :func:`polyscale.data.graph_geometry.candidate_conditioning`), with its
    estimate clamped to the labels' range ``[-1, 1]`` (:class:`~polyscale.diffusion.precond.ClampedDenoiser`);
    candidates ending above 0 are kept. ``order``: a node permutation to run on (memory locality); the graph
    keeps the caller's node labels. ``progress`` shows a bar labelled ``desc``."""
    n = pos.shape[0]
    perm = order(pos) if order is not None else torch.arange(n, device=pos.device)
    pos_in, pos = pos, pos[perm]
    batch = torch.zeros(n, dtype=torch.long, device=pos.device)
    cand = candidates(pos, batch)
    layout = GraphLayout.from_undirected(cand, batch, node_dim=0, edge_dim=1)
    cond = conditioning(pos, cand)
    x = torch.randn(cand.shape[1], 1, generator=generator, device=pos.device) * sampler.sigma_max
    # labels are +-1: clamping the estimate keeps one out-of-distribution spot (two generated nodes on one
    # lattice site give triangle side ratios of 10^3, edge estimates of 10^9) from spreading through the graph
    out = sample_packed(
        ClampedDenoiser(denoiser),
        layout,
        x,
        sampler,
        generator=generator,
        progress=progress,
        desc=desc,
        **cond,
    )
    keep = perm[cand[:, out[:, 0] > 0]].cpu().numpy()  # back to the caller's node labels
    del (
        cond,
        layout,
        cand,
        out,
        x,
    )  # the conditioning (tens of millions of tuples at 10^6 nodes) before networkx
    g: nx.Graph = nx.Graph()
    g.add_nodes_from(range(n))
    g.add_edges_from(keep.T.tolist())
    nx.set_node_attributes(g, {i: tuple(map(float, p)) for i, p in enumerate(pos_in.cpu().numpy())}, "pos")
    return g


__all__ = [
    "POSITION_STARTS",
    "NodeJumps",
    "PositionDenoiser",
    "check_jump_schedule",
    "eps_weight",
    "sample_edges",
    "sample_positions",
    "start_points",
]
