"""Training configuration: one dataclass, one field per knob of :func:`polyscale.training.train`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass
class TrainConfig:
    """Knobs of the training loop."""

    max_steps: int = 1000  # optimizer steps in total (a resumed run continues up to this)
    batch_size: int = 64  # global samples per optimizer step (all processes, all micro-batches)
    grad_accum_steps: int = 1  # micro-batches per optimizer step (memory: micro = batch / (accum * processes))
    lr: float = 1e-3  # peak learning rate of AdamW
    weight_decay: float = 0.0  # AdamW decoupled weight decay
    adam_betas: tuple[float, float] = (0.9, 0.999)  # AdamW moment decay rates
    warmup_steps: int = 100  # linear warmup from 0 to lr
    min_lr_ratio: float = 0.1  # cosine decays lr to lr * min_lr_ratio at max_steps
    grad_clip: float | None = 1.0  # max global gradient norm; None = no clipping
    ema_decay: float = 0.999  # EMA of weights; effective decay min(ema_decay, (1 + step) / (10 + step))
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"  # autocast precision (fp16 needs a GPU)
    checkpoint_every: int = 500  # save full training state every N steps (and at the end)
    keep_checkpoints: int = 2  # how many recent checkpoints to keep
    log_every: int = 50  # metrics to CSV / TensorBoard every N steps
    seed: int = 0  # data order, noise and initial RNG state all derive from it
    output_dir: str = "runs/default"  # checkpoints/, metrics.csv, tb/, model/
    label_dropout: float = 0.0  # probability of replacing a class label by null_class (classifier-free guidance)
    null_class: int | None = None  # the label index meaning "no class" (UNet: num_classes)
    progress: bool = True  # tqdm progress bar on the main process

    def validate(self, num_processes: int = 1) -> None:
        """Raise ValueError naming the field, what was expected and what arrived."""
        positive = {"max_steps": self.max_steps, "batch_size": self.batch_size,
                    "grad_accum_steps": self.grad_accum_steps, "checkpoint_every": self.checkpoint_every,
                    "keep_checkpoints": self.keep_checkpoints, "log_every": self.log_every}
        for name, value in positive.items():
            if value < 1:
                raise ValueError(f"train.{name} must be >= 1, got {value}")
        per_step = self.grad_accum_steps * num_processes
        if self.batch_size % per_step:
            raise ValueError(
                f"train.batch_size={self.batch_size} must be divisible by grad_accum_steps * num_processes = "
                f"{self.grad_accum_steps} * {num_processes} = {per_step}"
            )
        if self.lr <= 0 or self.warmup_steps < 0 or not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(
                f"need lr > 0, warmup_steps >= 0, 0 <= min_lr_ratio <= 1; got lr={self.lr}, "
                f"warmup_steps={self.warmup_steps}, min_lr_ratio={self.min_lr_ratio}"
            )
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"train.ema_decay must be in [0, 1), got {self.ema_decay}")
        if self.grad_clip is not None and self.grad_clip <= 0:
            raise ValueError(f"train.grad_clip must be positive or None, got {self.grad_clip}")
        if self.mixed_precision not in ("no", "bf16", "fp16"):
            raise ValueError(f"train.mixed_precision must be 'no', 'bf16' or 'fp16', got {self.mixed_precision!r}")
        if not 0 <= self.label_dropout < 1:
            raise ValueError(f"train.label_dropout must be in [0, 1), got {self.label_dropout}")
        if self.label_dropout > 0 and self.null_class is None:
            raise ValueError("train.label_dropout > 0 needs train.null_class (the model's 'no class' label)")
