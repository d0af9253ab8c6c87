"""Learning-rate schedule, EMA of weights, and the step-indexed data order (all pure functions of the step)."""

from __future__ import annotations

import math

import torch
from torch import nn


def warmup_cosine(step: int, *, warmup_steps: int, max_steps: int, min_lr_ratio: float) -> float:
    """LR multiplier: linear warmup to 1 over ``warmup_steps``, then cosine to ``min_lr_ratio`` at ``max_steps``."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, max_steps - warmup_steps))
    return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


@torch.no_grad()
def ema_update(ema: nn.Module, model: nn.Module, *, decay: float) -> None:
    """``ema <- decay * ema + (1 - decay) * model`` for parameters; buffers are copied."""
    for e, p in zip(ema.parameters(), model.parameters(), strict=True):
        e.lerp_(p.detach().to(e.dtype), 1 - decay)
    for e, b in zip(ema.buffers(), model.buffers(), strict=True):
        e.copy_(b)


def ema_decay_at(step: int, ema_decay: float) -> float:
    """EMA warmup: early on average over fewer steps, ``min(ema_decay, (1 + step) / (10 + step))``."""
    return min(ema_decay, (1 + step) / (10 + step))


def mix_seed(*parts: int) -> int:
    """Combine integers into one 63-bit seed (splitmix-style), so streams for different (step, rank) differ."""
    h = 0x9E3779B97F4A7C15
    for p in parts:
        h = (h ^ (p + 0x9E3779B97F4A7C15 + (h << 6) + (h >> 2))) * 0xBF58476D1CE4E5B9 & 0xFFFFFFFFFFFFFFFF
    return h & 0x7FFFFFFFFFFFFFFF


def batch_indices(
    step: int, *, micro: int, rank: int, num_processes: int, micro_batch: int, grad_accum_steps: int,
    dataset_len: int, seed: int
) -> tuple[torch.Tensor, int]:
    """Dataset indices of one micro-batch, a pure function of its position (so resume needs no iterator state).

    The global sample stream is the concatenation of per-epoch permutations (epoch ``e`` shuffled with seed
    ``(seed, e)``). Optimizer step ``s`` consumes positions ``[s B, (s + 1) B)`` with
    ``B = micro_batch * grad_accum_steps * num_processes``; micro-step ``a`` of rank ``r`` takes chunk
    ``a * num_processes + r`` of them. Returns the indices ``(micro_batch,)`` and the epoch of the first one.
    """
    batch = micro_batch * grad_accum_steps * num_processes
    first = step * batch + (micro * num_processes + rank) * micro_batch
    positions = torch.arange(first, first + micro_batch)  # (micro_batch,) positions in the stream
    epochs = positions // dataset_len
    out = torch.empty(micro_batch, dtype=torch.long)
    for e in epochs.unique().tolist():
        perm = torch.randperm(dataset_len, generator=torch.Generator().manual_seed(mix_seed(seed, e)))
        sel = epochs == e
        out[sel] = perm[positions[sel] % dataset_len]
    return out, int(epochs[0])
