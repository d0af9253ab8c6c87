"""Graph-generation metrics: MMD^2 of graph statistics, validity per family, uniqueness and novelty.

The MMD follows the GRAN / SPECTRE / DiGress protocol: each graph is summarised by a vector, two sets of
vectors are compared with the biased (V-statistic, diagonal included) squared MMD under the Gaussian-TV
kernel ``k(a, b) = exp(-TV(a, b)^2 / (2 sigma^2))``, ``TV = |a - b|_1 / 2`` after zero-padding to a common
length, and the number reported is MMD^2 itself. Statistics and bandwidths:

- degree: ``nx.degree_histogram`` as a distribution, sigma 1;
- clustering: histogram of local clustering coefficients, 100 bins on [0, 1], as a distribution, sigma 0.1;
- orbit: mean count per node of each of the 15 node orbits of 2-4-node graphlets (ORCA numbering), sigma 30;
- spectrum: histogram of the normalised-Laplacian eigenvalues, 200 bins on [-1e-5, 2], as a distribution,
  sigma 1.

Large graphs: above ``exact_limit`` nodes the orbit vector is averaged over a uniform sample of
``exact_limit`` nodes (an unbiased estimate of the mean per node), and the spectrum histogram is the kernel
polynomial method's estimate of the spectral density (Chebyshev moments with Jackson damping and Rademacher
probes, Weisse et al. 2006), so every statistic stays computable at 100,000 nodes.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, cast

import networkx as nx
import numpy as np
from scipy import sparse

SIGMAS = {"degree": 1.0, "clustering": 0.1, "orbit": 30.0, "spectrum": 1.0}
SPECTRUM_BINS, SPECTRUM_RANGE = 200, (-1e-5, 2.0)


# ------------------------------------------------------------------------------------------ the statistics


def degree_histogram(g: nx.Graph) -> np.ndarray:
    """Fraction of nodes of each degree ``0 .. max``."""
    h = np.asarray(nx.degree_histogram(g), dtype=np.float64)
    return h / max(h.sum(), 1.0)


def clustering_histogram(g: nx.Graph, bins: int = 100) -> np.ndarray:
    """Histogram of local clustering coefficients on [0, 1], as a distribution."""
    # without a node argument nx.clustering returns the dict {node: coefficient} (the stubs also allow a number)
    values = list(cast(dict[Any, float], nx.clustering(g)).values())
    h, _ = np.histogram(values, bins=bins, range=(0.0, 1.0))
    return h / max(h.sum(), 1)


def _orbit4(edges: int, degree: int, max_degree: int) -> int:
    """ORCA orbit of a node of degree ``degree`` in a connected 4-node graphlet with ``edges`` edges."""
    if edges == 3:  # path P4 (max degree 2) or star K1,3
        return {1: 4, 2: 5}[degree] if max_degree == 2 else {1: 6, 3: 7}[degree]
    if edges == 4:  # cycle C4 (all degree 2) or paw (triangle with a pendant)
        return 8 if max_degree == 2 else {1: 9, 2: 10, 3: 11}[degree]
    if edges == 5:  # diamond
        return {2: 12, 3: 13}[degree]
    return 14  # K4


def node_orbit_counts(g: nx.Graph, nodes: Sequence[int] | None = None) -> np.ndarray:
    """Per-node counts of the 15 node orbits of 2-4-node graphlets (ORCA numbering), ``(len(nodes), 15)``.

    For each node ``v`` every connected induced subgraph on 2, 3 or 4 nodes that contains ``v`` is enumerated
    once (as a node set grown from ``v``) and ``v``'s orbit in it is counted. Orbit 0 is the degree; 1/2 the
    end/centre of a 3-path; 3 a triangle; 4/5 end/inside of a 4-path; 6/7 leaf/centre of a 3-star; 8 a 4-cycle;
    9/10/11 pendant / degree-2 / degree-3 node of a paw; 12/13 degree-2 / degree-3 node of a diamond; 14 K4.
    Cost per node about ``deg^3``: fine for the bounded degrees of planar, grid and tree graphs.
    """
    adj = {v: set(g.neighbors(v)) - {v} for v in g.nodes}
    nodes = list(g.nodes) if nodes is None else list(nodes)
    out = np.zeros((len(nodes), 15), dtype=np.int64)
    for row, v in enumerate(nodes):
        nv = adj[v]
        out[row, 0] = len(nv)
        threes: set[frozenset[int]] = set()
        for a in nv:
            for b in (nv | adj[a]) - {v, a}:
                threes.add(frozenset((v, a, b)))
        fours: set[frozenset[int]] = set()
        for s in threes:
            edges = sum(1 for x, y in _pairs(s) if y in adj[x])  # 2: a 3-path, 3: a triangle
            out[row, 3 if edges == 3 else (1 if len(nv & s) == 1 else 2)] += 1
            for x in s:
                for c in adj[x] - s:
                    fours.add(s | {c})
        for s in fours:
            degrees = {x: len(adj[x] & s) for x in s}
            edges = sum(degrees.values()) // 2
            out[row, _orbit4(edges, degrees[v], max(degrees.values()))] += 1
    return out


def _pairs(s: frozenset[int]):
    items = sorted(s)
    return ((items[i], items[j]) for i in range(len(items)) for j in range(i + 1, len(items)))


def orbit_vector(
    g: nx.Graph, *, exact_limit: int = 2000, rng: np.random.Generator | None = None
) -> np.ndarray:
    """Mean count per node of the 15 orbits (the GRAN descriptor), over all nodes or, above ``exact_limit``
    nodes, over a uniform sample of ``exact_limit`` of them."""
    n = g.number_of_nodes()
    if n == 0:
        return np.zeros(15)
    nodes = None
    if n > exact_limit:
        rng = rng or np.random.default_rng(0)
        nodes = rng.choice(np.array(list(g.nodes)), size=exact_limit, replace=False).tolist()
    return node_orbit_counts(g, nodes).mean(axis=0)


def normalized_laplacian(g: nx.Graph) -> sparse.csr_matrix:
    """``I - D^-1/2 A D^-1/2`` (isolated nodes: a zero row and column), ``(n, n)`` CSR."""
    n = g.number_of_nodes()
    adj = nx.to_scipy_sparse_array(g, nodelist=list(g.nodes), format="csr", dtype=np.dtype(np.float64))
    deg = np.asarray(adj.sum(axis=1)).ravel()
    inv = np.where(deg > 0, 1 / np.sqrt(np.maximum(deg, 1e-300)), 0.0)
    scaled = sparse.diags(inv) @ adj @ sparse.diags(inv)
    return (
        sparse.csr_matrix(sparse.diags((deg > 0).astype(np.float64)) - scaled)
        if n
        else sparse.csr_matrix((0, 0))
    )


def spectrum_histogram(
    g: nx.Graph,
    *,
    exact_limit: int = 2000,
    moments: int = 256,
    probes: int = 16,
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """Histogram of the normalised-Laplacian eigenvalues (200 bins on [-1e-5, 2]) as a distribution.

    Up to ``exact_limit`` nodes: all eigenvalues (dense ``eigvalsh``). Above: the kernel polynomial method
    estimates the mass of each bin from ``moments`` Chebyshev moments of ``L - I`` (spectrum in [-1, 1]),
    traces estimated with ``probes`` Rademacher vectors and Jackson damping against Gibbs oscillations.
    """
    n = g.number_of_nodes()
    lap = normalized_laplacian(g)
    if n <= exact_limit:
        eig = np.linalg.eigvalsh(lap.toarray()) if n else np.zeros(0)
        h, _ = np.histogram(eig, bins=SPECTRUM_BINS, range=SPECTRUM_RANGE)
        return h / max(h.sum(), 1)
    rng = rng or np.random.default_rng(0)
    h_op = sparse.csr_matrix(lap - sparse.identity(n))  # spectrum in [-1, 1]
    mu = np.zeros(moments)
    for _ in range(probes):  # mu_m = tr(T_m(H)) / n, T_m by the three-term recurrence on a probe vector
        r = rng.choice([-1.0, 1.0], size=n)
        t_prev, t_cur = r, h_op @ r
        mu[0] += r @ r
        mu[1] += r @ t_cur
        for m in range(2, moments):
            t_prev, t_cur = t_cur, 2 * (h_op @ t_cur) - t_prev
            mu[m] += r @ t_cur
    mu /= probes * n
    orders = np.arange(moments)
    big = moments + 1  # Jackson kernel g_m
    jackson = (
        (big - orders) * np.cos(np.pi * orders / big) + np.sin(np.pi * orders / big) / np.tan(np.pi / big)
    ) / big
    edges = np.linspace(*SPECTRUM_RANGE, SPECTRUM_BINS + 1) - 1.0  # bin edges in the H = L - I variable
    theta = np.arccos(np.clip(edges, -1.0, 1.0))  # (bins + 1,)
    # mass of the damped density on [a, b] (theta = arccos):
    # (theta_a - theta_b) / pi + sum_m 2 g_m mu_m (sin(m theta_a) - sin(m theta_b)) / (m pi)
    cdf = -theta / np.pi  # increasing in the edge value
    for k in range(1, moments):
        cdf = cdf - 2 * jackson[k] * mu[k] * np.sin(k * theta) / (k * np.pi)
    mass = np.clip(np.diff(cdf), 0.0, None)
    return mass / max(mass.sum(), 1e-300)


STATISTICS: dict[str, Callable[..., np.ndarray]] = {
    "degree": lambda g, **kw: degree_histogram(g),
    "clustering": lambda g, **kw: clustering_histogram(g),
    "orbit": orbit_vector,
    "spectrum": spectrum_histogram,
}


# --------------------------------------------------------------------------------------------------- MMD


def gaussian_tv_kernel(a: np.ndarray, b: np.ndarray, sigma: float) -> float:
    """``exp(-TV^2 / (2 sigma^2))`` with ``TV = |a - b|_1 / 2``, the shorter vector zero-padded."""
    size = max(len(a), len(b))
    a = np.pad(a, (0, size - len(a)))
    b = np.pad(b, (0, size - len(b)))
    tv = np.abs(a - b).sum() / 2
    return math.exp(-tv * tv / (2 * sigma * sigma))


def _padded(vectors: Sequence[np.ndarray], size: int) -> np.ndarray:
    return np.stack([np.pad(np.asarray(v, dtype=np.float64), (0, size - len(v))) for v in vectors])


def mmd2(xs: Sequence[np.ndarray], ys: Sequence[np.ndarray], *, sigma: float) -> float:
    """Biased squared MMD (diagonal terms included, as GRAN/SPECTRE/DiGress report) between two sets of
    vectors under :func:`gaussian_tv_kernel` (computed for all pairs at once)."""
    if not len(xs) or not len(ys):
        raise ValueError(f"both sets need at least one vector, got {len(xs)} and {len(ys)}")
    size = max(len(v) for v in [*xs, *ys])
    a, b = _padded(xs, size), _padded(ys, size)  # (n_x, L), (n_y, L)

    def mean_k(p: np.ndarray, q: np.ndarray) -> float:
        tv = np.abs(p[:, None, :] - q[None, :, :]).sum(-1) / 2  # (n_p, n_q)
        return float(np.exp(-(tv**2) / (2 * sigma * sigma)).mean())

    return mean_k(a, a) + mean_k(b, b) - 2 * mean_k(a, b)


def graph_statistics(graphs: Sequence[nx.Graph], *, seed: int = 0) -> dict[str, list[np.ndarray]]:
    """The four statistic vectors of every graph, ``{name: [vector per graph]}``."""
    rng = np.random.default_rng(seed)
    return {name: [fn(g, rng=rng) for g in graphs] for name, fn in STATISTICS.items()}


def mmd_table(
    generated: Sequence[nx.Graph], reference: Sequence[nx.Graph], *, seed: int = 0
) -> dict[str, float]:
    """``{statistic: MMD^2}`` between two sets of graphs (degree, clustering, orbit, spectrum)."""
    a = graph_statistics(generated, seed=seed)
    b = graph_statistics(reference, seed=seed + 1)
    return {name: mmd2(a[name], b[name], sigma=SIGMAS[name]) for name in STATISTICS}


# ------------------------------------------------------------------------------------------------ validity


def is_planar_valid(g: nx.Graph) -> bool:
    """Connected and planar (the SPECTRE / DiGress check)."""
    return g.number_of_nodes() > 0 and nx.is_connected(g) and nx.check_planarity(g)[0]


def grid_dimensions(g: nx.Graph) -> tuple[int, int] | None:
    """``(rows, cols)`` with ``rows <= cols`` if ``g`` is isomorphic to a 2D grid graph, else None.

    Linear time (three breadth-first searches), so it also decides 100,000-node graphs: a corner ``A``
    (degree 2), the two corners ``B`` and ``C`` closest to it, and for every node the coordinates
    ``x = (d(A,v) - d(B,v) + d(A,B)) / 2``, ``y = (d(A,v) - d(C,v) + d(A,C)) / 2``; ``g`` is a grid iff these
    are a bijection onto the lattice and the edges are exactly the lattice's nearest neighbours.
    """
    n, m = g.number_of_nodes(), g.number_of_edges()
    if n == 0 or not nx.is_connected(g):
        return None
    if n == 1:
        return (1, 1)
    degrees = dict(g.degree())
    if max(degrees.values()) <= 2 and m == n - 1:  # a path is a 1 x n grid
        return (1, n)
    corners = [v for v, d in degrees.items() if d == 2]
    if len(corners) != 4 or max(degrees.values()) > 4:
        return None
    a = corners[0]
    dist_a = nx.single_source_shortest_path_length(g, a)
    others = sorted(corners[1:], key=lambda c: dist_a[c])
    b, c = others[0], others[1]
    dist_b = nx.single_source_shortest_path_length(g, b)
    dist_c = nx.single_source_shortest_path_length(g, c)
    ab, ac = dist_a[b], dist_a[c]
    cols, rows = ab + 1, ac + 1
    if rows * cols != n or m != rows * (cols - 1) + cols * (rows - 1):
        return None
    coord = {}
    for v in g.nodes:
        x2, y2 = dist_a[v] - dist_b[v] + ab, dist_a[v] - dist_c[v] + ac
        if x2 % 2 or y2 % 2:
            return None
        coord[v] = (x2 // 2, y2 // 2)
    if len(set(coord.values())) != n or not all(0 <= x < cols and 0 <= y < rows for x, y in coord.values()):
        return None
    for u, v in g.edges:
        (x1, y1), (x2, y2) = coord[u], coord[v]
        if abs(x1 - x2) + abs(y1 - y2) != 1:
            return None
    return (min(rows, cols), max(rows, cols))


def is_grid_valid(g: nx.Graph) -> bool:
    """Isomorphic to some 2D grid graph (:func:`grid_dimensions`)."""
    return grid_dimensions(g) is not None


VALIDITY: dict[str, Callable[[nx.Graph], bool]] = {
    "planar": is_planar_valid,
    "grid": is_grid_valid,
    "tree": lambda g: g.number_of_nodes() > 0 and nx.is_tree(g),
    "lobster": lambda g: g.number_of_nodes() > 0 and nx.is_tree(g),
}


# ------------------------------------------------------------------------------------ uniqueness / novelty


def _wl_hash(g: nx.Graph) -> str:
    """Weisfeiler-Lehman hash (a necessary condition for isomorphism), used only to bucket graphs."""
    with warnings.catch_warnings():  # networkx >= 3.5 warns that hashes changed from earlier versions
        warnings.simplefilter("ignore", UserWarning)
        return nx.weisfeiler_lehman_graph_hash(g, iterations=3)


def _buckets(graphs: Sequence[nx.Graph]) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for i, g in enumerate(graphs):
        out.setdefault(_wl_hash(g), []).append(i)
    return out


@dataclass(frozen=True)
class Novelty:
    """Fractions of a generated set: ``unique`` (first of its isomorphism class in the set), ``novel``
    (isomorphic to no training graph), ``valid_unique_novel`` (V.U.N.: all three, when a validity is given)."""

    unique: float
    novel: float
    valid: float | None
    valid_unique_novel: float | None


def uniqueness_novelty(
    generated: Sequence[nx.Graph],
    train: Sequence[nx.Graph],
    *,
    validity: Callable[[nx.Graph], bool] | None = None,
) -> Novelty:
    """Exact isomorphism classes (Weisfeiler-Lehman hash to bucket, then ``nx.is_isomorphic``), as in
    DiGress's ``eval_fraction_unique_non_isomorphic_valid``."""
    if not generated:
        raise ValueError("no generated graphs")
    train_buckets = _buckets(train)
    seen: dict[str, list[nx.Graph]] = {}
    unique = novel = vun = valid_count = 0
    for g in generated:
        key = _wl_hash(g)
        is_unique = not any(nx.is_isomorphic(g, h) for h in seen.get(key, []))
        seen.setdefault(key, []).append(g)
        is_novel = not any(nx.is_isomorphic(g, train[j]) for j in train_buckets.get(key, []))
        is_valid = validity(g) if validity is not None else True
        unique += is_unique
        novel += is_novel
        valid_count += is_valid
        vun += is_unique and is_novel and is_valid
    n = len(generated)
    return Novelty(
        unique / n,
        novel / n,
        valid_count / n if validity is not None else None,
        vun / n if validity is not None else None,
    )


# ------------------------------------------------------------------------------------- spectra of node fields


def graph_power_spectrum(g: nx.Graph, x: np.ndarray, *, bins: int = 16) -> np.ndarray:
    """Power spectrum of a node field ``x (n, C)`` on ``g``: the energy of its graph Fourier coefficients
    (projections on the eigenvectors of the normalised Laplacian, eigenvalues in ``[0, 2]``) averaged per mode
    within each of ``bins`` equal eigenvalue bins, summed over channels: ``(bins,)`` (NaN where a bin holds no
    mode). On a grid graph the eigenvectors are products of cosines, so this is the radially binned power
    spectrum of image processing; normalising per mode makes spectra of different sizes comparable."""
    x = np.asarray(x, dtype=np.float64).reshape(g.number_of_nodes(), -1)
    lam, vec = np.linalg.eigh(normalized_laplacian(g).toarray())
    energy = ((vec.T @ x) ** 2).sum(axis=1)  # (n,) per mode
    which = np.clip((lam / 2 * bins).astype(int), 0, bins - 1)
    total = np.bincount(which, weights=energy, minlength=bins)
    count = np.bincount(which, minlength=bins)
    return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def spectrum_error(a: Sequence[np.ndarray], b: Sequence[np.ndarray]) -> float:
    """RMS over bins of ``log10`` of the ratio of two sets' mean power spectra (bins empty or zero in either
    set are skipped): 0 for equal spectra, 0.3 for a factor 2 everywhere."""
    ma, mb = np.nanmean(np.stack(a), axis=0), np.nanmean(np.stack(b), axis=0)
    ok = np.isfinite(ma) & np.isfinite(mb) & (ma > 0) & (mb > 0)
    if not ok.any():
        raise ValueError("the two sets of spectra share no non-empty bin")
    return float(np.sqrt(np.mean(np.log10(ma[ok] / mb[ok]) ** 2)))
