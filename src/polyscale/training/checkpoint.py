"""Checkpoints of the full training state: ``output_dir/checkpoints/step_{N:08d}``.

A checkpoint holds what ``accelerator.save_state`` writes (model, optimizer, gradient scaler, RNG state of
every process; loaded back with ``weights_only=True``) plus two files of ours, so nothing we load unpickles
arbitrary objects: ``ema.safetensors`` (the EMA weights) and ``trainer_state.json`` (step, LR-scheduler
state, smoothed loss). Each is written into a temporary directory that is renamed when complete, so a
crash never leaves a partial ``step_*`` directory behind.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from accelerate import Accelerator
from safetensors.torch import load_model, save_model
from torch import nn
from torch.optim.lr_scheduler import LRScheduler

PREFIX = "step_"
EMA_FILE = "ema.safetensors"
STATE_FILE = "trainer_state.json"


@dataclass
class TrainerState:
    """The loop's own counters, saved as JSON beside the accelerate state."""

    step: int = 0  # optimizer steps done
    smoothed_loss: float | None = None  # exponentially smoothed loss (so a resumed run reports the same)


def checkpoint_dirs(output_dir: str | Path) -> list[Path]:
    """Complete checkpoints under ``output_dir/checkpoints``, oldest first (temporary dirs are not listed)."""
    folder = Path(output_dir) / "checkpoints"
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_dir() and p.name.startswith(PREFIX))


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    """The most recent complete checkpoint under ``output_dir/checkpoints``, or None."""
    found = checkpoint_dirs(output_dir)
    return found[-1] if found else None


def clear_checkpoints(output_dir: str | Path) -> None:
    """Delete ``output_dir/checkpoints`` (a fresh run started with ``resume=False`` replaces the old one)."""
    shutil.rmtree(Path(output_dir) / "checkpoints", ignore_errors=True)


def save_checkpoint(
    accelerator: Accelerator,
    output_dir: Path,
    *,
    state: TrainerState,
    ema: nn.Module,
    scheduler: LRScheduler,
    keep: int,
) -> Path:
    """Write ``checkpoints/step_{state.step:08d}`` atomically and prune to the ``keep`` most recent.

    Collective: every process must call it (each writes its own RNG state).
    """
    folder = output_dir / "checkpoints"
    final = folder / f"{PREFIX}{state.step:08d}"
    tmp = folder / f".tmp-{PREFIX}{state.step:08d}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)  # left over by a crash during an earlier save
        folder.mkdir(parents=True, exist_ok=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp), safe_serialization=True)
    if accelerator.is_main_process:
        save_model(ema, str(tmp / EMA_FILE))
        payload: dict[str, Any] = {
            "step": state.step,
            "smoothed_loss": state.smoothed_loss,
            "scheduler": scheduler.state_dict(),
        }
        (tmp / STATE_FILE).write_text(json.dumps(payload, indent=1))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if final.exists():  # the same step saved again (e.g. a rerun with resume=False)
            shutil.rmtree(final)
        os.replace(tmp, final)
        for stale in checkpoint_dirs(output_dir)[:-keep]:
            shutil.rmtree(stale, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def load_checkpoint(
    accelerator: Accelerator, path: Path, *, ema: nn.Module, scheduler: LRScheduler
) -> TrainerState:
    """Restore model, optimizer, RNG (via accelerate), EMA and scheduler from ``path``; return counters."""
    for name in (EMA_FILE, STATE_FILE):
        if not (path / name).is_file():
            raise ValueError(
                f"checkpoint {path} is incomplete: expected {name} in it, found {sorted(os.listdir(path))}"
            )
    accelerator.load_state(str(path))
    load_model(ema, str(path / EMA_FILE), device=str(accelerator.device))
    payload = json.loads((path / STATE_FILE).read_text())
    scheduler.load_state_dict(payload["scheduler"])
    return TrainerState(step=int(payload["step"]), smoothed_loss=payload.get("smoothed_loss"))
