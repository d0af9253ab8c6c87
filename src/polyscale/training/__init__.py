"""Training: the loop (on accelerate), its configuration, checkpoints, logs and the step-indexed data order.

Model-agnostic: ``train`` takes any module and a per-sample loss callable; the pipelines wire in diffusion.
"""

from polyscale.training.checkpoint import latest_checkpoint
from polyscale.training.config import TrainConfig
from polyscale.training.data import batch_indices, mix_seed
from polyscale.training.divergence import DivergenceError
from polyscale.training.ema import ema_decay_at, ema_update
from polyscale.training.loop import TrainResult, train
from polyscale.training.lr import warmup_cosine

__all__ = [
    "DivergenceError",
    "TrainConfig",
    "TrainResult",
    "batch_indices",
    "ema_decay_at",
    "ema_update",
    "latest_checkpoint",
    "mix_seed",
    "train",
    "warmup_cosine",
]
