"""One checkpoint format for the training state of every loop: ``<run>/checkpoints/step_{N:08d}/``.

A checkpoint directory holds two files of ours, so nothing we load unpickles arbitrary objects:

- ``state.safetensors``: every tensor of the state under a prefix: ``model.*`` (the growth loops' network),
  ``ema.*`` (EMA weights), ``optimizer.*`` (:func:`polyscale.training.optimizer_state.optimizer_state_tensors`),
  ``rng.*`` (random streams), ``cb{i}.*`` (callback ``i``'s tensors);
- ``state.json``: the JSON half: ``step``, the loop's counters and schedule, ``settings``, and
  ``callbacks`` (``{i: callback i's metadata}``).

The diffusion loop (:func:`polyscale.training.train`) also lets ``accelerator.save_state`` write the model,
optimizer, scaler and every process's RNG into the same directory (loaded back by accelerate with
``weights_only=True``). A callback with ``state_dict() -> (tensors, meta)`` and
``load_state_dict(tensors, meta)`` is saved and restored by :func:`callback_state` / :func:`restore_callbacks`.

**Kill-safety.** A checkpoint is built in a hidden sibling directory and renamed into place
(:func:`polyscale.atomic.atomic_replace_dir` / :func:`~polyscale.atomic.commit_dir`); older ones are pruned
only after the new one is complete, so the newest complete checkpoint is never lost. Hidden directories are
never listed as checkpoints.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from polyscale.atomic import atomic_replace_dir

PREFIX = "step_"
CHECKPOINTS = "checkpoints"
TENSORS_FILE = "state.safetensors"
META_FILE = "state.json"


def checkpoint_dirs(output_dir: str | Path) -> list[Path]:
    """Complete checkpoints under ``output_dir/checkpoints``, oldest first (temporary dirs are not listed)."""
    folder = Path(output_dir) / CHECKPOINTS
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_dir() and p.name.startswith(PREFIX))


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    """The most recent complete checkpoint under ``output_dir/checkpoints``, or None."""
    found = checkpoint_dirs(output_dir)
    return found[-1] if found else None


def checkpoint_path(output_dir: str | Path, step: int) -> Path:
    """``output_dir/checkpoints/step_{step:08d}``."""
    return Path(output_dir) / CHECKPOINTS / f"{PREFIX}{step:08d}"


def clear_checkpoints(output_dir: str | Path) -> None:
    """Delete ``output_dir/checkpoints`` (a fresh run started with ``resume=False`` replaces the old one)."""
    shutil.rmtree(Path(output_dir) / CHECKPOINTS, ignore_errors=True)


def prune_checkpoints(output_dir: str | Path, keep: int) -> None:
    """Delete all but the ``keep`` (>= 1) newest complete checkpoints."""
    if keep < 1:
        raise ValueError(f"keep must be >= 1, got {keep}")
    for stale in checkpoint_dirs(output_dir)[:-keep]:
        shutil.rmtree(stale, ignore_errors=True)


def write_state_files(directory: Path, tensors: Mapping[str, Tensor], meta: Mapping[str, Any]) -> None:
    """``state.safetensors`` + ``state.json`` into ``directory`` (a checkpoint being built)."""
    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(directory / TENSORS_FILE))
    (directory / META_FILE).write_text(json.dumps(meta) + "\n", encoding="utf-8")


def save_training_state(
    output_dir: str | Path,
    step: int,
    *,
    tensors: Mapping[str, Tensor],
    meta: Mapping[str, Any],
    keep: int = 2,
    extra: Callable[[Path], None] | None = None,
) -> Path:
    """Write ``output_dir/checkpoints/step_{step:08d}`` atomically, then keep the ``keep`` newest.

    ``meta`` gets ``step`` added; ``extra(directory)`` may write more files into the checkpoint being built
    (e.g. snapshots). Returns the checkpoint directory.
    """
    final = checkpoint_path(output_dir, step)

    def build(tmp: Path) -> None:
        write_state_files(tmp, tensors, {**meta, "step": step})
        if extra is not None:
            extra(tmp)

    atomic_replace_dir(build, final)
    prune_checkpoints(output_dir, keep)
    return final


def load_training_state(path: str | Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """``(tensors, meta)`` of the checkpoint directory ``path`` (safetensors and JSON only).

    Raises:
        ValueError: ``path`` lacks ``state.safetensors`` or ``state.json`` (names what it holds).
    """
    path = Path(path)
    for name in (TENSORS_FILE, META_FILE):
        if not (path / name).is_file():
            found = sorted(p.name for p in path.iterdir()) if path.is_dir() else "nothing"
            raise ValueError(f"checkpoint {path} is incomplete: expected {name}, found {found}")
    return load_file(str(path / TENSORS_FILE)), json.loads((path / META_FILE).read_text(encoding="utf-8"))


def prefixed(tensors: Mapping[str, Tensor], prefix: str) -> dict[str, Tensor]:
    """The entries of ``tensors`` under ``prefix.`` with the prefix removed."""
    start = len(prefix) + 1
    return {k[start:]: v for k, v in tensors.items() if k.startswith(prefix + ".")}


def rng_tensors(generators: Mapping[str, torch.Generator]) -> dict[str, Tensor]:
    """``rng.<name>`` states of ``generators`` plus ``rng.torch``, the global CPU stream."""
    out = {f"rng.{name}": g.get_state() for name, g in generators.items()}
    out["rng.torch"] = torch.get_rng_state()
    return out


def restore_rng(tensors: Mapping[str, Tensor], generators: Mapping[str, torch.Generator]) -> None:
    """Undo :func:`rng_tensors`: every named generator and the global CPU stream."""
    for name, g in generators.items():
        g.set_state(tensors[f"rng.{name}"])
    torch.set_rng_state(tensors["rng.torch"])


def callback_state(callbacks: Sequence[object]) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """``(cb{i}.* tensors, {i: meta})`` of every callback that has ``state_dict() -> (tensors, meta)``."""
    tensors: dict[str, Tensor] = {}
    meta: dict[str, Any] = {}
    for i, cb in enumerate(callbacks):
        if hasattr(cb, "state_dict"):
            cb_tensors, cb_meta = cb.state_dict()
            tensors.update({f"cb{i}.{k}": v for k, v in cb_tensors.items()})
            meta[str(i)] = cb_meta
    return tensors, meta


def restore_callbacks(
    callbacks: Sequence[object], tensors: Mapping[str, Tensor], meta: Mapping[str, Any]
) -> None:
    """Undo :func:`callback_state`: ``cb.load_state_dict(tensors, meta)`` for each callback saved."""
    for i, cb in enumerate(callbacks):
        if str(i) in meta:
            if not hasattr(cb, "load_state_dict"):
                raise TypeError(
                    f"callback {i} ({type(cb).__name__}) has saved state but no load_state_dict(tensors, meta)"
                )
            cb.load_state_dict(prefixed(tensors, f"cb{i}"), meta[str(i)])
