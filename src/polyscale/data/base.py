"""The dataset type every grid dataset returns, with its map back to the natural value range."""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.utils.data import Dataset


class GridDataset(Dataset):
    """Channel-first samples ``(N, C, *spatial)`` scaled for diffusion, with optional integer labels.

    Items are dicts ``{"x": (C, *spatial)}`` plus ``{"class_labels": ()}`` (int64) when labelled, so the
    default collate gives ``{"x": (B, C, *spatial), "class_labels": (B,)}``.

    The value map is affine: ``denormalize(x) = x * scale + shift`` takes model space to the natural range
    (e.g. [-1, 1] -> [0, 1] images with ``scale = shift = 0.5``) and ``normalize`` is its inverse.

    Args:
        data: ``(N, C, *spatial)`` with 1 to 3 spatial axes, already in model space; stored as float32.
        labels: ``(N,)`` integer class indices in ``[0, num_classes)``, or None.
        num_classes: number of classes (default ``labels.max() + 1``); None when unlabelled.
        scale, shift: the affine map to the natural range (``scale != 0``).
        class_names: one name per class (e.g. the sub-folders of an image folder).
    """

    def __init__(
        self,
        data: Tensor,
        labels: Tensor | None = None,
        *,
        num_classes: int | None = None,
        scale: float = 1.0,
        shift: float = 0.0,
        class_names: list[str] | None = None,
    ) -> None:
        if data.ndim not in (3, 4, 5):
            raise ValueError(
                f"data must be (N, C, *spatial) with 1-3 spatial axes, got shape {tuple(data.shape)}"
            )
        if data.shape[0] == 0:
            raise ValueError(f"data must hold at least one sample, got shape {tuple(data.shape)}")
        if not math.isfinite(scale) or scale == 0 or not math.isfinite(shift):
            raise ValueError(
                f"scale must be finite and non-zero and shift finite, got scale={scale}, shift={shift}"
            )
        self.data = data.to(torch.float32).contiguous()
        self.labels = None if labels is None else _check_labels(labels, data.shape[0], num_classes)
        if self.labels is None:
            if num_classes is not None or class_names is not None:
                raise ValueError("num_classes / class_names were given but labels is None")
            self.num_classes: int | None = None
        else:
            self.num_classes = num_classes if num_classes is not None else int(self.labels.max()) + 1
        if class_names is not None and len(class_names) != self.num_classes:
            raise ValueError(
                f"expected {self.num_classes} class_names (one per class), got {len(class_names)}"
            )
        self.scale, self.shift = float(scale), float(shift)
        self.class_names = class_names

    def __len__(self) -> int:
        return self.data.shape[0]

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        item = {"x": self.data[index]}  # (C, *spatial)
        if self.labels is not None:
            item["class_labels"] = self.labels[index]  # () int64
        return item

    @property
    def channels(self) -> int:
        """``C``."""
        return self.data.shape[1]

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        """``spatial`` of ``(N, C, *spatial)``."""
        return tuple(self.data.shape[2:])

    @property
    def dims(self) -> int:
        """Number of spatial axes (1, 2 or 3)."""
        return self.data.ndim - 2

    def denormalize(self, x: Tensor) -> Tensor:
        """Model space -> natural range: ``x * scale + shift`` (any shape)."""
        return x * self.scale + self.shift

    def normalize(self, x: Tensor) -> Tensor:
        """Natural range -> model space: ``(x - shift) / scale`` (any shape)."""
        return (x - self.shift) / self.scale

    def subset(self, index: Tensor) -> GridDataset:
        """A dataset of the items at ``index`` (``(M,)`` int64), with the same value map and classes."""
        return GridDataset(
            self.data[index],
            None if self.labels is None else self.labels[index],
            num_classes=self.num_classes,
            scale=self.scale,
            shift=self.shift,
            class_names=self.class_names,
        )

    def __repr__(self) -> str:
        classes = "" if self.num_classes is None else f", num_classes={self.num_classes}"
        return f"GridDataset(N={len(self)}, C={self.channels}, spatial={self.spatial_shape}{classes})"


def _check_labels(labels: Tensor, n: int, num_classes: int | None) -> Tensor:
    """Labels as ``(n,)`` int64 in ``[0, num_classes)``; float or out-of-range labels are errors, not cast."""
    if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
        raise ValueError(f"labels must be an integer tensor, got dtype {labels.dtype}")
    if labels.shape != (n,):
        raise ValueError(f"labels must have shape ({n},) (one per sample), got {tuple(labels.shape)}")
    labels = labels.to(torch.int64)
    if int(labels.min()) < 0:
        raise ValueError(f"labels must be >= 0 class indices, got minimum {int(labels.min())}")
    if num_classes is not None and int(labels.max()) >= num_classes:
        raise ValueError(f"labels must be < num_classes={num_classes}, got maximum {int(labels.max())}")
    return labels


def split_indices(n: int, split: str | None, *, seed: int, test_fraction: float = 0.2) -> Tensor:
    """Deterministic train/test split of ``range(n)``, sorted ``(M,)`` int64 indices.

    A permutation seeded by ``seed`` (its own generator, no global state) is cut so that the last
    ``round(n * test_fraction)`` positions are the test set; ``split=None`` returns all indices.
    The two splits are disjoint and together cover ``range(n)``.
    """
    if split is None:
        return torch.arange(n)
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train', 'test' or None, got {split!r}")
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_test = int(round(n * test_fraction))
    chosen = perm[: n - n_test] if split == "train" else perm[n - n_test :]
    return chosen.sort().values
