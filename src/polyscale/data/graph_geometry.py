"""Plane geometry of graphs with node positions: k-nearest-neighbour and candidate edge sets (k-d trees per
graph, optionally on a torus), a Z-order of the nodes, and the features of candidate edges, of the candidate
graph's triangles and of crossing candidates, which condition the edge stage of structure generation (see
:mod:`polyscale.diffusion.structure`)."""

from __future__ import annotations

import numpy as np
import torch
from scipy.spatial import ConvexHull, QhullError, cKDTree
from torch import Tensor

# the edge-index checks live with the code that keys node pairs (re-exported here for the data modules)
from polyscale.diffusion.graph import MAX_KEYED_NODES, check_edge_index, check_num_nodes

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
    q = p[ids]
    if period is not None:  # on the torus [0, W) x [0, H): points wrapped in, distances by the minimum image
        q = np.mod(q, period)
        q = np.where(q >= period, 0.0, q)  # mod can round up to the period itself
    nbr = _neighbours(cKDTree(q, boxsize=period), q, kk)  # (n_g, kk), column 0 is the point itself
    return _pair_keys(np.repeat(ids, kk - 1), ids[nbr[:, 1:].reshape(-1)], n)


def _neighbours(tree: cKDTree, q: np.ndarray, k: int) -> np.ndarray:
    """``(len(q), k)`` indices of the ``k`` nearest tree points of each query point, nearest first."""
    _, nbr = tree.query(q, k)
    if not isinstance(nbr, np.ndarray) or nbr.shape != (len(q), k):
        raise ValueError(f"expected ({len(q)}, {k}) neighbour indices, got {np.shape(nbr)}")
    return nbr


def _sector_keys(p: np.ndarray, ids: np.ndarray, sectors: int, search: int, n: int) -> np.ndarray:
    kk = min(search + 1, len(ids))
    nbr = _neighbours(cKDTree(p[ids]), p[ids], kk)[:, 1:]  # (n_g, kk - 1) by increasing distance
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
    n = check_num_nodes(len(p), "the batch")
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
    n = check_num_nodes(len(p), "the batch")
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
    check_edge_index(edges, num_nodes, name="edges")
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
    triples = [  # (a = i -> j, b = i -> k, c = j -> k) for each ordered pair (i, j) of the triangle
        (uv, uw, vw), (vu, vw, uw), (uw, uv, wv), (wu, wv, uv), (vw, vu, wu), (wv, wu, vu),
    ]  # fmt: skip
    return torch.from_numpy(np.concatenate([np.stack(t) for t in triples], axis=1)).long().to(device)


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


__all__ = [
    "CANDIDATE_FEATURES",
    "CROSSING_FEATURES",
    "MAX_KEYED_NODES",
    "TRIANGLE_FEATURES",
    "candidate_conditioning",
    "candidate_crossings",
    "candidate_edges",
    "candidate_geometry",
    "candidate_triangles",
    "check_edge_index",
    "check_num_nodes",
    "crossing_geometry",
    "knn_edges",
    "periodic_offsets",
    "sorted_unique",
    "spatial_order",
    "triangle_geometry",
]
