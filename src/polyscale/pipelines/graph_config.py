"""Graph experiment configuration: a YAML file (``model``, ``data``, ``diffusion``, ``optimization``,
``system`` sections) for both graph tasks, presets, loading and checking:

- ``task: features`` -- node and edge features on given connectivity (one denoiser, ``output_dir/model``);
- ``task: structure`` -- graphs themselves (positions, then edges: ``output_dir/positions/model`` and
  ``output_dir/edges/model``).

Graph presets live in ``polyscale/presets/graph/`` (``polyscale graph train --preset graph_planar``).
Training is :mod:`polyscale.pipelines.graph_train`, sampling :mod:`polyscale.pipelines.graph_sample`,
evaluation :mod:`polyscale.pipelines.graph_evaluate`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from polyscale.config import UNBOUNDED, ConfigError, check_finite, load_config, load_yaml, shipped_presets
from polyscale.diffusion.sampling import SamplerConfig, sampler_options
from polyscale.diffusion.structure import POSITION_STARTS, check_jump_schedule
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
    # structure task: drop longer candidates (density units; None or .inf: keep every one)
    candidates_max_length: float | None = field(default=None, metadata={UNBOUNDED: True})
    seed: int = 0


def _position_sampler() -> SamplerConfig:
    return SamplerConfig(
        sigma_max=3.0
    )  # positions start from points in the box + N(0, 3^2), not from N(0, 80^2)


@dataclass
class PositionStageConfig:
    """Structure task, the positions stage: how it samples, where sampling starts, how it trains."""

    # sampler, steps and schedule; lattices need long stochastic sampling, e.g. Heun's churn (Karras et al.
    # 2022, Alg. 2; options s_churn, s_tmin, s_tmax): fresh noise lets a node leave a doubly-claimed site
    # before the lattice freezes. sigma_max: positions start from the start points + N(0, sigma_max^2); a
    # sampler section written in a file builds a SamplerConfig from its own defaults, so give sigma_max there
    sampler: SamplerConfig = field(default_factory=_position_sampler)
    # the start points (uniform: i.i.d., as planar nodes are; stratified: one per cell of an equal-area
    # partition, so node counts match area at every scale as on a lattice, see start_points)
    start: str = "uniform"
    # the start points fill the box grown by this on every side (grids: 0.5, as their sites on the sides fill
    # the box grown by half a spacing at one node per unit area; see sample_positions)
    start_margin: float = 0.0
    # share of nodes training moves by up to max_jump (their targets stay put), so the denoiser learns to undo
    # the misplaced nodes sampling makes (0: off; NodeJumps)
    jump_rate: float = 0.0
    max_jump: float = 2.0
    # a jump curriculum, [from_step, max_jump] pairs from step 0 on, that replaces max_jump step by step (0: no
    # jumps in that stretch); empty: max_jump throughout; needs jump_rate > 0
    jump_schedule: list[tuple[int, float]] = field(default_factory=list)
    # the stage's own number of optimizer steps (None: optimization.max_steps, which the edge stage takes)
    max_steps: int | None = None
    P_mean: float = -0.8  # training ln sigma ~ N(P_mean, P_std^2)
    P_std: float = 1.2


@dataclass
class EdgeStageConfig:
    """Structure task, the edge stage: how it samples and how it trains. Edge existence is (nearly) decided
    by the geometry, so training weights the high-noise regime where the labels are not yet visible."""

    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    P_mean: float = 1.0  # training ln sigma ~ N(P_mean, P_std^2)
    P_std: float = 1.5


@dataclass
class GraphDiffusionConfig:
    """Noise distribution in training and how each model samples: ``sampler`` for the features task,
    ``positions`` and ``edges`` for the two stages of the structure task."""

    P_mean: float = -1.2  # features task: training ln sigma ~ N(P_mean, P_std^2)
    P_std: float = 1.2
    sigma_data: float = 1.0
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    positions: PositionStageConfig = field(default_factory=PositionStageConfig)
    edges: EdgeStageConfig = field(default_factory=EdgeStageConfig)


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
    """Names of the graph presets shipped in ``polyscale/presets/graph``."""
    return shipped_presets("graph")


def load_graph_experiment(name_or_path: str | Path, overrides: list[str] | tuple[str, ...] = ()):
    """A graph preset name (see :func:`graph_preset_names`) or a YAML file, with ``key=value`` overrides."""
    path = Path(name_or_path)
    if not path.suffix:
        if str(name_or_path) not in graph_preset_names():
            raise ValueError(
                f"unknown graph preset {str(name_or_path)!r}; expected one of {graph_preset_names()} or a .yaml path"
            )
        path = Path(str(resources.files("polyscale") / "presets" / "graph" / f"{name_or_path}.yaml"))
    try:
        cfg = load_config(GraphExperimentConfig, migrate_graph_experiment(load_yaml(path)), overrides)
    except ConfigError as err:
        raise ConfigError(
            f"{path}" + (f" with overrides {list(overrides)}" if overrides else "") + f": {err}"
        ) from None
    return check_graph_experiment(cfg)


# the flat diffusion keys of earlier versions -> their place in the stage sections
FLAT_POSITION_KEYS = {"position_start": "start", "position_start_margin": "start_margin",
                      "position_jump_rate": "jump_rate", "position_max_jump": "max_jump",
                      "position_jump_schedule": "jump_schedule", "position_max_steps": "max_steps",
                      "position_P_mean": "P_mean", "P_std": "P_std"}  # fmt: skip
FLAT_EDGE_KEYS = {"edge_P_mean": "P_mean", "edge_P_std": "P_std"}


def migrate_graph_diffusion(diff: Mapping[str, Any]) -> dict[str, Any]:
    """A graph ``diffusion`` mapping with the flat keys of earlier versions (``sampler: heun``, ``steps``,
    ``sigma_max``, ``position_*``, ``edge_*``, as older runs' ``config.json`` hold them) in the nested form:
    the shared sampler and steps serve ``sampler`` (features), ``edges.sampler`` and, unless
    ``position_sampler`` / ``position_steps`` say otherwise, ``positions.sampler``; Heun's churn goes into
    the positions sampler's options where that sampler takes it (as it sampled before). Keys already nested
    win; a mapping without flat keys comes back unchanged (a copy)."""
    out = dict(diff)
    old = {k: out.pop(k) for k in list(out) if k.startswith(("position_", "edge_"))}
    shared = {new: out.pop(k) for k, new in (("sampler", "name"), ("steps", "steps"), ("sigma_max", "sigma_max"))
              if k in out and not isinstance(out[k], Mapping)}  # fmt: skip
    if not old and not shared:
        return out
    positions = {new: old[k] for k, new in FLAT_POSITION_KEYS.items() if k in old}
    if "P_std" in out:
        positions["P_std"] = out["P_std"]  # the positions stage trained with the shared P_std
    pos_sampler = {k: v for k, v in shared.items() if k != "sigma_max"} | {
        "sigma_max": _position_sampler().sigma_max
    }
    for key, new in (
        ("position_sampler", "name"),
        ("position_steps", "steps"),
        ("position_sigma_max", "sigma_max"),
    ):
        if old.get(key) is not None:
            pos_sampler[new] = old[key]
    churn = {k: old[f"position_{k}"] for k in ("s_churn", "s_tmin", "s_tmax") if f"position_{k}" in old}
    if churn.get("s_churn") and "s_churn" in sampler_options(pos_sampler.get("name", SamplerConfig.name)):
        pos_sampler["options"] = churn
    positions["sampler"] = pos_sampler
    edges = {new: old[k] for k, new in FLAT_EDGE_KEYS.items() if k in old} | {"sampler": dict(shared)}
    out["sampler"] = {**shared, **dict(out.get("sampler") or {})}
    for name, stage in (("positions", positions), ("edges", edges)):
        nested = dict(out.get(name) or {})
        stage["sampler"] = {**stage["sampler"], **dict(nested.pop("sampler", None) or {})}
        out[name] = {**stage, **nested}
    return out


def migrate_graph_experiment(data: Mapping[str, Any]) -> dict[str, Any]:
    """A graph experiment mapping with its ``diffusion`` section migrated (:func:`migrate_graph_diffusion`)."""
    out = dict(data)
    if isinstance(out.get("diffusion"), Mapping):
        out["diffusion"] = migrate_graph_diffusion(out["diffusion"])
    return out


def check_graph_experiment(cfg: GraphExperimentConfig) -> GraphExperimentConfig:
    """``cfg`` if its values fit together, else a ValueError naming the field, what it needs and what it got
    (every number must be finite; ``data.candidates_max_length`` and ``optimization.grad_clip`` may be
    ``.inf``, no limit)."""
    check_finite(cfg)
    d, diff = cfg.data, cfg.diffusion
    if not 2 <= d.min_nodes <= d.max_nodes:
        raise ValueError(f"need 2 <= data.min_nodes <= data.max_nodes, got {d.min_nodes} and {d.max_nodes}")
    pos = diff.positions
    if pos.start not in POSITION_STARTS:
        raise ValueError(f"diffusion.positions.start must be one of {POSITION_STARTS}, got {pos.start!r}")
    if not 0 <= pos.jump_rate <= 1 or not pos.max_jump > 0:
        raise ValueError(
            "need 0 <= diffusion.positions.jump_rate <= 1 and diffusion.positions.max_jump > 0, got "
            f"{pos.jump_rate} and {pos.max_jump}"
        )
    if not 0 <= d.periodic_share <= 1 or (d.periodic_share and d.family != "grid"):
        raise ValueError(
            f"data.periodic_share must be in [0, 1] and needs family 'grid', got {d.periodic_share} with "
            f"family {d.family!r}"
        )
    check_jump_schedule(pos.jump_schedule)
    if pos.jump_schedule and not pos.jump_rate > 0:
        raise ValueError(
            "diffusion.positions.jump_schedule needs diffusion.positions.jump_rate > 0 (the share of nodes that "
            f"jump), got rate {pos.jump_rate} with schedule {pos.jump_schedule}"
        )
    if pos.max_steps is not None and pos.max_steps < 1:
        raise ValueError(f"diffusion.positions.max_steps must be None or >= 1, got {pos.max_steps}")
    if pos.start_margin < 0:
        raise ValueError(f"diffusion.positions.start_margin must be >= 0, got {pos.start_margin}")
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


def candidate_options(data: GraphDataConfig) -> dict:
    """The keyword arguments of :func:`~polyscale.data.graph_geometry.candidate_edges` (and of
    ``CandidateDataset`` / ``sample_edges``) that ``data`` asks for."""
    return {"k": data.candidates_k, "sectors": data.candidates_sectors, "hull": data.candidates_hull,
            "max_length": data.candidates_max_length}  # fmt: skip


STRUCTURE_STAGES = ("positions", "edges")
