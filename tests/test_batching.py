"""Batch halving on out-of-memory: ``run_in_batches`` covers every item exactly once, in order, keeps the slices
finished before a failure, halves the batch on ``torch.OutOfMemoryError`` and, when one item does not fit,
raises one line that the command line prints as one line."""

from __future__ import annotations

import pytest
import torch

from polyscale.cli.main import describe_failure
from polyscale.pipelines.batching import BatchTooLargeError, run_in_batches


class Job:
    """Squares items ``start..stop-1``; raises ``torch.OutOfMemoryError`` for slices longer than ``fits``
    (as a device does above some batch size), and records every call."""

    def __init__(self, fits: int) -> None:
        self.fits, self.calls, self.done = fits, [], []

    def __call__(self, start: int, stop: int) -> torch.Tensor:
        self.calls.append((start, stop))
        if stop - start > self.fits:
            raise torch.OutOfMemoryError(f"CUDA out of memory. Tried to allocate {stop - start} GiB")
        self.done.append((start, stop))
        return torch.arange(start, stop) ** 2


@pytest.mark.parametrize(
    "n, batch_size, fits", [(100, 32, 5), (100, 32, 32), (7, 64, 3), (10, 4, 1), (0, 4, 1)]
)
def test_every_item_once_in_order_with_identical_results(n, batch_size, fits):
    job, halvings = Job(fits), []
    results = run_in_batches(job, n, batch_size, on_halve=lambda old, new: halvings.append((old, new)))
    covered = [i for start, stop in job.done for i in range(start, stop)]
    assert covered == list(range(n))  # exactly once each, in order
    assert torch.equal(
        torch.cat(results) if results else torch.empty(0, dtype=torch.long), torch.arange(n) ** 2
    )
    assert all(stop - start <= fits for start, stop in job.done)
    assert all(new == max(1, old // 2) or new < old for old, new in halvings)
    # a finished slice is never run again: every failed call is followed by a retry at the same start
    failed = [c for c in job.calls if c not in job.done]
    assert len(failed) == len(halvings)
    assert len({start for start, _ in job.done}) == len(job.done)


def test_slices_before_a_failure_are_kept():
    """The failure comes late (a later slice meets a fuller device): the slices before it are not redone."""
    calls = []

    def fn(start: int, stop: int) -> list[int]:
        calls.append((start, stop))
        if start >= 40 and stop - start > 4:
            raise torch.cuda.OutOfMemoryError(
                "CUDA out of memory"
            )  # the same class as torch.OutOfMemoryError
        return list(range(start, stop))

    out = run_in_batches(fn, 60, 20)
    assert [i for part in out for i in part] == list(range(60))
    assert calls[:2] == [(0, 20), (20, 40)]  # done once, never repeated
    assert calls[2:5] == [(40, 60), (40, 50), (40, 45)]
    assert calls[5:] == [(40, 42), (42, 44), (44, 46), (46, 48), (48, 50), (50, 52), (52, 54), (54, 56),
                         (56, 58), (58, 60)]  # fmt: skip


def test_one_item_that_does_not_fit_is_one_line():
    with pytest.raises(BatchTooLargeError) as err:
        run_in_batches(Job(fits=0), 16, 16, what="sampling at resolution 512")
    message = str(err.value)
    assert message == (
        "sampling at resolution 512 ran out of memory on item 0 of 16 even in a batch of 1 (halved from 16). "
        "Use a tile size or a lower resolution"
    )
    assert isinstance(err.value, MemoryError)
    line, code = describe_failure(err.value, "sample")
    assert code == 2 and "\n" not in line
    assert line.startswith(
        "error: out of memory: sampling at resolution 512 ran out of memory on item 0 of 16 even in a batch of 1 "
        "(halved from 16) ("
    )
    assert "--tile-size" in line


def test_other_errors_pass_through_and_bad_arguments_are_refused():
    def broken(start: int, stop: int) -> None:
        raise RuntimeError("not a memory problem")

    with pytest.raises(RuntimeError, match="not a memory problem"):
        run_in_batches(broken, 4, 2)
    for n, batch_size in ((-1, 2), (4, 0), (4, 1.5), (True, 2)):
        with pytest.raises(ValueError, match="must be an integer"):
            run_in_batches(Job(fits=4), n, batch_size)
