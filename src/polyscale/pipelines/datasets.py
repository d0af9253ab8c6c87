"""Build the dataset an experiment asks for, and the map from model space back to display space."""

from __future__ import annotations

from collections.abc import Sized

from torch import Tensor
from torch.utils.data import Dataset

from polyscale import data as datasets
from polyscale.pipelines.experiment import DataConfig


def build_dataset(cfg: DataConfig, *, split: str | None = "train"):
    """The training (or held-out) dataset described by ``cfg``, wrapped in random crops when asked."""
    if cfg.kind not in datasets.DATASETS:  # the config validator restricts kind; this guards programmatic use
        raise ValueError(f"unknown data.kind {cfg.kind!r}")
    kind = datasets.DATASETS[cfg.kind]
    ds = kind.build(cfg, split)
    crops_per_sample = kind.crops_per_sample(cfg)
    if cfg.crop_size is not None:
        if not isinstance(ds, datasets.GridDataset):  # every built-in kind builds one
            raise TypeError(
                f"data.crop_size needs a GridDataset, but data.kind {cfg.kind!r} built a {type(ds).__name__}"
            )
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
    if kind in datasets.DATASETS and datasets.DATASETS[kind].unit_range:
        return ((x + 1) / 2).clamp(0, 1)
    return x
