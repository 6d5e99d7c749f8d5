"""Writing files so that a crash, a kill or a full disk never leaves a half-written one, a lock
that keeps two processes out of the same run directory, and one that makes them take turns.

Every file rnnkit writes goes to a temp file beside its destination (named ``.<name>.<random>.tmp``),
is flushed and fsynced, and only then renamed over the destination; readers see the old file or
the new one, never a part. Files get the permissions of the user's umask, like any other program's
(``mkstemp`` alone would make them 0600).
"""

from __future__ import annotations

import contextlib
import os
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from rnnkit.errors import RnnkitError

TEMP_SUFFIX = ".tmp"


def _read_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


UMASK = _read_umask()


def write_temp(path: Path, data: bytes) -> Path:
    """Write ``data`` to a new temp file beside ``path`` (fsynced, umask permissions); returns its path."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMP_SUFFIX)
    try:
        os.fchmod(fd, 0o666 & ~UMASK)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    os.close(fd)
    return Path(tmp)


def fsync_directory(directory: Path) -> None:
    """Make the renames in ``directory`` durable (where the platform allows it)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def renamed_into_place(tmp: str | os.PathLike, path: Path) -> Iterator[None]:
    """When the ``with`` block ends normally, rename the temp file ``tmp`` over ``path`` and fsync
    the directory; when it (or the rename) ends by an exception, remove ``tmp``."""
    try:
        yield
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_directory(path.parent)


def atomic_write(path: str | os.PathLike, data: bytes) -> None:
    """Replace ``path`` with ``data``: temp file, fsync, rename, fsync of the directory."""
    path = Path(path)
    with renamed_into_place(write_temp(path, data), path):
        pass


def remove_temp_files(directory: Path) -> None:
    """Remove the temp files that killed writers left in ``directory``."""
    for path in directory.glob(f".*{TEMP_SUFFIX}"):
        with contextlib.suppress(OSError):
            path.unlink()


class DirectoryLock:
    """An exclusive lock on a directory (``fcntl.flock`` on ``<dir>/.lock``), held while a process
    writes there. The kernel releases it when the process ends, however it ends, so a killed
    process leaves no stale lock. The file names the holder (pid and host) for the error message."""

    NAME = ".lock"

    def __init__(self, directory: str | os.PathLike) -> None:
        self.directory = Path(directory)
        self.fd: int | None = None

    def acquire(self) -> DirectoryLock:
        import fcntl

        path = self.directory / self.NAME
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666 & ~UMASK)
        except OSError as exc:
            raise RnnkitError(f"cannot write to {self.directory}: {exc.strerror or exc}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise RnnkitError(
                f"{self.directory} is in use by another rnnkit process ({holder}); wait for it to finish or stop it"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing the descriptor releases the flock
            self.fd = None

    def __enter__(self) -> DirectoryLock:
        return self.acquire()

    def __exit__(self, *exc_info) -> None:
        self.release()


@contextlib.contextmanager
def taking_turns(directory: str | os.PathLike) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``directory`` itself (created if missing) for the ``with``
    block, waiting while another process holds it. Unlike :class:`DirectoryLock` it waits instead
    of refusing, and it leaves no file behind: for work that processes started together (torchrun's
    ranks, several runs) must do once, such as downloading a corpus into the cache."""
    import fcntl

    Path(directory).mkdir(parents=True, exist_ok=True)
    fd = os.open(directory, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the flock


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """A binary file to stream into: a temp file beside ``path``, fsynced and renamed over ``path``
    when the ``with`` block ends normally, and removed when it ends by an exception (a full disk,
    Ctrl-C, bad input): ``path`` then holds its old contents or nothing, never a part."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMP_SUFFIX)
    with renamed_into_place(tmp, path), os.fdopen(fd, "wb") as stream:
        os.fchmod(fd, 0o666 & ~UMASK)
        yield stream
        stream.flush()
        os.fsync(stream.fileno())
