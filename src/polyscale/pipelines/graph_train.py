"""Training a graph experiment (:mod:`polyscale.pipelines.graph_config`): the feature denoiser, or the two
stages of structure generation, each into its own model directory."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import networkx as nx
import numpy as np
import torch

from polyscale.config import to_dict, yaml_dump
from polyscale.data.graph_datasets import (
    CandidateDataset,
    GraphFeatureDataset,
    PositionDataset,
    collate_graphs,
)
from polyscale.data.graphs import family_graph, field_graphs, grid_graph, torus_shape
from polyscale.diffusion.graph import GraphLoss
from polyscale.diffusion.structure import NodeJumps, eps_weight
from polyscale.io import atomic_write_text, save_pretrained
from polyscale.nn.graph import GraphDenoiser
from polyscale.pipelines.graph_config import STRUCTURE_STAGES, GraphExperimentConfig, candidate_options
from polyscale.pipelines.graph_nets import edge_net, graph_denoiser, graph_net, net_kwargs, position_denoiser
from polyscale.training import TrainResult, train


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


def _train_one(
    denoiser, loss, dataset, cfg: GraphExperimentConfig, output_dir: Path, *, resume: bool, role: str
):
    metadata = {"graph_experiment": to_dict(cfg), "role": role}

    def export(directory: Path, model, ema) -> None:
        save_pretrained(graph_net(model), directory, ema=graph_net(ema), metadata=metadata)

    train_cfg = replace(cfg.optimization, output_dir=str(output_dir))
    return train(
        denoiser, loss, dataset, train_cfg, export_fn=export, resume=resume, collate_fn=collate_graphs
    )


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
        net = GraphDenoiser(node_dim=d.node_dim, edge_dim=d.edge_dim, **net_kwargs(cfg.model))
        loss = GraphLoss(P_mean=diff.P_mean, P_std=diff.P_std, sigma_data=diff.sigma_data)
        return [_train_one(graph_denoiser(net, sigma_data=diff.sigma_data), loss, dataset, cfg, output_dir,
                           resume=resume, role="features")]  # fmt: skip
    graphs = training_graphs(cfg)
    out = []
    if "positions" in stages:
        out.append(_train_positions(cfg, graphs, output_dir, resume=resume))
    if "edges" in stages:
        edges = graph_denoiser(
            edge_net(crossings=cfg.model.crossings, **net_kwargs(cfg.model)), sigma_data=1.0
        )
        edge_loss = GraphLoss(P_mean=diff.edges.P_mean, P_std=diff.edges.P_std, sigma_data=1.0)
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


def _train_positions(cfg: GraphExperimentConfig, graphs: list[nx.Graph], output_dir: Path, *, resume: bool):
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
                      output_dir / "positions", resume=resume, role="positions")  # fmt: skip
