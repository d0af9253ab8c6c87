"""The dataset type every grid dataset returns, with its map back to the natural value range."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.utils.data import Dataset


class GridDataset(Dataset):
    """Channel-first samples ``(N, C, *spatial)`` scaled for diffusion, with optional integer labels.

    Items are dicts ``{"x": (C, *spatial)}`` plus ``{"class_labels": ()}`` when labelled, so the default collate
    gives ``{"x": (B, C, *spatial), "class_labels": (B,)}``. ``denormalize`` maps model space back to the natural
    range: ``x * scale + shift`` (e.g. [-1, 1] -> [0, 1] images with scale 0.5, shift 0.5).
    """

    def __init__(
        self, data: Tensor, labels: Tensor | None = None, *, num_classes: int | None = None,
        scale: float = 1.0, shift: float = 0.0, class_names: list[str] | None = None
    ) -> None:
        if data.ndim not in (3, 4, 5):
            raise ValueError(f"data must be (N, C, *spatial) with 1-3 spatial axes, got shape {tuple(data.shape)}")
        if labels is not None and labels.shape != (data.shape[0],):
            raise ValueError(f"labels must have shape ({data.shape[0]},), got {tuple(labels.shape)}")
        self.data = data.float().contiguous()
        self.labels = None if labels is None else labels.long()
        self.num_classes = num_classes if num_classes is not None or labels is None else int(labels.max()) + 1
        self.scale, self.shift = float(scale), float(shift)
        self.class_names = class_names

    def __len__(self) -> int:
        return self.data.shape[0]

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        item = {"x": self.data[index]}
        if self.labels is not None:
            item["class_labels"] = self.labels[index]
        return item

    @property
    def channels(self) -> int:
        return self.data.shape[1]

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        return tuple(self.data.shape[2:])

    @property
    def dims(self) -> int:
        return self.data.ndim - 2

    def denormalize(self, x: Tensor) -> Tensor:
        """Model space -> natural range."""
        return x * self.scale + self.shift

    def normalize(self, x: Tensor) -> Tensor:
        """Natural range -> model space."""
        return (x - self.shift) / self.scale

    def subset(self, index: Tensor) -> GridDataset:
        """A dataset of the items at ``index`` (same scaling)."""
        return GridDataset(
            self.data[index], None if self.labels is None else self.labels[index], num_classes=self.num_classes,
            scale=self.scale, shift=self.shift, class_names=self.class_names,
        )


def split_indices(n: int, split: str | None, *, seed: int, test_fraction: float = 0.2) -> Tensor:
    """Deterministic train/test split: a seeded permutation, the last ``test_fraction`` held out."""
    if split is None:
        return torch.arange(n)
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train', 'test' or None, got {split!r}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_test = int(round(n * test_fraction))
    return perm[: n - n_test].sort().values if split == "train" else perm[n - n_test :].sort().values
