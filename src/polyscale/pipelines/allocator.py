"""Keep freed memory in the process on CPU: glibc's allocator settings for large, short-lived tensors.

By default glibc serves every allocation above its mmap threshold (128 KiB, raised adaptively to at most
32 MiB) with a fresh ``mmap`` and returns it to the kernel on ``free``. A 3D U-Net on CPU allocates and frees
activations of tens to hundreds of MiB at every layer of every denoiser call, so each one is mapped, faulted in
page by page (the kernel zeroes every page) and unmapped again: on this project's 2-core machine sampling a
64^3 volume spent about as much time in the kernel as in the network (``benchmarks/allocator.py``).

:func:`keep_freed_memory` raises the mmap threshold and the trim threshold, so freed blocks stay in the heap
and are reused by the next call. The price is memory: a block that does not fit a freed hole grows the heap,
and the heap gives little back, so peak resident memory rises (1.2x sampling one 64^3 volume, 2.0x at 128^3,
for 0.62x and 0.70x of the wall time; BENCHMARKS.md). Because of that, and because it is a process-wide
setting, it is opt-in: the library never applies it on import, Python users call it, and the ``polyscale``
command line applies it when the environment has ``POLYSCALE_KEEP_FREED_MEMORY=1``
(:func:`apply_from_environment`).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import warnings

# mallopt parameter numbers (glibc malloc.h)
M_TRIM_THRESHOLD = -1
M_TOP_PAD = -2
M_MMAP_THRESHOLD = -3

ENV_SWITCH = "POLYSCALE_KEEP_FREED_MEMORY"
DEFAULTS = {"mmap_threshold": 1 << 30, "trim_threshold": 1 << 30, "top_pad": 256 << 20}

_applied: dict[str, int] | None = None


def _mallopt():
    """glibc's ``mallopt`` or None (another C library, or no C library found)."""
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
        fn = libc.mallopt
        if not hasattr(libc, "gnu_get_libc_version"):  # musl and the BSDs differ in mallopt's parameters
            return None
    except (OSError, AttributeError):
        return None
    fn.argtypes, fn.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return fn


def keep_freed_memory(
    *,
    mmap_threshold: int = DEFAULTS["mmap_threshold"],
    trim_threshold: int = DEFAULTS["trim_threshold"],
    top_pad: int = DEFAULTS["top_pad"],
) -> dict[str, int] | None:
    """Set glibc's mmap threshold, trim threshold and top pad (bytes) for this process.

    Returns the settings that took effect, or None when nothing was changed (not glibc). Calling it again with
    the same settings does nothing.

    If glibc refuses a setting, a warning says which and the function returns None.

    Raises:
        ValueError: a setting is not a positive integer below 2^31.
    """
    global _applied
    settings = {"mmap_threshold": mmap_threshold, "trim_threshold": trim_threshold, "top_pad": top_pad}
    for key, value in settings.items():
        if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 2**31:
            raise ValueError(f"{key} must be an integer in [1, 2^31), got {value!r}")
    if _applied == settings:
        return _applied
    mallopt = _mallopt()
    if mallopt is None:
        return None
    params = {"mmap_threshold": M_MMAP_THRESHOLD, "trim_threshold": M_TRIM_THRESHOLD, "top_pad": M_TOP_PAD}
    for key, param in params.items():
        if mallopt(param, settings[key]) != 1:
            warnings.warn(f"glibc refused {key}={settings[key]} (mallopt returned 0)", stacklevel=2)
            return None
    _applied = settings
    return _applied


def apply_from_environment() -> dict[str, int] | None:
    """:func:`keep_freed_memory` with its defaults when ``POLYSCALE_KEEP_FREED_MEMORY`` is ``1`` (or ``true``,
    ``yes``, ``on``); otherwise nothing (None). Any other value is an error naming the variable."""
    value = os.environ.get(ENV_SWITCH, "").strip().lower()
    if value in ("", "0", "false", "no", "off"):
        return None
    if value not in ("1", "true", "yes", "on"):
        raise ValueError(
            f"{ENV_SWITCH} must be 1 or 0 (true/false, yes/no, on/off), got {os.environ[ENV_SWITCH]!r}"
        )
    return keep_freed_memory()
