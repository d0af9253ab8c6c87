"""MNIST-1D (Greydanus 2020): procedural 1D signals of 10 classes from the ``mnist1d`` package, offline."""

from __future__ import annotations

import random

import numpy as np
import torch

from polyscale.data.base import GridDataset


def mnist1d(
    *, num_samples: int | None = None, seed: int = 0, split: str | None = None, length: int = 40
) -> GridDataset:
    """MNIST-1D as ``(N, 1, length)`` float32, labels 0-9 (balanced).

    Built by ``mnist1d.data.make_dataset(get_dataset_args())`` with ``seed`` and ``final_seq_length =
    length``; the package's download path is never used. The generator standardises the whole set (train and
    test together) to mean 0 and standard deviation 1, which is already the unit scale diffusion wants, so the
    value map is the identity (``denormalize(x) == x``).

    The generator seeds numpy's and Python's global RNGs; their states are saved and restored around the call,
    so building the dataset leaves the caller's random streams untouched.

    Args:
        num_samples: samples generated in total before the split (default 5000, the package's); the
            package makes ``num_samples // 10`` per class, so ``10 * (num_samples // 10)`` in all; >= 10.
        seed: generator seed; the same seed always gives the same data.
        split: ``"train"`` (the generator's first 80%), ``"test"`` (last 20%) or None (both, train first).
        length: sequence length; the generator resamples each signal to it by linear interpolation. The
            default 40 is the benchmark's and is divisible by 8, so a U-Net with three 2x downsamplings
            fits without padding.
    """
    from mnist1d.data import get_dataset_args, make_dataset

    if split not in (None, "train", "test"):
        raise ValueError(f"split must be 'train', 'test' or None, got {split!r}")
    if num_samples is not None and num_samples < 10:
        raise ValueError(f"num_samples must be >= 10 (at least one per class), got {num_samples}")
    if length < 2:
        raise ValueError(f"length must be >= 2, got {length}")
    args = get_dataset_args()
    args.num_samples = num_samples if num_samples is not None else args.num_samples
    args.seed = seed
    args.final_seq_length = length
    np_state, py_state = np.random.get_state(), random.getstate()
    try:
        raw = make_dataset(args)
    finally:
        np.random.set_state(np_state)
        random.setstate(py_state)
    parts = {None: ("", "_test"), "train": ("",), "test": ("_test",)}[split]  # raw keys "x", "x_test", ...
    x = torch.tensor(np.concatenate([raw["x" + p] for p in parts]), dtype=torch.float32)
    x = x[:, None]  # (N, length) -> (N, 1, length)
    y = torch.tensor(np.concatenate([raw["y" + p] for p in parts]), dtype=torch.long)  # (N,)
    if x.shape[0] == 0:
        raise ValueError(f"split={split!r} of {args.num_samples} samples is empty; increase num_samples")
    return GridDataset(x, y, num_classes=10)
