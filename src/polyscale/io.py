"""Model directories and atomic writes.

A saved model is a directory::

    config.json         {"format": "polyscale-model", "format_version": 1, "class": ..., "config": ..., "metadata": ...}
    model.safetensors   the network's state dict
    ema.safetensors     (optional) the EMA weights

Model classes follow one protocol: a class attribute ``config_class`` (a dataclass whose fields are the
constructor's keyword arguments) and an instance attribute ``config``. Loading never unpickles: weights come from
safetensors only, and pickle checkpoints (``.pt``, ``.pth``, ``.bin``, ``.ckpt``) are refused.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from polyscale.config import from_dict, to_dict

FORMAT = "polyscale-model"
FORMAT_VERSION = 1
PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".pkl", ".pickle")
_PICKLE_MAGIC = (b"\x80", b"PK\x03\x04")  # pickle protocol >= 2, or torch's zip container


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` via a temporary file in the same folder, fsync, then rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Text version of :func:`atomic_write_bytes` (UTF-8)."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_replace_dir(build, target: str | Path) -> Path:
    """Create directory ``target`` atomically: ``build(tmp_dir)`` fills a sibling temporary directory, which is
    then renamed into place. An existing ``target`` is moved aside first and deleted only after the new one is in
    place, so a crash leaves either the old or the new directory at ``target``, never a half-written one."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        build(tmp)
        for f in tmp.iterdir():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        old = None
        if target.exists():
            old = target.parent / f".{target.name}.old-{uuid.uuid4().hex[:8]}"
            os.replace(target, old)
        os.replace(tmp, target)
        _fsync_dir(target.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def _state_dict(obj: nn.Module | Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    state = obj.state_dict() if isinstance(obj, nn.Module) else dict(obj)
    # safetensors refuses shared storage and non-contiguous views: store independent contiguous copies.
    return {k: v.detach().cpu().contiguous().clone() for k, v in state.items()}


def save_pretrained(
    model: nn.Module,
    directory: str | Path,
    *,
    ema: nn.Module | Mapping[str, torch.Tensor] | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> Path:
    """Save ``model`` (and optionally EMA weights) as a model directory, atomically."""
    config = getattr(model, "config", None)
    if config is None or not dataclasses.is_dataclass(config):
        raise ValueError(
            f"{type(model).__name__} has no dataclass `config` attribute; save_pretrained needs one "
            "(its fields are the constructor's keyword arguments)"
        )
    header = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "class": type(model).__name__,
        "config": to_dict(config),
        "metadata": to_dict(dict(metadata or {})),
    }

    def build(tmp: Path) -> None:
        (tmp / "config.json").write_text(json.dumps(header, indent=2))
        save_file(_state_dict(model), str(tmp / "model.safetensors"))
        if ema is not None:
            save_file(_state_dict(ema), str(tmp / "ema.safetensors"))

    return atomic_replace_dir(build, directory)


def _refuse_pickle(path: Path) -> None:
    raise ValueError(
        f"{path} looks like a pickle checkpoint; polyscale refuses to unpickle files for safety. Convert it once, "
        f"in a trusted environment: safetensors.torch.save_file(torch.load(path, weights_only=True), "
        f"'model.safetensors'), and save a model directory with polyscale.io.save_pretrained"
    )


def _looks_pickled(path: Path) -> bool:
    if path.suffix.lower() in PICKLE_SUFFIXES:
        return True
    with open(path, "rb") as f:
        head = f.read(4)
    return any(head.startswith(m) for m in _PICKLE_MAGIC)


@dataclass
class ModelDir:
    """What ``config.json`` of a model directory says."""

    path: Path
    class_name: str
    config: dict[str, Any]
    metadata: dict[str, Any]

    @property
    def has_ema(self) -> bool:
        return (self.path / "ema.safetensors").is_file()


def read_model_dir(directory: str | Path) -> ModelDir:
    """Read and check ``config.json`` of a model directory (no weights are loaded)."""
    path = Path(directory)
    if not path.exists():
        raise FileNotFoundError(f"model directory {str(path)!r} does not exist")
    if path.is_file():
        if _looks_pickled(path):
            _refuse_pickle(path)
        raise ValueError(f"{path} is a file; expected a model directory with config.json and model.safetensors")
    cfg_path = path / "config.json"
    if not cfg_path.is_file():
        pickles = [p for p in path.iterdir() if p.suffix.lower() in PICKLE_SUFFIXES]
        if pickles:
            _refuse_pickle(pickles[0])
        raise FileNotFoundError(f"{path} has no config.json; expected a model directory saved by save_pretrained")
    try:
        header = json.loads(cfg_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{cfg_path} is not valid JSON ({err})") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        found = header.get("format") if isinstance(header, dict) else type(header).__name__
        raise ValueError(f"{cfg_path}: expected format {FORMAT!r}, found {found!r}")
    if header.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{cfg_path}: format_version {header.get('format_version')!r}, expected {FORMAT_VERSION}")
    for key in ("class", "config"):
        if key not in header:
            raise ValueError(f"{cfg_path}: missing key {key!r}")
    return ModelDir(path, header["class"], header["config"], header.get("metadata", {}))


def load_weights(path: str | Path, *, map_location: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Load a safetensors file; pickles are refused and corrupt files are reported by name."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file {str(path)!r} does not exist")
    if path.suffix != ".safetensors" and _looks_pickled(path):
        _refuse_pickle(path)
    try:
        return load_file(str(path), device=str(map_location))
    except (SafetensorError, OSError, ValueError) as err:
        raise ValueError(f"{path} is not a readable safetensors file (corrupt or truncated?): {err}") from None


def load_pretrained(
    directory: str | Path,
    classes: Mapping[str, type],
    *,
    ema: bool = False,
    map_location: str | torch.device = "cpu",
    strict: bool = True,
) -> nn.Module:
    """Rebuild the model saved in ``directory``; ``classes`` maps config.json's ``class`` to a model class."""
    info = read_model_dir(directory)
    if info.class_name not in classes:
        raise ValueError(f"{info.path}: unknown model class {info.class_name!r}; known: {sorted(classes)}")
    cls = classes[info.class_name]
    model = cls(**dataclasses.asdict(from_dict(cls.config_class, info.config)))
    weights = info.path / ("ema.safetensors" if ema else "model.safetensors")
    if ema and not weights.is_file():
        raise FileNotFoundError(f"{info.path} has no ema.safetensors; load with ema=False")
    state = load_weights(weights, map_location=map_location)
    try:
        model.load_state_dict(state, strict=strict)
    except RuntimeError as err:
        raise ValueError(f"{weights} does not fit the model described by config.json: {err}") from None
    return model.to(map_location)
