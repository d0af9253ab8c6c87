"""scikit-learn's 8x8 handwritten digits (1797 images, 10 classes, shipped with the package), resized."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from polyscale.data.base import GridDataset, split_indices

NUM_DIGITS = 1797  # images in sklearn.datasets.load_digits


def digits(
    *, size: int = 16, split: str | None = None, seed: int = 0, test_fraction: float = 0.2
) -> GridDataset:
    """The digits as ``(N, 1, size, size)`` in [-1, 1] (ink = +1, background = -1), labels 0-9.

    The 8x8 images (values 0..16) are divided by 16 and resized with bilinear interpolation
    (``F.interpolate(..., antialias=True)``, which only low-pass filters when shrinking), clamped to [0, 1]
    and mapped to [-1, 1]; ``denormalize`` returns [0, 1].

    Args:
        size: output edge length (8 keeps the originals; 16 or 32 are the usual choices), at least 4.
        split: ``"train"``, ``"test"`` or None (all 1797); see :func:`polyscale.data.split_indices`.
        seed: seed of the split's permutation (the same seed always gives the same split).
        test_fraction: share of the images held out as ``"test"``.
    """
    from sklearn.datasets import load_digits

    if size < 4:
        raise ValueError(f"size must be >= 4 pixels, got {size}")
    bunch = load_digits()
    images = torch.tensor(bunch.images, dtype=torch.float32)[:, None] / 16.0  # (1797, 1, 8, 8) in [0, 1]
    if size != 8:
        images = F.interpolate(
            images, size=(size, size), mode="bilinear", align_corners=False, antialias=True
        )
        images = images.clamp(0, 1)  # (1797, 1, size, size)
    labels = torch.tensor(bunch.target, dtype=torch.long)
    idx = split_indices(images.shape[0], split, seed=seed, test_fraction=test_fraction)
    return GridDataset(images[idx] * 2 - 1, labels[idx], num_classes=10, scale=0.5, shift=0.5)
