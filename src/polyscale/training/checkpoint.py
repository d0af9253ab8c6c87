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

**Damage.** The last file written into a checkpoint is ``manifest.json``: the size and SHA-256 of every other
file. :func:`latest_intact_checkpoint` checks it and falls back to the newest checkpoint that is intact,
saying which one it skipped and why (a truncated or altered file, a missing one).

**Starting over.** :func:`clear_checkpoints` does not delete: it moves the checkpoints into
``<run>/.previous-run/``, which :func:`prune_checkpoints` deletes once the new run has a checkpoint of its
own. A run stopped before that point therefore still has the old one.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from polyscale.atomic import atomic_replace_dir, fsync_dir

PREFIX = "step_"
CHECKPOINTS = "checkpoints"
TENSORS_FILE = "state.safetensors"
META_FILE = "state.json"
MANIFEST_FILE = "manifest.json"
PREVIOUS = ".previous-run"  # <run>/.previous-run/: what a fresh start set aside, until its first checkpoint
_STEP_DIR = re.compile(r"^step_\d+$")


def checkpoint_dirs(output_dir: str | Path) -> list[Path]:
    """Complete checkpoints under ``output_dir/checkpoints``, oldest first (temporary dirs are not listed)."""
    folder = Path(output_dir) / CHECKPOINTS
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_dir() and _STEP_DIR.match(p.name))


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_manifest(directory: str | Path) -> Path:
    """``manifest.json`` of a checkpoint being built: ``{file: [size, sha256]}`` of every file in it (call
    last, once every other file is written)."""
    directory = Path(directory)
    files = sorted(p for p in directory.rglob("*") if p.is_file() and p.name != MANIFEST_FILE)
    entries = {p.relative_to(directory).as_posix(): [p.stat().st_size, _sha256(p)] for p in files}
    path = directory / MANIFEST_FILE
    path.write_text(json.dumps({"files": entries}, indent=1) + "\n", encoding="utf-8")
    return path


def checkpoint_damage(path: str | Path) -> str | None:
    """Why checkpoint ``path`` cannot be trusted (one phrase), or None when it is intact.

    With a manifest every file's size and SHA-256 are checked; a checkpoint written before manifests only
    has its ``state.json`` parsed and its safetensors headers read.
    """
    path = Path(path)
    manifest = path / MANIFEST_FILE
    if not manifest.is_file():
        return _damage_without_manifest(path)
    try:
        entries = json.loads(manifest.read_text(encoding="utf-8"))["files"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        return f"{MANIFEST_FILE} is unreadable ({type(err).__name__})"
    for name, (size, digest) in sorted(entries.items()):
        file = path / name
        if not file.is_file():
            return f"{name} is missing"
        if file.stat().st_size != size:
            return f"{name} has {file.stat().st_size} bytes, expected {size} (truncated or altered)"
        if _sha256(file) != digest:
            return f"{name} does not match its checksum (altered or damaged)"
    return None


def _damage_without_manifest(path: Path) -> str | None:
    from safetensors import safe_open

    for name in (TENSORS_FILE, META_FILE):
        if not (path / name).is_file():
            return f"{name} is missing"
    try:
        json.loads((path / META_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        return f"{META_FILE} is not valid JSON ({err})"
    for file in sorted(path.glob("*.safetensors")):
        try:
            with safe_open(str(file), framework="pt") as f:
                for key in f.keys():
                    f.get_slice(key)
        except Exception as err:  # safetensors raises its own error type for a truncated header
            return f"{file.name} is unreadable ({' '.join(str(err).split())})"
    return None


def latest_intact_checkpoint(
    output_dir: str | Path, *, notify: Callable[[str], None] | None = None
) -> Path | None:
    """The newest checkpoint under ``output_dir/checkpoints`` that :func:`checkpoint_damage` finds intact.

    Each damaged newer one is renamed ``damaged-step_N`` (kept for inspection, no longer listed) and reported
    through ``notify`` (one sentence naming it, why, and which checkpoint is used instead).
    """
    found = checkpoint_dirs(output_dir)
    for i in range(len(found) - 1, -1, -1):
        reason = checkpoint_damage(found[i])
        if reason is None:
            return found[i]
        kept = found[i].with_name(f"damaged-{found[i].name}")
        if kept.exists():
            shutil.rmtree(kept, ignore_errors=True)
        os.replace(found[i], kept)
        fallback = f"resuming from {found[i - 1].name}" if i > 0 else "no intact checkpoint is left"
        if notify is not None:
            notify(f"checkpoint {found[i]} is damaged: {reason}; moved it to {kept.name}, {fallback}")
    return None


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    """The most recent complete checkpoint under ``output_dir/checkpoints``, or None."""
    found = checkpoint_dirs(output_dir)
    return found[-1] if found else None


def checkpoint_path(output_dir: str | Path, step: int) -> Path:
    """``output_dir/checkpoints/step_{step:08d}``."""
    return Path(output_dir) / CHECKPOINTS / f"{PREFIX}{step:08d}"


def set_aside(output_dir: str | Path, names: Sequence[str]) -> list[str]:
    """Move ``output_dir/<name>`` for each of ``names`` into ``output_dir/.previous-run/`` (kept until the new
    run's first checkpoint). Inside ``checkpoints/`` only our ``step_N`` folders move; anything else there is
    left where it is. Where a ``.previous-run`` already exists (an earlier fresh start that never reached a
    checkpoint) it is kept and the newer leftovers of ours are deleted instead. Returns the names moved."""
    output_dir = Path(output_dir)
    previous = output_dir / PREVIOUS
    keep_old = previous.is_dir()
    moved: list[str] = []
    for name in names:
        src = output_dir / name
        if name == CHECKPOINTS:
            entries = checkpoint_dirs(output_dir)
            for entry in entries:
                if keep_old:
                    shutil.rmtree(entry, ignore_errors=True)
                else:
                    (previous / CHECKPOINTS).mkdir(parents=True, exist_ok=True)
                    os.replace(entry, previous / CHECKPOINTS / entry.name)
            if entries:
                moved.append(name)
            if src.is_dir() and not any(src.iterdir()):
                src.rmdir()
        elif src.exists() or src.is_symlink():
            if keep_old:
                shutil.rmtree(src) if src.is_dir() and not src.is_symlink() else src.unlink()
            else:
                previous.mkdir(exist_ok=True)
                os.replace(src, previous / name)
                moved.append(name)
    fsync_dir(output_dir)
    return moved


def clear_checkpoints(output_dir: str | Path) -> None:
    """Start ``output_dir`` afresh without losing its checkpoints yet: :func:`set_aside` of ``checkpoints``."""
    set_aside(output_dir, [CHECKPOINTS])


def discard_previous(output_dir: str | Path) -> None:
    """Delete ``output_dir/.previous-run`` (the new run has a checkpoint of its own)."""
    shutil.rmtree(Path(output_dir) / PREVIOUS, ignore_errors=True)


def prune_checkpoints(output_dir: str | Path, keep: int) -> None:
    """Delete all but the ``keep`` (>= 1) newest complete checkpoints, and what a fresh start set aside
    (:func:`set_aside`): call after a new checkpoint is in place."""
    if keep < 1:
        raise ValueError(f"keep must be >= 1, got {keep}")
    for stale in checkpoint_dirs(output_dir)[:-keep]:
        shutil.rmtree(stale, ignore_errors=True)
    discard_previous(output_dir)


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
        write_manifest(tmp)

    atomic_replace_dir(build, final)
    prune_checkpoints(output_dir, keep)
    return final


def load_training_state(path: str | Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """``(tensors, meta)`` of the checkpoint directory ``path`` (safetensors and JSON only).

    Raises:
        ValueError: ``path`` lacks ``state.safetensors`` or ``state.json`` (names what it holds), or one of
            them cannot be read (names the file).
    """
    path = Path(path)
    for name in (TENSORS_FILE, META_FILE):
        if not (path / name).is_file():
            found = sorted(p.name for p in path.iterdir()) if path.is_dir() else "nothing"
            raise ValueError(f"checkpoint {path} is incomplete: expected {name}, found {found}")
    try:
        tensors = load_file(str(path / TENSORS_FILE))
    except Exception as err:  # safetensors' own error type for a damaged file
        raise ValueError(f"{path / TENSORS_FILE} is damaged: {' '.join(str(err).split())}") from err
    try:
        meta = json.loads((path / META_FILE).read_text(encoding="utf-8"))
    except ValueError as err:
        raise ValueError(f"{path / META_FILE} is not valid JSON: {err}") from err
    return tensors, meta


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
