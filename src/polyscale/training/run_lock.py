"""An exclusive lock on a run directory, so that two runs never write into one.

The lock is the file ``<run>/.polyscale.lock``, holding the holder's process id, host, command and start
time (JSON). Where the platform has ``fcntl`` the file is also ``flock``-ed: the kernel releases that lock
when the holder dies, so a lock left by a killed run is recognised as stale even if its process id has
been reused. Without ``fcntl`` (Windows) the file is created exclusively and a stale one is recognised by
its process id.

A second run on a locked directory is refused at once, naming the holder. A stale lock (its holder is gone)
is taken over with a notice naming the dead holder. The lock is re-entrant within one process: the pipeline
that holds it may call the training loop, which asks for it again.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None  # type: ignore[assignment]

LOCK_NAME = ".polyscale.lock"
__all__ = ["LOCK_NAME", "RunDirectoryLocked", "RunLock"]

_HELD: dict[str, tuple[int, int | None]] = {}  # resolved run dir -> (depth, fd) held by this process


class RunDirectoryLocked(ValueError):
    """Another live run holds the directory's lock."""


def _describe(info: dict[str, Any]) -> str:
    started = info.get("started")
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)) if isinstance(started, float) else "?"
    return (
        f"pid {info.get('pid', '?')} on host {info.get('host', '?')}"
        f" ({info.get('command') or 'polyscale'}, started {when})"
    )


def _read(path: Path) -> dict[str, Any]:
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return info if isinstance(info, dict) else {}


def _pid_alive(pid: object) -> bool:
    if not isinstance(pid, int):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


class RunLock:
    """``with RunLock(run_dir, command="train"): ...`` holds ``run_dir``'s lock for the block.

    Raises (on entry):
        RunDirectoryLocked: another live process holds the lock (names its pid, host and command).
    """

    def __init__(
        self, run_dir: str | Path, *, command: str = "", notify: Callable[[str], None] | None = None
    ) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_NAME
        self.command = command
        self.notify = notify if notify is not None else _stderr
        self._key = ""
        self.nested = False  # acquired while this process already held the lock (an outer block holds it)

    def _info(self) -> dict[str, Any]:
        return {"pid": os.getpid(), "host": socket.gethostname(), "command": self.command,
                "started": time.time()}  # fmt: skip

    def acquire(self) -> RunLock:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._key = str(self.run_dir.resolve())
        if self._key in _HELD:  # this process already holds it
            depth, fd = _HELD[self._key]
            _HELD[self._key] = (depth + 1, fd)
            self.nested = True
            return self
        fd = self._acquire_flock() if fcntl is not None else self._acquire_exclusive()
        _HELD[self._key] = (1, fd)
        return self

    def _refuse(self, info: dict[str, Any]) -> RunDirectoryLocked:
        return RunDirectoryLocked(
            f"run directory {self.run_dir} is in use by another run ({_describe(info)}); wait for it to finish "
            f"or use another output directory (if that run is gone, delete {self.path})"
        )

    def _stale_notice(self, info: dict[str, Any]) -> None:
        if info:
            self.notify(f"taking over the stale lock {self.path} left by {_describe(info)}, which has ended")

    def _acquire_flock(self) -> int:
        assert fcntl is not None
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise self._refuse(_read(self.path)) from None
            try:  # the holder may have removed the file between our open and our flock: lock the new one
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        previous = _read(self.path)
        if previous.get("host") not in (None, socket.gethostname()) and _pid_alive(previous.get("pid")):
            # flock does not reach across machines (network file systems): trust the other host's claim
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
            raise self._refuse(previous)
        self._stale_notice(previous)
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(self._info()) + "\n").encode(), 0)
        return fd

    def _acquire_exclusive(self) -> None:
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            except FileExistsError:
                info = _read(self.path)
                if info.get("host") == socket.gethostname() and not _pid_alive(info.get("pid")):
                    self._stale_notice(info)
                    self.path.unlink(missing_ok=True)
                    continue
                raise self._refuse(info) from None
            with os.fdopen(fd, "w") as f:
                f.write(json.dumps(self._info()) + "\n")
            return None
        raise self._refuse(_read(self.path))

    def release(self) -> None:
        depth, fd = _HELD.get(self._key, (0, None))
        if depth > 1:
            _HELD[self._key] = (depth - 1, fd)
            return
        _HELD.pop(self._key, None)
        if depth == 0:
            return
        self.path.unlink(missing_ok=True)
        if fd is not None:
            os.close(fd)  # closing releases the flock

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(
        self, kind: type[BaseException] | None, err: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()


def _stderr(message: str) -> None:
    print(f"polyscale: {message}", file=sys.stderr)
