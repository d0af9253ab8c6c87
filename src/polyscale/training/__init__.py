"""Training: the loop (on accelerate), its configuration, checkpoints and logs. Model-agnostic."""

from polyscale.training.config import TrainConfig
from polyscale.training.loop import TrainResult, latest_checkpoint, train

__all__ = ["TrainConfig", "TrainResult", "latest_checkpoint", "train"]
