"""The adapter directory: what a LoRA adapter is (:class:`AdapterConfig`) and its files on disk.

    adapter_config.json        {"format": "polyscale-lora", "format_version": 1, "rank", "alpha", "dropout",
                                "target_patterns", "target_modules", "base": {"class", "config", "sha256",
                                "source"}, "peft_version", "metadata"}
    adapter_model.safetensors  the LoRA weights alone (peft's key names: ``<module>.lora_A.weight`` ...)

Written atomically (:func:`polyscale.atomic.atomic_replace_dir`); read without unpickling anything. Building,
saving and applying adapters: :mod:`polyscale.training.lora`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from polyscale.atomic import atomic_replace_dir
from polyscale.config import to_dict
from polyscale.pickles import is_pickle_file, pickle_error

__all__ = [
    "ADAPTER_CONFIG",
    "ADAPTER_WEIGHTS",
    "AdapterConfig",
    "AdapterInfo",
    "read_adapter",
    "write_adapter",
]

FORMAT, FORMAT_VERSION = "polyscale-lora", 1
ADAPTER_CONFIG, ADAPTER_WEIGHTS = "adapter_config.json", "adapter_model.safetensors"


@dataclass
class AdapterConfig:
    """What an adapter is: its rank, scale, dropout and which layers it adapts."""

    rank: int = 8  # r: the rank of each low-rank update (its trainable size grows linearly with it)
    alpha: float | None = None  # the update is scaled by alpha / rank; None = rank (a scale of 1)
    dropout: float = 0.0  # dropout on the adapter's input while training (0 = none)
    # glob patterns (fnmatch) on module names, e.g. "down.*" or "*.attn.*"; () = every Conv1d/2d/3d and Linear
    targets: tuple[str, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        if isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank < 1:
            raise ValueError(
                f"LoRA rank must be an integer >= 1, got {self.rank!r} (full fine-tuning trains every "
                "weight without an adapter)"
            )
        if self.alpha is None:
            self.alpha = float(self.rank)
        if not (isinstance(self.alpha, (int, float)) and math.isfinite(self.alpha) and self.alpha > 0):
            raise ValueError(f"LoRA alpha must be a finite number > 0, got {self.alpha!r}")
        self.alpha = float(self.alpha)
        if not (isinstance(self.dropout, (int, float)) and 0 <= self.dropout < 1):
            raise ValueError(f"LoRA dropout must be in [0, 1), got {self.dropout!r}")
        if isinstance(self.targets, str):
            raise ValueError(f"LoRA targets must be a list of patterns, got the string {self.targets!r}")
        self.targets = tuple(str(t) for t in self.targets)


def _check_replaceable(target: Path) -> None:
    if not target.is_dir():
        return
    contents = sorted(p.name for p in target.iterdir())
    if contents and (set(contents) - {ADAPTER_CONFIG, ADAPTER_WEIGHTS} or ADAPTER_CONFIG not in contents):
        raise ValueError(
            f"{target} exists and is not an adapter directory (it holds {contents[:8]}); saving would delete "
            "it. Choose a new directory or remove it first"
        )


def write_adapter(
    directory: str | Path, header: Mapping[str, Any], weights: Mapping[str, torch.Tensor]
) -> Path:
    """Write ``header`` (rank, alpha, ..., base; the format keys are added) and the LoRA ``weights`` as an adapter
    directory, atomically; an existing adapter directory there is replaced, anything else refused.

    Raises:
        ValueError: a header that is not JSON-serialisable, or a target directory holding something else.
    """
    try:
        text = json.dumps({"format": FORMAT, "format_version": FORMAT_VERSION, **to_dict(dict(header))},
                          indent=2) + "\n"  # fmt: skip
    except (TypeError, ValueError) as err:
        raise ValueError(f"adapter metadata must be JSON-serialisable: {err}") from None
    target = Path(directory)
    _check_replaceable(target)

    def build(tmp: Path) -> None:
        (tmp / ADAPTER_CONFIG).write_text(text, encoding="utf-8")
        save_file(dict(weights), str(tmp / ADAPTER_WEIGHTS), metadata={"format": "pt"})

    return atomic_replace_dir(build, target)


@dataclass
class AdapterInfo:
    """What an adapter directory's ``adapter_config.json`` says (no weights loaded)."""

    path: Path
    config: AdapterConfig  # rank, alpha, dropout, target patterns
    modules: list[str]  # the exact module names adapted
    base: dict[str, Any]  # class, config, sha256 and source of the base network
    metadata: dict[str, Any]


def read_adapter(directory: str | Path) -> AdapterInfo:
    """Read and check an adapter directory's ``adapter_config.json``.

    Raises:
        FileNotFoundError: the directory or its files are missing.
        ValueError: a file instead of a directory, pickle files, a model directory, or a config that is not a
            polyscale adapter's.
    """
    path = Path(directory)
    expected = f"an adapter directory ({ADAPTER_CONFIG} + {ADAPTER_WEIGHTS}, written by polyscale finetune)"
    if not path.exists():
        raise FileNotFoundError(f"adapter directory {str(path)!r} does not exist; expected {expected}")
    if not path.is_dir():
        raise (
            pickle_error(path)
            if is_pickle_file(path)
            else ValueError(f"{path} is a file; expected {expected}")
        )
    cfg_path = path / ADAPTER_CONFIG
    if not cfg_path.is_file():
        pickles = sorted(p for p in path.iterdir() if p.is_file() and is_pickle_file(p))
        if pickles:
            raise pickle_error(pickles[0])
        if (path / "config.json").is_file():
            raise ValueError(f"{path} is a model directory, not an adapter; expected {expected}")
        raise FileNotFoundError(f"{path} has no {ADAPTER_CONFIG}; expected {expected}")
    try:
        header = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(
            f"{cfg_path} is not valid JSON ({err}); expected a polyscale adapter config"
        ) from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        found = header.get("format") if isinstance(header, dict) else type(header).__name__
        raise ValueError(f'{cfg_path}: expected "format": {FORMAT!r}, found {found!r}')
    if header.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{cfg_path}: format_version {header.get('format_version')!r} is not supported; "
                         f"expected {FORMAT_VERSION}")  # fmt: skip
    try:
        config = AdapterConfig(rank=header["rank"], alpha=header["alpha"], dropout=header["dropout"],
                               targets=tuple(header.get("target_patterns", ())))  # fmt: skip
        modules, base = list(header["target_modules"]), dict(header["base"])
    except (KeyError, TypeError) as err:
        raise ValueError(
            f"{cfg_path}: missing or malformed entry {err}; expected a polyscale adapter config"
        ) from None
    return AdapterInfo(path, config, modules, base, dict(header.get("metadata") or {}))
