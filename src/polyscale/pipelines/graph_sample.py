"""Loading a trained graph experiment and generating graphs with it: features on the training family's
connectivity, or structure (positions, then edges)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path

import networkx as nx
import numpy as np
import torch

from polyscale.config import load_config, to_dict
from polyscale.data.graph_geometry import candidate_conditioning, candidate_edges, spatial_order
from polyscale.data.graphs import family_graph, grid_shape, to_data
from polyscale.diffusion.graph import sample_graph_features
from polyscale.diffusion.sampling import SamplerConfig, with_sampler
from polyscale.diffusion.structure import sample_edges, sample_positions
from polyscale.io import CONFIG_NAME, load_pretrained, read_model_dir, resolve_model_dir
from polyscale.nn.graph import GraphDenoiser
from polyscale.pipelines.graph_config import (
    STRUCTURE_STAGES,
    GraphExperimentConfig,
    candidate_options,
    check_graph_experiment,
    migrate_graph_experiment,
)
from polyscale.pipelines.graph_nets import graph_denoiser, position_denoiser, reads_crossings
from polyscale.training.run_dir import MODEL


@dataclass
class GraphModel:
    """A trained graph experiment ready to sample: its configuration and denoiser(s)."""

    config: GraphExperimentConfig
    features: torch.nn.Module | None = None
    positions: torch.nn.Module | None = None
    edges: torch.nn.Module | None = None

    def require(self, part: str) -> torch.nn.Module:
        """The denoiser ``part`` (``"features"``, ``"positions"`` or ``"edges"``); a ValueError if this model
        has none (a features model has no stages, a structure model no feature denoiser)."""
        net = getattr(self, part)
        if net is None:
            raise ValueError(f"this {self.config.task} model has no {part} denoiser")
        return net


def load_net(directory: Path, device: torch.device) -> tuple[GraphDenoiser, GraphExperimentConfig]:
    info = read_model_dir(directory)
    meta = info.metadata.get("graph_experiment")
    if meta is None:
        raise ValueError(
            f"{directory} is not a graph model (its config.json has no graph_experiment metadata)"
        )
    net = load_pretrained(directory, {"GraphDenoiser": GraphDenoiser}, ema=True, map_location=device).eval()
    if not isinstance(net, GraphDenoiser):  # the only class the map above builds
        raise ValueError(f"{directory} holds a {type(net).__name__}, not a GraphDenoiser")
    return net, load_config(GraphExperimentConfig, migrate_graph_experiment(meta))


SAMPLING_SECTIONS = ("sampler.", "positions.", "edges.")  # diffusion keys an override may name without prefix


def with_sampling_overrides(model: GraphModel, overrides: Sequence[str]) -> GraphModel:
    """``model`` with ``KEY=VALUE`` overrides of its ``diffusion`` section (how it samples: the samplers of
    the features task and of each stage, their steps and options, the start), e.g.
    ``positions.sampler.options.s_churn=0.5``, ``edges.sampler.steps=10``, ``sampler.name=ddim``; a leading
    ``diffusion.`` is accepted. Anything outside ``diffusion`` would not match the trained weights and is an
    error; values are validated like the preset's (an unknown sampler option is an error)."""
    if isinstance(overrides, str):
        raise ValueError(f"overrides must be a list of KEY=VALUE strings, got the string {overrides!r}")
    keys = [o if o.startswith("diffusion.") or not o.startswith(SAMPLING_SECTIONS) else f"diffusion.{o}"
            for o in overrides]  # fmt: skip
    outside = [o for o, k in zip(overrides, keys, strict=True) if not k.startswith("diffusion.")]
    if outside:
        raise ValueError(f"sampling overrides must set diffusion.* fields only, got {outside}")
    if not keys:
        return model
    cfg = load_config(GraphExperimentConfig, to_dict(model.config), keys)
    check_graph_experiment(cfg)
    return replace(model, config=replace(model.config, diffusion=cfg.diffusion))


def with_position_sampler(model: GraphModel, name: str | None = None, steps: int | None = None) -> GraphModel:
    """``model`` with its positions stage's sampler ``name`` and / or ``steps`` replaced (None: keep; a new
    sampler keeps the options it accepts, see :func:`~polyscale.diffusion.sampling.with_sampler`)."""
    diff = model.config.diffusion
    positions = replace(diff.positions, sampler=with_sampler(diff.positions.sampler, name, steps))
    return replace(model, config=replace(model.config, diffusion=replace(diff, positions=positions)))


def resolve_graph_checkpoint(checkpoint: str | Path) -> dict[str, Path]:
    """The model directories meant by a graph ``--checkpoint``: ``{"features": dir}`` or ``{"positions": dir,
    "edges": dir}``. Accepted, in this order: a graph run directory (``model/``, or ``positions/model`` and
    ``edges/model``), a model directory inside one (or a stage's run directory, ``<run>/positions``: its
    structure run is meant), or a shipped graph model's name (:func:`polyscale.io.resolve_model_dir`).

    Raises:
        FileNotFoundError: one line naming the three accepted forms, or the stage a structure run lacks.
    """
    path = Path(checkpoint)
    trained = [path / s / MODEL for s in STRUCTURE_STAGES if (path / s / MODEL / CONFIG_NAME).is_file()]
    try:  # a structure run: one of its stages stands for it
        found = trained[0] if trained else resolve_model_dir(path)
        role = read_model_dir(found).metadata.get("role")
    except FileNotFoundError:
        raise FileNotFoundError(
            f"{str(checkpoint)!r} holds no graph model: expected a graph run directory (model/, or positions/ "
            "and edges/), a model directory inside one (or its positions/ or edges/ stage), or a shipped model"
        ) from None
    if role not in STRUCTURE_STAGES:
        return {"features": found}
    run = found.parent.parent  # <run>/<stage>/model
    stages = {s: run / s / MODEL for s in STRUCTURE_STAGES}
    missing = [s for s, d in stages.items() if not (d / CONFIG_NAME).is_file()]
    if missing:
        raise FileNotFoundError(
            f"{found} is the {role} stage of {run}, whose {missing[0]} stage has no model yet"
        )
    return stages


def load_graph_model(checkpoint: str | Path, *, device: str = "auto") -> GraphModel:
    """Load the EMA model(s) of a run written by :func:`train_graph_experiment`: ``checkpoint`` is the run
    directory, a model directory inside it or a shipped model (:func:`resolve_graph_checkpoint`)."""
    dev = torch.device(
        "cuda" if device == "auto" and torch.cuda.is_available() else ("cpu" if device == "auto" else device)
    )
    dirs = resolve_graph_checkpoint(checkpoint)
    if "features" in dirs:
        net, cfg = load_net(dirs["features"], dev)
        if cfg.task != "features":
            raise ValueError(
                f"{dirs['features']} is a {cfg.task} model without its stage; pass its run directory"
            )
        return GraphModel(cfg, features=graph_denoiser(net, sigma_data=cfg.diffusion.sigma_data))
    pos_net, cfg = load_net(dirs["positions"], dev)
    edge_net_, edge_cfg = load_net(dirs["edges"], dev)
    # the edge stage samples over the candidate set its own model was trained on (the two stages may
    # have been trained apart, e.g. edges retrained with another candidate rule)
    ed = edge_cfg.data
    cfg = replace(
        cfg,
        data=replace(cfg.data, candidates_k=ed.candidates_k, candidates_sectors=ed.candidates_sectors,
                     candidates_hull=ed.candidates_hull, candidates_max_length=ed.candidates_max_length),
        model=replace(cfg.model, crossings=edge_cfg.model.crossings),
    )  # fmt: skip
    return GraphModel(cfg, positions=position_denoiser(cfg.model, pos_net),
                      edges=graph_denoiser(edge_net_, sigma_data=1.0))  # fmt: skip


def sampling_domain(
    family: str, num_nodes: int, *, rng: np.random.Generator
) -> tuple[int, tuple[float, float]]:
    """Node count and domain ``(W, H)`` of a generated graph of ``family`` with about ``num_nodes`` nodes: the
    square of area ``num_nodes`` (unit density), or for grids a random ``rows x cols`` shape as in the data
    (:func:`polyscale.data.graphs.grid_shape`) and its lattice box ``(rows - 1, cols - 1)``."""
    if family == "grid":
        rows, cols = grid_shape(num_nodes, rng=rng)
        return rows * cols, (float(rows - 1), float(cols - 1))
    return num_nodes, (num_nodes**0.5, num_nodes**0.5)


def edge_geometry(model: GraphModel) -> dict:
    """The geometry arguments of :func:`~polyscale.diffusion.structure.sample_edges` for ``model``: its
    candidate rule, the conditioning its edge network reads, and the Z-order of the nodes."""
    return {
        "candidates": partial(candidate_edges, **candidate_options(model.config.data)),
        "conditioning": partial(candidate_conditioning, crossings=reads_crossings(model.require("edges"))),
        "order": spatial_order,
    }


def stage_samplers(
    cfg: GraphExperimentConfig, sampler: str | None = None, steps: int | None = None
) -> tuple[SamplerConfig, SamplerConfig, SamplerConfig]:
    """The features', the positions stage's and the edge stage's :class:`SamplerConfig` of ``cfg.diffusion``;
    an explicit ``sampler`` / ``steps`` serves all of them (each keeps the options the new sampler accepts)."""
    diff = cfg.diffusion
    steps = steps or None
    return (with_sampler(diff.sampler, sampler, steps), with_sampler(diff.positions.sampler, sampler, steps),
            with_sampler(diff.edges.sampler, sampler, steps))  # fmt: skip


def generate_graphs(
    model: GraphModel,
    num_nodes: int,
    num_graphs: int,
    *,
    sampler: str | None = None,
    steps: int | None = None,
    seed: int = 0,
    progress: bool = False,
    overrides: Sequence[str] = (),
) -> list[nx.Graph]:
    """Structure task: ``num_graphs`` graphs of ``num_nodes`` nodes. Features task: ``num_graphs`` graphs of the
    training family at ``num_nodes`` nodes with generated node features (``x``) and edge features (``e``).
    ``overrides``: ``KEY=VALUE`` sampling settings (:func:`with_sampling_overrides`), then ``sampler`` /
    ``steps`` for every stage."""
    model = with_sampling_overrides(model, overrides)
    cfg = model.config
    feature_sampler, pos_sampler, edge_sampler = stage_samplers(cfg, sampler, steps)
    generator = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    out = []
    for i in range(num_graphs):
        which = f"graph {i + 1}/{num_graphs}"
        if model.features is not None:
            g = family_graph(cfg.data.family, num_nodes, rng=rng)
            d = to_data(g)
            node, edge = sample_graph_features(
                model.require("features"), d.num_nodes, d.edge_index.shape[1], cfg.data.node_dim, cfg.data.edge_dim,
                d.edge_index, sampler=feature_sampler, generator=generator, progress=progress,
                desc=f"features, {which}",
            )  # fmt: skip
            nx.set_node_attributes(g, {i: node[i].tolist() for i in range(d.num_nodes)}, "x")
            m = d.edge_index.shape[1] // 2
            nx.set_edge_attributes(
                g, {(int(u), int(v)): edge[k].tolist() for k, (u, v) in enumerate(d.edge_index[:, :m].T)}, "e"
            )
        else:
            n, box = sampling_domain(cfg.data.family, num_nodes, rng=rng)
            pos = sample_positions(
                model.require("positions"), n, pos_sampler, box=box, start=cfg.diffusion.positions.start,
                start_margin=cfg.diffusion.positions.start_margin, order=spatial_order, generator=generator,
                progress=progress, desc=f"positions, {which}, {n} nodes",
            )  # fmt: skip
            g = sample_edges(model.require("edges"), pos, edge_sampler, **edge_geometry(model), generator=generator,
                             progress=progress, desc=f"edges, {which}")  # fmt: skip
        out.append(g)
    return out
