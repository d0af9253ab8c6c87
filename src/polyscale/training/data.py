"""The step-indexed data order: which samples a micro-batch holds is a pure function of its position.

Resume therefore needs no iterator state: a run restarted at step ``k`` rebuilds the loader from step ``k``
and sees exactly the samples an uninterrupted run would have seen. The global sample stream is the
concatenation of per-epoch permutations (epoch ``e`` shuffled by a generator seeded with ``(seed, e)``).
Optimizer step ``s`` consumes stream positions ``[s * B, (s + 1) * B)`` with ``B`` the global batch; the
global batch is cut into ``grad_accum_steps * num_processes`` equal chunks and chunk ``c = micro *
num_processes + rank`` goes to ``rank`` at micro-step ``micro``. The chunk index (not the rank) also seeds
the per-chunk noise, so a run on 2 processes equals a run on 1 process with twice the accumulation.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Mapping, Sized
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler, default_collate

_MASK64 = 0xFFFFFFFFFFFFFFFF


def mix_seed(*parts: int) -> int:
    """Combine integers into one non-negative 63-bit seed (splitmix64 finaliser over each part).

    Nearby tuples such as ``(seed, step, 0)`` and ``(seed, step, 1)`` give unrelated seeds, so the random
    streams of different steps and chunks do not overlap.
    """
    h = 0x9E3779B97F4A7C15
    for p in parts:
        h = (h ^ (int(p) & _MASK64)) + 0x9E3779B97F4A7C15 & _MASK64
        h = (h ^ (h >> 30)) * 0xBF58476D1CE4E5B9 & _MASK64
        h = (h ^ (h >> 27)) * 0x94D049BB133111EB & _MASK64
        h ^= h >> 31
    return h & 0x7FFFFFFFFFFFFFFF


@functools.lru_cache(maxsize=4)
def epoch_permutation(seed: int, epoch: int, dataset_len: int) -> Tensor:
    """The order of the dataset in ``epoch``: ``(dataset_len,)`` int64, seeded by ``(seed, epoch)`` only."""
    generator = torch.Generator().manual_seed(mix_seed(seed, epoch))
    return torch.randperm(dataset_len, generator=generator)


def chunk_index(micro: int, *, rank: int, num_processes: int) -> int:
    """Position of a micro-batch in the global batch of its optimizer step (0 .. accum * processes - 1)."""
    return micro * num_processes + rank


def batch_indices(
    step: int,
    *,
    micro: int,
    rank: int,
    num_processes: int,
    micro_batch: int,
    grad_accum_steps: int,
    dataset_len: int,
    seed: int,
) -> tuple[Tensor, Tensor]:
    """Dataset indices and epochs of one micro-batch, each ``(micro_batch,)`` int64.

    A micro-batch that straddles an epoch boundary takes its tail from the next epoch's permutation.
    """
    global_batch = micro_batch * grad_accum_steps * num_processes
    first = step * global_batch + chunk_index(micro, rank=rank, num_processes=num_processes) * micro_batch
    positions = torch.arange(first, first + micro_batch)  # (micro_batch,) positions in the sample stream
    epochs = positions // dataset_len
    indices = torch.empty(micro_batch, dtype=torch.long)
    for e in range(int(epochs[0]), int(epochs[-1]) + 1):  # positions are contiguous: every epoch in between
        sel = epochs == e
        indices[sel] = epoch_permutation(seed, e, dataset_len)[positions[sel] % dataset_len]
    return indices, epochs


class StepBatchSampler(Sampler[list[tuple[int, int]]]):
    """Yields, for each optimizer step in ``[start_step, max_steps)`` and each micro-step, this rank's
    micro-batch as a list of ``(index, epoch)`` pairs (see :func:`batch_indices`)."""

    def __init__(
        self,
        dataset_len: int,
        *,
        start_step: int,
        max_steps: int,
        micro_batch: int,
        grad_accum_steps: int,
        rank: int,
        num_processes: int,
        seed: int,
    ) -> None:
        self.dataset_len, self.start_step, self.max_steps = dataset_len, start_step, max_steps
        self.micro_batch, self.grad_accum_steps = micro_batch, grad_accum_steps
        self.rank, self.num_processes, self.seed = rank, num_processes, seed

    def __len__(self) -> int:
        return max(0, self.max_steps - self.start_step) * self.grad_accum_steps

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for step in range(self.start_step, self.max_steps):
            for micro in range(self.grad_accum_steps):
                idx, epochs = batch_indices(
                    step,
                    micro=micro,
                    rank=self.rank,
                    num_processes=self.num_processes,
                    micro_batch=self.micro_batch,
                    grad_accum_steps=self.grad_accum_steps,
                    dataset_len=self.dataset_len,
                    seed=self.seed,
                )
                yield list(zip(idx.tolist(), epochs.tolist(), strict=True))


def dataset_length(dataset: Dataset) -> int:
    """``len(dataset)`` (``Dataset`` does not declare ``__len__``); a TypeError, as from ``len``, when the dataset
    has no length."""
    if not isinstance(dataset, Sized):
        raise TypeError(f"object of type {type(dataset).__name__!r} has no len()")
    return len(dataset)


class EpochIndexed(Dataset):
    """View of a dataset addressed by ``(index, epoch)``: calls ``dataset.set_epoch(epoch)`` (when the
    dataset has it, e.g. random crops) before reading, so epoch-dependent items are right in workers too."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset
        self._set_epoch = getattr(dataset, "set_epoch", None)

    def __len__(self) -> int:
        return dataset_length(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> Any:
        index, epoch = key
        if self._set_epoch is not None:
            self._set_epoch(epoch)
        return self.dataset[index]


def check_dataset(dataset: Dataset) -> None:
    """Fail early, with a message, on an empty dataset or items that are not ``{"x": tensor, ...}`` dicts."""
    try:
        n = dataset_length(dataset)
    except TypeError as err:
        raise ValueError(
            f"the training dataset must have a length (map-style), got {type(dataset).__name__}"
        ) from err
    if n == 0:
        raise ValueError("the training dataset is empty (len(dataset) == 0); expected at least one sample")
    item = dataset[0]
    if not isinstance(item, Mapping) or not isinstance(item.get("x"), Tensor):
        got = f"dict with keys {sorted(item)}" if isinstance(item, Mapping) else type(item).__name__
        raise ValueError(f"dataset items must be dicts {{'x': tensor (C, *spatial), ...}}, got {got}")


def make_loader(
    dataset: Dataset,
    *,
    start_step: int,
    max_steps: int,
    micro_batch: int,
    grad_accum_steps: int,
    rank: int,
    num_processes: int,
    seed: int,
    num_workers: int = 0,
    pin_memory: bool = False,
    collate_fn: Callable[[list], Any] | None = None,
) -> DataLoader:
    """A loader that yields this rank's collated micro-batches ``{"x": (micro_batch, C, *spatial), ...}`` for
    steps ``start_step .. max_steps - 1``, ``grad_accum_steps`` per step, in the step-indexed order.
    ``collate_fn`` replaces torch's default collate (e.g. to batch graphs of different sizes)."""
    sampler = StepBatchSampler(
        dataset_length(dataset),
        start_step=start_step,
        max_steps=max_steps,
        micro_batch=micro_batch,
        grad_accum_steps=grad_accum_steps,
        rank=rank,
        num_processes=num_processes,
        seed=seed,
    )
    # An own generator: otherwise creating the iterator draws a base seed from the global RNG, which would
    # shift the dropout masks of a resumed run against an uninterrupted one.
    generator = torch.Generator().manual_seed(mix_seed(seed, start_step, rank))
    return DataLoader(
        EpochIndexed(dataset),
        batch_sampler=sampler,
        generator=generator,
        num_workers=num_workers,
        collate_fn=collate_fn or default_collate,
        pin_memory=pin_memory,
    )
