"""scikit-learn's 8x8 handwritten digits (1797 images, 10 classes, shipped with the package), resized."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from polyscale.data.base import GridDataset, split_indices


def digits(*, size: int = 16, split: str | None = None, seed: int = 0) -> GridDataset:
    """Digits as ``(N, 1, size, size)`` in [-1, 1] (ink = +1), labels 0-9.

    Args:
        size: output edge length (8 keeps the original; 16 or 32 upsample bilinearly).
        split: ``"train"`` (80%), ``"test"`` (20%) or None (all), from a permutation seeded by ``seed``.
    """
    from sklearn.datasets import load_digits

    if size < 8:
        raise ValueError(f"size must be >= 8 (the digits are 8x8), got {size}")
    bunch = load_digits()
    images = torch.tensor(bunch.images, dtype=torch.float32)[:, None] / 16.0  # (1797, 1, 8, 8) in [0, 1]
    if size != 8:
        images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False).clamp(0, 1)
    labels = torch.tensor(bunch.target, dtype=torch.long)
    idx = split_indices(images.shape[0], split, seed=seed)
    return GridDataset(images[idx] * 2 - 1, labels[idx], num_classes=10, scale=0.5, shift=0.5)
