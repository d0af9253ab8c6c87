"""The training loop: one readable function on ``accelerate`` (devices, mixed precision, DDP), with EMA,
warmup + cosine LR, gradient clipping and accumulation, atomic checkpoints and exact resume.

Exactness of resume rests on two choices. (1) Everything random that matters is a pure function of
position: the data order of ``(seed, step, chunk)`` (:mod:`polyscale.training.data`), the generator handed
to ``loss_fn`` (diffusion noise) and label dropout of ``(seed, step, chunk)``. (2) Everything stateful
(model, optimizer, LR schedule, EMA, step, and the global RNG that drives dropout layers) is saved in each
checkpoint (:mod:`polyscale.training.checkpoint`).
"""

from __future__ import annotations

import contextlib
import copy
import errno
import functools
import math
import shutil
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from torch import Tensor, nn
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from polyscale.atomic import commit_dir
from polyscale.training.checkpoint import (
    callback_state,
    checkpoint_path,
    clear_checkpoints,
    latest_checkpoint,
    latest_intact_checkpoint,
    load_training_state,
    prefixed,
    prune_checkpoints,
    restore_callbacks,
    write_manifest,
    write_state_files,
)
from polyscale.training.config import TrainConfig
from polyscale.training.data import check_dataset, chunk_index, make_loader, mix_seed
from polyscale.training.divergence import BadSteps, DivergenceError, non_finite, non_finite_weights
from polyscale.training.ema import ema_decay_at, ema_update
from polyscale.training.logs import MetricsLogger
from polyscale.training.lr import warmup_cosine
from polyscale.training.run_dir import notice
from polyscale.training.run_lock import RunLock

LossFn = Callable[..., Tensor]  # loss_fn(model, x0, *, generator, **cond) -> per-sample loss (B,)
ModelT = TypeVar("ModelT", bound=nn.Module)
# export_fn(directory, model, ema_model): the module given to train (unwrapped from DDP) and its EMA copy
ExportFn = Callable[[Path, ModelT, ModelT], None]
Callback = Callable[[int, nn.Module, dict], None]  # cb(step, unwrapped_model, metrics) after each step


@dataclass
class TrainResult:
    """What a finished (or resumed-and-finished) run reports."""

    step: int  # optimizer steps done in total
    final_loss: float  # exponentially smoothed loss at the end (this process; nan if no step ever ran)
    losses: list[float] = field(default_factory=list)  # per-step mean loss of the steps run in this call
    output_dir: Path | None = None
    last_checkpoint: Path | None = None  # the newest checkpoint directory
    model_dir: Path | None = None  # where export_fn wrote the model (None without export_fn)
    wall_time: float = 0.0  # seconds spent in this call


@dataclass
class TrainerState:
    """The loop's own counters, saved in the checkpoint's ``state.json``."""

    step: int = 0  # optimizer steps done
    smoothed_loss: float | None = None  # exponentially smoothed loss (so a resumed run reports the same)
    bad_steps: int = 0  # skipped bad steps in a row so far (polyscale.training.divergence)


def save_checkpoint(
    accelerator: Accelerator,
    output_dir: Path,
    *,
    state: TrainerState,
    ema: nn.Module,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    keep: int,
    callbacks: Sequence[object] = (),
) -> Path:
    """The loop's checkpoint (:mod:`polyscale.training.checkpoint`): accelerate's state of every process plus
    ``state.safetensors`` (``ema.*``, callbacks' tensors) and ``state.json`` (step, smoothed loss, scheduler,
    callbacks' metadata), built in a hidden directory and renamed into place. Collective: every process
    calls it (each writes its own RNG state)."""
    final = checkpoint_path(output_dir, state.step)
    tmp = final.parent / f".tmp-{final.name}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)  # left over by a crash during an earlier save
        tmp.parent.mkdir(parents=True, exist_ok=True)
    accelerator.wait_for_everyone()
    try:
        accelerator.save_state(str(tmp), safe_serialization=True)
        if accelerator.is_main_process:
            cb_tensors, cb_meta = callback_state(callbacks)
            tensors = {f"ema.{k}": v.detach().cpu().clone() for k, v in ema.state_dict().items()}
            meta = {"step": state.step, "smoothed_loss": state.smoothed_loss, "bad_steps": state.bad_steps,
                    "scheduler": scheduler.state_dict(), "callbacks": cb_meta}  # fmt: skip
            write_state_files(tmp, {**tensors, **cb_tensors}, meta)
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            write_manifest(tmp)  # last: a checkpoint with a complete manifest is a complete checkpoint
    except BaseException as err:
        # a full disk or an interrupt: the previous checkpoints stay as they are
        if accelerator.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(err, RuntimeError) and "inline_container" in str(err):  # torch.save's writer failed
            raise _write_failure(final, err) from err
        raise
    if accelerator.is_main_process:
        commit_dir(tmp, final)
        prune_checkpoints(output_dir, keep)
    accelerator.wait_for_everyone()
    return final


def _write_failure(path: Path, err: RuntimeError) -> OSError:
    """torch.save reports a failed write (typically a full disk) as a RuntimeError of its C++ writer: an OSError
    naming the checkpoint, ``ENOSPC`` when the disk has (almost) no room left."""
    free = shutil.disk_usage(path.parent).free if path.parent.exists() else None
    code = errno.ENOSPC if free is not None and free < 64 * 2**20 else errno.EIO
    return OSError(code, f"writing the checkpoint failed ({' '.join(str(err).split())})", str(path))


def load_checkpoint(
    accelerator: Accelerator,
    path: Path,
    *,
    ema: nn.Module,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    callbacks: Sequence[object] = (),
    config: TrainConfig | None = None,
) -> TrainerState:
    """Restore model, optimizer, RNG (via accelerate), EMA, scheduler and callbacks from ``path``.

    With ``config``, its learning rate and weight decay replace the saved ones (the same values unless a
    resumed run was allowed to change them): the schedule keeps its shape, scaled to the new peak rate.
    """
    tensors, meta = load_training_state(path)
    accelerator.load_state(str(path))
    ema.load_state_dict(prefixed(tensors, "ema"))
    scheduler.load_state_dict(meta["scheduler"])
    restore_callbacks(callbacks, tensors, meta.get("callbacks", {}))
    if config is not None and isinstance(scheduler, torch.optim.lr_scheduler.LambdaLR):
        scheduler.base_lrs = [config.lr for _ in scheduler.base_lrs]
        for group, base, factor in zip(scheduler.optimizer.param_groups, scheduler.base_lrs,
                                       scheduler.lr_lambdas, strict=True):  # fmt: skip
            group["lr"] = base * factor(scheduler.last_epoch)
            group["weight_decay"] = config.weight_decay
    return TrainerState(
        step=int(meta["step"]),
        smoothed_loss=meta.get("smoothed_loss"),
        bad_steps=int(meta.get("bad_steps", 0)),
    )


def _make_accelerator(mixed_precision: str) -> Accelerator:
    """An ``Accelerator`` with this precision, also when an earlier call in this process used another one.

    accelerate keeps one process-wide state and refuses to change its precision; the distributed part
    (``PartialState``, the process group) is kept, only the precision-carrying part is rebuilt.
    """
    shared = AcceleratorState._shared_state
    if shared and shared.get("_mixed_precision") != mixed_precision:
        AcceleratorState._reset_state(reset_partial_state=False)
    return Accelerator(mixed_precision=mixed_precision)


@contextlib.contextmanager
def _seeded_global_rng(seed: int, device: torch.device) -> Iterator[None]:
    """Seed the global RNG (used by dropout) from ``seed`` inside this block only; the caller's state returns
    afterwards. On resume the checkpoint's RNG state replaces the seeded one."""
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.default_generator.manual_seed(seed)
        if device.type == "cuda":
            torch.cuda.manual_seed(seed)
        yield


CONTEXT_KEYS = ("tokens", "context", "context_mask")  # the keys of a text or context condition
NullCondition = Callable[[dict[str, Tensor]], dict[str, Tensor]]


def _drop_conditioning(
    cond: dict[str, Tensor], cfg: TrainConfig, generator: torch.Generator, null: NullCondition | None
) -> dict[str, Tensor]:
    """Classifier-free guidance training: each row's class label becomes the null class with probability
    ``label_dropout`` (``null_class``, or ``null``'s label), and its text or context becomes the null context
    of ``null(cond)`` with probability ``context_dropout``, independently."""
    out = dict(cond)
    labels = cond.get("class_labels")
    if labels is not None and cfg.label_dropout > 0:
        drop = torch.rand(labels.shape, generator=generator, device=labels.device) < cfg.label_dropout
        if cfg.null_class is not None:
            empty = torch.full_like(labels, cfg.null_class)
        elif null is not None:
            empty = null({"class_labels": labels})["class_labels"]
        else:
            raise ValueError(
                f"label_dropout={cfg.label_dropout} needs null_class (the model's 'no class' label)"
            )
        out["class_labels"] = torch.where(drop, empty, labels)
    present = [k for k in CONTEXT_KEYS if k in cond]
    if present and cfg.context_dropout > 0:
        if null is None:
            raise ValueError(
                f"context_dropout={cfg.context_dropout} needs the model's null condition (train(null_condition=...))"
            )
        batch = cond[present[0]].shape[0]
        drop = torch.rand(batch, generator=generator, device=cond[present[0]].device) < cfg.context_dropout
        nothing = null({k: cond[k] for k in present})
        for key in nothing:
            if key in CONTEXT_KEYS:
                where = drop.view(-1, *([1] * (nothing[key].ndim - 1)))  # (B, 1, ...): whole rows
                kept = cond[key] if key in cond else torch.ones_like(nothing[key])
                out[key] = torch.where(where, nothing[key], kept)
    return out


def _micro_step_loss(
    model: nn.Module,
    loss_fn: LossFn,
    batch: Mapping[str, Tensor],
    cfg: TrainConfig,
    generator: torch.Generator,
    null: NullCondition | None = None,
) -> Tensor:
    """Mean per-sample loss of one micro-batch ``{"x": (b, C, *spatial), ...}``, scaled for accumulation."""
    x0 = batch["x"]
    cond = _drop_conditioning({k: v for k, v in batch.items() if k != "x"}, cfg, generator, null)
    per_sample = loss_fn(model, x0, generator=generator, **cond)
    if _custom_batch(batch):  # custom batches (graphs): one loss per item of the batch, however many rows
        if per_sample.ndim != 1 or per_sample.numel() == 0:
            raise ValueError(
                f"loss_fn must return a non-empty 1-D per-item loss, got {tuple(per_sample.shape)}"
            )
    elif per_sample.shape != (x0.shape[0],):
        raise ValueError(
            f"loss_fn must return a per-sample loss of shape ({x0.shape[0]},), got {tuple(per_sample.shape)}"
        )
    return per_sample.float().mean() / cfg.grad_accum_steps


def _custom_batch(batch: Mapping[str, object]) -> bool:
    """True for batches made by a custom ``collate_fn`` (they carry a ``"layout"``: graphs)."""
    return "layout" in batch


@dataclass
class _Step:
    """What one optimizer step reports."""

    loss: Tensor  # this process's mean loss (0-d, on the device)
    loss_value: float  # the same as a number
    lr: float  # the rate the step used
    grad_norm: float  # global gradient norm before clipping
    problem: str  # "" or what was not finite (the update was then skipped)


def _optimizer_step(
    accelerator: Accelerator,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    loss_fn: LossFn,
    batches: Iterator[dict[str, Tensor]],
    cfg: TrainConfig,
    *,
    step: int,
    grad_clip: float,
    null: NullCondition | None = None,
) -> _Step:
    """One optimizer step over ``grad_accum_steps`` micro-batches. A step whose loss or gradient norm is not
    finite changes no weight and no optimizer moment (its gradients are dropped); the schedule advances."""
    rank, world = accelerator.process_index, accelerator.num_processes
    step_loss = torch.zeros((), device=accelerator.device)
    for micro in range(cfg.grad_accum_steps):
        batch = {k: v.to(accelerator.device, non_blocking=True) for k, v in next(batches).items()}
        # noise and label dropout depend on the micro-batch's place in the global batch, not on the layout
        chunk = chunk_index(micro, rank=rank, num_processes=world)
        gen = torch.Generator(accelerator.device).manual_seed(mix_seed(cfg.seed, step, chunk))
        # DDP all-reduces gradients only on the last micro-batch of the step
        sync = contextlib.nullcontext() if micro == cfg.grad_accum_steps - 1 else accelerator.no_sync(model)
        with sync, accelerator.autocast():
            loss = _micro_step_loss(model, loss_fn, batch, cfg, gen, null)
        accelerator.backward(loss)
        step_loss += loss.detach()
    lr = optimizer.param_groups[0]["lr"]  # the rate this step uses
    norm = accelerator.clip_grad_norm_(model.parameters(), grad_clip)
    norm = torch.as_tensor(norm, dtype=torch.float32, device=step_loss.device)
    loss_value, grad_norm = torch.stack([step_loss.float(), norm]).tolist()  # one sync for both
    # with fp16 the loss scaler skips a step of inf gradients and lowers its scale: no divergence
    scaler = accelerator.scaler
    problem = non_finite(loss_value, grad_norm if scaler is None else None)
    if world > 1:  # every process decides alike: a loss may be bad on one process only
        flag = torch.tensor(float(not math.isfinite(loss_value)), device=accelerator.device)
        if bool(accelerator.reduce(flag, reduction="sum") > 0) and math.isfinite(loss_value):
            problem = " and ".join(p for p in (problem, "the loss of another process is not finite") if p)
    if not problem:
        optimizer.step()
    elif scaler is not None:  # fp16: clip_grad_norm_ unscaled the gradients; end the scaler's step
        scaler.update()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return _Step(step_loss, loss_value, lr, grad_norm, problem)


def _divergence_hint(cfg: TrainConfig, key: str) -> str:
    """The likely cause of a divergence and what to change, in the run's setting names."""
    hint = f"{key}.lr={cfg.lr} is probably too high: lower it"
    if not cfg.grad_clip or math.isinf(cfg.grad_clip):
        hint += f" or set {key}.grad_clip (e.g. 1.0)"
    if cfg.mixed_precision == "fp16":
        hint += f" or train in bf16 ({key}.mixed_precision=bf16)"
    return hint


def train(
    model: ModelT,
    loss_fn: LossFn,
    dataset: Dataset,
    config: TrainConfig,
    *,
    export_fn: ExportFn[ModelT] | None = None,
    resume: bool = True,
    callbacks: Sequence[Callback] = (),
    collate_fn: Callable[[list], dict] | None = None,
    config_key: str = "train",
    null_condition: NullCondition | None = None,
) -> TrainResult:
    """Train ``model`` in place with AdamW on dict batches of ``dataset``.

    Args:
        model: any module; ``loss_fn`` calls it. Trained in place (the same object holds the final weights).
            Only parameters with ``requires_grad`` train (the others, e.g. a LoRA adapter's frozen base,
            are left out of the optimizer).
        loss_fn: ``loss_fn(model, x0, *, generator, **cond) -> (B,)`` per-sample loss; ``x0`` is
            ``batch["x"]`` ``(B, C, *spatial)``, ``cond`` the other keys (e.g. ``class_labels`` ``(B,)``).
            Draw noise from ``generator`` (seeded per step and micro-batch) for exact resume. The loop takes
            the mean. A ``loss_fn.set_step(step)`` method, if it has one, is called before each optimizer step
            with the number of steps done, so a curriculum resumes exactly where it was.
        dataset: map-style, items ``{"x": (C, *spatial), ...}``; an optional ``set_epoch(epoch)`` is honoured.
        config: the knobs (see :class:`TrainConfig`); ``output_dir`` receives ``checkpoints/step_*``,
            ``metrics.csv``, ``tb/`` and, with ``export_fn``, ``model/``.
        export_fn: called as ``export_fn(output_dir / "model", model, ema_model)`` on the main process after
            each checkpoint (the last step always makes one).
        resume: continue from the latest checkpoint in ``output_dir`` (to ``max_steps``) when there is one.
            ``resume=False`` starts over: the checkpoints and logs already in ``output_dir`` are replaced.
        callbacks: ``cb(step, model, metrics)`` on the main process after each optimizer step; ``metrics`` has
            ``loss``, ``lr``, ``grad_norm`` (and ``samples_per_s`` on logging steps). A callback with
            ``state_dict() -> (tensors, meta)`` / ``load_state_dict(tensors, meta)`` is checkpointed too.
        collate_fn: batches items of different shapes (graphs: :func:`polyscale.data.graph_datasets.collate_graphs`,
            whose batches carry a ``"layout"`` and whose loss is one value per graph).
        config_key: where ``config`` sits in the run's settings (``optimization`` for graph runs), for the
            setting names in error messages.
        null_condition: ``null_condition(cond) -> cond`` the unconditional keyword arguments for a batch
            (a U-Net's ``null_condition``), used by conditioning dropout (``label_dropout`` without
            ``null_class``, ``context_dropout``).

    Raises:
        DivergenceError: more than ``config.max_bad_steps`` steps in a row had a NaN or infinite loss or
            gradient norm, or the weights stopped being finite (checked before every checkpoint and export:
            a non-finite model is never written, so the newest checkpoint on disk stays a finite one). The
            metrics up to the failing step stay in ``metrics.csv``.
    """
    cfg = config
    cfg.validate()  # before accelerate sees the precision string
    if cfg.mixed_precision == "fp16" and not torch.cuda.is_available():
        raise ValueError("train.mixed_precision='fp16' needs a CUDA GPU, got a CPU-only machine; use 'bf16'")
    check_dataset(dataset)
    accelerator = _make_accelerator(cfg.mixed_precision)
    cfg.validate(accelerator.num_processes)
    t_start = time.perf_counter()
    rank, world, main = accelerator.process_index, accelerator.num_processes, accelerator.is_main_process
    output_dir = Path(cfg.output_dir)
    export_dir = output_dir / "model"
    model_dir = export_dir if export_fn is not None else None
    grad_clip = cfg.grad_clip or math.inf  # inf: no clipping, but the norm is still computed for the logs

    ema = copy.deepcopy(model).eval().requires_grad_(False)
    # frozen parameters (a LoRA base, polyscale.training.lora) stay out of the optimizer and its state
    trainable = [p for p in model.parameters() if p.requires_grad]
    if not trainable:
        raise ValueError(f"{type(model).__name__} has no trainable parameter (every requires_grad is False)")
    optimizer = torch.optim.AdamW(trainable, lr=cfg.lr, betas=cfg.adam_betas, weight_decay=cfg.weight_decay)
    lr_lambda = functools.partial(
        warmup_cosine, warmup_steps=cfg.warmup_steps, max_steps=cfg.max_steps, min_lr_ratio=cfg.min_lr_ratio
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda)
    # The scheduler is not prepared (a prepared one steps once per process under DDP); we checkpoint it.
    model, optimizer = accelerator.prepare(model, optimizer)
    unwrapped = accelerator.unwrap_model(model)  # the caller's module (inside DDP, if any)
    ema.to(accelerator.device)

    with contextlib.ExitStack() as stack:
        stack.enter_context(_seeded_global_rng(mix_seed(cfg.seed, rank, 0xD0), accelerator.device))
        state, last_ckpt = TrainerState(), None
        if main:  # one run per directory; re-entrant, so a pipeline that holds the lock may call train
            lock = stack.enter_context(RunLock(output_dir, command="train"))
            if lock.nested:
                pass  # the caller entered the run directory (training.run_dir.open_run): already tidied and checked
            elif not resume:
                clear_checkpoints(output_dir)  # sets the checkpoints aside until this run writes its first
            else:
                latest_intact_checkpoint(output_dir, notify=notice)  # damaged ones are moved out of the list
        accelerator.wait_for_everyone()
        if resume and (last_ckpt := latest_checkpoint(output_dir)) is not None:
            state = load_checkpoint(
                accelerator, last_ckpt, ema=ema, scheduler=scheduler, callbacks=callbacks, config=cfg
            )
        start_step = state.step
        bad = BadSteps(cfg.max_bad_steps, state.bad_steps)

        def diverged(step: int, what: str) -> DivergenceError:
            hint = _divergence_hint(cfg, config_key)
            return DivergenceError(f"step {step}", what, hint=hint, checkpoint=latest_checkpoint(output_dir),
                                   step=step)  # fmt: skip

        def check_weights(step: int) -> None:
            """Before anything is written: every parameter of the model and of its EMA must be finite."""
            what = non_finite_weights(
                [("", unwrapped.named_parameters()), ("the EMA", ema.named_parameters())]
            )
            if what:
                raise diverged(step, what)

        batches = iter(
            make_loader(
                dataset,
                start_step=start_step,
                max_steps=cfg.max_steps,
                micro_batch=cfg.batch_size // (cfg.grad_accum_steps * world),
                grad_accum_steps=cfg.grad_accum_steps,
                rank=rank,
                num_processes=world,
                seed=cfg.seed,
                num_workers=cfg.num_workers,
                pin_memory=accelerator.device.type == "cuda",
                collate_fn=collate_fn,
            )
        )
        logger = MetricsLogger(output_dir, enabled=main, resume_step=start_step)
        stack.callback(logger.close)
        bar = tqdm(
            total=cfg.max_steps, initial=start_step, disable=not (cfg.progress and main), desc="training"
        )
        stack.callback(bar.close)
        # hand the caller's module back without accelerate's autocast wrapper around forward
        stack.callback(accelerator.unwrap_model, model, keep_fp32_wrapper=False)
        losses: list[float] = []
        t_log, steps_since_log = time.perf_counter(), 0
        model.train()
        set_step = getattr(loss_fn, "set_step", None)
        for step in range(start_step, cfg.max_steps):
            if set_step is not None:  # a loss whose settings follow the step (a curriculum) learns which
                set_step(step)
            done = _optimizer_step(
                accelerator,
                model,
                optimizer,
                scheduler,
                loss_fn,
                batches,
                cfg,
                step=step,
                grad_clip=grad_clip,
                null=null_condition,
            )
            lr, grad_norm, loss_value = done.lr, done.grad_norm, done.loss_value
            if bad.record(done.problem):  # too many in a row: log the failing step, then stop
                logger.log(step + 1, {"loss": loss_value, "lr": lr, "grad_norm": grad_norm})
                raise diverged(step + 1, bad.describe(done.problem, f"{config_key}.max_bad_steps"))
            state.bad_steps = bad.count
            decay = ema_decay_at(step, cfg.ema_decay, warmup=cfg.ema_warmup)
            ema_update(ema, unwrapped, decay=decay)
            state.step = step + 1

            # bookkeeping: smoothed loss, logs, callbacks, progress bar, checkpoint
            losses.append(loss_value)
            s = state.smoothed_loss
            if not done.problem:  # a skipped step's loss would make the smoothed loss NaN for good
                state.smoothed_loss = loss_value if s is None else 0.98 * s + 0.02 * loss_value
            metrics = {"loss": loss_value, "lr": lr, "grad_norm": grad_norm}
            steps_since_log += 1
            final = state.step == cfg.max_steps
            if state.step % cfg.log_every == 0 or final:
                now = time.perf_counter()
                metrics["loss"] = float(accelerator.reduce(done.loss, reduction="mean"))  # global batch
                metrics["samples_per_s"] = steps_since_log * cfg.batch_size / max(now - t_log, 1e-9)
                logger.log(state.step, metrics)
                t_log, steps_since_log = now, 0
            if main:
                for cb in callbacks:
                    cb(state.step, unwrapped, metrics)
            bar.update(1)
            shown = state.smoothed_loss if state.smoothed_loss is not None else math.nan
            bar.set_postfix(loss=f"{shown:.4f}", lr=f"{lr:.2e}", refresh=False)
            if state.step % cfg.checkpoint_every == 0 or final:
                check_weights(state.step)
                last_ckpt = save_checkpoint(
                    accelerator,
                    output_dir,
                    state=state,
                    ema=ema,
                    scheduler=scheduler,
                    keep=cfg.keep_checkpoints,
                    callbacks=callbacks,
                )
                if export_fn is not None and main:
                    export_fn(export_dir, unwrapped, ema)
        if export_fn is not None and main and start_step >= cfg.max_steps:
            check_weights(start_step)
            export_fn(export_dir, unwrapped, ema)  # nothing left to train: export anyway
        accelerator.wait_for_everyone()
    final_loss = state.smoothed_loss if state.smoothed_loss is not None else math.nan
    return TrainResult(
        step=state.step,
        final_loss=final_loss,
        losses=losses,
        output_dir=output_dir,
        last_checkpoint=last_ckpt,
        model_dir=model_dir,
        wall_time=time.perf_counter() - t_start,
    )
