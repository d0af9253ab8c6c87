"""The grid data kinds an experiment's ``data.kind`` names: one builder each, from the ``data`` section.

A builder takes the experiment's ``DataConfig`` and a split (``"train"``, ``"test"``, ``None``) and returns
the dataset before any random cropping. :data:`DATASETS` maps ``data.kind`` to a :class:`DataKind`: the
builder, whether samples live in ``[-1, 1]`` (pictures and media, shown as ``[0, 1]``) or are raw signals,
and how many crops one sample gives per epoch when ``data.crop_size`` is set.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch.utils.data import Dataset

from polyscale.data.arrays import array_file
from polyscale.data.base import GridDataset
from polyscale.data.digits import digits
from polyscale.data.images import image_folder
from polyscale.data.mnist1d import mnist1d
from polyscale.data.porous import porous_media
from polyscale.data.texture import texture
from polyscale.registry import Registry

if TYPE_CHECKING:
    from polyscale.data.config import DataConfig

__all__ = ["DATASETS", "DataKind"]


def _one(cfg: DataConfig) -> int:
    return 1


@dataclass(frozen=True)
class DataKind:
    """How to build one ``data.kind`` (module docstring)."""

    build: Callable[[DataConfig, str | None], Dataset]
    unit_range: bool = True  # samples in [-1, 1], displayed as [0, 1]; False: raw signals
    crops_per_sample: Callable[[DataConfig], int] = _one


def _digits(cfg: DataConfig, split: str | None) -> Dataset:
    return digits(size=cfg.size, split=split, seed=cfg.seed)


def _mnist1d(cfg: DataConfig, split: str | None) -> Dataset:
    return mnist1d(num_samples=cfg.num_samples, seed=cfg.seed, split=split)


def _porous(cfg: DataConfig, split: str | None) -> Dataset:
    # Held-out porous media come from a different seed, so "test" never repeats a training sample.
    seed = cfg.seed if split != "test" else cfg.seed + 1_000_003
    if cfg.porosity_classes:
        return _porous_classes(cfg, seed)
    return porous_media(
        cfg.num_samples or 256,
        size=cfg.size,
        dims=cfg.dims,
        porosity=cfg.porosity,
        correlation_length=cfg.correlation_length,
        generator=torch.Generator().manual_seed(seed),
        stationary=cfg.stationary,
    )


def _porous_classes(cfg: DataConfig, seed: int) -> GridDataset:
    """Class ``k`` = volumes of exactly the pore fraction ``cfg.porosity_classes[k]`` (each thresholded at its own
    quantile), ``num_samples`` split evenly among the classes."""
    generator = torch.Generator().manual_seed(seed)
    per_class = max(1, (cfg.num_samples or 256) // len(cfg.porosity_classes))
    parts = [
        porous_media(per_class, size=cfg.size, dims=cfg.dims, porosity=p,
                     correlation_length=cfg.correlation_length, generator=generator).data
        for p in cfg.porosity_classes
    ]  # fmt: skip
    labels = torch.arange(len(parts)).repeat_interleave(per_class)  # (N,) class of each volume
    names = [f"porosity {p:g}" for p in cfg.porosity_classes]
    return GridDataset(
        torch.cat(parts), labels, num_classes=len(parts), scale=0.5, shift=0.5, class_names=names
    )


def _texture(cfg: DataConfig, split: str | None) -> Dataset:
    if cfg.crop_size is None:
        raise ValueError("data.kind='texture' needs data.crop_size (the model trains on random crops)")
    return texture(cfg.image, split=split, downsample=cfg.downsample)


def _texture_crops(cfg: DataConfig) -> int:
    return cfg.num_samples or 1024  # a texture is one image: every epoch draws data.num_samples windows of it


def _image_folder(cfg: DataConfig, split: str | None) -> Dataset:
    if cfg.path is None:
        raise ValueError("data.kind='image_folder' needs data.path (a folder of images)")
    return image_folder(cfg.path, size=cfg.size, channels=cfg.channels)


def _array(cfg: DataConfig, split: str | None) -> Dataset:
    if cfg.path is None:
        raise ValueError("data.kind='array' needs data.path (a .npy or .npz file)")
    return array_file(cfg.path)


DATASETS: Registry[DataKind] = Registry(
    "data.kind",
    {
        "digits": DataKind(_digits),
        "mnist1d": DataKind(_mnist1d, unit_range=False),
        "porous": DataKind(_porous),
        "texture": DataKind(_texture, crops_per_sample=_texture_crops),
        "image_folder": DataKind(_image_folder),
        "array": DataKind(_array),
    },
)
