"""Structure generation: graphs themselves, in two diffusion stages, with the number of nodes chosen at
sampling time.

1. **Positions.** Node positions in density units (about one node per unit area, see
   :mod:`polyscale.data.graphs`) are denoised by a :class:`PositionDenoiser`: a :class:`GraphDenoiser` on the
   k-nearest-neighbour graph of the *current noisy* positions, reading only relative positions (translation
   invariant, no absolute coordinate, no graph size), eps-parametrised so that ``D(x + t) = D(x) + t``.
   Nodes near the border of the graph's domain (a box, by default the square of area ``n``) also read their
   squashed distances to its sides, which saturate inside. With a ``period`` (lattices) every node also reads
   its phase in the unit cell, so the invariance is to shifts by whole lattice vectors. Sampling starts from
   :func:`start_points` in the box (i.i.d. or stratified) plus ``sigma_max`` noise: the domain is given, the
   local arrangement is generated.
2. **Edges.** Over a candidate set of the generated positions (:func:`candidate_edges`: the k-nearest-neighbour
   graph, optionally with the nearest neighbour per angular sector and the convex hull), edge existence
   (+1 / -1) is denoised by a :class:`GraphDenoiser` with edge features only, conditioned on the geometry of
   each candidate (the vector from one end to the other and its length, per direction, so every node knows
   where its candidate neighbours lie); the two directions' outputs are averaged, and candidates whose final
   value is positive become edges. The candidate set does not make validity automatic: it has crossing
   edges and more edges than a planar graph may have, so planarity and connectivity are up to the model.
"""

from __future__ import annotations

from collections.abc import Sequence

import networkx as nx
import numpy as np
import torch
from scipy.spatial import ConvexHull, QhullError, cKDTree
from torch import Tensor, nn
from torch.utils.data import Dataset

from polyscale.diffusion.graph import GraphLayout
from polyscale.diffusion.precond import ClampedDenoiser
from polyscale.nn.graph import GraphDenoiser
from polyscale.pipelines.graph import sample_packed

POSITION_EDGE_FEATURES = 3  # (dx, dy, |d|) of the source -> target vector, scaled by c_in
CANDIDATE_FEATURES = 3  # (dx, dy, |d|) of each direction of a candidate
TRIANGLE_FEATURES = 5  # (cos, sin) of the angle at the third node, its side, two relative side lengths
CROSSING_FEATURES = 4  # where the crossing lies along each edge, the sine of the angle, log length ratio


def sorted_unique(keys: np.ndarray) -> np.ndarray:
    """The distinct values of the 1-D array ``keys``, ascending (a sort and a neighbour comparison: ``np.unique``
    is far slower on millions of int64 keys)."""
    ordered = np.sort(keys)
    return ordered[np.concatenate([[True], ordered[1:] != ordered[:-1]])] if len(ordered) else ordered


def _graph_groups(batch: Tensor) -> list[np.ndarray]:
    """The node ids of each graph of ``batch (N,)`` (contiguous runs when sorted, else a lookup per graph)."""
    b = batch.detach().cpu().numpy()
    if len(b) and np.all(np.diff(b) >= 0):
        return np.split(np.arange(len(b)), np.flatnonzero(np.diff(b)) + 1)
    return [np.flatnonzero(b == g) for g in np.unique(b)]


def _pair_keys(u: np.ndarray, v: np.ndarray, n: int) -> np.ndarray:
    """Undirected pair keys ``min * n + max`` (int64)."""
    return np.minimum(u, v).astype(np.int64) * n + np.maximum(u, v)


def _keys_to_edges(keys: list[np.ndarray], n: int, device: torch.device) -> Tensor:
    if not keys:
        return torch.zeros(2, 0, dtype=torch.long, device=device)
    unique = sorted_unique(np.concatenate(keys))  # sorted by (u, v), each pair once
    return torch.from_numpy(np.stack([unique // n, unique % n])).long().to(device)


def _knn_keys(p: np.ndarray, ids: np.ndarray, k: int, n: int, period: np.ndarray | None = None) -> np.ndarray:
    kk = min(k + 1, len(ids))
    if period is None:
        tree, q = cKDTree(p[ids]), p[ids]
    else:  # on the torus [0, W) x [0, H): points wrapped in, distances by the minimum image
        q = np.mod(p[ids], period)
        q = np.where(q >= period, 0.0, q)  # mod can round up to the period itself
        tree = cKDTree(q, boxsize=period)
    _, nbr = tree.query(q, kk)  # (n_g, kk), column 0 is the point itself
    return _pair_keys(np.repeat(ids, kk - 1), ids[nbr[:, 1:].reshape(-1)], n)


def _sector_keys(p: np.ndarray, ids: np.ndarray, sectors: int, search: int, n: int) -> np.ndarray:
    kk = min(search + 1, len(ids))
    _, nbr = cKDTree(p[ids]).query(p[ids], kk)
    nbr = nbr[:, 1:]  # (n_g, kk - 1) by increasing distance
    r = p[ids][nbr] - p[ids][:, None]  # (n_g, kk - 1, 2)
    cone = np.floor((np.arctan2(r[..., 1], r[..., 0]) + np.pi) / (2 * np.pi) * sectors).astype(np.int64)
    key = np.arange(len(ids))[:, None] * sectors + np.minimum(cone, sectors - 1)  # (n_g, kk - 1)
    flat = key.reshape(-1)  # row-major: within a row, nearest first
    order = np.argsort(flat, kind="stable")
    first = order[np.concatenate([[True], flat[order][1:] != flat[order][:-1]])]  # nearest per (node, cone)
    return _pair_keys(ids[first // nbr.shape[1]], ids[nbr.reshape(-1)[first]], n)


def _hull_keys(p: np.ndarray, ids: np.ndarray, n: int) -> np.ndarray:
    if len(ids) < 3:
        return np.zeros(0, dtype=np.int64)
    try:
        ring = ids[ConvexHull(p[ids]).vertices]  # counterclockwise
    except QhullError:  # all points on a line: the k-NN edges already join them
        return np.zeros(0, dtype=np.int64)
    return _pair_keys(ring, np.roll(ring, 1), n)


def knn_edges(pos: Tensor, batch: Tensor, k: int, *, period: Tensor | None = None) -> Tensor:
    """Undirected k-nearest-neighbour edges within each graph, ``(2, m)`` int64 with ``u < v``, each once.

    ``pos (N, 2)``, ``batch (N,)``; a graph with ``n <= k`` nodes becomes complete. Built with a k-d tree
    per graph (``O(n log n)``), so 100,000 nodes take about a second. ``period (G, 2)``: graphs with a row
    ``(W, H) > 0`` live on the torus ``[0, W) x [0, H)`` (positions taken modulo the period, distances by the
    minimum image, see :func:`periodic_offsets`); rows of zeros are plain planes.
    """
    if period is None:
        return candidate_edges(pos, batch, k=k)
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    num_graphs = int(batch.max()) + 1 if batch.numel() else 0
    if period.ndim != 2 or period.shape[1] != 2 or period.shape[0] < num_graphs:
        raise ValueError(f"period must be (num_graphs={num_graphs}, 2), got {tuple(period.shape)}")
    per = period.detach().cpu().double().numpy()
    if bool((per < 0).any()) or bool(((per > 0).sum(1) == 1).any()):
        raise ValueError("each row of period must be (W, H) with W, H > 0, or (0, 0) for a plane")
    p, b = pos.detach().cpu().double().numpy(), batch.detach().cpu().numpy()
    n = len(p)
    keys = []
    for ids in _graph_groups(batch):
        g = int(b[ids[0]])
        if len(ids) >= 2:
            keys.append(_knn_keys(p, ids, k, n, per[g] if per[g, 0] > 0 else None))
    return _keys_to_edges(keys, n, pos.device)


def periodic_offsets(d: Tensor, period: Tensor) -> Tensor:
    """The minimum image of displacements ``d (E, 2)`` on tori of ``period (E, 2)`` (rows of zeros: planes,
    ``d`` unchanged): ``d - L round(d / L)``, each coordinate in ``[-L/2, L/2]``."""
    safe = torch.where(period > 0, period, torch.ones_like(period))
    return torch.where(period > 0, d - safe * torch.round(d / safe), d)


def candidate_edges(
    pos: Tensor,
    batch: Tensor,
    *,
    k: int,
    sectors: int = 0,
    hull: bool = False,
    max_length: float | None = None,
    search: int = 24,
) -> Tensor:
    """The edge stage's candidate set within each graph, ``(2, m)`` int64 with ``u < v``, sorted, each once:
    the union of

    - the k-nearest-neighbour graph (``k >= 1``);
    - with ``sectors > 0``, a truncated Yao graph: the plane around each node is cut into ``sectors`` equal
      cones and the node is joined to its nearest neighbour in each cone, looked for among its ``search``
      nearest neighbours (so the cost stays ``O(n log n)``). This reaches across sparse directions, where the
      k nearest neighbours all lie on one side (the rim of a point set);
    - with ``hull=True``, the edges of each graph's convex hull;
    - without the candidates longer than ``max_length`` (in the units of ``pos``), when given. On a large point
      set the hull runs along the domain's sides in a few edges of tens or hundreds of units, far longer than
      anything in small training graphs; such a candidate's features (its length, the side ratios of its
      triangles) are then out of distribution, and in sampling its errors spread inward from the rim.

    None of these is planar or connected by construction: the candidates cross (see
    :func:`candidate_crossings`) and outnumber a planar graph's edges, so validity stays up to the model. On
    Delaunay graphs of 32-64 uniform points, the share of true edges that are not candidates is 5.8 % for
    ``k=10`` alone and 0.95 % for ``k=8, sectors=8, hull=True``, with fewer candidates (2.1 per true edge
    against 2.2).
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if sectors < 0 or search < 1:
        raise ValueError(f"sectors must be >= 0 and search >= 1, got sectors={sectors}, search={search}")
    if max_length is not None and max_length <= 0:
        raise ValueError(f"max_length must be > 0 or None, got {max_length}")
    p = pos.detach().cpu().double().numpy()
    n = len(p)
    keys = []
    for ids in _graph_groups(batch):
        if len(ids) < 2:
            continue
        keys.append(_knn_keys(p, ids, k, n))
        if sectors:
            keys.append(_sector_keys(p, ids, sectors, search, n))
        if hull:
            keys.append(_hull_keys(p, ids, n))
    edges = _keys_to_edges(keys, n, pos.device)
    if max_length is not None and edges.shape[1]:
        length = (pos[edges[1]] - pos[edges[0]]).norm(dim=1)
        edges = edges[:, length <= max_length]
    return edges


def spatial_order(pos: Tensor, *, bits: int = 16) -> Tensor:
    """Permutation ``(n,)`` that sorts 2D points ``pos (n, 2)`` along a Z-order (Morton) curve.

    Nodes close in the plane get close indices, so the gathers and scatters of message passing over a
    k-NN graph touch nearby memory: on graphs of 10^5 nodes and more, a random node order makes nearly every
    gather a cache miss. Each axis is scaled to ``bits``-bit integers over the points' bounding box and the
    bits of the two axes are interleaved; ties keep their input order.
    """
    if pos.ndim != 2 or pos.shape[1] != 2:
        raise ValueError(f"pos must be (n, 2), got {tuple(pos.shape)}")
    p = pos.detach().cpu().double().numpy()
    if len(p) < 2:
        return torch.arange(len(p), device=pos.device)
    lo, span = p.min(0), np.ptp(p, axis=0)
    q = ((p - lo) / np.where(span > 0, span, 1) * ((1 << bits) - 1)).astype(np.uint64)  # (n, 2)
    code = np.zeros(len(p), dtype=np.uint64)
    for bit in range(bits):
        for axis in (0, 1):
            code |= ((q[:, axis] >> np.uint64(bit)) & np.uint64(1)) << np.uint64(2 * bit + axis)
    return torch.from_numpy(np.argsort(code, kind="stable")).to(pos.device)


def candidate_geometry(pos: Tensor, edges: Tensor) -> Tensor:
    """``(2m, 3)`` features of both directions of undirected candidates ``edges (2, m)`` in the layout order
    (the ``m`` edges ``u -> v``, then ``v -> u``): the vector from source to target and its length."""
    r = pos[edges[1]] - pos[edges[0]]  # (m, 2)
    length = r.norm(dim=1, keepdim=True)  # (m, 1)
    return torch.cat([torch.cat([r, length], 1), torch.cat([-r, length], 1)])


def candidate_triangles(edges: Tensor, num_nodes: int, *, chunk: int = 65536) -> Tensor:
    """Every triangle of the undirected graph ``edges (2, m)`` (``u < v``, sorted, each once, as
    :func:`knn_edges` returns), once per directed edge it contains: ``(3, T)`` int64 rows ``(a, b, c)`` of
    directed-edge ids in the layout order (``t`` is ``u -> v`` of column ``t``, ``m + t`` its reverse), with
    ``a = i -> j``, ``b = i -> k``, ``c = j -> k`` for the third node ``k``. ``T = 6 x`` the triangle count.

    Each triangle ``u < v < w`` is found once, from its lowest node ``u``: pairs ``v < w`` of ``u``'s higher
    neighbours (a contiguous run of the sorted edge list) are kept when ``v - w`` is an edge. Nodes go in
    chunks, so memory stays bounded; the work is linear in ``n`` for bounded degree.
    """
    m = edges.shape[1]
    device = edges.device
    if m == 0:
        return torch.zeros(3, 0, dtype=torch.long, device=device)
    u, v = edges.cpu().numpy().astype(np.int64)
    keys = u * num_nodes + v
    if np.any(np.diff(keys) <= 0) or np.any(u >= v):
        raise ValueError("edges must be sorted by (u, v) with u < v, each once (as knn_edges returns)")
    out_deg = np.bincount(u, minlength=num_nodes)
    start = np.concatenate([[0], np.cumsum(out_deg)[:-1]])
    slot = np.arange(m) - start[u]
    higher = np.full((num_nodes, int(out_deg.max())), -1, dtype=np.int64)  # higher neighbours, ascending
    edge_of = np.zeros_like(higher)  # their edge ids
    higher[u, slot], edge_of[u, slot] = v, np.arange(m)
    pa, pb = np.triu_indices(higher.shape[1], 1)
    found = []
    for lo in range(0, num_nodes, chunk):
        w = higher[lo : lo + chunk, pb]  # (B, pairs); v < w wherever w exists
        ok = w >= 0
        rows = np.nonzero(ok)
        vv, ww = higher[lo : lo + chunk, pa][ok], w[ok]
        key = vv * num_nodes + ww
        pos = np.minimum(np.searchsorted(keys, key), m - 1)
        hit = keys[pos] == key
        t_uv = edge_of[lo : lo + chunk, pa][rows][hit]
        t_uw = edge_of[lo : lo + chunk, pb][rows][hit]
        found.append(np.stack([t_uv, t_uw, pos[hit]]))
    t_uv, t_uw, t_vw = np.concatenate(found, axis=1)
    uv, vu, uw, wu, vw, wv = t_uv, m + t_uv, t_uw, m + t_uw, t_vw, m + t_vw  # directed ids (x -> y)
    rows = [  # (a = i -> j, b = i -> k, c = j -> k) for each ordered pair (i, j) of the triangle
        (uv, uw, vw), (vu, vw, uw), (uw, uv, wv), (wu, wv, uv), (vw, vu, wu), (wv, wu, vu),
    ]  # fmt: skip
    return torch.from_numpy(np.concatenate([np.stack(r) for r in rows], axis=1)).long().to(device)


def candidate_crossings(pos: Tensor, edges: Tensor) -> Tensor:
    """Every pair of undirected candidates ``edges (2, m)`` whose segments cross (share one interior point;
    edges meeting at an endpoint or overlapping on a line do not count): ``(2, C)`` int64 candidate ids
    ``(e, f)`` with ``e < f``, sorted, each pair once.

    Segments that cross share a point, so they share a cell of any grid: each segment is listed in the square
    cells (edge = the mean candidate length) its bounding box covers, pairs within a cell are tested with exact
    orientation signs, and repeats (pairs sharing several cells) are dropped. For a k-NN candidate graph of
    points in general position a segment covers a few cells and a cell holds a few dozen segments, so the
    work is linear in the number of candidates.
    """
    m = edges.shape[1]
    device = edges.device
    if m < 2:
        return torch.zeros(2, 0, dtype=torch.long, device=device)
    p = pos.detach().cpu().double().numpy()
    u, v = edges.cpu().numpy().astype(np.int64)
    a, b = p[u], p[v]  # (m, 2) endpoints
    cell = float(np.linalg.norm(b - a, axis=1).mean()) or 1.0
    lo = np.floor(np.minimum(a, b) / cell).astype(np.int64)  # (m, 2) first and last cell per axis
    hi = np.floor(np.maximum(a, b) / cell).astype(np.int64)
    span = hi - lo + 1  # (m, 2)
    count = span[:, 0] * span[:, 1]  # cells per segment
    owner = np.repeat(np.arange(m), count)  # (entries,) segment of each (segment, cell) entry
    k = np.arange(len(owner)) - np.repeat(np.cumsum(count) - count, count)  # index within the segment's box
    cx = lo[owner, 0] + k % span[owner, 0]
    cy = lo[owner, 1] + k // span[owner, 0]
    key = (cx - cx.min()) * (int(cy.max() - cy.min()) + 1) + (cy - cy.min())
    order = np.argsort(key, kind="stable")
    key, owner = key[order], owner[order]
    ax, ay, bx, by = a[owner, 0], a[owner, 1], b[owner, 0], b[owner, 1]  # per entry, in cell order

    def side(i: np.ndarray, j: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Sign of the turn from segment i's direction to (x, y) - its start, per pair."""
        return np.sign((bx[i] - ax[i]) * (y - ay[i]) - (by[i] - ay[i]) * (x - ax[i]))

    found = []
    i = np.arange(len(key) - 1)  # entries whose cell holds at least one more entry after them
    for shift in range(1, len(key)):  # entry i against entry i + shift of the same cell
        i = i[i + shift < len(key)]
        i = i[key[i + shift] == key[i]]  # cells are contiguous runs: only these can go on
        if len(i) == 0:
            break
        j = i + shift  # gathers of nearby entries: sequential in memory
        cross = (side(i, j, ax[j], ay[j]) * side(i, j, bx[j], by[j]) < 0) & (
            side(j, i, ax[i], ay[i]) * side(j, i, bx[i], by[i]) < 0
        )
        e, f = owner[i[cross]], owner[j[cross]]
        found.append(np.minimum(e, f) * m + np.maximum(e, f))
    pairs = sorted_unique(np.concatenate(found)) if found else np.zeros(0, dtype=np.int64)
    return torch.from_numpy(np.stack([pairs // m, pairs % m])).long().to(device)


def crossing_geometry(pos: Tensor, edges: Tensor, crossings: Tensor) -> tuple[Tensor, Tensor]:
    """Directed crossing tuples and their features for :class:`~polyscale.nn.graph.GraphDenoiser`'s crossing
    update, in the layout order of ``edges (2, m)`` (``t`` is ``u -> v``, ``m + t`` its reverse).

    Each crossing ``(e, f)`` of :func:`candidate_crossings` gives four tuples ``(receiver, partner)``:
    ``(e, f)``, ``(m + e, m + f)``, ``(f, e)``, ``(m + f, m + e)``. Features of a tuple: where the crossing
    point lies along the receiver (0 at its source, 1 at its target) and along the partner, the sine of the
    angle between them and ``log(|partner| / |receiver|)``. Invariant to translation, rotation and scale.

    Returns:
        ``tuples (2, 4C)`` int64 and ``features (4C, 4)``.
    """
    m = edges.shape[1]
    e, f = crossings
    pa, pb = pos[edges[0]], pos[edges[1]]  # (m, 2)
    d = pb - pa  # (m, 2)
    de, df = d[e], d[f]  # (C, 2)

    def cross2(x: Tensor, y: Tensor) -> Tensor:
        return x[:, 0] * y[:, 1] - x[:, 1] * y[:, 0]

    denom = cross2(de, df)  # nonzero for a proper crossing
    w = pa[f] - pa[e]
    s = cross2(w, df) / denom  # crossing at pa[e] + s de
    t = cross2(w, de) / denom  # and at pa[f] + t df
    le, lf = de.norm(dim=1), df.norm(dim=1)
    sine = denom.abs() / (le * lf)
    ratio = (lf / le).log()
    tuples = torch.cat(
        [torch.stack([e, f]), torch.stack([m + e, m + f]), torch.stack([f, e]), torch.stack([m + f, m + e])],
        dim=1,
    )
    feats = torch.cat(
        [
            torch.stack([s, t, sine, ratio], dim=1),
            torch.stack([1 - s, 1 - t, sine, ratio], dim=1),
            torch.stack([t, s, sine, -ratio], dim=1),
            torch.stack([1 - t, 1 - s, sine, -ratio], dim=1),
        ]
    )
    return tuples, feats.to(pos.dtype)


def triangle_geometry(pos: Tensor, edge_index: Tensor, triangles: Tensor, *, chunk: int = 1 << 20) -> Tensor:
    """``(T, 5)`` features of directed triangles ``(a, b, c)`` (see :func:`candidate_triangles`) over
    ``edge_index (2, 2m)`` in the layout order: for edge ``a = i -> j`` and third node ``k``, the cosine and
    sine of the angle ``i k j``, the side of ``k`` (+1 left of ``i -> j``, -1 right) and ``|ik| / |ij|``,
    ``|jk| / |ij|``. Invariant to translation, rotation and scale. Computed ``chunk`` triangles at a time, so
    the temporaries stay small next to the output."""
    out = pos.new_empty(triangles.shape[1], TRIANGLE_FEATURES)
    for lo in range(0, triangles.shape[1], chunk):
        i, j = edge_index[:, triangles[0, lo : lo + chunk]]
        k = edge_index[1, triangles[1, lo : lo + chunk]]
        ki, kj, ij = pos[i] - pos[k], pos[j] - pos[k], pos[j] - pos[i]  # (T, 2) each
        lki, lkj, lij = ki.norm(dim=1), kj.norm(dim=1), ij.norm(dim=1).clamp(min=1e-12)
        cos = (ki * kj).sum(1) / (lki * lkj).clamp(min=1e-12)
        cross_k = ki[:, 0] * kj[:, 1] - ki[:, 1] * kj[:, 0]
        sin = cross_k.abs() / (lki * lkj).clamp(min=1e-12)
        side = torch.sign(ij[:, 0] * (pos[k] - pos[i])[:, 1] - ij[:, 1] * (pos[k] - pos[i])[:, 0])
        out[lo : lo + chunk] = torch.stack([cos, sin, side, lki / lij, lkj / lij], dim=1)
    return out


WALL_FEATURES = 4  # squashed distances of a node to the four sides of its graph's box


def wall_features(pos: Tensor, box: Tensor, c_in: Tensor) -> Tensor:
    """``(N, 4)`` features ``tanh(c_in d / 2)`` of each node's signed distances ``d`` to the sides of its box
    ``[0, W] x [0, H]`` (``box (N, 2)`` per node): near a side they locate the node, deep inside the box all four
    saturate at 1, so the interior stays translation-invariant and nothing depends on the box's size."""
    d = torch.stack([pos[:, 0], box[:, 0] - pos[:, 0], pos[:, 1], box[:, 1] - pos[:, 1]], dim=1)  # (N, 4)
    return torch.tanh(d * c_in[:, None] / 2)


# (cos, sin) of 2 pi x / period per axis: where a node sits inside the lattice's unit cell
PERIODIC_FEATURES = 4


def periodic_features(pos: Tensor, period: float) -> Tensor:
    """``(N, 4)`` features ``cos, sin(2 pi p / period)`` of each coordinate of ``pos (N, 2)``: a node's phase
    inside the unit cell of a lattice of spacing ``period`` whose sites sit at the integer multiples of
    ``period`` (the box's origin is a site). Invariant to translations by whole lattice vectors only, and
    local: it tells a node deep inside a large box where the sites are, which the side distances of
    :func:`wall_features` cannot (they saturate there), so lattice domains of different phase do not form."""
    angle = pos * (2 * torch.pi / period)  # (N, 2)
    return torch.cat([angle.cos(), angle.sin()], dim=1)


def density_features(
    pos: Tensor,
    batch: Tensor,
    box: Tensor,
    sigma: Tensor,
    scales: Sequence[float],
    *,
    margin: float = 0.0,
) -> Tensor:
    """``(N, 3 * len(scales))`` multi-scale density-excess features of positions ``pos (N, 2)`` (graph of each
    node ``batch (N,)``, boxes ``box (G, 2)``, noise level per graph ``sigma (G,)``): for each scale ``r``, the
    node count around each node in the window ``exp(-d^2 / 2 r^2)`` minus the count that unit density on the
    box grown by ``margin``, smoothed by the noise ``sigma``, puts there, and ``r`` times the two components
    of its gradient (where the surplus or the shortfall lies), each passed through ``asinh``.

    A message-passing denoiser averages over its neighbours and cannot count them: a lattice site claimed by
    two nodes and a hole three sites away look alike to it. On a noiseless grid (sites on the sides, margin
    0.5) this excess is exactly zero; one missing node reads as about ``-1`` beside it, so a node on a crowded
    site learns from it (with :class:`NodeJumps` in training) where the hole is. Local and translation-
    invariant inside the box, independent of the graph's size; O(N + A log A) per graph of box area A: counts
    binned on unit cells (cloud-in-cell), windows applied by FFT, read back by bilinear interpolation (about
    1 s for 10^6 nodes and two scales on one CPU core)."""
    scales = [float(r) for r in scales]
    if not scales or min(scales) <= 0:
        raise ValueError(f"density scales must be a non-empty list of values > 0, got {scales}")
    reach = max(int(np.ceil(3 * r)) for r in scales)
    pad = reach + 2  # cells beyond the box on each side; nodes further out are left out of both counts
    out = pos.new_zeros(pos.shape[0], 3 * len(scales))
    for g in range(box.shape[0]):
        idx = (batch == g).nonzero().squeeze(1)
        if idx.numel() == 0:
            continue
        w, h = float(box[g, 0]), float(box[g, 1])
        nx_, ny_ = (
            int(np.ceil(w)) + 2 * pad + 1,
            int(np.ceil(h)) + 2 * pad + 1,
        )  # cells, origin at (-pad, -pad)
        u = pos[idx] + pad
        corner = u.floor()
        frac = u - corner
        corner = corner.long()
        inside = (
            (corner[:, 0] >= 0) & (corner[:, 0] < nx_ - 1) & (corner[:, 1] >= 0) & (corner[:, 1] < ny_ - 1)
        )
        cx, cy, fx, fy = corner[inside, 0], corner[inside, 1], frac[inside, 0], frac[inside, 1]
        counts = pos.new_zeros(nx_ * ny_)
        for dx in (0, 1):
            for dy in (0, 1):
                weight = (fx if dx else 1 - fx) * (fy if dy else 1 - fy)
                counts.index_add_(0, (cx + dx) * ny_ + cy + dy, weight)
        # expected: unit density on [-margin, w + margin] x [-margin, h + margin] smoothed by the noise
        s = max(float(sigma[g]), 1e-3) * 2**0.5
        xs = torch.arange(nx_, dtype=pos.dtype, device=pos.device) - pad
        ys = torch.arange(ny_, dtype=pos.dtype, device=pos.device) - pad
        rx = (torch.erf((w + margin - xs) / s) - torch.erf((-margin - xs) / s)) / 2
        ry = (torch.erf((h + margin - ys) / s) - torch.erf((-margin - ys) / s)) / 2
        excess = counts.view(nx_, ny_) - rx[:, None] * ry[None, :]
        size = (nx_ + reach + 1, ny_ + reach + 1)  # zero padding: no window wraps around
        spectrum = torch.fft.rfft2(excess, s=size)
        ox = torch.arange(size[0], device=pos.device)
        oy = torch.arange(size[1], device=pos.device)
        ox = torch.where(ox > size[0] // 2, ox - size[0], ox).to(
            pos.dtype
        )  # signed offsets of a wrapped kernel
        oy = torch.where(oy > size[1] // 2, oy - size[1], oy).to(pos.dtype)
        fields = []
        for r in scales:
            window = torch.exp(-(ox[:, None] ** 2 + oy[None, :] ** 2) / (2 * r * r))
            window = window * ((ox.abs() <= reach)[:, None] & (oy.abs() <= reach)[None, :])
            for kernel in (window, -ox[:, None] / r * window, -oy[None, :] / r * window):
                fields.append(torch.fft.irfft2(spectrum * torch.fft.rfft2(kernel), s=size)[:nx_, :ny_])
        fields = torch.stack(fields).reshape(len(fields), -1)  # (3 * scales, cells)
        # bilinear read-back at every node of the graph (nodes beyond the cells read the nearest cell)
        cxa = corner[:, 0].clamp(0, nx_ - 2)
        cya = corner[:, 1].clamp(0, ny_ - 2)
        fxa = (u[:, 0] - cxa).clamp(0, 1)
        fya = (u[:, 1] - cya).clamp(0, 1)
        value = 0
        for dx in (0, 1):
            for dy in (0, 1):
                weight = (fxa if dx else 1 - fxa) * (fya if dy else 1 - fya)
                value = value + fields[:, (cxa + dx) * ny_ + cya + dy] * weight
        out[idx] = torch.asinh(value.T)
    return out


def position_cond_dim(period: float | None, density_scales: Sequence[float] = ()) -> int:
    """Node conditioning channels of a positions network: the side distances, plus the phase with a period,
    plus three density-excess channels per scale (:func:`density_features`)."""
    return WALL_FEATURES + (PERIODIC_FEATURES if period else 0) + 3 * len(density_scales)


class PositionDenoiser(nn.Module):
    """Denoiser of packed positions ``(2N, 1)`` (layout ``node_dim=2, edge_dim=0``) in a box per graph
    (``box (G, 2)``: the domain ``[0, W] x [0, H]``): ``D(x, sigma) = x - sigma * eps_hat``, ``eps_hat`` from
    ``net`` on the k-NN graph of the noisy positions with edge features ``c_in (x_dst - x_src, |x_dst -
    x_src|)`` and node features :func:`wall_features` (with ``period``, also :func:`periodic_features`; with
    ``density_scales``, also :func:`density_features` with ``density_margin``),
    ``c_in = 1 / sqrt(1 + sigma^2)``. ``net`` must be a :class:`GraphDenoiser` with ``node_dim=2``,
    ``edge_cond_dim=3``, ``node_cond_dim=position_cond_dim(period, density_scales)`` and ``use_node_state=False``
    (:func:`position_net`)."""

    def __init__(
        self,
        net: GraphDenoiser,
        *,
        k: int = 8,
        period: float | None = None,
        density_scales: Sequence[float] = (),
        density_margin: float = 0.0,
    ) -> None:
        super().__init__()
        if period is not None and not period > 0:
            raise ValueError(f"period must be None or > 0, got {period}")
        density_scales = tuple(float(r) for r in density_scales)
        if any(not r > 0 for r in density_scales) or density_margin < 0:
            raise ValueError(
                f"need density scales > 0 and density_margin >= 0, got {list(density_scales)}, {density_margin}"
            )
        cfg = net.config
        shape = (cfg.node_dim, cfg.edge_dim, cfg.edge_cond_dim, cfg.node_cond_dim, cfg.use_node_state)
        want = (2, 0, POSITION_EDGE_FEATURES, position_cond_dim(period, density_scales), False)
        if shape != want:
            raise ValueError(
                f"PositionDenoiser(period={period}, density_scales={list(density_scales)}) needs "
                f"GraphDenoiser(node_dim=2, edge_dim=0, edge_cond_dim=3, node_cond_dim={want[3]}, "
                f"use_node_state=False) (see position_net), got {cfg}"
            )
        self.net, self.k, self.period = net, k, period
        self.density_scales, self.density_margin = density_scales, density_margin

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
        pos, _ = layout.unpack(x)  # (N, 2)
        if box.shape != (layout.num_graphs, 2):
            raise ValueError(f"box must be (num_graphs={layout.num_graphs}, 2), got {tuple(box.shape)}")
        if periodic is not None and periodic.shape != (layout.num_graphs,):
            raise ValueError(
                f"periodic must be (num_graphs={layout.num_graphs},), got {tuple(periodic.shape)}"
            )
        sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device).expand(x.shape[0])
        sigma_node = layout.per_graph(sigma)[layout.batch]  # (N,)
        box = box.to(x.dtype)
        # tori (periodic graphs): box is the period, k-NN and offsets by the minimum image, no sides
        period = None if periodic is None or not bool(periodic.any()) else box * periodic.to(x.dtype)[:, None]
        edges = knn_edges(pos, layout.batch, self.k, period=period)
        src, dst = torch.cat([edges, edges.flip(0)], dim=1)  # (2E,) both directions
        c_in = (1 + sigma_node**2).rsqrt()  # (N,)
        rel = pos[dst] - pos[src]  # (2E, 2)
        if period is not None:
            rel = periodic_offsets(rel, period[layout.batch[src]])
        rel = rel * c_in[src, None]
        edge_cond = torch.cat([rel, rel.norm(dim=1, keepdim=True)], dim=1)  # (2E, 3)
        walls = wall_features(pos, box[layout.batch], c_in)  # (N, 4)
        if period is not None:  # a torus has no sides: every node reads what a node deep inside a box reads
            walls = torch.where(periodic[layout.batch, None], torch.ones_like(walls), walls)
        if self.period:
            walls = torch.cat([walls, periodic_features(pos, self.period)], dim=1)  # (N, 8)
        if self.density_scales:
            if period is not None:
                raise ValueError("density features need bounded boxes; this batch has periodic graphs (tori)")
            density = density_features(pos, layout.batch, box, layout.per_graph(sigma), self.density_scales,
                                       margin=self.density_margin)  # fmt: skip
            walls = torch.cat([walls, density], dim=1)
        c_noise = sigma_node.clamp(min=1e-20).log() / 4
        eps, _ = self.net(
            torch.zeros_like(pos), torch.stack([src, dst]), None, c_noise,
            batch=layout.batch, node_cond=walls, edge_cond=edge_cond, scale=scale,
        )  # fmt: skip
        return x - sigma[:, None] * layout.pack(eps, None)


class NodeJumps:
    """Input perturbation for the positions stage: each node, with probability ``rate``, moves by a distance
    uniform in ``[0, max_jump]`` in a uniform direction, while its target stays put. Sampling makes states the
    forward process never does (on a lattice: two nodes on one site and a hole a few sites away, frozen once
    the noise is low); with jumped nodes in training the denoiser learns to send such a node back to the
    free place. Packed positions ``x (2N, 1)`` in, the same shape out.

    ``schedule``: a curriculum of ``(from_step, max_jump)`` pairs, steps increasing from 0, that replaces
    ``max_jump`` from each step on (0: no jumps then). The training loop reports the step through
    :meth:`set_step` (via :class:`~polyscale.pipelines.graph.GraphLoss`), so a resumed run picks up the
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
        pos, _ = layout.unpack(x)  # (N, 2)
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


# ------------------------------------------------------------------------------------------------ datasets


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


def candidate_conditioning(pos: Tensor, cand: Tensor, *, crossings: bool = False) -> dict[str, Tensor]:
    """What the edge stage is conditioned on for candidates ``cand (2, m)`` over positions ``pos (n, 2)``:
    ``edge_cond (2m, 3)`` (:func:`candidate_geometry`), ``triangles (3, T)`` (:func:`candidate_triangles`)
    and ``triangle_cond (T, 5)`` (:func:`triangle_geometry`); with ``crossings=True`` also ``crossings (2, X)``
    and ``crossing_cond (X, 4)`` (:func:`candidate_crossings`, :func:`crossing_geometry`)."""
    triangles = candidate_triangles(cand, pos.shape[0])
    layout_edges = torch.cat([cand, cand.flip(0)], dim=1)
    out = {
        "edge_cond": candidate_geometry(pos, cand),
        "triangles": triangles,
        "triangle_cond": triangle_geometry(pos, layout_edges, triangles),
    }
    if crossings:
        out["crossings"], out["crossing_cond"] = crossing_geometry(pos, cand, candidate_crossings(pos, cand))
    return out


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


# ------------------------------------------------------------------------------------------------ sampling


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
    *,
    box: tuple[float, float] | None = None,
    sampler: str = "heun",
    steps: int = 32,
    sigma_max: float = 3.0,
    sigma_min: float = 0.002,
    rho: float = 7.0,
    start: str = "uniform",
    start_margin: float = 0.0,
    sampler_options: dict | None = None,
    generator: torch.Generator | None = None,
    progress: bool = False,
) -> Tensor:
    """``(num_nodes, 2)`` positions in the domain ``box = (W, H)`` (default: a square of area ``num_nodes``):
    :func:`start_points` (``start``: ``"uniform"`` or ``"stratified"``) plus ``sigma_max`` noise, denoised by a
    :class:`PositionDenoiser` with any sampler (``sampler_options``: its keyword arguments).

    ``start_margin``: the start points fill the box grown by this much on every side. A lattice whose sites
    lie on the box's sides (grids: ``rows x cols`` sites in ``[0, rows - 1] x [0, cols - 1]``) fills the box
    grown by half a spacing at one node per unit area, so ``0.5`` matches it; a start squeezed into the box
    itself is denser than the lattice inside (by 19 % for 12 x 12, 6 % for 32 x 32), a surplus no local
    denoiser can carry out to the sides."""
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
    points = points[spatial_order(points)]  # exchangeable points: Z-order keeps neighbours' memory close
    x = points.reshape(-1, 1) + sigma_max * torch.randn(2 * num_nodes, 1, generator=generator, device=device)
    out = sample_packed(
        denoiser, layout, x, sampler=sampler, steps=steps, sigma_max=sigma_max, sigma_min=sigma_min, rho=rho,
        generator=generator, progress=progress, sampler_options=sampler_options, box=extent[None],
    )  # fmt: skip
    return out.view(num_nodes, 2)


@torch.no_grad()
def sample_edges(
    denoiser: nn.Module,
    pos: Tensor,
    *,
    k: int = 10,
    sectors: int = 0,
    hull: bool = False,
    max_length: float | None = None,
    sampler: str = "heun",
    steps: int = 32,
    sigma_max: float = 80.0,
    sigma_min: float = 0.002,
    rho: float = 7.0,
    generator: torch.Generator | None = None,
    progress: bool = False,
) -> nx.Graph:
    """The graph on positions ``pos (n, 2)``: candidates (:func:`candidate_edges` with ``k``, ``sectors``,
    ``hull``, ``max_length``), edge existence denoised by a packed edge
    denoiser (:func:`polyscale.pipelines.graph.graph_denoiser` around a ``GraphDenoiser(node_dim=0,
    edge_dim=1, edge_cond_dim=3)``) with its estimate clamped to the labels' range ``[-1, 1]``
    (:class:`~polyscale.diffusion.precond.ClampedDenoiser`), candidates ending above 0 kept."""
    n = pos.shape[0]
    order = spatial_order(pos)  # run on Z-ordered nodes (memory locality), report the caller's labels
    pos_in, pos = pos, pos[order]
    batch = torch.zeros(n, dtype=torch.long, device=pos.device)
    cand = candidate_edges(pos, batch, k=k, sectors=sectors, hull=hull, max_length=max_length)
    layout = GraphLayout.from_undirected(cand, batch, node_dim=0, edge_dim=1)
    cond = candidate_conditioning(pos, cand, crossings=reads_crossings(denoiser))
    x = torch.randn(cand.shape[1], 1, generator=generator, device=pos.device) * sigma_max
    # labels are +-1: clamping the estimate keeps one out-of-distribution spot (two generated nodes on one
    # lattice site give triangle side ratios of 10^3, edge estimates of 10^9) from spreading through the graph
    out = sample_packed(
        ClampedDenoiser(denoiser), layout, x, sampler=sampler, steps=steps, sigma_max=sigma_max,
        sigma_min=sigma_min, rho=rho, generator=generator, progress=progress, **cond,
    )  # fmt: skip
    keep = order[cand[:, out[:, 0] > 0]].cpu().numpy()  # back to the caller's node labels
    del (
        cond,
        layout,
        cand,
        out,
        x,
    )  # the conditioning (tens of millions of tuples at 10^6 nodes) before networkx
    g = nx.Graph()
    g.add_nodes_from(range(n))
    g.add_edges_from(keep.T.tolist())
    nx.set_node_attributes(g, {i: tuple(map(float, p)) for i, p in enumerate(pos_in.cpu().numpy())}, "pos")
    return g


def position_net(
    *, period: float | None = None, density_scales: Sequence[float] = (), **kwargs
) -> GraphDenoiser:
    """A :class:`GraphDenoiser` shaped for :class:`PositionDenoiser` with the same ``period`` and
    ``density_scales`` (other arguments: width, depth, heads)."""
    return GraphDenoiser(
        node_dim=2, edge_dim=0, edge_cond_dim=POSITION_EDGE_FEATURES,
        node_cond_dim=position_cond_dim(period, density_scales), use_node_state=False, **kwargs,
    )  # fmt: skip


def edge_net(*, crossings: bool = False, **kwargs) -> GraphDenoiser:
    """A :class:`GraphDenoiser` shaped for the edge stage (``crossings``: it also reads crossing candidates)."""
    return GraphDenoiser(
        node_dim=0,
        edge_dim=1,
        edge_cond_dim=CANDIDATE_FEATURES,
        triangle_cond_dim=TRIANGLE_FEATURES,
        crossing_cond_dim=CROSSING_FEATURES if crossings else 0,
        **kwargs,
    )


def reads_crossings(denoiser: nn.Module) -> bool:
    """Whether the edge denoiser's network reads crossing candidates (``crossing_cond_dim > 0``)."""
    return any(isinstance(m, GraphDenoiser) and m.config.crossing_cond_dim > 0 for m in denoiser.modules())


__all__ = [
    "CandidateDataset",
    "NodeJumps",
    "check_jump_schedule",
    "PositionDataset",
    "PositionDenoiser",
    "candidate_conditioning",
    "candidate_edges",
    "candidate_crossings",
    "candidate_geometry",
    "candidate_triangles",
    "crossing_geometry",
    "edge_net",
    "eps_weight",
    "knn_edges",
    "periodic_features",
    "density_features",
    "position_cond_dim",
    "position_net",
    "reads_crossings",
    "sample_edges",
    "sample_positions",
    "spatial_order",
    "start_points",
    "triangle_geometry",
    "wall_features",
]
