"""The ``--device`` names: each maps to a function returning the ``torch.device`` it means here."""

from __future__ import annotations

from collections.abc import Callable

import torch

from polyscale.registry import Registry

__all__ = ["DEVICES", "resolve_device"]


def _auto() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _cpu() -> torch.device:
    return torch.device("cpu")


def _cuda() -> torch.device:
    if not torch.cuda.is_available():
        raise ValueError("device='cuda' was requested but no CUDA device is available")
    return torch.device("cuda")


DEVICES: Registry[Callable[[], torch.device]] = Registry(
    "device", {"auto": _auto, "cpu": _cpu, "cuda": _cuda}
)


def resolve_device(name: str) -> torch.device:
    """The device ``name`` (a key of :data:`DEVICES`) stands for; ``ValueError`` for an unknown or absent one."""
    return DEVICES.lookup(name)()
