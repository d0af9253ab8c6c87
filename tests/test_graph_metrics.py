"""Graph metrics against oracles: orbit counts against a brute-force count over all node subsets (and ORCA's
orbit-count when installed), MMD^2 against its definition, the KPM spectrum against eigvalsh, the linear-time
grid check against networkx isomorphism, uniqueness/novelty on hand-made sets."""

from __future__ import annotations

import itertools

import networkx as nx
import numpy as np
import pytest

from polyscale.data.graphs import grid_graph, planar_graph
from polyscale.metrics.graphs import (
    SIGMAS,
    gaussian_tv_kernel,
    graph_power_spectrum,
    grid_dimensions,
    is_planar_valid,
    mmd2,
    mmd_table,
    node_orbit_counts,
    orbit_vector,
    spectrum_error,
    spectrum_histogram,
    uniqueness_novelty,
)

# (edge count, sorted degree sequence) of each connected graphlet on 2-4 nodes -> orbit of a node of each degree
_GRAPHLETS = {
    (1, (1, 1)): {1: 0},
    (2, (1, 1, 2)): {1: 1, 2: 2},
    (3, (2, 2, 2)): {2: 3},
    (3, (1, 1, 2, 2)): {1: 4, 2: 5},
    (3, (1, 1, 1, 3)): {1: 6, 3: 7},
    (4, (2, 2, 2, 2)): {2: 8},
    (4, (1, 2, 2, 3)): {1: 9, 2: 10, 3: 11},
    (5, (2, 2, 3, 3)): {2: 12, 3: 13},
    (6, (3, 3, 3, 3)): {3: 14},
}


def brute_force_orbits(g: nx.Graph) -> np.ndarray:
    """Every node subset of size 2-4, kept when its induced subgraph is connected."""
    nodes = sorted(g.nodes)
    out = np.zeros((len(nodes), 15), dtype=np.int64)
    for k in (2, 3, 4):
        for subset in itertools.combinations(nodes, k):
            sub = g.subgraph(subset)
            if not nx.is_connected(sub):
                continue
            key = (sub.number_of_edges(), tuple(sorted(d for _, d in sub.degree())))
            for v in subset:
                out[nodes.index(v), _GRAPHLETS[key][sub.degree(v)]] += 1
    return out


GRAPHS = [
    nx.complete_graph(4),
    nx.star_graph(4),
    nx.cycle_graph(6),
    nx.Graph([(0, 1), (1, 2), (0, 2), (2, 3)]),  # paw
    nx.Graph([(0, 1), (1, 2), (2, 3), (3, 0), (0, 2)]),  # diamond
    nx.gnp_random_graph(11, 0.35, seed=3),
    nx.gnp_random_graph(13, 0.25, seed=4),
    nx.convert_node_labels_to_integers(nx.grid_2d_graph(3, 4)),
]


@pytest.mark.parametrize("g", GRAPHS, ids=range(len(GRAPHS)))
def test_orbit_counts_equal_brute_force(g):
    np.testing.assert_array_equal(node_orbit_counts(g), brute_force_orbits(g))


def test_orbit_counts_equal_orca_if_installed():
    orbit_count = pytest.importorskip("orbit_count")
    for g in [*GRAPHS, planar_graph(64, rng=np.random.default_rng(0))]:
        np.testing.assert_array_equal(node_orbit_counts(g), orbit_count.node_orbit_counts(g, graphlet_size=4))


def test_sampled_orbit_vector_estimates_the_mean():
    g = planar_graph(1500, rng=np.random.default_rng(1))
    exact = orbit_vector(g, exact_limit=5000)
    sampled = orbit_vector(g, exact_limit=400, rng=np.random.default_rng(2))
    assert np.abs(sampled - exact).max() / np.abs(exact).max() < 0.1


def test_mmd2_is_the_biased_v_statistic():
    r = np.random.default_rng(0)
    xs = [r.random(5) for _ in range(4)]
    ys = [r.random(7) for _ in range(3)]

    def mean_k(a, b):
        return np.mean([[gaussian_tv_kernel(u, v, 0.7) for v in b] for u in a])

    expected = mean_k(xs, xs) + mean_k(ys, ys) - 2 * mean_k(xs, ys)
    assert mmd2(xs, ys, sigma=0.7) == pytest.approx(expected, rel=1e-12)
    assert mmd2(xs, xs, sigma=0.7) == pytest.approx(0.0, abs=1e-12)
    assert gaussian_tv_kernel(np.array([1.0]), np.array([0.0, 1.0]), 1.0) == pytest.approx(np.exp(-0.5))


def test_mmd_table_separates_families_and_floor_is_small():
    r = np.random.default_rng(0)
    train = [planar_graph(40, rng=r) for _ in range(20)]
    test = [planar_graph(40, rng=r) for _ in range(12)]
    trees = [nx.random_labeled_tree(40, seed=i) for i in range(12)]
    floor, other = mmd_table(test, train), mmd_table(trees, train)
    assert set(floor) == set(SIGMAS)
    for name in SIGMAS:
        assert other[name] > 3 * floor[name], (name, floor, other)


def test_kpm_spectrum_matches_eigvalsh():
    g = planar_graph(1200, rng=np.random.default_rng(0))
    exact = spectrum_histogram(g, exact_limit=5000)
    kpm = spectrum_histogram(g, exact_limit=100, rng=np.random.default_rng(1))
    other = spectrum_histogram(planar_graph(1200, rng=np.random.default_rng(9)), exact_limit=5000)
    tv = np.abs(kpm - exact).sum() / 2
    assert tv < 0.06 and tv < 2 * np.abs(other - exact).sum() / 2  # as close as another graph of the family


def test_grid_check_agrees_with_isomorphism():
    candidates = [grid_graph(r, c) for r, c in [(1, 1), (1, 5), (2, 2), (3, 7), (6, 6)]]
    broken = nx.Graph(grid_graph(4, 5))
    broken.remove_edge(0, 1)
    diagonal = nx.Graph(grid_graph(4, 5))
    diagonal.add_edge(0, 6)
    torus = nx.convert_node_labels_to_integers(nx.grid_2d_graph(4, 4, periodic=True))
    ladder_twist = nx.circular_ladder_graph(6)
    for g in [*candidates, broken, diagonal, torus, ladder_twist, nx.cycle_graph(8), nx.path_graph(1)]:
        n = g.number_of_nodes()
        shapes = [(r, n // r) for r in range(1, n + 1) if n % r == 0 and r <= n // r]
        expected = next((s for s in shapes if nx.is_isomorphic(g, nx.grid_2d_graph(*s))), None)
        assert grid_dimensions(g) == expected, (g, expected)
    relabelled = nx.relabel_nodes(
        grid_graph(30, 40), dict(enumerate(np.random.default_rng(0).permutation(1200)))
    )
    assert grid_dimensions(relabelled) == (30, 40)


def test_uniqueness_novelty_and_validity():
    train = [nx.cycle_graph(5), nx.path_graph(5)]
    generated = [nx.cycle_graph(5), nx.star_graph(4), nx.star_graph(4), nx.complete_graph(5)]
    result = uniqueness_novelty(generated, train, validity=is_planar_valid)
    assert result.unique == 0.75  # the second star repeats the first
    assert result.novel == 0.75  # the cycle is in train
    assert result.valid == 0.75  # K5 is not planar
    assert result.valid_unique_novel == 0.25  # only the first star


def test_graph_power_spectrum_white_noise_is_flat_and_smooth_fields_are_red():
    g = nx.grid_2d_graph(12, 12)
    g = nx.convert_node_labels_to_integers(g, ordering="sorted")
    rng = np.random.default_rng(0)
    white = [graph_power_spectrum(g, rng.standard_normal((144, 1)), bins=8) for _ in range(200)]
    mean = np.nanmean(np.stack(white), axis=0)
    assert np.all(np.abs(mean[np.isfinite(mean)] - 1) < 0.15)  # orthonormal modes: E|c|^2 = variance
    r, c = np.divmod(np.arange(144), 12)
    smooth = np.cos(np.pi * r / 11)[:, None]  # the lowest non-constant mode of the grid
    s = graph_power_spectrum(g, smooth, bins=8)
    assert s[0] > 100 * np.nansum(s[1:])
    assert spectrum_error(white, white) == 0
    doubled = [2 * w for w in white]
    assert abs(spectrum_error(doubled, white) - np.log10(2)) < 1e-9
