"""Random crops of a grid dataset: train on small windows, sample large outputs."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.utils.data import Dataset

from polyscale.data.base import GridDataset


class RandomCrops(Dataset):
    """Each item is a random ``crop_size`` window of the underlying sample.

    The window position is a pure function of ``(seed, epoch, index)``, so training that derives its data order
    from the step is exactly resumable; call :meth:`set_epoch` to get fresh windows each epoch.
    ``len(self) == len(dataset) * crops_per_sample``.
    """

    def __init__(
        self, dataset: GridDataset, crop_size: int | tuple[int, ...], *, seed: int = 0, crops_per_sample: int = 1
    ) -> None:
        crop = (crop_size,) * dataset.dims if isinstance(crop_size, int) else tuple(crop_size)
        if len(crop) != dataset.dims:
            raise ValueError(f"crop_size {crop_size!r} has {len(crop)} axes but the data has {dataset.dims}")
        if any(c > s or c < 1 for c, s in zip(crop, dataset.spatial_shape, strict=True)):
            raise ValueError(f"crop_size {crop} must be between 1 and the data's spatial shape {dataset.spatial_shape}")
        self.dataset, self.crop, self.seed, self.epoch = dataset, crop, seed, 0
        self.crops_per_sample = crops_per_sample
        self.scale, self.shift, self.num_classes = dataset.scale, dataset.shift, dataset.num_classes

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.dataset) * self.crops_per_sample

    def denormalize(self, x: Tensor) -> Tensor:
        return self.dataset.denormalize(x)

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        item = dict(self.dataset[index // self.crops_per_sample])
        g = torch.Generator().manual_seed(hash((self.seed, self.epoch, index)) & 0x7FFFFFFF)
        starts = [int(torch.randint(0, s - c + 1, (1,), generator=g)) for s, c in zip(
            self.dataset.spatial_shape, self.crop, strict=True)]
        window = tuple(slice(a, a + c) for a, c in zip(starts, self.crop, strict=True))
        item["x"] = item["x"][(slice(None), *window)]  # (C, *crop)
        return item
