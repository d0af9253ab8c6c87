"""Atomic writes: a file or a directory is replaced whole or not at all.

Files are written to a temporary name in the same folder, fsynced, then renamed. A directory is built in a
hidden sibling ``.<name>.tmp-<hex>``, fsynced, and renamed into place; an existing directory is first renamed
aside to ``.<name>.old-<hex>`` and deleted only once the new one is in place. A process killed mid-write
therefore leaves at the target path either the previous complete version or (killed between the two renames
of a directory) nothing, never a half-written one; the hidden siblings it leaves behind are
complete-or-partial copies that can be deleted (or, for ``.old-``, renamed back).

The lowest floor of the package: standard library only, nothing from polyscale.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path

__all__ = [
    "atomic_replace_dir",
    "atomic_write_bytes",
    "atomic_write_text",
    "commit_dir",
    "fsync_dir",
    "temp_sibling",
]


def fsync_dir(path: Path) -> None:
    """Persist a directory's entries (renames); a no-op where directories cannot be opened (Windows)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def temp_sibling(path: Path, tag: str) -> Path:
    """A hidden, unique sibling of ``path``: ``.<name>.<tag>-<hex>``."""
    return path.parent / f".{path.name}.{tag}-{uuid.uuid4().hex[:8]}"


def atomic_write_bytes(path: str | Path, data: bytes | bytearray | memoryview) -> Path:
    """Write ``data`` to ``path``: temporary file in the same folder, fsync, then ``os.replace``.

    Readers see the old content or the new one, never a partial file. The new file gets the usual
    permissions (``0o666`` minus the umask). Parent folders are created. Returns ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_sibling(path, "tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Text (UTF-8) version of :func:`atomic_write_bytes`."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def _fsync_tree(root: Path) -> None:
    """fsync every file and folder under ``root``, deepest first."""
    for p in sorted(root.rglob("*"), key=lambda q: len(q.parts), reverse=True):  # files before their folders
        if p.is_file():
            with open(p, "rb") as fh:
                os.fsync(fh.fileno())
        elif p.is_dir():
            fsync_dir(p)
    fsync_dir(root)


def atomic_replace_dir(build: Callable[[Path], None], target: str | Path) -> Path:
    """Create directory ``target`` atomically from ``build(tmp_dir)``, replacing any existing directory.

    ``build`` fills a hidden sibling temporary directory, which is fsynced and renamed into place. An existing
    ``target`` is renamed aside first and deleted only after the new one is in place; if anything raises,
    the temporary directory is removed and the previous ``target`` restored. See the module docstring for what
    a killed process leaves behind.

    Raises:
        NotADirectoryError: ``target`` exists and is not a directory.
    """
    target = Path(target)
    if target.exists() and not target.is_dir():
        raise NotADirectoryError(f"{target} exists and is not a directory; refusing to replace it")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_sibling(target, "tmp")
    tmp.mkdir()
    try:
        build(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return commit_dir(tmp, target)


def commit_dir(tmp: str | Path, target: str | Path) -> Path:
    """Move the complete directory ``tmp`` to ``target`` (a sibling): fsync it, rename an existing ``target``
    aside, rename ``tmp`` into place, then delete the old one. On an error the previous ``target`` is put back
    and ``tmp`` removed. The second half of :func:`atomic_replace_dir`, for directories that several
    processes fill (a distributed checkpoint)."""
    tmp, target = Path(tmp), Path(target)
    old: Path | None = None
    try:
        _fsync_tree(tmp)
        if target.exists():
            old = temp_sibling(target, "old")
            os.replace(target, old)
        os.replace(tmp, target)
    except BaseException:
        if old is not None and not target.exists():
            os.replace(old, target)  # put the previous version back
            old = None
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    fsync_dir(target.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return target
