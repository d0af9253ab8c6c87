"""*How* a GPT grows a layer: the new block's initial weights, from the last block's trajectory.

The new block is appended after the last one (``GPT.insert_layer(n_layer, state)``). Its state is one of:

- ``"geometric"``: every tensor of the last block extrapolated along its trajectory
  (:class:`polyscale.growth.trajectory.GeometricExtrapolator`), all with the geometry (``tau``, ``kappa``)
  of the whole block. The trajectory is the window of snapshots plus the current weights. Setting the
  extrapolator's ``gamma0 = eta0 = 0`` gives the linear-only variant, and ``eta0 = 0`` linear plus
  curvature.
- ``"copy"``: the last block's current weights, unchanged.
- ``"zero"``: a freshly initialised block whose two residual output projections (``attn.c_proj``,
  ``mlp.c_proj``, weights and biases) are zero. The block adds nothing to the residual stream, so the
  model's outputs are unchanged exactly at insertion.
- ``"random"``: a freshly initialised block (``GPT.insert_layer`` with no state).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from polyscale.growth.trajectory import (
    GeometricExtrapolator,
    TrajectoryWindow,
    effective_curvature,
    stack_points,
    stretch_factor,
)
from polyscale.nn.gpt import GPT, RESIDUAL_OUTPUTS, Block
from polyscale.registry import Registry

StrategyFn = Callable[..., tuple[dict[str, Tensor] | None, dict]]


def last_block_tensors(model: GPT) -> dict[str, Tensor]:
    """The last block's state, the tensors whose trajectory the window tracks."""
    return dict(model.blocks[-1].state_dict())


def new_block_state(
    model: GPT,
    strategy: str,
    *,
    window: TrajectoryWindow | None = None,
    extrapolator: GeometricExtrapolator | None = None,
    generator: torch.Generator | None = None,
) -> tuple[dict[str, Tensor] | None, dict]:
    """``(state for GPT.insert_layer or None for a random block, metrics)`` by ``strategy`` (module
    docstring). ``"geometric"`` needs ``window`` with at least one snapshot of :func:`last_block_tensors`."""
    initialise = STRATEGIES.lookup(strategy)
    return initialise(model, window=window, extrapolator=extrapolator, generator=generator)


def _current(model: GPT) -> dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in last_block_tensors(model).items()}


def random_state(model: GPT, **_: object) -> tuple[None, dict]:
    """A freshly initialised block: ``GPT.insert_layer`` with no state."""
    return None, {}


def copy_state(model: GPT, **_: object) -> tuple[dict[str, Tensor], dict]:
    """The last block's current weights, unchanged."""
    return _current(model), {}


def zero_state(
    model: GPT, *, generator: torch.Generator | None = None, **_: object
) -> tuple[dict[str, Tensor], dict]:
    """A fresh block whose residual output projections are zero: the model's outputs do not change."""
    block = Block(model.config).to(device=model.wte.weight.device, dtype=model.wte.weight.dtype)
    block.apply(lambda m: model.init_weights(m, generator))
    state = {k: v.detach().clone() for k, v in block.state_dict().items()}
    for name in RESIDUAL_OUTPUTS:
        for kind in ("weight", "bias"):
            if f"{name}.{kind}" in state:
                state[f"{name}.{kind}"].zero_()
    return state, {}


def geometric_state(
    model: GPT,
    *,
    window: TrajectoryWindow | None = None,
    extrapolator: GeometricExtrapolator | None = None,
    **_: object,
) -> tuple[dict[str, Tensor], dict]:
    """Every tensor of the last block extrapolated along its trajectory (the window plus the current weights)."""
    current = _current(model)
    if window is None or len(window) == 0:
        raise ValueError("the geometric strategy needs a trajectory window with at least one snapshot")
    extrapolator = extrapolator if extrapolator is not None else GeometricExtrapolator()
    # W_0 .. W_T with W_T = now; growth usually comes right after a snapshot, which then already is "now"
    # (appending it again would add a zero last velocity and bias the acceleration and the escape sign)
    now = {k: v.cpu() for k, v in current.items()}
    moved = any(not torch.equal(window.snapshots[-1][k], now[k]) for k in current)
    snapshots = [*window.snapshots, *([now] if moved else [])]
    if len(snapshots) < 2:
        raise ValueError("the geometric strategy needs at least two distinct snapshots of the last block")
    n_points = len(snapshots)
    points = stack_points(snapshots)
    histories = {k: [snap[k] for snap in snapshots] for k in current}
    tau, kappa = stretch_factor(points), effective_curvature(points)  # the whole block's geometry
    state, norms = {}, {}
    for name, history in histories.items():
        w_new, m = extrapolator.extrapolate(history, tau=tau, kappa=kappa)
        state[name] = w_new.to(current[name].device)
        norms[name] = m["step_norm"]
    beta, gamma, eta = extrapolator.coefficients(tau, kappa)
    return state, {"tau": tau, "kappa": kappa, "beta": beta, "gamma": gamma, "eta": eta,
                   "step_norm": sum(norms.values()), "points": n_points}  # fmt: skip


# name -> (model, *, window, extrapolator, generator) -> (state or None, metrics)
STRATEGIES: Registry[StrategyFn] = Registry(
    "strategy",
    {"geometric": geometric_state, "copy": copy_state, "zero": zero_state, "random": random_state},
)
