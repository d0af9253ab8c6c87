"""Flat-feature classification sets for sparse growth (``polyscale grow sparse --dataset``), offline.

:data:`CLASSIFICATION_DATASETS` maps a name to ``loader(seed) -> (train, val, test)``, each split
``(x (N, features) float32, y (N,) long)``:

- ``mnist1d``: the benchmark's 4,000 training / 1,000 test signals of length 40; the last 400 training
  signals are the validation set (``seed`` is not used: the benchmark's data is fixed);
- ``digits``: scikit-learn's 1,797 8x8 images (64 features in [-1, 1]); a ``seed``-ed 70 / 10 / 20 % split.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from polyscale.data.base import GridDataset
from polyscale.data.mnist1d import mnist1d
from polyscale.registry import Registry

__all__ = ["CLASSIFICATION_DATASETS", "Split"]

Split = tuple[Tensor, Tensor]
Splits = tuple[Split, Split, Split]


def mnist1d_splits(seed: int = 0) -> Splits:
    """MNIST-1D's fixed train (first 3,600) / validation (last 400) / test split."""
    train, test = mnist1d(split="train", seed=0), mnist1d(split="test", seed=0)
    x, y = train.data.flatten(1), _labels(train)
    return (x[:3600], y[:3600]), (x[3600:], y[3600:]), (test.data.flatten(1), _labels(test))


def _labels(ds: GridDataset) -> Tensor:
    if ds.labels is None:
        raise ValueError(f"a classification set needs labels, got a {type(ds).__name__} without them")
    return ds.labels


def digits_splits(seed: int = 0) -> Splits:
    """scikit-learn's digits, ink scaled to [-1, 1], shuffled by ``seed`` into 70 / 10 / 20 %."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = torch.tensor(bunch.data, dtype=torch.float32) / 16.0 * 2 - 1  # 0..16 ink -> [-1, 1]
    y = torch.tensor(bunch.target, dtype=torch.long)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    a, b = int(0.7 * len(x)), int(0.8 * len(x))
    return (x[order[:a]], y[order[:a]]), (x[order[a:b]], y[order[a:b]]), (x[order[b:]], y[order[b:]])


CLASSIFICATION_DATASETS: Registry[Callable[[int], Splits]] = Registry(
    "dataset", {"mnist1d": mnist1d_splits, "digits": digits_splits}
)
