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

from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Literal

from polyscale.config import load_config
from polyscale.diffusion import SAMPLERS
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


def candidate_options(data: GraphDataConfig) -> dict:
    """The keyword arguments of :func:`~polyscale.data.graph_geometry.candidate_edges` (and of
    ``CandidateDataset`` / ``sample_edges``) that ``data`` asks for."""
    return {"k": data.candidates_k, "sectors": data.candidates_sectors, "hull": data.candidates_hull,
            "max_length": data.candidates_max_length}  # fmt: skip


STRUCTURE_STAGES = ("positions", "edges")
