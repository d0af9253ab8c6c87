"""Training configuration: one dataclass, one field per knob of :func:`polyscale.training.train`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from polyscale.config import UNBOUNDED, check_finite

PRECISIONS = ("no", "bf16", "fp16")


@dataclass
class TrainConfig:
    """Knobs of the training loop (validated by :meth:`validate`, called by ``train``)."""

    max_steps: int = 1000  # optimizer steps in total (a resumed run continues to it; the cosine spans it)
    batch_size: int = 64  # global samples per optimizer step (all processes, all micro-batches)
    grad_accum_steps: int = 1  # micro-batches per optimizer step: micro = batch_size / (accum * processes)
    lr: float = 1e-3  # peak learning rate of AdamW
    weight_decay: float = 0.0  # AdamW decoupled weight decay
    adam_betas: tuple[float, float] = (0.9, 0.999)  # AdamW moment decay rates
    warmup_steps: int = 100  # linear warmup of the lr over the first steps (0 = none)
    min_lr_ratio: float = 0.1  # cosine decays lr to lr * min_lr_ratio at max_steps (1 = flat after warmup)
    # max global gradient norm; None, 0 or .inf = off (the norm is still logged)
    grad_clip: float | None = field(default=1.0, metadata={UNBOUNDED: True})
    ema_decay: float = 0.999  # decay of the EMA of weights (0 = EMA equals the latest weights)
    ema_warmup: bool = True  # decay min(ema_decay, (1 + step) / (10 + step)): the EMA leaves the init fast
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"  # autocast precision; fp16 needs a GPU
    checkpoint_every: int = 500  # save the full training state every N steps (and always at the last step)
    keep_checkpoints: int = 2  # how many recent checkpoints stay on disk
    log_every: int = 50  # metrics to CSV / TensorBoard every N steps (and at the last step)
    seed: int = 0  # data order, diffusion noise, label dropout and the dropout RNG all derive from it
    num_workers: int = 0  # DataLoader worker processes (0 = load in the training process)
    output_dir: str = "runs/default"  # holds checkpoints/, metrics.csv, tb/ and model/ (when exported)
    label_dropout: float = (
        0.0  # probability of replacing a class label by null_class (classifier-free guidance)
    )
    # the label index meaning "no class"; None = the model's own (the U-Net's num_classes)
    null_class: int | None = None
    # probability of replacing a prompt or context by the model's null context (classifier-free guidance)
    context_dropout: float = 0.0
    progress: bool = True  # tqdm progress bar on the main process
    # bad steps (a loss or gradient norm that is NaN or inf) in a row that are skipped before the run stops
    # with a DivergenceError (0 = stop at the first); a skipped step's update is dropped, its schedule kept
    max_bad_steps: int = 0

    def validate(self, num_processes: int = 1) -> None:
        """Raise ValueError naming the field, what was expected and what arrived."""
        check_finite(self, "train")
        at_least_one = {
            "max_steps": self.max_steps,
            "batch_size": self.batch_size,
            "grad_accum_steps": self.grad_accum_steps,
            "checkpoint_every": self.checkpoint_every,
            "keep_checkpoints": self.keep_checkpoints,
            "log_every": self.log_every,
        }
        for name, value in at_least_one.items():
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"train.{name} must be an integer >= 1, got {value!r}")
        per_step = self.grad_accum_steps * num_processes
        if self.batch_size % per_step:
            raise ValueError(
                f"train.batch_size={self.batch_size} must be divisible by grad_accum_steps * num_processes = "
                f"{self.grad_accum_steps} * {num_processes} = {per_step} (each micro-batch has the same size)"
            )
        at_least_zero = {
            "warmup_steps": self.warmup_steps,
            "num_workers": self.num_workers,
            "max_bad_steps": self.max_bad_steps,
        }
        for name, value in at_least_zero.items():
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"train.{name} must be an integer >= 0, got {value!r}")
        if not self.lr > 0:
            raise ValueError(f"train.lr must be > 0, got {self.lr}")
        if not self.weight_decay >= 0:
            raise ValueError(f"train.weight_decay must be >= 0, got {self.weight_decay}")
        if len(self.adam_betas) != 2 or not all(0 <= b < 1 for b in self.adam_betas):
            raise ValueError(f"train.adam_betas must be two numbers in [0, 1), got {self.adam_betas!r}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(f"train.min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if self.grad_clip is not None and not self.grad_clip >= 0:
            raise ValueError(f"train.grad_clip must be >= 0 (0 or None = off), got {self.grad_clip}")
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"train.ema_decay must be in [0, 1), got {self.ema_decay}")
        if self.mixed_precision not in PRECISIONS:
            raise ValueError(
                f"train.mixed_precision must be one of {PRECISIONS}, got {self.mixed_precision!r}"
            )
        if not 0 <= self.label_dropout < 1:
            raise ValueError(f"train.label_dropout must be in [0, 1), got {self.label_dropout}")
        if not 0 <= self.context_dropout < 1:
            raise ValueError(f"train.context_dropout must be in [0, 1), got {self.context_dropout}")
        if self.null_class is not None and self.null_class < 0:
            raise ValueError(f"train.null_class must be >= 0, got {self.null_class}")
