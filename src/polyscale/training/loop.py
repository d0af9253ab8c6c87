"""The training loop: one readable function on ``accelerate`` (devices, mixed precision, DDP), with EMA,
warmup + cosine LR, gradient clipping and accumulation, atomic checkpoints and exact resume.

Exactness of resume rests on two choices: the data order and the diffusion noise are pure functions of
``(seed, step, micro-step, rank)`` (see :func:`batch_indices`, :func:`mix_seed`), and everything stateful
(model, optimizer, LR schedule, EMA, step, RNG states for dropout) is saved with ``accelerator.save_state``.
"""

from __future__ import annotations

import contextlib
import copy
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from accelerate import Accelerator
from torch import nn
from torch.utils.data import Dataset, default_collate
from tqdm.auto import tqdm

from polyscale.training.config import TrainConfig
from polyscale.training.logs import MetricsLogger
from polyscale.training.schedule import batch_indices, ema_decay_at, ema_update, mix_seed, warmup_cosine

CHECKPOINT_PREFIX = "step_"


@dataclass
class TrainResult:
    """What a finished (or resumed-and-finished) run reports."""

    step: int  # optimizer steps done in total
    final_loss: float  # exponentially smoothed training loss at the end (this process)
    losses: list[float] = field(default_factory=list)  # per-step mean loss of this run segment (this process)
    output_dir: Path | None = None
    last_checkpoint: Path | None = None
    wall_time: float = 0.0  # seconds spent in this call


class _StepCounter:
    """The global step as a checkpointable object (``accelerator.register_for_checkpointing``)."""

    def __init__(self) -> None:
        self.step = 0

    def state_dict(self) -> dict:
        return {"step": self.step}

    def load_state_dict(self, state: dict) -> None:
        self.step = int(state["step"])


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    """The most recent complete checkpoint under ``output_dir/checkpoints`` (temporary dirs are ignored)."""
    folder = Path(output_dir) / "checkpoints"
    if not folder.is_dir():
        return None
    done = sorted(p for p in folder.iterdir() if p.is_dir() and p.name.startswith(CHECKPOINT_PREFIX))
    return done[-1] if done else None


def _save_checkpoint(accelerator: Accelerator, output_dir: Path, step: int, keep: int) -> Path:
    """``save_state`` into a temporary directory, then rename: a crash never leaves a partial checkpoint."""
    folder = output_dir / "checkpoints"
    final = folder / f"{CHECKPOINT_PREFIX}{step:08d}"
    tmp = folder / f".tmp-{CHECKPOINT_PREFIX}{step:08d}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        folder.mkdir(parents=True, exist_ok=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp), safe_serialization=True)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        old = sorted(p for p in folder.iterdir() if p.is_dir() and p.name.startswith(CHECKPOINT_PREFIX))
        for stale in old[:-keep]:
            shutil.rmtree(stale, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def _drop_labels(cond: dict, cfg: TrainConfig, generator: torch.Generator) -> dict:
    """Classifier-free guidance training: replace labels by ``null_class`` with probability ``label_dropout``."""
    labels = cond.get("class_labels")
    if labels is None or cfg.label_dropout == 0:
        return cond
    drop = torch.rand(labels.shape, generator=generator, device=labels.device) < cfg.label_dropout
    return {**cond, "class_labels": torch.where(drop, torch.full_like(labels, cfg.null_class), labels)}


def train(
    model: nn.Module,
    loss_fn: Callable[..., torch.Tensor],
    dataset: Dataset,
    config: TrainConfig,
    *,
    export_fn: Callable[[Path, nn.Module, nn.Module], None] | None = None,
    resume: bool = True,
    callbacks: Sequence[Callable[[int, nn.Module, dict], None]] = (),
) -> TrainResult:
    """Train ``model`` with ``loss_fn(model, x0, *, generator, **cond) -> (B,)`` on dict batches of ``dataset``.

    Writes ``checkpoints/step_*`` (full state), ``metrics.csv``, ``tb/`` under ``config.output_dir`` and, when
    ``export_fn`` is given, calls ``export_fn(output_dir / "model", model, ema_model)`` at the end.
    With ``resume`` the latest checkpoint in ``output_dir`` is loaded and training continues to ``max_steps``.
    """
    cfg = config
    if cfg.mixed_precision == "fp16" and not torch.cuda.is_available():
        raise ValueError("train.mixed_precision='fp16' needs a GPU; use 'bf16' or 'no' on CPU")
    accelerator = Accelerator(mixed_precision=cfg.mixed_precision)
    cfg.validate(accelerator.num_processes)
    if len(dataset) == 0:
        raise ValueError("the training dataset is empty")
    output_dir = Path(cfg.output_dir)
    micro_batch = cfg.batch_size // (cfg.grad_accum_steps * accelerator.num_processes)
    rank, world = accelerator.process_index, accelerator.num_processes

    ema = copy.deepcopy(model).eval().requires_grad_(False)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=cfg.adam_betas, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: warmup_cosine(
        s, warmup_steps=cfg.warmup_steps, max_steps=cfg.max_steps, min_lr_ratio=cfg.min_lr_ratio))
    model, optimizer = accelerator.prepare(model, optimizer)
    ema.to(accelerator.device)
    counter = _StepCounter()
    # The scheduler is registered, not prepared: a prepared one steps once per process under DDP.
    for obj in (scheduler, ema, counter):
        accelerator.register_for_checkpointing(obj)

    ckpt = latest_checkpoint(output_dir) if resume else None
    if ckpt is not None:
        accelerator.load_state(str(ckpt))
    start_step = counter.step
    logger = MetricsLogger(output_dir, enabled=accelerator.is_main_process, resume_step=start_step)
    bar = tqdm(total=cfg.max_steps, initial=start_step, disable=not (cfg.progress and accelerator.is_main_process),
               desc="training", dynamic_ncols=True)
    losses: list[float] = []
    smoothed = float("nan")
    last_ckpt = ckpt
    t_start = t_log = time.perf_counter()
    model.train()
    for step in range(start_step, cfg.max_steps):
        step_loss = torch.zeros((), device=accelerator.device)
        for micro in range(cfg.grad_accum_steps):
            idx, epoch = batch_indices(step, micro=micro, rank=rank, num_processes=world, micro_batch=micro_batch,
                                       grad_accum_steps=cfg.grad_accum_steps, dataset_len=len(dataset), seed=cfg.seed)
            if hasattr(dataset, "set_epoch"):
                dataset.set_epoch(epoch)
            batch = default_collate([dataset[int(i)] for i in idx])
            batch = {k: v.to(accelerator.device) for k, v in batch.items()}
            x0 = batch.pop("x")
            gen = torch.Generator(accelerator.device).manual_seed(mix_seed(cfg.seed, step, micro, rank))
            cond = _drop_labels(batch, cfg, gen)
            last = micro == cfg.grad_accum_steps - 1
            sync = contextlib.nullcontext() if last else accelerator.no_sync(model)
            with sync, accelerator.autocast():
                loss = loss_fn(model, x0, generator=gen, **cond).float().mean() / cfg.grad_accum_steps
            accelerator.backward(loss)
            step_loss += loss.detach()
        grad_norm = accelerator.clip_grad_norm_(model.parameters(), cfg.grad_clip or float("inf"))
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        ema_update(ema, accelerator.unwrap_model(model), decay=ema_decay_at(step, cfg.ema_decay))
        counter.step = step + 1

        loss_value = float(step_loss)
        losses.append(loss_value)
        smoothed = loss_value if smoothed != smoothed else 0.98 * smoothed + 0.02 * loss_value
        metrics = {"loss": loss_value, "lr": scheduler.get_last_lr()[0], "grad_norm": float(grad_norm)}
        if counter.step % cfg.log_every == 0 or counter.step == cfg.max_steps:
            mean_loss = float(accelerator.reduce(step_loss, reduction="mean"))
            now = time.perf_counter()
            done = counter.step - max(start_step, (counter.step - 1) // cfg.log_every * cfg.log_every)
            logger.log(counter.step, {**metrics, "loss": mean_loss,
                                      "samples_per_s": done * cfg.batch_size / max(now - t_log, 1e-9)})
            t_log = now
        if accelerator.is_main_process:
            for cb in callbacks:
                cb(counter.step, accelerator.unwrap_model(model), metrics)
        bar.update(1)
        bar.set_postfix(loss=f"{smoothed:.4f}", lr=f"{metrics['lr']:.2e}")
        if counter.step % cfg.checkpoint_every == 0 or counter.step == cfg.max_steps:
            last_ckpt = _save_checkpoint(accelerator, output_dir, counter.step, cfg.keep_checkpoints)
    bar.close()
    logger.close()
    if export_fn is not None and accelerator.is_main_process:
        export_fn(output_dir / "model", accelerator.unwrap_model(model), ema)
    accelerator.wait_for_everyone()
    return TrainResult(step=counter.step, final_loss=smoothed, losses=losses, output_dir=output_dir,
                       last_checkpoint=last_ckpt, wall_time=time.perf_counter() - t_start)

