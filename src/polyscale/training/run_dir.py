"""One run directory layout, shared by ``polyscale train``, ``grow sparse`` and ``grow depth`` (and offered to
graph runs)::

    <run>/config.yaml        the settings the run was started with (a validated config, as YAML)
    <run>/checkpoints/       step_{N:08d}/ training states (polyscale.training.checkpoint)
    <run>/model/             the final (or latest exported) model: config.json + model.safetensors (polyscale.io)
    <run>/metrics.csv        per-step metrics (train), or
    <run>/history.jsonl      one JSON line per evaluation / epoch (growth runs)
    <run>/summary.json       what the finished run reports

Resuming is refused when the requested settings differ from the saved ones (:func:`check_same_settings`),
except for keys the command declares harmless (how far to train, where progress bars go, the device) and
keys the user names with ``--allow-change`` among those the command can change safely.

:func:`open_run` is how every command enters a run directory. While the run lasts it holds the directory's
lock (:mod:`polyscale.training.run_lock`: a second run on it is refused at once). Before anything is
written it

- refuses a directory holding files of those names that polyscale did not write (a ``.polyscale-run``
  marker tells ours; other files there are never touched);
- tidies what a killed run left: temporary copies are deleted, a complete ``.old`` copy is put back
  (:func:`polyscale.atomic.recover_siblings`), and a fresh start that stopped before its first checkpoint
  gives the earlier run back (``.previous-run/``);
- picks the newest intact checkpoint (:func:`~polyscale.training.checkpoint.latest_intact_checkpoint`);
- on a fresh start moves the earlier run's files aside into ``.previous-run/``, deleted only once the new
  run has written its first checkpoint.

Each of these steps says what it did on stderr.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from polyscale.atomic import atomic_write_text, recover_siblings
from polyscale.config import yaml_dump, yaml_load
from polyscale.training.checkpoint import (
    CHECKPOINTS,
    PREVIOUS,
    checkpoint_dirs,
    discard_previous,
    latest_intact_checkpoint,
    set_aside,
)
from polyscale.training.run_lock import LOCK_NAME, RunLock

SETTINGS = "config.yaml"
MODEL = "model"
METRICS = "metrics.csv"
HISTORY = "history.jsonl"
SUMMARY = "summary.json"
MARKER = ".polyscale-run"  # present in every run directory polyscale started
# what polyscale writes at the top of a run directory (and so may replace or set aside there)
OWNED = (SETTINGS, CHECKPOINTS, MODEL, METRICS, HISTORY, SUMMARY, "tb", "snapshots.safetensors")
__all__ = ["CHECKPOINTS", "HISTORY", "MARKER", "METRICS", "MODEL", "OWNED", "SETTINGS", "SUMMARY", "Run",
           "check_same_settings", "flatten", "open_run", "read_settings", "write_history",
           "write_settings", "write_summary"]  # fmt: skip


def flatten(settings: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mappings as one level of dotted keys: ``{"train": {"lr": 1}} -> {"train.lr": 1}``; tuples
    become lists so that YAML-read and in-memory settings compare equal."""
    out: dict[str, Any] = {}
    for key, value in settings.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, name + "."))
        else:
            out[name] = json.loads(json.dumps(value)) if value is not None else None
    return out


def check_same_settings(
    saved: Mapping[str, Any],
    requested: Mapping[str, Any],
    *,
    ignore: Iterable[str] = (),
    changeable: Sequence[str] = (),
) -> None:
    """Refuse to resume a run whose settings changed.

    Compares the flattened settings (:func:`flatten`), skipping dotted keys in ``ignore``.

    Raises:
        ValueError: one line naming every differing key as ``key: old -> new`` (``<unset>`` where a side
            lacks it), and which of them ``--allow-change`` accepts (``changeable``).
    """
    skip = set(ignore)
    old, new = flatten(saved), flatten(requested)
    missing = "<unset>"
    differ = sorted(
        k for k in set(old) | set(new) if k not in skip and old.get(k, missing) != new.get(k, missing)
    )
    if differ:
        detail = ", ".join(f"{k}: {old.get(k, missing)!r} -> {new.get(k, missing)!r}" for k in differ)
        allowed = [k for k in differ if k in changeable]
        hint = (
            f", or accept the change with {' '.join('--allow-change ' + k for k in allowed)}"
            if allowed
            else ""
        )
        raise ValueError(
            f"settings differ from the saved run's ({detail}); resume with the same settings{hint}, or start "
            "over (--no-resume / resume=False) or use another output directory"
        )


def check_allow_change(
    allow_change: Iterable[str], changeable: Sequence[str], settings: Mapping[str, Any]
) -> tuple[str, ...]:
    """The keys of ``allow_change`` after checking each names a setting the command may change on resume.

    Raises:
        ValueError: a key that is not a setting, or one whose change the run could not honour.
    """
    keys = tuple(allow_change)
    known = flatten(settings)
    for key in keys:
        if key not in known:
            from polyscale.config import suggest

            match = suggest(key, list(known))
            raise ValueError(
                f"--allow-change {key}: no such setting" + (f"; did you mean {match}?" if match else "")
            )
        if key not in changeable:
            raise ValueError(
                f"--allow-change {key}: this setting cannot change when a run resumes (the saved state "
                f"depends on it); settings that may: {', '.join(changeable) or 'none'}"
            )
    return keys


def write_settings(run_dir: str | Path, settings: Mapping[str, Any]) -> Path:
    """``<run>/config.yaml``, atomically."""
    return atomic_write_text(Path(run_dir) / SETTINGS, yaml_dump(dict(settings), sort_keys=False))


def read_settings(run_dir: str | Path) -> dict[str, Any] | None:
    """The settings in ``<run>/config.yaml``, or None where there is none."""
    path = Path(run_dir) / SETTINGS
    return yaml_load(path.read_text(encoding="utf-8")) if path.is_file() else None


def notice(message: str) -> None:
    """What a command did to keep a run directory whole, one line on stderr."""
    print(f"polyscale: {message}", file=sys.stderr)


def _ours(run_dir: Path) -> bool:
    """Whether polyscale started ``run_dir``: the marker, or (runs from before the marker) a ``config.yaml``
    mapping beside checkpoints or a model of ours."""
    if (run_dir / MARKER).is_file():
        return True
    try:
        saved = read_settings(run_dir)
    except (OSError, ValueError):
        return False
    return isinstance(saved, dict) and (
        bool(checkpoint_dirs(run_dir)) or (run_dir / MODEL / "config.json").is_file()
    )


def check_foreign(run_dir: str | Path, names: Sequence[str] = OWNED) -> None:
    """Refuse a directory that holds entries named like ours (``names``) that polyscale did not write.

    Raises:
        ValueError: names the directory and those entries.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir() or _ours(run_dir):
        return
    foreign = [n for n in names if (run_dir / n).exists() or (run_dir / n).is_symlink()]
    if foreign:
        raise ValueError(
            f"output directory {run_dir} already holds {', '.join(foreign)}, which polyscale did not write and "
            "would replace; move them away or choose another output directory"
        )


def check_run_dir(run_dir: str | Path) -> Path:
    """``run_dir`` as a directory polyscale can write into, created if missing.

    Raises:
        ValueError: it is a file, or cannot be created or written (names the path and why).
    """
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise ValueError(f"output directory {run_dir} is a file, expected a directory")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ValueError(f"cannot create output directory {run_dir}: {err.strerror or err}") from err
    if not os.access(run_dir, os.W_OK | os.X_OK):
        raise ValueError(f"output directory {run_dir} is not writable (permission denied)")
    return run_dir


def _tidy(run_dir: Path, *, resume: bool, say: Callable[[str], None]) -> None:
    """Undo what a killed run left (module docstring)."""
    for folder in (run_dir, run_dir / CHECKPOINTS):
        for line in recover_siblings(folder):
            say(line)
    for tmp in sorted(
        (run_dir / CHECKPOINTS).glob(".tmp-step_*")
    ):  # the diffusion loop's checkpoint in progress
        shutil.rmtree(tmp, ignore_errors=True)
        say(f"removed {tmp} (a checkpoint whose writing was interrupted)")
    previous = run_dir / PREVIOUS
    if not previous.is_dir():
        return
    if checkpoint_dirs(run_dir):  # the new run reached its first checkpoint: the old one may go
        discard_previous(run_dir)
    elif resume:
        for entry in sorted(previous.iterdir()):
            target = run_dir / entry.name
            if entry.name == CHECKPOINTS:
                target.mkdir(exist_ok=True)
                for step in sorted(entry.iterdir()):
                    os.replace(step, target / step.name)
                continue
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            os.replace(entry, target)
        discard_previous(run_dir)
        say(
            f"restored the earlier run in {run_dir}: a fresh start (--no-resume) set it aside and stopped before "
            "writing its first checkpoint"
        )


@dataclass
class Run:
    """A run directory entered with :func:`open_run`."""

    path: Path
    checkpoint: Path | None  # the intact checkpoint to resume from; None: a fresh start


@contextlib.contextmanager
def open_run(
    run_dir: str | Path,
    settings: Mapping[str, Any],
    *,
    resume: bool,
    ignore: Iterable[str] = (),
    allow_change: Iterable[str] = (),
    changeable: Sequence[str] = (),
    command: str = "",
    names: Sequence[str] = OWNED,
    say: Callable[[str], None] = notice,
) -> Iterator[Run]:
    """Enter ``run_dir`` for a run with ``settings`` (see the module docstring); holds its lock until the
    block ends.

    With ``resume`` and an intact checkpoint, the saved settings must equal ``settings`` except ``ignore``
    and the ``allow_change`` keys (each must be in ``changeable``). Otherwise the run starts afresh: the
    earlier run's files (``names``) are set aside until the first new checkpoint. Either way ``config.yaml``
    then holds ``settings``.

    Raises:
        ValueError: the directory cannot be written, holds foreign files, is locked by another run, an
            ``allow_change`` key is unknown or unsafe, or the settings differ (named).
    """
    run_dir = check_run_dir(run_dir)
    allowed = check_allow_change(allow_change, changeable, settings)
    with RunLock(run_dir, command=command, notify=say):
        check_foreign(run_dir, names)
        _tidy(run_dir, resume=resume, say=say)
        last = latest_intact_checkpoint(run_dir, notify=say) if resume else None
        if last is not None and (saved := read_settings(run_dir)) is not None:
            check_same_settings(saved, settings, ignore=(*ignore, *allowed), changeable=changeable)
        if last is None:
            moved = set_aside(run_dir, [n for n in names if n not in (LOCK_NAME, MARKER)])
            if moved:
                say(f"starting afresh in {run_dir}; the earlier run's {', '.join(moved)} are kept in "
                    f"{PREVIOUS}/ until the new run's first checkpoint")  # fmt: skip
        if not (run_dir / MARKER).is_file():
            atomic_write_text(run_dir / MARKER, json.dumps({"format": "polyscale-run", "version": 1}) + "\n")
        write_settings(run_dir, settings)
        yield Run(path=run_dir, checkpoint=last)


def write_history(run_dir: str | Path, rows: Iterable[Mapping[str, Any]]) -> Path:
    """``<run>/history.jsonl``: one JSON object per line, atomically."""
    return atomic_write_text(Path(run_dir) / HISTORY, "".join(json.dumps(dict(r)) + "\n" for r in rows))


def write_summary(run_dir: str | Path, summary: Mapping[str, Any]) -> Path:
    """``<run>/summary.json``, atomically."""
    return atomic_write_text(Path(run_dir) / SUMMARY, json.dumps(dict(summary), indent=2) + "\n")
