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
from polyscale.devices import resolve_device
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
from polyscale.pipelines.preflight import check_memory, check_steps, check_writable, human_bytes
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
    directory, a model directory inside it or a shipped model (:func:`resolve_graph_checkpoint`); ``device``:
    a name of :data:`polyscale.devices.DEVICES` (``auto``: CUDA when present; ``cuda`` without CUDA is a
    ValueError)."""
    dev = resolve_device(device)
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


# ------------------------------------------------------------------------------------ memory, before sampling
#
# Graphs are drawn one after another and all kept, so a run's peak is the kept graphs plus the one in flight:
#
# - kept, per graph: NX_NODE_BYTES per node and NX_EDGE_BYTES per edge (networkx dictionaries with the
#   positions or the features as attributes);
# - in flight: GRAPH_ACTIVATION_FACTOR x 4 bytes x hidden x (nodes + directed message edges) for the network
#   and its conditioning, over the family's edges (features task), the positions' k-nearest-neighbour graph
#   (2 x position_knn per node) or the candidate set (2 x (candidates_k + candidates_sectors) per node), and
#   the graph being built.
#
# Calibrated once from the peak RSS of sampling on CPU (2-core AMD EPYC, float32, one thread, 2 Heun steps,
# the shipped presets' widths: hidden 64), as the marginal bytes per node between two sizes, and from
# tracemalloc for networkx alone (a planar graph with features: 1650 bytes per node at 3 edges per node):
# graph_features (8 layers) 6.0 kB per node measured (20,000 -> 80,000 nodes), 7.0 kB estimated;
# graph_planar (6 layers, 8 + 8 candidates per node, crossings) 19.7 kB per node measured (5,000 -> 20,000
# nodes), 27 kB estimated. Whole runs: 230 / 592 MB measured at 20,000 / 80,000 feature nodes against 274 /
# 696 MB estimated; 199 / 495 MB at 5,000 / 20,000 planar nodes against 269 / 674 MB.
NX_NODE_BYTES = 600
NX_EDGE_BYTES = 350
GRAPH_ACTIVATION_FACTOR = 3
GRAPH_OVERHEAD_BYTES = 128 * 2**20
# work (nodes and directed message edges x sampler steps x hidden width x layers, summed over graphs and
# stages) above which `graph sample` says up front that the run will be long: 80,000 planar feature nodes at
# 2 steps (5.7e8) took 64 s on the 2 CPU cores above, so this is some 10 minutes there
LONG_RUN_WORK = 5 * 10**9


@dataclass
class GraphMemoryEstimate:
    """Peak bytes of a graph sampling run (``total``), what they count (``what``), and its work in node and
    edge updates (``work``: nodes and directed message edges x steps x hidden width x layers, summed over
    graphs and stages)."""

    total: int
    what: str
    work: int


def _family_edges_per_node(family: str) -> float:
    """Undirected edges per node of ``family`` at 256 nodes (a cheap sample of the family's density)."""
    g = family_graph(family, 256, rng=np.random.default_rng(0))
    return g.number_of_edges() / max(g.number_of_nodes(), 1)


def graph_sampling_memory(
    model: GraphModel,
    num_nodes: int,
    num_graphs: int,
    *,
    sampler: str | None = None,
    steps: int | None = None,
) -> GraphMemoryEstimate:
    """Estimated peak memory of drawing ``num_graphs`` graphs of ``num_nodes`` nodes with ``model`` and the
    ``sampler`` / ``steps`` of :func:`generate_graphs` (the formula above :data:`NX_NODE_BYTES`); reads only
    the configuration."""
    cfg = model.config
    hidden = cfg.model.hidden
    feature_sampler, pos_sampler, edge_sampler = stage_samplers(cfg, sampler, steps)
    if model.features is not None:
        counts = [feature_sampler.steps]
        edges = _family_edges_per_node(cfg.data.family) * num_nodes
        messages = [num_nodes + 2 * edges]
        what = f"{num_graphs} graph(s) of {num_nodes} nodes and about {int(edges)} edges with features"
    else:
        counts = [pos_sampler.steps, edge_sampler.steps]
        candidates = (cfg.data.candidates_k + cfg.data.candidates_sectors) * num_nodes
        messages = [num_nodes * (1 + 2 * cfg.model.position_knn), num_nodes + 2 * candidates]
        edges = 3 * num_nodes  # a planar graph has fewer than 3 edges per node; sparser families, fewer
        what = (
            f"{num_graphs} graph(s) of {num_nodes} nodes, positions then about {candidates} candidate edges"
        )
    kept = int(NX_NODE_BYTES * num_nodes + NX_EDGE_BYTES * edges)
    in_flight = int(GRAPH_ACTIVATION_FACTOR * 4 * hidden * max(messages)) + GRAPH_OVERHEAD_BYTES
    width = hidden * cfg.model.num_layers
    work = num_graphs * width * sum(m * s for m, s in zip(messages, counts, strict=True))
    return GraphMemoryEstimate(total=num_graphs * kept + in_flight, what=what, work=int(work))


@dataclass
class GraphSampleResult:
    graphs: list[nx.Graph]
    files: list[Path]  # what was written


GRAPH_PICTURE_SUFFIXES = (".png",)  # what --output-file may end in (an .npz of the graphs goes beside it)


def sample_graph_checkpoint(
    checkpoint: str | Path,
    *,
    num_nodes: int = 64,
    num_graphs: int = 4,
    output_file: str | Path | None = None,
    sampler: str | None = None,
    steps: int | None = None,
    position_sampler: str | None = None,
    position_steps: int | None = None,
    overrides: Sequence[str] = (),
    seed: int = 0,
    device: str = "auto",
    progress: bool = True,
    force: bool = False,
) -> GraphSampleResult:
    """Load ``checkpoint`` (:func:`load_graph_model`), draw ``num_graphs`` graphs of ``num_nodes`` nodes
    (:func:`generate_graphs`) and, with ``output_file`` (a ``.png``), draw them there and write them beside it
    as an ``.npz`` (:mod:`polyscale.viz.graphs`).

    ``overrides`` (``diffusion.*`` settings, :func:`with_sampling_overrides`) apply first, then the positions
    stage's ``position_sampler`` / ``position_steps``, then ``sampler`` / ``steps`` for every stage. Before
    sampling: the device exists, the output can be written, no stage takes more than
    :data:`~polyscale.pipelines.preflight.MAX_STEPS` steps, and the run fits in memory
    (:func:`graph_sampling_memory`; ``force`` only warns); a run of more than :data:`LONG_RUN_WORK` says so
    on stderr.

    Raises:
        ValueError: any of those checks, a bad argument, or a checkpoint that is no graph model.
        FileNotFoundError: ``checkpoint`` holds no graph model.
    """
    import sys

    for name, value, minimum in (("num_nodes", num_nodes, 2), ("num_graphs", num_graphs, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    for flag, count in (("--timesteps", steps), ("--position-timesteps", position_steps)):
        if count is not None:
            check_steps(count, flag=flag)
    if output_file is not None:
        check_writable(output_file, suffixes=GRAPH_PICTURE_SUFFIXES, flag="--output-file", beside=(".npz",))
    dev = resolve_device(device)  # before anything loads: an absent device is a one-line error
    model = with_sampling_overrides(load_graph_model(checkpoint, device=device), overrides)
    model = with_position_sampler(model, position_sampler, position_steps)
    keys = ("diffusion.sampler.steps", "diffusion.positions.sampler.steps", "diffusion.edges.sampler.steps")
    for key, config in zip(keys, stage_samplers(model.config, sampler, steps), strict=True):
        check_steps(config.steps, flag=f"{key} (or --timesteps)")
    estimate = graph_sampling_memory(model, num_nodes, num_graphs, sampler=sampler, steps=steps)
    check_memory(
        estimate.total, what=estimate.what, device=dev, force=force, lower="--num-nodes/--num-graphs"
    )
    if estimate.work > LONG_RUN_WORK:
        print(
            f"graph sample: {estimate.what}: about {human_bytes(estimate.total)} of memory and "
            f"{estimate.work:.1e} node and edge updates x width; this will take a while",
            file=sys.stderr,
        )
    graphs = generate_graphs(
        model, num_nodes, num_graphs, sampler=sampler, steps=steps, seed=seed, progress=progress
    )
    files: list[Path] = []
    if output_file is not None:
        from polyscale.viz.graphs import save_graph_grid, save_graphs_npz

        files = [save_graph_grid(graphs, output_file), save_graphs_npz(graphs, output_file)]
    return GraphSampleResult(graphs=graphs, files=files)
