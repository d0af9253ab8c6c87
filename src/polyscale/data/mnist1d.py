"""MNIST-1D (Greydanus 2020): procedural 1D signals of 10 classes from the ``mnist1d`` package, built offline."""

from __future__ import annotations

import random

import numpy as np
import torch

from polyscale.data.base import GridDataset


def mnist1d(
    *, num_samples: int | None = None, seed: int = 0, split: str | None = None, length: int = 40
) -> GridDataset:
    """MNIST-1D as ``(N, 1, length)``, standardised by the generator (mean 0, std 1), labels 0-9.

    Uses ``mnist1d.data.make_dataset`` (never its download path). The generator seeds numpy's and Python's global
    RNGs; their states are restored afterwards so calling this has no side effects.

    Args:
        num_samples: total number generated (default 5000, the package's default); 80% train / 20% test.
        split: ``"train"``, ``"test"`` or None (both).
        length: final sequence length (40 is the benchmark's; divisible by 8 for a 4-level U-Net).
    """
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.num_samples = num_samples or args.num_samples
    args.seed = seed
    args.final_seq_length = length
    np_state, py_state = np.random.get_state(), random.getstate()
    try:
        raw = make_dataset(args)
    finally:
        np.random.set_state(np_state)
        random.setstate(py_state)
    if split not in (None, "train", "test"):
        raise ValueError(f"split must be 'train', 'test' or None, got {split!r}")
    xs, ys = [], []
    if split in (None, "train"):
        xs.append(raw["x"])
        ys.append(raw["y"])
    if split in (None, "test"):
        xs.append(raw["x_test"])
        ys.append(raw["y_test"])
    x = torch.tensor(np.concatenate(xs), dtype=torch.float32)[:, None]  # (N, 1, L)
    y = torch.tensor(np.concatenate(ys), dtype=torch.long)
    return GridDataset(x, y, num_classes=10)
