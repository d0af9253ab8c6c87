"""Exponential moving average of weights, with a short warmup so early averages are not stuck at init."""

from __future__ import annotations

import torch
from torch import nn


def ema_decay_at(step: int, ema_decay: float, *, warmup: bool = True) -> float:
    """Decay used for the EMA update after optimizer step ``step`` (0-based).

    With ``warmup``: ``min(ema_decay, (1 + step) / (10 + step))`` (the ``num_updates`` rule of TensorFlow's
    ExponentialMovingAverage), i.e. the average covers about the steps done so far until it reaches
    ``ema_decay``. Without: ``ema_decay`` throughout.
    """
    return min(ema_decay, (1 + step) / (10 + step)) if warmup else ema_decay


@torch.no_grad()
def ema_update(ema: nn.Module, model: nn.Module, *, decay: float) -> None:
    """In place: ``ema_p <- decay * ema_p + (1 - decay) * p`` for every parameter; buffers (e.g. norm
    statistics, integer counters) are copied. ``ema`` and ``model`` must have the same structure."""
    ema_params, params = list(ema.parameters()), list(model.parameters())
    if len(ema_params) != len(params):
        raise ValueError(f"EMA has {len(ema_params)} parameters but the model has {len(params)}")
    for e, p in zip(ema_params, params, strict=True):
        e.lerp_(p.detach().to(e.dtype), 1.0 - decay)
    for eb, b in zip(ema.buffers(), model.buffers(), strict=True):
        eb.copy_(b)
