"""Graph experiments end to end: a YAML configuration (``model``, ``data``, ``diffusion``, ``optimization``,
``system`` sections), training, loading, sampling and evaluation, for both graph tasks:

- ``task: features`` -- node and edge features on given connectivity (one denoiser, ``output_dir/model``);
- ``task: structure`` -- graphs themselves (positions, then edges: ``output_dir/positions/model`` and
  ``output_dir/edges/model``).

Graph presets live in ``polyscale/presets/graph/`` (``polyscale graph train --preset graph_planar``).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Literal

import networkx as nx
import numpy as np
import torch
from torch import Tensor

from polyscale.config import load_config, to_dict, yaml_dump
from polyscale.data.graphs import family_graph, field_graphs, grid_graph, grid_shape, to_data, torus_shape
from polyscale.diffusion import SAMPLERS
from polyscale.io import atomic_write_text, load_pretrained, read_model_dir, save_pretrained
from polyscale.metrics.graphs import VALIDITY, mmd_table, uniqueness_novelty
from polyscale.nn.graph import GraphDenoiser
from polyscale.pipelines.graph import (
    GraphFeatureDataset,
    GraphLoss,
    collate_graphs,
    graph_denoiser,
    sample_graph_features,
)
from polyscale.pipelines.graph_structure import (
    POSITION_STARTS,
    CandidateDataset,
    NodeJumps,
    PositionDataset,
    PositionDenoiser,
    check_jump_schedule,
    edge_net,
    eps_weight,
    position_net,
    sample_edges,
    sample_positions,
)
from polyscale.training import TrainResult, train
from polyscale.training.config import TrainConfig


@dataclass
class GraphModelConfig:
    """The GNN denoiser's size (the task fixes its input and output dimensions)."""

    hidden: int = 64  # node and edge state width
    num_layers: int = 6  # message-passing layers
    num_heads: int = 4  # attention heads
    global_context: bool = True  # gated per-graph mean of node states (size-normalised)
    dropout: float = 0.0
    position_knn: int = 8  # structure task: neighbours of the graph the positions model works on
    crossings: bool = False  # structure task: the edge model also reads which candidates cross each other
    # structure task: the positions model also reads each node's phase in a lattice of this spacing with a site
    # at the box's origin (None: off). Grid graphs sit on the unit lattice; deep inside a large box nothing
    # else tells a node where the sites are, and regions that chose different phases meet in defects
    position_period: float | None = None
    # structure task: the positions model also reads, at each of these window scales (density units), how many
    # nodes surround each node beyond what unit density on the box grown by position_density_margin would put
    # there, and in which direction (see density_features; empty: off). Message passing averages and cannot
    # count: a doubly-claimed site and the hole a few sites away look alike to it without these
    position_density_scales: list[float] = field(default_factory=list)
    position_density_margin: float = 0.0


@dataclass
class GraphDataConfig:
    """Which graphs to train on: a networkx family at mixed sizes."""

    family: Literal["planar", "grid", "tree", "lobster", "geometric"] = "planar"
    min_nodes: int = 32  # training sizes are uniform in [min_nodes, max_nodes]
    max_nodes: int = 64
    num_graphs: int = 256  # training graphs (a held-out set of the same size is drawn with another seed)
    node_dim: int = 1  # features task: channels of the smooth node field
    edge_dim: int = 1  # features task: channels of the smooth edge field
    smoothing_steps: int = 4  # features task: random-walk averaging steps of the fields
    # features task, grids: fields drawn on the grid padded by smoothing_steps and restricted (no border
    # effect, the same statistics at every node and size, like crops of a larger texture)
    stationary_fields: bool = False
    # grids: share of training graphs that are tori (no border: every node sees the bulk that fills a large
    # grid, which bounded 32-64-node grids never show; see field_graphs). Structure task: the positions stage
    # only (its denoiser reads tori by the minimum image); the edge stage trains on the bounded grids
    periodic_share: float = 0.0
    candidates_k: int = 10  # structure task: k of the candidate k-NN graph of the positions
    candidates_sectors: int = 0  # structure task: also the nearest candidate per angular sector (0: off)
    candidates_hull: bool = False  # structure task: also the convex hull's edges
    candidates_max_length: float | None = None  # structure task: drop longer candidates (density units)
    seed: int = 0


@dataclass
class GraphDiffusionConfig:
    """Noise distribution in training and the default sampler."""

    P_mean: float = -1.2
    P_std: float = 1.2
    sigma_data: float = 1.0
    sampler: str = "heun"
    steps: int = 32
    # structure task: the positions stage's own sampler and steps (None: the two above). Lattices need
    # long stochastic sampling, whose Langevin steps let a misplaced row of nodes move before it freezes
    position_sampler: str | None = None
    position_steps: int | None = None
    # structure task: Heun's churn in the positions stage (Karras et al. 2022, Alg. 2; the positions sampler
    # must be heun, other samplers take no churn): fresh noise at the levels in [position_s_tmin,
    # position_s_tmax] lets a node leave a doubly-claimed site before the lattice freezes (0: off)
    position_s_churn: float = 0.0
    position_s_tmin: float = 0.05
    position_s_tmax: float = 1.0
    sigma_max: float = 80.0  # features and edges start from N(0, sigma_max^2)
    position_sigma_max: float = 3.0  # positions start from position_start points + N(0, position_sigma_max^2)
    # structure task: the start points (uniform: i.i.d., as planar nodes are; stratified: one per cell of an
    # equal-area partition, so node counts match area at every scale as on a lattice, see start_points)
    position_start: str = "uniform"
    # structure task: the start points fill the box grown by this on every side (grids: 0.5, as their sites
    # on the sides fill the box grown by half a spacing at one node per unit area; see sample_positions)
    position_start_margin: float = 0.0
    # structure task: share of nodes the positions stage's training moves by up to position_max_jump (their
    # targets stay put), so the denoiser learns to undo the misplaced nodes sampling makes (0: off; NodeJumps)
    position_jump_rate: float = 0.0
    position_max_jump: float = 2.0
    # structure task: a jump curriculum, [from_step, max_jump] pairs from step 0 on, that replaces
    # position_max_jump step by step (0: no jumps in that stretch); empty: position_max_jump throughout;
    # needs position_jump_rate > 0
    position_jump_schedule: list[tuple[int, float]] = field(default_factory=list)
    # structure task: the positions stage's own number of optimizer steps (None: optimization.max_steps,
    # which the edge stage always takes)
    position_max_steps: int | None = None
    position_P_mean: float = -0.8  # positions: training ln sigma ~ N(position_P_mean, P_std^2)
    # edges: training ln sigma ~ N(edge_P_mean, edge_P_std^2). Edge existence is (nearly) decided by the
    # geometry, so what matters is the high-noise regime where the labels are not yet visible
    edge_P_mean: float = 1.0
    edge_P_std: float = 1.5


@dataclass
class SystemConfig:
    """Where and how it runs."""

    device: str = "auto"  # auto | cpu | cuda
    num_threads: int | None = None  # torch CPU threads (None: torch's default)


@dataclass
class GraphExperimentConfig:
    task: Literal["features", "structure"] = "features"
    model: GraphModelConfig = field(default_factory=GraphModelConfig)
    data: GraphDataConfig = field(default_factory=GraphDataConfig)
    diffusion: GraphDiffusionConfig = field(default_factory=GraphDiffusionConfig)
    optimization: TrainConfig = field(default_factory=TrainConfig)
    system: SystemConfig = field(default_factory=SystemConfig)


def graph_preset_names() -> list[str]:
    folder = resources.files("polyscale") / "presets" / "graph"
    return sorted(p.name[: -len(".yaml")] for p in folder.iterdir() if p.name.endswith(".yaml"))


def load_graph_experiment(name_or_path: str | Path, overrides: list[str] | tuple[str, ...] = ()):
    """A graph preset name (see :func:`graph_preset_names`) or a YAML file, with ``key=value`` overrides."""
    path = Path(name_or_path)
    if not path.suffix:
        if str(name_or_path) not in graph_preset_names():
            raise ValueError(
                f"unknown graph preset {str(name_or_path)!r}; expected one of {graph_preset_names()} or a .yaml path"
            )
        path = Path(str(resources.files("polyscale") / "presets" / "graph" / f"{name_or_path}.yaml"))
    return check_graph_experiment(load_config(GraphExperimentConfig, path, overrides))


def check_graph_experiment(cfg: GraphExperimentConfig) -> GraphExperimentConfig:
    """``cfg`` if its values fit together, else a ValueError naming the field, what it needs and what it got."""
    d, diff = cfg.data, cfg.diffusion
    if not 2 <= d.min_nodes <= d.max_nodes:
        raise ValueError(f"need 2 <= data.min_nodes <= data.max_nodes, got {d.min_nodes} and {d.max_nodes}")
    for key, name in (("sampler", diff.sampler), ("position_sampler", diff.position_sampler)):
        if name is not None and name not in SAMPLERS:
            raise ValueError(f"diffusion.{key} must be one of {sorted(SAMPLERS)}, got {name!r}")
    if diff.position_start not in POSITION_STARTS:
        raise ValueError(
            f"diffusion.position_start must be one of {POSITION_STARTS}, got {diff.position_start!r}"
        )
    if not 0 <= diff.position_jump_rate <= 1 or not diff.position_max_jump > 0:
        raise ValueError(
            "need 0 <= diffusion.position_jump_rate <= 1 and diffusion.position_max_jump > 0, got "
            f"{diff.position_jump_rate} and {diff.position_max_jump}"
        )
    if not 0 <= d.periodic_share <= 1 or (d.periodic_share and d.family != "grid"):
        raise ValueError(
            f"data.periodic_share must be in [0, 1] and needs family 'grid', got {d.periodic_share} with "
            f"family {d.family!r}"
        )
    check_jump_schedule(diff.position_jump_schedule)
    if diff.position_jump_schedule and not diff.position_jump_rate > 0:
        raise ValueError(
            "diffusion.position_jump_schedule needs diffusion.position_jump_rate > 0 (the share of nodes that "
            f"jump), got rate {diff.position_jump_rate} with schedule {diff.position_jump_schedule}"
        )
    if diff.position_max_steps is not None and diff.position_max_steps < 1:
        raise ValueError(f"diffusion.position_max_steps must be None or >= 1, got {diff.position_max_steps}")
    if diff.position_s_churn < 0 or not 0 <= diff.position_s_tmin <= diff.position_s_tmax:
        raise ValueError(
            "need diffusion.position_s_churn >= 0 and 0 <= position_s_tmin <= position_s_tmax, got "
            f"{diff.position_s_churn}, {diff.position_s_tmin}, {diff.position_s_tmax}"
        )
    if diff.position_start_margin < 0:
        raise ValueError(f"diffusion.position_start_margin must be >= 0, got {diff.position_start_margin}")
    period = cfg.model.position_period
    if period is not None and not period > 0:
        raise ValueError(f"model.position_period must be None or > 0, got {period}")
    m = cfg.model
    if any(not r > 0 for r in m.position_density_scales) or m.position_density_margin < 0:
        raise ValueError(
            "need model.position_density_scales > 0 and position_density_margin >= 0, got "
            f"{m.position_density_scales}, {m.position_density_margin}"
        )
    if m.position_density_scales and d.periodic_share:
        raise ValueError(
            "model.position_density_scales needs bounded boxes, but data.periodic_share > 0 trains on tori"
        )
    return cfg


def _device(cfg: GraphExperimentConfig) -> torch.device:
    if cfg.system.num_threads:
        torch.set_num_threads(cfg.system.num_threads)
    if cfg.system.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if cfg.system.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("system.device='cuda' but no CUDA GPU is available; use 'cpu' or 'auto'")
    return torch.device(cfg.system.device)


def training_graphs(cfg: GraphExperimentConfig, *, split: str = "train") -> list[nx.Graph]:
    """The family's graphs at mixed sizes (``split='test'``: the same recipe, another seed)."""
    d = cfg.data
    rng = np.random.default_rng(d.seed if split == "train" else d.seed + 1_000_003)
    return [
        family_graph(d.family, int(rng.integers(d.min_nodes, d.max_nodes + 1)), rng=rng)
        for _ in range(d.num_graphs)
    ]


def _net_kwargs(cfg: GraphExperimentConfig) -> dict:
    m = cfg.model
    return dict(hidden=m.hidden, num_layers=m.num_layers, num_heads=m.num_heads, global_context=m.global_context,
                dropout=m.dropout)  # fmt: skip


def _graph_net(module: torch.nn.Module) -> GraphDenoiser:
    """The GraphDenoiser inside a trained wrapper (EDMPrecond(PackedGraphNet(net)) or PositionDenoiser(net))."""
    while not isinstance(module, GraphDenoiser):
        module = module.net
    return module


def _train_one(
    denoiser, loss, dataset, cfg: GraphExperimentConfig, output_dir: Path, *, resume: bool, role: str
):
    metadata = {"graph_experiment": to_dict(cfg), "role": role}

    def export(directory: Path, model, ema) -> None:
        save_pretrained(_graph_net(model), directory, ema=_graph_net(ema), metadata=metadata)

    train_cfg = replace(cfg.optimization, output_dir=str(output_dir))
    return train(
        denoiser, loss, dataset, train_cfg, export_fn=export, resume=resume, collate_fn=collate_graphs
    )


def candidate_options(data: GraphDataConfig) -> dict:
    """The keyword arguments of :func:`~polyscale.pipelines.graph_structure.candidate_edges` (and of
    ``CandidateDataset`` / ``sample_edges``) that ``data`` asks for."""
    return {"k": data.candidates_k, "sectors": data.candidates_sectors, "hull": data.candidates_hull,
            "max_length": data.candidates_max_length}  # fmt: skip


STRUCTURE_STAGES = ("positions", "edges")


def train_graph_experiment(
    cfg: GraphExperimentConfig,
    output_dir: str | Path,
    *,
    resume: bool = True,
    stages: Sequence[str] | None = STRUCTURE_STAGES,
) -> list[TrainResult]:
    """Train the task's model(s) into ``output_dir`` (see the module docstring for the layout). For the
    structure task ``stages`` picks which of ``"positions"`` and ``"edges"`` to train (the two are
    independent: both learn from the true graphs, so they can train in separate processes at once)."""
    stages = STRUCTURE_STAGES if stages is None else tuple(stages)
    if cfg.task == "structure" and (not stages or set(stages) - set(STRUCTURE_STAGES)):
        raise ValueError(f"stages must be a non-empty subset of {STRUCTURE_STAGES}, got {tuple(stages)}")
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(output_dir / "experiment.yaml", yaml_dump(to_dict(cfg), sort_keys=False))
    _device(cfg)
    d, diff = cfg.data, cfg.diffusion
    torch.manual_seed(cfg.optimization.seed)
    if cfg.task == "features":
        fg = field_graphs(d.family, d.num_graphs, min_nodes=d.min_nodes, max_nodes=d.max_nodes,
                          node_dim=d.node_dim, edge_dim=d.edge_dim, steps=d.smoothing_steps,
                          stationary=d.stationary_fields, periodic_share=d.periodic_share,
                          seed=d.seed)  # fmt: skip
        dataset = GraphFeatureDataset(fg.graphs, node_dim=d.node_dim, edge_dim=d.edge_dim)
        net = GraphDenoiser(node_dim=d.node_dim, edge_dim=d.edge_dim, **_net_kwargs(cfg))
        loss = GraphLoss(P_mean=diff.P_mean, P_std=diff.P_std, sigma_data=diff.sigma_data)
        return [_train_one(graph_denoiser(net, sigma_data=diff.sigma_data), loss, dataset, cfg, output_dir,
                           resume=resume, role="features")]  # fmt: skip
    graphs = training_graphs(cfg)
    out = []
    if "positions" in stages:
        out.append(_train_positions(cfg, graphs, output_dir, resume=resume))
    if "edges" in stages:
        edges = graph_denoiser(edge_net(crossings=cfg.model.crossings, **_net_kwargs(cfg)), sigma_data=1.0)
        edge_loss = GraphLoss(P_mean=diff.edge_P_mean, P_std=diff.edge_P_std, sigma_data=1.0)
        candidates = CandidateDataset(graphs, **candidate_options(d), crossings=cfg.model.crossings)
        out.append(_train_one(edges, edge_loss, candidates, cfg, output_dir / "edges", resume=resume,
                              role="edges"))  # fmt: skip
    return out


def position_graphs(cfg: GraphExperimentConfig, graphs: list[nx.Graph]) -> list[nx.Graph]:
    """The positions stage's training graphs: ``graphs`` with a ``data.periodic_share`` of them replaced by
    tori of about the same size (:func:`~polyscale.data.graphs.torus_shape`), drawn from their own seed."""
    share = cfg.data.periodic_share
    if not share:
        return graphs
    rng = np.random.default_rng(cfg.data.seed + 2_000_003)
    return [
        grid_graph(*torus_shape(g.number_of_nodes(), rng=rng), periodic=True) if rng.random() < share else g
        for g in graphs
    ]


def position_denoiser(cfg: GraphExperimentConfig, net: GraphDenoiser | None = None) -> PositionDenoiser:
    """The positions stage's denoiser as ``cfg.model`` describes it, around ``net`` (None: a fresh one)."""
    m = cfg.model
    if net is None:
        net = position_net(
            period=m.position_period, density_scales=m.position_density_scales, **_net_kwargs(cfg)
        )
    return PositionDenoiser(
        net,
        k=m.position_knn,
        period=m.position_period,
        density_scales=m.position_density_scales,
        density_margin=m.position_density_margin,
    )


def _train_positions(cfg: GraphExperimentConfig, graphs: list[nx.Graph], output_dir: Path, *, resume: bool):
    positions = position_denoiser(cfg)
    diff = cfg.diffusion
    jumps = (
        NodeJumps(
            rate=diff.position_jump_rate,
            max_jump=diff.position_max_jump,
            schedule=diff.position_jump_schedule,
        )  # fmt: skip
        if diff.position_jump_rate
        else None
    )
    pos_loss = GraphLoss(P_mean=diff.position_P_mean, P_std=diff.P_std, weight=eps_weight, perturb=jumps)
    steps = diff.position_max_steps
    stage_cfg = (
        cfg if steps is None else replace(cfg, optimization=replace(cfg.optimization, max_steps=steps))
    )
    return _train_one(positions, pos_loss, PositionDataset(position_graphs(cfg, graphs)), stage_cfg,
                      output_dir / "positions", resume=resume, role="positions")  # fmt: skip


# ------------------------------------------------------------------------------------------ loading/sampling


@dataclass
class GraphModel:
    """A trained graph experiment ready to sample: its configuration and denoiser(s)."""

    config: GraphExperimentConfig
    features: torch.nn.Module | None = None
    positions: torch.nn.Module | None = None
    edges: torch.nn.Module | None = None


def _load_net(directory: Path, device: torch.device) -> tuple[GraphDenoiser, GraphExperimentConfig]:
    info = read_model_dir(directory)
    meta = info.metadata.get("graph_experiment")
    if meta is None:
        raise ValueError(
            f"{directory} is not a graph model (its config.json has no graph_experiment metadata)"
        )
    net = load_pretrained(directory, {"GraphDenoiser": GraphDenoiser}, ema=True, map_location=device).eval()
    return net, load_config(GraphExperimentConfig, meta)


def with_sampling_overrides(model: GraphModel, overrides: Sequence[str]) -> GraphModel:
    """``model`` with ``diffusion.KEY=VALUE`` overrides applied to its configuration (how it samples: the
    sampler, steps, start, churn); anything outside ``diffusion`` would not match the trained weights and is
    an error. Values are validated like the preset's."""
    outside = [o for o in overrides if not o.startswith("diffusion.")]
    if outside:
        raise ValueError(f"sampling overrides must set diffusion.* fields only, got {outside}")
    if not overrides:
        return model
    cfg = load_config(GraphExperimentConfig, to_dict(model.config), list(overrides))
    check_graph_experiment(cfg)
    return replace(model, config=replace(model.config, diffusion=cfg.diffusion))


def load_graph_model(run_dir: str | Path, *, device: str = "auto") -> GraphModel:
    """Load the EMA model(s) of a run directory written by :func:`train_graph_experiment`."""
    run_dir = Path(run_dir)
    dev = torch.device(
        "cuda" if device == "auto" and torch.cuda.is_available() else ("cpu" if device == "auto" else device)
    )
    if (run_dir / "model").is_dir():
        net, cfg = _load_net(run_dir / "model", dev)
        return GraphModel(cfg, features=graph_denoiser(net, sigma_data=cfg.diffusion.sigma_data))
    if (run_dir / "positions" / "model").is_dir() and (run_dir / "edges" / "model").is_dir():
        pos_net, cfg = _load_net(run_dir / "positions" / "model", dev)
        edge_net_, edge_cfg = _load_net(run_dir / "edges" / "model", dev)
        # the edge stage samples over the candidate set its own model was trained on (the two stages may
        # have been trained apart, e.g. edges retrained with another candidate rule)
        ed = edge_cfg.data
        cfg = replace(
            cfg,
            data=replace(cfg.data, candidates_k=ed.candidates_k, candidates_sectors=ed.candidates_sectors,
                         candidates_hull=ed.candidates_hull, candidates_max_length=ed.candidates_max_length),
            model=replace(cfg.model, crossings=edge_cfg.model.crossings),
        )  # fmt: skip
        return GraphModel(cfg, positions=position_denoiser(cfg, pos_net),
                          edges=graph_denoiser(edge_net_, sigma_data=1.0))  # fmt: skip
    raise FileNotFoundError(
        f"{run_dir} holds no graph model: expected model/ (features) or positions/model and edges/model (structure)"
    )


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


def generate_graphs(
    model: GraphModel,
    num_nodes: int,
    num_graphs: int,
    *,
    sampler: str | None = None,
    steps: int | None = None,
    seed: int = 0,
    progress: bool = False,
) -> list[nx.Graph]:
    """Structure task: ``num_graphs`` graphs of ``num_nodes`` nodes. Features task: ``num_graphs`` graphs of the
    training family at ``num_nodes`` nodes with generated node features (``x``) and edge features (``e``)."""
    cfg = model.config
    # an explicit sampler / steps serves both stages; otherwise each stage takes its configured default
    pos_sampler = sampler or cfg.diffusion.position_sampler or cfg.diffusion.sampler
    pos_steps = steps or cfg.diffusion.position_steps or cfg.diffusion.steps
    diff = cfg.diffusion
    pos_options = (
        {"s_churn": diff.position_s_churn, "s_tmin": diff.position_s_tmin, "s_tmax": diff.position_s_tmax}
        if diff.position_s_churn and pos_sampler == "heun"
        else None
    )
    sampler = sampler or cfg.diffusion.sampler
    steps = steps or cfg.diffusion.steps
    generator = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(num_graphs):
        if model.features is not None:
            g = family_graph(cfg.data.family, num_nodes, rng=rng)
            d = to_data(g)
            node, edge = sample_graph_features(
                model.features, d.num_nodes, d.edge_index.shape[1], cfg.data.node_dim, cfg.data.edge_dim,
                d.edge_index, sampler=sampler, steps=steps, sigma_max=cfg.diffusion.sigma_max,
                generator=generator, progress=progress,
            )  # fmt: skip
            nx.set_node_attributes(g, {i: node[i].tolist() for i in range(d.num_nodes)}, "x")
            m = d.edge_index.shape[1] // 2
            nx.set_edge_attributes(
                g, {(int(u), int(v)): edge[k].tolist() for k, (u, v) in enumerate(d.edge_index[:, :m].T)}, "e"
            )
        else:
            n, box = sampling_domain(cfg.data.family, num_nodes, rng=rng)
            pos = sample_positions(
                model.positions, n, box=box, sampler=pos_sampler, steps=pos_steps,
                sigma_max=cfg.diffusion.position_sigma_max, start=cfg.diffusion.position_start,
                start_margin=cfg.diffusion.position_start_margin, sampler_options=pos_options,
                generator=generator, progress=progress,
            )  # fmt: skip
            g = sample_edges(
                model.edges, pos, **candidate_options(cfg.data), sampler=sampler, steps=steps,
                sigma_max=cfg.diffusion.sigma_max, generator=generator, progress=progress,
            )  # fmt: skip
        out.append(g)
    return out


# ---------------------------------------------------------------------------------------------- evaluation


def evaluate_structure(
    model: GraphModel,
    sizes: list[int],
    *,
    num_graphs: int = 16,
    sampler: str | None = None,
    steps: int | None = None,
    seed: int = 0,
) -> list[dict]:
    """Per size: validity (family check), MMD^2 of degree / clustering / orbit / spectrum against real graphs
    of that size, and the real-vs-real floor (two independent real sets of the same count); uniqueness and
    novelty against the training graphs at training sizes."""
    cfg = model.config
    if cfg.task != "structure":
        raise ValueError(f"evaluate_structure needs a structure model, got task {cfg.task!r}")
    family = cfg.data.family
    validity = VALIDITY.get(family)
    train = training_graphs(cfg)
    rows = []
    for n in sizes:
        t0 = time.perf_counter()
        fake = generate_graphs(model, n, num_graphs, sampler=sampler, steps=steps, seed=seed)
        seconds = time.perf_counter() - t0
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
) -> list[dict]:
    """Per size: on ``num_graphs`` graphs of the training family, sliced Wasserstein distances between the
    generated features and real smooth fields on the same graphs (node features, neighbour pairs, edge
    features), the neighbour correlation, and (up to ``SPECTRUM_LIMIT`` nodes) the error of the node fields'
    graph power spectrum (:func:`polyscale.metrics.graphs.spectrum_error`), each beside the floor of a second
    independent real draw."""
    from polyscale.data.graphs import graph_fields
    from polyscale.metrics.graphs import graph_power_spectrum, spectrum_error
    from polyscale.metrics.sliced_wasserstein import sliced_wasserstein

    cfg = model.config
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
                model.features, data.num_nodes, 2 * m, d.node_dim, d.edge_dim, data.edge_index,
                sampler=sampler or cfg.diffusion.sampler, steps=steps or cfg.diffusion.steps,
                sigma_max=cfg.diffusion.sigma_max, generator=torch.Generator().manual_seed(seed + i),
            )  # fmt: skip
            drawn = {"model": (node, edge[:m])}
            for name in ("real", "floor"):
                x, e = graph_fields(
                    g, node_dim=d.node_dim, edge_dim=d.edge_dim, steps=d.smoothing_steps,
                    stationary=d.stationary_fields, rng=rng,
                )  # fmt: skip
                drawn[name] = (torch.from_numpy(x), torch.from_numpy(e))
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


def evaluate_graph_model(model: GraphModel, sizes: list[int], **kwargs) -> list[dict]:
    """:func:`evaluate_structure` or :func:`evaluate_features`, by the model's task."""
    fn = evaluate_features if model.config.task == "features" else evaluate_structure
    return fn(model, sizes, **kwargs)


def format_graph_table(rows: list[dict]) -> str:
    """Rows of :func:`evaluate_structure` as a plain-text table (numbers to 4 significant digits)."""
    keys = list(dict.fromkeys(k for row in rows for k in row))
    cells = [[k for k in keys]] + [[_fmt(row.get(k, "")) for k in keys] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(keys))]
    return "\n".join("  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in cells)


def _fmt(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)
