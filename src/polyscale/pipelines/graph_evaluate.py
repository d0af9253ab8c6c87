"""Evaluating a trained graph experiment: structure (validity, MMD against real graphs, novelty) or features
(sliced Wasserstein distances, neighbour correlation, power spectrum), each beside a real-vs-real floor."""

from __future__ import annotations

import time
from collections.abc import Sequence

import networkx as nx
import numpy as np
import torch
from torch import Tensor

from polyscale.data.graphs import family_graph, to_data
from polyscale.diffusion.graph import sample_graph_features
from polyscale.metrics.graphs import VALIDITY, mmd_table, uniqueness_novelty
from polyscale.pipelines.graph_sample import (
    GraphModel,
    generate_graphs,
    stage_samplers,
    with_sampling_overrides,
)
from polyscale.pipelines.graph_train import training_graphs


def check_finite(values: Tensor | np.ndarray, what: str, num_nodes: int) -> None:
    """Refuse generated ``values`` (positions or features of a graph of ``num_nodes`` nodes) with NaN or
    infinite entries, which no metric can score: a one-line ValueError saying how many."""
    finite = np.isfinite(values.detach().cpu().numpy() if isinstance(values, Tensor) else values)
    if not finite.all():
        raise ValueError(
            f"generated {what} contain NaN or infinite values ({int((~finite).sum())} of {finite.size} at "
            f"{num_nodes} nodes), so they cannot be scored: did the model diverge in training, or its sampler "
            "settings (--sampler, --timesteps, --set diffusion.*) blow up?"
        )


def evaluate_structure(
    model: GraphModel,
    sizes: list[int],
    *,
    num_graphs: int = 16,
    sampler: str | None = None,
    steps: int | None = None,
    seed: int = 0,
    overrides: Sequence[str] = (),
    progress: bool = False,
) -> list[dict]:
    """Per size: validity (family check), MMD^2 of degree / clustering / orbit / spectrum against real graphs
    of that size, and the real-vs-real floor (two independent real sets of the same count); uniqueness and
    novelty against the training graphs at training sizes. ``progress``: a labelled bar per sampling stage
    of each graph (``positions, graph 2/16, 64 nodes``)."""
    cfg = model.config
    if cfg.task != "structure":
        raise ValueError(f"evaluate_structure needs a structure model, got task {cfg.task!r}")
    family = cfg.data.family
    validity = VALIDITY.get(family)
    train = training_graphs(cfg)
    rows = []
    for n in sizes:
        t0 = time.perf_counter()
        fake = generate_graphs(
            model,
            n,
            num_graphs,
            sampler=sampler,
            steps=steps,
            seed=seed,
            overrides=overrides,
            progress=progress,
        )
        seconds = time.perf_counter() - t0
        for g in fake:
            pos = np.array(list(nx.get_node_attributes(g, "pos").values()), dtype=np.float64)
            check_finite(pos, "positions", n)
        rng = np.random.default_rng(seed + n)
        real_a = [family_graph(family, n, rng=rng) for _ in range(num_graphs)]
        real_b = [family_graph(family, n, rng=rng) for _ in range(num_graphs)]
        model_mmd, floor_mmd = mmd_table(fake, real_a, seed=seed), mmd_table(real_b, real_a, seed=seed)
        row: dict = {"nodes": n, "graphs": num_graphs, "sampling s": seconds}
        if validity is not None:
            row["valid"] = float(np.mean([validity(g) for g in fake]))
            row["real valid"] = float(np.mean([validity(g) for g in real_b]))
        for key in model_mmd:
            row[f"{key} MMD2"] = model_mmd[key]
            row[f"{key} floor"] = floor_mmd[key]
        if n <= cfg.data.max_nodes * 2:
            nov = uniqueness_novelty(fake, train, validity=validity)
            row |= {"unique": nov.unique, "novel": nov.novel}
        rows.append(row)
    return rows


def _feature_sets(node: Tensor, edge: Tensor, edges: Tensor) -> dict[str, Tensor]:
    """The distributions a feature model is scored on: node features, features at both ends of each edge
    (both orders), edge features."""
    u, v = edges
    pairs = torch.cat([torch.cat([node[u], node[v]], 1), torch.cat([node[v], node[u]], 1)])
    return {"node": node, "neighbour pair": pairs, "edge": edge}


SPECTRUM_LIMIT = 5000  # largest graph whose power spectrum evaluate_features computes (a dense eigh)


def evaluate_features(
    model: GraphModel,
    sizes: list[int],
    *,
    num_graphs: int = 16,
    sampler: str | None = None,
    steps: int | None = None,
    seed: int = 0,
    overrides: Sequence[str] = (),
    progress: bool = False,
) -> list[dict]:
    """Per size: on ``num_graphs`` graphs of the training family, sliced Wasserstein distances between the
    generated features and real smooth fields on the same graphs (node features, neighbour pairs, edge
    features), the neighbour correlation, and (up to ``SPECTRUM_LIMIT`` nodes) the error of the node fields'
    graph power spectrum (:func:`polyscale.metrics.graphs.spectrum_error`), each beside the floor of a second
    independent real draw. ``progress``: a labelled bar per generated graph (``features, graph 2/16, 64
    nodes``)."""
    from polyscale.data.graphs import graph_fields
    from polyscale.metrics.graphs import graph_power_spectrum, spectrum_error
    from polyscale.metrics.sliced_wasserstein import sliced_wasserstein

    model = with_sampling_overrides(model, overrides)
    cfg = model.config
    feature_sampler = stage_samplers(cfg, sampler, steps)[0]
    d = cfg.data
    rows = []
    for n in sizes:
        rng = np.random.default_rng(seed + n)
        sets: dict[str, dict[str, list[Tensor]]] = {"model": {}, "real": {}, "floor": {}}
        spectra: dict[str, list[np.ndarray]] = {"model": [], "real": [], "floor": []}
        t0 = time.perf_counter()
        for i in range(num_graphs):
            g = family_graph(d.family, n, rng=rng)
            data = to_data(g)
            m = data.edge_index.shape[1] // 2
            node, edge = sample_graph_features(
                model.require("features"), data.num_nodes, 2 * m, d.node_dim, d.edge_dim, data.edge_index,
                sampler=feature_sampler, generator=torch.Generator().manual_seed(seed + i), progress=progress,
                desc=f"features, graph {i + 1}/{num_graphs}, {n} nodes",
            )  # fmt: skip
            check_finite(node, "node features", n)
            check_finite(edge, "edge features", n)
            drawn = {"model": (node, edge[:m])}
            for name in ("real", "floor"):
                node_field, edge_field = graph_fields(
                    g, node_dim=d.node_dim, edge_dim=d.edge_dim, steps=d.smoothing_steps,
                    stationary=d.stationary_fields, rng=rng,
                )  # fmt: skip
                drawn[name] = (torch.from_numpy(node_field), torch.from_numpy(edge_field))
            for name, (x, e) in drawn.items():
                for key, t in _feature_sets(x.float(), e.float(), data.edge_index[:, :m]).items():
                    sets[name].setdefault(key, []).append(t)
                if n <= SPECTRUM_LIMIT:
                    spectra[name].append(graph_power_spectrum(g, x.double().numpy()))
        seconds = time.perf_counter() - t0
        row: dict = {"nodes": n, "graphs": num_graphs, "sampling s": seconds}
        pooled = {name: {k: torch.cat(v) for k, v in s.items()} for name, s in sets.items()}
        for key in pooled["real"]:
            for name in ("model", "floor"):
                gen = torch.Generator().manual_seed(seed)
                row[f"{key} SW ({name})"] = sliced_wasserstein(
                    pooled[name][key], pooled["real"][key], generator=gen
                )
        for name in ("model", "real", "floor"):
            pairs = pooled[name]["neighbour pair"]
            k = d.node_dim
            row[f"neighbour corr ({name})"] = float((pairs[:, :k] * pairs[:, k:]).mean())
        if spectra["real"]:
            for name in ("model", "floor"):
                row[f"spectrum err ({name})"] = spectrum_error(spectra[name], spectra["real"])
        rows.append(row)
    return rows


def evaluate_graph_model(
    model: GraphModel,
    sizes: list[int],
    *,
    num_graphs: int = 16,
    sampler: str | None = None,
    steps: int | None = None,
    seed: int = 0,
    overrides: Sequence[str] = (),
    progress: bool = False,
) -> list[dict]:
    """:func:`evaluate_structure` or :func:`evaluate_features`, by the model's task (``progress``: labelled
    sampling bars, one per graph and stage)."""
    fn = evaluate_features if model.config.task == "features" else evaluate_structure
    return fn(model, sizes, num_graphs=num_graphs, sampler=sampler, steps=steps, seed=seed, overrides=overrides,
              progress=progress)  # fmt: skip


def format_graph_table(rows: list[dict]) -> str:
    """Rows of :func:`evaluate_structure` as a plain-text table (numbers to 4 significant digits)."""
    keys = list(dict.fromkeys(k for row in rows for k in row))
    cells = [[k for k in keys]] + [[_fmt(row.get(k, "")) for k in keys] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(keys))]
    return "\n".join("  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in cells)


def _fmt(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)
