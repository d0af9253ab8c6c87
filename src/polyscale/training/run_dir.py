"""One run directory layout, shared by ``polyscale train``, ``grow sparse`` and ``grow depth`` (and offered to
graph runs)::

    <run>/config.yaml        the settings the run was started with (a validated config, as YAML)
    <run>/checkpoints/       step_{N:08d}/ training states (polyscale.training.checkpoint)
    <run>/model/             the final (or latest exported) model: config.json + model.safetensors (polyscale.io)
    <run>/metrics.csv        per-step metrics (train), or
    <run>/history.jsonl      one JSON line per evaluation / epoch (growth runs)
    <run>/summary.json       what the finished run reports

Resuming is refused when the requested settings differ from the saved ones (:func:`check_same_settings`),
except for keys the command declares harmless (how far to train, where progress bars go, the device).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from polyscale.atomic import atomic_write_text
from polyscale.config import yaml_dump, yaml_load
from polyscale.training.checkpoint import CHECKPOINTS, clear_checkpoints, latest_checkpoint

SETTINGS = "config.yaml"
MODEL = "model"
METRICS = "metrics.csv"
HISTORY = "history.jsonl"
SUMMARY = "summary.json"
__all__ = ["CHECKPOINTS", "HISTORY", "METRICS", "MODEL", "SETTINGS", "SUMMARY", "check_same_settings",
           "flatten", "prepare_run", "read_settings", "write_history", "write_settings", "write_summary"]  # fmt: skip


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
    saved: Mapping[str, Any], requested: Mapping[str, Any], *, ignore: Iterable[str] = ()
) -> None:
    """Refuse to resume a run whose settings changed.

    Compares the flattened settings (:func:`flatten`), skipping dotted keys in ``ignore``.

    Raises:
        ValueError: one line naming every differing key as ``key: old -> new`` (``<unset>`` where a side
            lacks it).
    """
    skip = set(ignore)
    old, new = flatten(saved), flatten(requested)
    missing = "<unset>"
    differ = sorted(
        k for k in set(old) | set(new) if k not in skip and old.get(k, missing) != new.get(k, missing)
    )
    if differ:
        detail = ", ".join(f"{k}: {old.get(k, missing)!r} -> {new.get(k, missing)!r}" for k in differ)
        raise ValueError(
            f"settings differ from the saved run's ({detail}); resume with the same settings, or start over "
            "(--no-resume / resume=False) or use another output directory"
        )


def write_settings(run_dir: str | Path, settings: Mapping[str, Any]) -> Path:
    """``<run>/config.yaml``, atomically."""
    return atomic_write_text(Path(run_dir) / SETTINGS, yaml_dump(dict(settings), sort_keys=False))


def read_settings(run_dir: str | Path) -> dict[str, Any] | None:
    """The settings in ``<run>/config.yaml``, or None where there is none."""
    path = Path(run_dir) / SETTINGS
    return yaml_load(path.read_text(encoding="utf-8")) if path.is_file() else None


def prepare_run(
    run_dir: str | Path, settings: Mapping[str, Any], *, resume: bool, ignore: Iterable[str] = ()
) -> Path | None:
    """Start or continue a run in ``run_dir``; returns the checkpoint to resume from (None: a fresh start).

    With ``resume`` and a checkpoint present, the saved settings must equal ``settings`` (except ``ignore``):
    else :func:`check_same_settings` raises before anything is written. A fresh start removes earlier
    checkpoints. Either way ``config.yaml`` then holds ``settings``.
    """
    run_dir = Path(run_dir)
    last = latest_checkpoint(run_dir) if resume else None
    if last is not None and (saved := read_settings(run_dir)) is not None:
        check_same_settings(saved, settings, ignore=ignore)
    if last is None:
        clear_checkpoints(run_dir)
    write_settings(run_dir, settings)
    return last


def write_history(run_dir: str | Path, rows: Iterable[Mapping[str, Any]]) -> Path:
    """``<run>/history.jsonl``: one JSON object per line, atomically."""
    return atomic_write_text(Path(run_dir) / HISTORY, "".join(json.dumps(dict(r)) + "\n" for r in rows))


def write_summary(run_dir: str | Path, summary: Mapping[str, Any]) -> Path:
    """``<run>/summary.json``, atomically."""
    return atomic_write_text(Path(run_dir) / SUMMARY, json.dumps(dict(summary), indent=2) + "\n")
