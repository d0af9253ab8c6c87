"""Atomic writes: a file or a directory is replaced whole or not at all.

Files are written to a temporary name in the same folder, fsynced, then renamed. A directory is built in a
hidden sibling ``.<name>.tmp-<hex>``, fsynced, and renamed into place; an existing directory is first renamed
aside to ``.<name>.old-<pid>-<hex>`` and deleted only once the new one is in place. A process killed
mid-write therefore leaves at the target path either the previous complete version or (killed between the two
renames of a directory) nothing, never a half-written one. The hidden siblings it leaves behind carry the
writer's process id; the next write of the same target deletes the ``.tmp-`` ones of writers that are no
longer running, and :func:`recover_siblings` (run when a run directory is entered) also renames a complete
``.old-`` copy back where its target is missing.

Files and folders get the usual permissions (``0o666`` / ``0o777`` minus the umask), also where a library
wrote them with narrower ones (safetensors writes ``0o600``).

The lowest floor of the package: standard library only, nothing from polyscale.
"""

from __future__ import annotations

import os
import re
import shutil
import uuid
from collections.abc import Callable
from glob import escape as glob_escape
from pathlib import Path

__all__ = [
    "atomic_replace_dir",
    "atomic_write_bytes",
    "atomic_write_text",
    "commit_dir",
    "fsync_dir",
    "recover_siblings",
    "temp_sibling",
]

# .<name>.<tag>-<pid>-<hex> (and .<name>.<tag>-<hex> from earlier versions, pid unknown)
_SIBLING = re.compile(r"^\.(?P<name>.+)\.(?P<tag>tmp|old)-(?:(?P<pid>\d+)-)?[0-9a-f]{8}$")


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
    """A hidden, unique sibling of ``path``: ``.<name>.<tag>-<pid>-<hex>``."""
    return path.parent / f".{path.name}.{tag}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def _alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this machine (a process we may not signal still exists)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def recover_siblings(folder: str | Path) -> list[str]:
    """Tidy what killed writers left in ``folder``; returns one sentence per action taken.

    A ``.<name>.tmp-`` sibling of a writer that is no longer running is deleted (it was never renamed into
    place, so it is a partial copy). A ``.<name>.old-`` sibling is the complete previous version of
    ``<name>``: renamed back when ``<name>`` is missing (the writer died between its two renames), deleted
    when ``<name>`` is in place. Siblings of a live writer are left alone.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    done: list[str] = []
    for entry in sorted(folder.iterdir()):
        m = _SIBLING.match(entry.name)
        if m is None or (m["pid"] is not None and _alive(int(m["pid"]))):
            continue
        target = folder / m["name"]
        if m["tag"] == "old" and not target.exists() and not target.is_symlink():
            os.replace(entry, target)
            done.append(f"restored {target} from its complete copy {entry.name} (a write was interrupted)")
        else:
            _remove(entry)
            done.append(f"removed {entry} (left by an interrupted write)")
    if done:
        fsync_dir(folder)
    return done


def _drop_dead_temporaries(target: Path) -> None:
    """Delete the ``.tmp-`` siblings of ``target`` that writers no longer running left (killed mid-write)."""
    if not target.parent.is_dir():
        return
    for entry in target.parent.glob(f".{glob_escape(target.name)}.tmp-*"):
        m = _SIBLING.match(entry.name)
        if m is not None and m["name"] == target.name and m["pid"] is not None and not _alive(int(m["pid"])):
            _remove(entry)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _usual_modes(root: Path) -> None:
    """Give every file under ``root`` mode ``0o666`` and every folder ``0o777``, minus the umask."""
    mask = _umask()
    for p in root.rglob("*"):
        if not p.is_symlink():
            os.chmod(p, (0o777 if p.is_dir() else 0o666) & ~mask)
    os.chmod(root, 0o777 & ~mask)


def atomic_write_bytes(path: str | Path, data: bytes | bytearray | memoryview) -> Path:
    """Write ``data`` to ``path``: temporary file in the same folder, fsync, then ``os.replace``.

    Readers see the old content or the new one, never a partial file. The new file gets the usual
    permissions (``0o666`` minus the umask). Parent folders are created. Returns ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _drop_dead_temporaries(path)
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
    _drop_dead_temporaries(target)
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
        _usual_modes(tmp)
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
