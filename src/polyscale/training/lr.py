"""Learning-rate schedule: linear warmup, then cosine decay to a floor (a multiplier for ``LambdaLR``)."""

from __future__ import annotations

import math


def warmup_cosine(step: int, *, warmup_steps: int, max_steps: int, min_lr_ratio: float) -> float:
    """LR multiplier for optimizer step ``step`` (0-based).

    Linear warmup ``(step + 1) / warmup_steps`` for ``step < warmup_steps`` (so the first step is not wasted
    at lr 0), then half a cosine from 1 down to ``min_lr_ratio`` reached at ``step = max_steps``; constant
    after that. ``min_lr_ratio = 1`` gives a constant rate after warmup.
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, max_steps - warmup_steps))
    return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
