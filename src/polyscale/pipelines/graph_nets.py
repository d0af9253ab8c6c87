"""The graph networks of the graph experiments, shaped for each task: feature denoisers, the positions network
with its conditioning, the edge network."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from polyscale.data.graph_features import POSITION_EDGE_FEATURES, PositionFeatures, position_cond_dim
from polyscale.data.graph_geometry import CANDIDATE_FEATURES, CROSSING_FEATURES, TRIANGLE_FEATURES
from polyscale.diffusion import EDMPrecond
from polyscale.diffusion.graph import PackedGraphNet
from polyscale.diffusion.structure import PositionDenoiser
from polyscale.nn.graph import GraphDenoiser


def position_net(
    *, period: float | None = None, density_scales: Sequence[float] = (), **kwargs
) -> GraphDenoiser:
    """A :class:`GraphDenoiser` shaped for :class:`~polyscale.diffusion.structure.PositionDenoiser` with the
    same ``period`` and
    ``density_scales`` (other arguments: width, depth, heads)."""
    return GraphDenoiser(
        node_dim=2, edge_dim=0, edge_cond_dim=POSITION_EDGE_FEATURES,
        node_cond_dim=position_cond_dim(period, density_scales), use_node_state=False, **kwargs,
    )  # fmt: skip


def edge_net(*, crossings: bool = False, **kwargs) -> GraphDenoiser:
    """A :class:`GraphDenoiser` shaped for the edge stage (``crossings``: it also reads crossing candidates)."""
    return GraphDenoiser(
        node_dim=0,
        edge_dim=1,
        edge_cond_dim=CANDIDATE_FEATURES,
        triangle_cond_dim=TRIANGLE_FEATURES,
        crossing_cond_dim=CROSSING_FEATURES if crossings else 0,
        **kwargs,
    )


def reads_crossings(denoiser: nn.Module) -> bool:
    """Whether the edge denoiser's network reads crossing candidates (``crossing_cond_dim > 0``)."""
    return any(isinstance(m, GraphDenoiser) and m.config.crossing_cond_dim > 0 for m in denoiser.modules())


def graph_denoiser(net: GraphDenoiser, *, sigma_data: float = 1.0) -> EDMPrecond:
    """EDM-preconditioned denoiser over packed graph states: ``D(x (M, 1), sigma (M,), *, layout)``."""
    return EDMPrecond(PackedGraphNet(net), sigma_data=sigma_data)


def net_kwargs(model) -> dict:
    """The width, depth and heads of a :class:`GraphDenoiser` as a graph experiment's ``model`` section
    (:class:`~polyscale.pipelines.graph_config.GraphModelConfig`) gives them."""
    m = model
    return dict(hidden=m.hidden, num_layers=m.num_layers, num_heads=m.num_heads, global_context=m.global_context,
                dropout=m.dropout)  # fmt: skip


def graph_net(module: nn.Module) -> GraphDenoiser:
    """The GraphDenoiser inside a trained wrapper (EDMPrecond(PackedGraphNet(net)) or PositionDenoiser(net))."""
    while not isinstance(module, GraphDenoiser):
        inner = getattr(module, "net", None)
        if not isinstance(inner, nn.Module):
            raise TypeError(f"no GraphDenoiser inside {type(module).__name__} (it has no .net module)")
        module = inner
    return module


def wrap_positions(
    net: GraphDenoiser,
    *,
    k: int = 8,
    period: float | None = None,
    density_scales: Sequence[float] = (),
    density_margin: float = 0.0,
) -> PositionDenoiser:
    """``net`` as a :class:`~polyscale.diffusion.structure.PositionDenoiser` reading
    :class:`~polyscale.data.graph_features.PositionFeatures` with these settings; a ``net`` of another shape
    than :func:`position_net` gives for them is a ValueError."""
    features = PositionFeatures(k=k, period=period, density_scales=tuple(density_scales),
                                density_margin=density_margin)  # fmt: skip
    cfg = net.config
    shape = (cfg.node_dim, cfg.edge_dim, cfg.edge_cond_dim, cfg.node_cond_dim, cfg.use_node_state)
    want = (2, 0, POSITION_EDGE_FEATURES, features.node_cond_dim, False)
    if shape != want:
        raise ValueError(
            f"PositionDenoiser(period={period}, density_scales={list(features.density_scales)}) needs "
            f"GraphDenoiser(node_dim=2, edge_dim=0, edge_cond_dim=3, node_cond_dim={want[3]}, "
            f"use_node_state=False) (see position_net), got {cfg}"
        )
    return PositionDenoiser(net, features)


def position_denoiser(model, net: GraphDenoiser | None = None) -> PositionDenoiser:
    """The positions stage's denoiser as a graph experiment's ``model`` section describes it, around ``net``
    (None: a fresh one, :func:`position_net`)."""
    if net is None:
        net = position_net(period=model.position_period, density_scales=model.position_density_scales,
                           **net_kwargs(model))  # fmt: skip
    return wrap_positions(net, k=model.position_knn, period=model.position_period,
                          density_scales=model.position_density_scales,
                          density_margin=model.position_density_margin)  # fmt: skip


__all__ = [
    "edge_net",
    "graph_denoiser",
    "graph_net",
    "net_kwargs",
    "position_denoiser",
    "position_net",
    "reads_crossings",
    "wrap_positions",
]
