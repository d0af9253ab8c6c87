"""Random crops of a grid dataset: train on small windows, sample large outputs."""

from __future__ import annotations

import hashlib

import torch
from torch import Tensor
from torch.utils.data import Dataset

from polyscale.data.base import GridDataset


def crop_seed(seed: int, epoch: int, index: int) -> int:
    """A 63-bit seed that is a pure function of ``(seed, epoch, index)`` (BLAKE2b of the three integers).

    Stable across processes, machines and Python's hash randomisation; nearby triples give unrelated seeds.
    """
    digest = hashlib.blake2b(f"{seed}:{epoch}:{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & 0x7FFFFFFFFFFFFFFF


class RandomCrops(Dataset):
    """Each item is a random ``crop_size`` window of the underlying sample: ``{"x": (C, *crop_size), ...}``.

    Determinism and resume: the window of item ``index`` is a pure function of ``(seed, epoch, index)``
    (see :func:`crop_seed`), never of how many items were read before, so a resumed run, a worker process or a
    second rank gets exactly the same windows. :meth:`set_epoch` (the training loop calls it) changes the
    windows from one epoch to the next. With ``generator`` instead of ``seed``, the base seed is drawn from it
    once, at construction.

    ``len(self) == len(dataset) * crops_per_sample``; item ``i`` crops sample ``i // crops_per_sample``.

    Args:
        dataset: the source, ``(N, C, *spatial)``.
        crop_size: window edge length, or one length per spatial axis; each in ``[1, spatial]``.
        seed: base seed of the windows (default 0).
        generator: alternative to ``seed`` (not both): draw the base seed from this generator.
        crops_per_sample: distinct windows per source sample per epoch.
    """

    def __init__(
        self,
        dataset: GridDataset,
        crop_size: int | tuple[int, ...],
        *,
        seed: int | None = None,
        generator: torch.Generator | None = None,
        crops_per_sample: int = 1,
    ) -> None:
        crop = (crop_size,) * dataset.dims if isinstance(crop_size, int) else tuple(crop_size)
        if len(crop) != dataset.dims:
            raise ValueError(
                f"crop_size {crop_size!r} has {len(crop)} axes but the data has {dataset.dims} spatial axes"
            )
        if any(c < 1 or c > s for c, s in zip(crop, dataset.spatial_shape, strict=True)):
            raise ValueError(
                f"crop_size {crop} must be between 1 and the data's spatial shape {dataset.spatial_shape} "
                "on every axis"
            )
        if crops_per_sample < 1:
            raise ValueError(f"crops_per_sample must be >= 1, got {crops_per_sample}")
        if seed is not None and generator is not None:
            raise ValueError("pass seed or generator to RandomCrops, not both")
        if generator is not None:
            seed = int(torch.randint(0, 2**62, (), generator=generator))
        seed = 0 if seed is None else seed
        self.dataset, self.crop, self.seed, self.epoch = dataset, crop, seed, 0
        self.crops_per_sample = crops_per_sample

    def set_epoch(self, epoch: int) -> None:
        """Use the windows of ``epoch`` from now on."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.dataset) * self.crops_per_sample

    def window(self, index: int, *, epoch: int | None = None) -> tuple[int, ...]:
        """Start corner (one int per spatial axis) of item ``index``'s window in ``epoch`` (default: now)."""
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} crops")
        g = torch.Generator().manual_seed(crop_seed(self.seed, self.epoch if epoch is None else epoch, index))
        return tuple(
            int(torch.randint(0, s - c + 1, (), generator=g))
            for s, c in zip(self.dataset.spatial_shape, self.crop, strict=True)
        )

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        item = dict(self.dataset[index // self.crops_per_sample])
        starts = self.window(index)
        # one tuple (mypy misreads the parenthesised form x[(a, *b)] as Python 3.11's x[*b])
        window = (slice(None), *(slice(a, a + c) for a, c in zip(starts, self.crop, strict=True)))
        item["x"] = item["x"][window]  # (C, *crop)
        return item

    # the source's metadata, with the crop as the spatial shape
    @property
    def channels(self) -> int:
        return self.dataset.channels

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        return self.crop

    @property
    def dims(self) -> int:
        return self.dataset.dims

    @property
    def num_classes(self) -> int | None:
        return self.dataset.num_classes

    @property
    def scale(self) -> float:
        return self.dataset.scale

    @property
    def shift(self) -> float:
        return self.dataset.shift

    def denormalize(self, x: Tensor) -> Tensor:
        """Model space -> natural range (the source's map)."""
        return self.dataset.denormalize(x)

    def normalize(self, x: Tensor) -> Tensor:
        """Natural range -> model space (the source's map)."""
        return self.dataset.normalize(x)
