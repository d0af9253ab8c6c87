"""Training a graph experiment (:mod:`polyscale.pipelines.graph_config`): the feature denoiser, or the two
stages of structure generation. Each trained model has its own run directory
(:mod:`polyscale.training.run_dir`: ``config.yaml``, ``checkpoints/``, ``model/``, ``metrics.csv``,
``summary.json``)::

    <run>/                     features task: the run directory itself
    <run>/positions/, <run>/edges/   structure task: one run directory per stage

Resuming a stage refuses changed settings (the differing keys named), except those in :data:`RESUMABLE` and
the sampling settings, which training does not read. Runs written before ``config.yaml`` (an
``experiment.yaml`` at the top) are checked against that file."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import networkx as nx
import numpy as np
import torch

from polyscale.config import to_dict, yaml_load
from polyscale.data.graph_datasets import (
    CandidateDataset,
    GraphFeatureDataset,
    PositionDataset,
    collate_graphs,
)
from polyscale.data.graphs import family_graph, field_graphs, grid_graph, torus_shape
from polyscale.diffusion.graph import GraphLoss
from polyscale.diffusion.structure import NodeJumps, eps_weight
from polyscale.io import save_pretrained
from polyscale.nn.graph import GraphDenoiser
from polyscale.pipelines.graph_config import STRUCTURE_STAGES, GraphExperimentConfig, candidate_options
from polyscale.pipelines.graph_nets import edge_net, graph_denoiser, graph_net, net_kwargs, position_denoiser
from polyscale.training import TrainResult, latest_checkpoint, train
from polyscale.training.run_dir import (
    MODEL,
    check_same_settings,
    flatten,
    open_run,
    read_settings,
    write_summary,
)

# settings a resumed stage may change: how far and how it trains, not what
RESUMABLE = ("optimization.max_steps", "optimization.output_dir", "optimization.progress", "optimization.num_workers",
             "optimization.checkpoint_every", "optimization.keep_checkpoints", "optimization.log_every",
             "optimization.max_bad_steps", "diffusion.positions.max_steps", "system.device",
             "system.num_threads")  # fmt: skip
# how the trained models sample: saved with the model, never read by training
SAMPLING = ("diffusion.sampler.", "diffusion.positions.sampler.", "diffusion.edges.sampler.",
            "diffusion.positions.start")  # fmt: skip
LEGACY_SETTINGS = "experiment.yaml"  # where runs written before config.yaml kept the experiment
# settings a resumed stage changes only when asked (--allow-change KEY), applied from the resumed step on
CHANGEABLE = (
    "optimization.lr",
    "optimization.weight_decay",
    "optimization.grad_clip",
    "optimization.ema_decay",
)


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


def check_legacy_stage(
    run_dir: Path, settings: dict, *, resume: bool, allow_change: tuple[str, ...] = ()
) -> dict:
    """The saved settings of one stage's run directory (``config.yaml``; for runs written before it,
    ``experiment.yaml`` at the top, which a resumed stage must match except the keys training does not
    depend on (:data:`RESUMABLE`, :data:`SAMPLING`) and ``allow_change``; else a ValueError names them)."""
    saved = read_settings(run_dir) if run_dir.is_dir() else None
    if saved is None and resume and latest_checkpoint(run_dir) is not None:
        legacy = next((d / LEGACY_SETTINGS for d in (run_dir, run_dir.parent) if (d / LEGACY_SETTINGS).is_file()),
                      None)  # fmt: skip
        saved = yaml_load(legacy.read_text(encoding="utf-8")) if legacy is not None else None
        if saved is not None:
            check_same_settings(saved, settings, ignore=[*_resumable(saved, settings), *allow_change],
                                changeable=CHANGEABLE)  # fmt: skip
    return saved or {}


def _resumable(saved: dict, settings: dict) -> list[str]:
    keys = set(flatten(saved)) | set(flatten(settings))
    return [*RESUMABLE, *sorted(k for k in keys if k.startswith(SAMPLING))]


def _train_one(
    denoiser,
    loss,
    dataset,
    cfg: GraphExperimentConfig,
    output_dir: Path,
    *,
    resume: bool,
    role: str,
    allow_change: tuple[str, ...] = (),
) -> TrainResult:
    metadata = {"graph_experiment": to_dict(cfg), "role": role}

    def export(directory: Path, model, ema) -> None:
        save_pretrained(graph_net(model), directory, ema=graph_net(ema), metadata=metadata)

    train_cfg = replace(cfg.optimization, output_dir=str(output_dir))
    settings = to_dict(replace(cfg, optimization=train_cfg))
    saved = check_legacy_stage(output_dir, settings, resume=resume, allow_change=allow_change)
    with open_run(output_dir, settings, resume=resume, ignore=_resumable(saved, settings),
                  allow_change=allow_change, changeable=CHANGEABLE, command=f"graph train ({role})"):  # fmt: skip
        result = train(
            denoiser,
            loss,
            dataset,
            train_cfg,
            export_fn=export,
            resume=resume,
            collate_fn=collate_graphs,
            config_key="optimization",
        )
        write_summary(
            output_dir, {"role": role, "steps": result.step, "final_loss": result.final_loss, "model": MODEL}
        )
    return result


def train_graph_experiment(
    cfg: GraphExperimentConfig,
    output_dir: str | Path,
    *,
    resume: bool = True,
    stages: Sequence[str] | None = None,
    allow_change: tuple[str, ...] = (),
) -> list[TrainResult]:
    """Train the task's model(s) into ``output_dir`` (see the module docstring for the layout). For the
    structure task ``stages`` picks which of ``"positions"`` and ``"edges"`` to train (default both; the two
    are independent: both learn from the true graphs, so they can train in separate processes at once).
    ``allow_change`` accepts changed settings of :data:`CHANGEABLE` when a stage resumes."""
    if cfg.task == "features" and stages is not None:
        raise ValueError(
            f"stages={list(stages)} (--stage) applies to the structure task; this experiment's task is "
            "'features', which trains one model"
        )
    stages = STRUCTURE_STAGES if stages is None else tuple(stages)
    if cfg.task == "structure" and (not stages or set(stages) - set(STRUCTURE_STAGES)):
        raise ValueError(f"stages must be a non-empty subset of {STRUCTURE_STAGES}, got {tuple(stages)}")
    output_dir = Path(output_dir)
    _device(cfg)
    d, diff = cfg.data, cfg.diffusion
    torch.manual_seed(cfg.optimization.seed)
    if cfg.task == "features":
        fg = field_graphs(d.family, d.num_graphs, min_nodes=d.min_nodes, max_nodes=d.max_nodes,
                          node_dim=d.node_dim, edge_dim=d.edge_dim, steps=d.smoothing_steps,
                          stationary=d.stationary_fields, periodic_share=d.periodic_share,
                          seed=d.seed)  # fmt: skip
        dataset = GraphFeatureDataset(fg.graphs, node_dim=d.node_dim, edge_dim=d.edge_dim)
        net = GraphDenoiser(node_dim=d.node_dim, edge_dim=d.edge_dim, **net_kwargs(cfg.model))
        loss = GraphLoss(P_mean=diff.P_mean, P_std=diff.P_std, sigma_data=diff.sigma_data)
        return [_train_one(graph_denoiser(net, sigma_data=diff.sigma_data), loss, dataset, cfg, output_dir,
                           resume=resume, role="features", allow_change=allow_change)]  # fmt: skip
    graphs = training_graphs(cfg)
    out = []
    if "positions" in stages:
        out.append(_train_positions(cfg, graphs, output_dir, resume=resume, allow_change=allow_change))
    if "edges" in stages:
        edges = graph_denoiser(
            edge_net(crossings=cfg.model.crossings, **net_kwargs(cfg.model)), sigma_data=1.0
        )
        edge_loss = GraphLoss(P_mean=diff.edges.P_mean, P_std=diff.edges.P_std, sigma_data=1.0)
        candidates = CandidateDataset(graphs, **candidate_options(d), crossings=cfg.model.crossings)
        out.append(_train_one(edges, edge_loss, candidates, cfg, output_dir / "edges", resume=resume,
                              role="edges", allow_change=allow_change))  # fmt: skip
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


def _train_positions(
    cfg: GraphExperimentConfig,
    graphs: list[nx.Graph],
    output_dir: Path,
    *,
    resume: bool,
    allow_change: tuple[str, ...] = (),
):
    positions = position_denoiser(cfg.model)
    stage = cfg.diffusion.positions
    jumps = (
        NodeJumps(
            rate=stage.jump_rate,
            max_jump=stage.max_jump,
            schedule=stage.jump_schedule,
        )  # fmt: skip
        if stage.jump_rate
        else None
    )
    pos_loss = GraphLoss(P_mean=stage.P_mean, P_std=stage.P_std, weight=eps_weight, perturb=jumps)
    steps = stage.max_steps
    stage_cfg = (
        cfg if steps is None else replace(cfg, optimization=replace(cfg.optimization, max_steps=steps))
    )
    return _train_one(positions, pos_loss, PositionDataset(position_graphs(cfg, graphs)), stage_cfg,
                      output_dir / "positions", resume=resume, role="positions",
                      allow_change=allow_change)  # fmt: skip
