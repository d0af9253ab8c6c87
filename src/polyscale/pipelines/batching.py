"""Run a job over ``n`` items in consecutive slices, halving the slice when the device runs out of memory.

:func:`run_in_batches` calls ``fn(start, stop)`` for ``[0, b), [b, 2b), ...``. When a call raises
``torch.OutOfMemoryError`` (``torch.cuda.OutOfMemoryError`` is the same class), it empties the CUDA cache,
halves the batch size and tries the same slice again, down to a batch of 1; a batch of 1 that still does not
fit raises :class:`BatchTooLargeError`, one line naming the slice and suggesting what to lower.

Why not ``accelerate.find_executable_batch_size``: it restarts the whole decorated function with the smaller
batch size, so every slice finished before the failure is computed again (and its results thrown away or
produced twice). Sampling thousands of samples, the failure may come late (a later batch meets a fuller
device), and the finished slices are the expensive part; here they are kept, the failed slice is retried and
the rest continue at the smaller size.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import torch

__all__ = ["BatchTooLargeError", "run_in_batches"]

T = TypeVar("T")


class BatchTooLargeError(MemoryError):
    """A slice of one item did not fit in memory (a ``MemoryError``: the command line reports it as one line)."""


def _empty_cache() -> None:
    """Give the memory PyTorch's CUDA allocator caches back, so the retry starts from what is really free."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()


def run_in_batches(
    fn: Callable[[int, int], T],
    n: int,
    batch_size: int,
    *,
    on_halve: Callable[[int, int], None] | None = None,
    what: str = "",
) -> list[T]:
    """Call ``fn(start, stop)`` for consecutive slices covering ``range(n)`` once each, in order, and return
    the results in that order.

    Slices are ``batch_size`` long (the last one may be shorter). When ``fn`` raises
    ``torch.OutOfMemoryError``, the CUDA cache is emptied, the batch size halved (``on_halve(old, new)`` is
    called, e.g. to print a note) and the same slice tried again; later slices keep the smaller size.

    Args:
        fn: the job on items ``start`` to ``stop - 1``.
        n: how many items (``>= 0``).
        batch_size: the first slice length (``>= 1``).
        on_halve: called with the old and the new batch size on each halving.
        what: the work in words for the error message, e.g. ``"sampling at resolution 512"``.

    Raises:
        BatchTooLargeError: a slice of one item ran out of memory: one line, ``"<what> ran out of memory on
            item 3 of 16 even in a batch of 1 (halved from 16). Use a tile size or a lower resolution"``; the
            command line shows its first sentence as the cause, with the command's own advice.
        ValueError: ``n`` or ``batch_size`` out of range.
    """
    for name, value, low in (("n", n, 0), ("batch_size", batch_size, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    results: list[T] = []
    start, size, first = 0, batch_size, batch_size
    while start < n:
        stop = min(start + size, n)
        try:
            results.append(fn(start, stop))
        except torch.OutOfMemoryError as err:
            _empty_cache()
            if size == 1:  # first sentence short: the command line shows it as the cause
                raise BatchTooLargeError(
                    f"{what or 'the job'} ran out of memory on item {start} of {n} even in a batch of 1 "
                    f"(halved from {first}). Use a tile size or a lower resolution"
                ) from err
            new = max(1, min(size, stop - start) // 2)
            if on_halve is not None:
                on_halve(size, new)
            size = new
            continue
        start = stop
    return results
