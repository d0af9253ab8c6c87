"""Checks a command runs before any expensive work, so that a run that cannot finish fails in its first second
with one line naming the flag, the limit and what was found, instead of hours later with a traceback.

- :func:`check_memory`: an estimate of the run's peak memory against what the device has free
  (:func:`available_memory`), with a safety margin (:data:`MEMORY_SHARE`); ``force`` turns the refusal into a
  warning.
- :func:`check_writable`: an output file's folder exists or can be made and takes a new file, the path is no
  folder, and its suffix is one the command writes.
- :func:`check_steps`: a sampler step count below :data:`MAX_STEPS`.
- :func:`human_bytes`: ``38.1 GiB``.

Each raises ``ValueError`` with a one-line message; the command line prints it as
``polyscale <cmd>: error: <message>`` and exits with code 2. The estimates themselves live beside the
pipelines they describe (:func:`polyscale.pipelines.sample.sampling_memory`,
:func:`polyscale.pipelines.graph_sample.graph_sampling_memory`).
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import torch

__all__ = [
    "MAX_STEPS",
    "MEMORY_SHARE",
    "available_memory",
    "check_memory",
    "check_steps",
    "check_writable",
    "human_bytes",
]

# A run may plan to use at most this share of the memory that is free when it starts: the estimates are
# rough (calibrated within tens of percent), and the rest of the process and the machine need room too.
MEMORY_SHARE = 0.9

# The most denoising steps a sampler may take. Samplers need tens to a few hundred steps (DDPM's 1000 is the
# usual high end); a step count past this is a typo, and its noise schedule alone (steps + 1 floats) would
# not fit in memory long before the steps would finish.
MAX_STEPS = 100_000


_UNITS = ("KiB", "MiB", "GiB", "TiB", "PiB", "EiB", "ZiB", "YiB")


def human_bytes(n: float) -> str:
    """``n`` bytes in binary units with one decimal: ``512 B``, ``1.5 KiB``, ``38.1 GiB``; past the largest
    unit, a power of ten (``3.2e+10 YiB``)."""
    if n < 1024:
        return f"{int(n)} B"
    value = float(n)
    for unit in _UNITS:
        value /= 1024
        if value < 1024:
            return f"{value:.1f} {unit}"
    return f"{value:.1e} {_UNITS[-1]}"


def _meminfo_available(path: str = "/proc/meminfo") -> int | None:
    """``MemAvailable`` of ``/proc/meminfo`` in bytes (Linux), ``None`` when it cannot be read."""
    try:
        with open(path) as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    fields = line.split()
                    return int(fields[1]) * (1024 if fields[2:] == ["kB"] else 1)
    except (OSError, ValueError, IndexError):
        return None
    return None


def _sysconf_available() -> int | None:
    """Free physical memory from ``os.sysconf`` (pages times page size), ``None`` where it is not offered."""
    try:
        pages, size = os.sysconf("SC_AVPHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None
    return pages * size if pages > 0 and size > 0 else None


def available_memory(device: str | torch.device = "cpu") -> int | None:
    """Bytes a new allocation on ``device`` can use now, or ``None`` when that is unknown (then
    :func:`check_memory` checks nothing).

    CPU: ``MemAvailable`` of ``/proc/meminfo`` (what the kernel can hand out without swapping, page cache
    included), else the free pages ``os.sysconf`` reports. CUDA: the free memory of the device
    (``torch.cuda.mem_get_info``) plus what PyTorch's allocator holds unused in its cache. Other devices:
    ``None``.
    """
    dev = torch.device(device)
    if dev.type == "cpu":
        found = _meminfo_available()
        return found if found is not None else _sysconf_available()
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            return None
        index = dev.index if dev.index is not None else torch.cuda.current_device()
        free, _total = torch.cuda.mem_get_info(index)
        cached = torch.cuda.memory_reserved(index) - torch.cuda.memory_allocated(index)
        return int(free + cached)
    return None


def check_memory(
    estimate_bytes: float,
    *,
    what: str,
    device: str | torch.device = "cpu",
    force: bool = False,
    flag: str | None = "--force",
    lower: str | None = None,
) -> None:
    """Refuse a run whose estimated peak memory ``estimate_bytes`` exceeds :data:`MEMORY_SHARE` of the memory
    available on ``device`` (:func:`available_memory`; unknown: no check).

    Args:
        estimate_bytes: the run's estimated peak, in bytes.
        what: what the estimate counts, in words, e.g. ``"1000000000 samples of 1x16x16 kept in memory + a
            batch of 2 in flight"``.
        device: where the memory is needed.
        force: warn on stderr (one line) instead of raising.
        flag: the flag that sets ``force``, named in the message (``None``: the caller has none).
        lower: what to lower instead, e.g. ``"--num-samples/--batch-size"``.

    Raises:
        ValueError: one line with the estimate, what it counts and the memory available, e.g.
            ``needs about 38.1 GiB (...) but 21.3 GiB is available (...); lower --num-samples, or pass --force``.
    """
    available = available_memory(device)
    if available is None or estimate_bytes <= MEMORY_SHARE * available:
        return
    where = "" if torch.device(device).type == "cpu" else f" on {device}"
    message = (
        f"needs about {human_bytes(estimate_bytes)} ({what}) but {human_bytes(available)} is available{where}"
        f" (a run may plan on {MEMORY_SHARE:.0%} of that)"
    )
    if force:
        print(f"warning: {message}; going on as {flag or 'force'} asks", file=sys.stderr)
        return
    remedies = [f"lower {lower}" if lower else None, f"pass {flag}" if flag else None]
    advice = ", or ".join(r for r in remedies if r)
    raise ValueError(message + (f"; {advice}" if advice else ""))


def check_steps(steps: int, *, flag: str = "--timesteps", limit: int = MAX_STEPS) -> None:
    """Refuse a sampler step count above ``limit`` (:data:`MAX_STEPS`) before its schedule is allocated."""
    if steps > limit:
        raise ValueError(
            f"{flag} asks for {steps} sampler steps; expected at most {limit} (samplers need tens to a few "
            "hundred)"
        )


def _nearest_existing(path: Path) -> Path:
    """``path`` or its closest ancestor that exists (the filesystem root at worst)."""
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate
    return Path(path.anchor or ".")


def _probe_folder(folder: Path) -> None:
    """Make ``folder`` (and missing parents), write and remove a hidden file in it, then remove the folders
    this made: ``OSError`` when any of that fails."""
    made = [q for q in (folder, *folder.parents) if not q.exists()]
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=".polyscale-write-test-", dir=folder)
        os.close(fd)
        os.unlink(name)
    finally:
        for q in made:  # deepest first
            try:
                q.rmdir()
            except OSError:
                break


def check_writable(
    path: str | Path,
    *,
    suffixes: Sequence[str] | None = None,
    flag: str = "--output-file",
    beside: Sequence[str] = (),
) -> Path:
    """Check, before any work, that a file can be written at ``path``; return it as a ``Path``.

    ``path`` must not be a folder; its suffix must be one of ``suffixes`` (e.g. ``(".png",)``; case
    ignored; ``None``: any); every folder above it must be a folder, not a file; and its folder must exist
    or be creatable and take a new file (a hidden file is created and removed there; folders made for the
    test are removed again). ``beside``: suffixes of files the command writes next to ``path``
    (``samples.npy`` beside ``samples.png``), which must not be folders either.

    Raises:
        ValueError: one line naming ``flag``, the path and what is wrong (the allowed suffixes, the file in
            the way, or the reason the folder cannot be written).
    """
    target = Path(path)
    if target.is_dir():
        example = target / ("samples" + (suffixes[0] if suffixes else ".png"))
        raise ValueError(
            f"{flag} {str(target)!r} is a directory; expected a file path such as {str(example)!r}"
        )
    if suffixes is not None and target.suffix.lower() not in [s.lower() for s in suffixes]:
        allowed = " or ".join(suffixes)
        found = repr(target.suffix) if target.suffix else "no suffix"
        raise ValueError(
            f"{flag} {str(target)!r} must end in {allowed} (the format written), found {found}; "
            f"e.g. {str(target.with_suffix(suffixes[0]))!r}"
        )
    for suffix in beside:
        other = target.with_suffix(suffix)
        if other.is_dir():
            raise ValueError(
                f"{flag} {str(target)!r} also writes {str(other)!r} beside it, but that is a directory; "
                "pick another file name"
            )
    existing = _nearest_existing(target.parent)
    if not existing.is_dir():
        raise ValueError(f"{flag} {str(target)!r} needs {str(existing)!r} to be a folder, but it is a file")
    try:
        _probe_folder(target.parent)
    except OSError as err:
        reason = err.strerror or str(err)
        raise ValueError(
            f"{flag} {str(target)!r} cannot be written: the folder {str(target.parent)!r} "
            f"{'does not take new files' if target.parent.exists() else 'cannot be created'} ({reason})"
        ) from None
    return target
