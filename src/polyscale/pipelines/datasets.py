"""Build the dataset an experiment asks for, and the map from model space back to display space."""

from __future__ import annotations

from collections.abc import Sized

import torch
from torch import Tensor
from torch.utils.data import Dataset

from polyscale import data as datasets
from polyscale.pipelines.experiment import DataConfig


def build_dataset(cfg: DataConfig, *, split: str | None = "train"):
    """The training (or held-out) dataset described by ``cfg``, wrapped in random crops when asked."""
    ds: datasets.GridDataset | datasets.RandomCrops
    crops_per_sample = 1  # a texture is one image: every epoch draws data.num_samples windows of it
    if cfg.kind == "digits":
        ds = datasets.digits(size=cfg.size, split=split, seed=cfg.seed)
    elif cfg.kind == "mnist1d":
        ds = datasets.mnist1d(num_samples=cfg.num_samples, seed=cfg.seed, split=split)
    elif cfg.kind == "porous":
        # Held-out porous media come from a different seed, so "test" never repeats a training sample.
        seed = cfg.seed if split != "test" else cfg.seed + 1_000_003
        generator = torch.Generator().manual_seed(seed)
        ds = datasets.porous_media(
            cfg.num_samples or 256,
            size=cfg.size,
            dims=cfg.dims,
            porosity=cfg.porosity,
            correlation_length=cfg.correlation_length,
            generator=generator,
            stationary=cfg.stationary,
        )
    elif cfg.kind == "texture":
        if cfg.crop_size is None:
            raise ValueError("data.kind='texture' needs data.crop_size (the model trains on random crops)")
        ds = datasets.texture(cfg.image, split=split, downsample=cfg.downsample)
        crops_per_sample = cfg.num_samples or 1024
    elif cfg.kind == "image_folder":
        if cfg.path is None:
            raise ValueError("data.kind='image_folder' needs data.path (a folder of images)")
        ds = datasets.image_folder(cfg.path, size=cfg.size, channels=cfg.channels)
    elif cfg.kind == "array":
        if cfg.path is None:
            raise ValueError("data.kind='array' needs data.path (a .npy or .npz file)")
        ds = datasets.array_file(cfg.path)
    else:  # the config validator already restricts kind; this guards programmatic use
        raise ValueError(f"unknown data.kind {cfg.kind!r}")
    if cfg.crop_size is not None:
        ds = datasets.RandomCrops(ds, cfg.crop_size, seed=cfg.seed, crops_per_sample=crops_per_sample)
    return ds


def texture_band_height(cfg: DataConfig) -> int:
    """Rows of the held-out band of a texture experiment: the largest real crop it offers."""
    return datasets.texture(cfg.image, split="test", downsample=cfg.downsample).spatial_shape[0]


class WithoutLabels(Dataset):
    """View of a dict dataset without its ``class_labels`` (to train an unconditional model on labelled data)."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        if not isinstance(self.dataset, Sized):  # Dataset does not declare __len__
            raise TypeError(f"object of type {type(self.dataset).__name__!r} has no len()")
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        item = dict(self.dataset[index])
        item.pop("class_labels", None)
        return item

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)


def to_display(x: Tensor, kind: str) -> Tensor:
    """Map model-space samples to what a person looks at: [0, 1] for images and media, raw for signals."""
    if kind in ("digits", "porous", "texture", "image_folder", "array"):
        return ((x + 1) / 2).clamp(0, 1)
    return x
