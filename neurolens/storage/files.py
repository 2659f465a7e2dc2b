"""File primitives of the store: no-clobber atomic creation, durable appends, locks."""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Iterator
from pathlib import Path

from neurolens.errors import RunExistsError

if os.name == "posix":
    import fcntl
else:  # pragma: no cover - exercised on Windows only
    fcntl = None  # type: ignore[assignment]


def fsync_dir(path: Path) -> None:
    """Make a rename or link inside ``path`` durable (no-op where unsupported)."""
    if os.name != "posix":  # pragma: no cover
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def create_file_atomically(path: Path, data: bytes, *, durable: bool = True) -> None:
    """Write ``data`` to a new file at ``path``: all of it or nothing, never overwriting.

    The bytes go to a temporary file that is fsynced, then hard-linked into place: the
    link fails if ``path`` exists, so a clash raises RunExistsError and leaves both files
    as they were. ``durable=False`` skips the fsync for callers that sync a whole batch.
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            if durable:
                os.fsync(handle.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            raise RunExistsError(f"{path} already exists; runs are never overwritten") from None
        except OSError as exc:  # file systems without hard links
            if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV):
                raise
            _create_exclusive(path, data)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def _create_exclusive(path: Path, data: bytes) -> None:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        raise RunExistsError(f"{path} already exists; runs are never overwritten") from None
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def replace_file_atomically(path: Path, data: bytes) -> None:
    """Replace a derived file (the index) in one rename: readers see old or new, never half."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


@contextlib.contextmanager
def locked(fd: int, *, blocking: bool = True) -> Iterator[bool]:
    """Hold an exclusive OS lock (``flock``) on an open file; yields False if not acquired."""
    if fcntl is None:  # pragma: no cover
        yield True
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if blocking else fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        yield False
        return
    try:
        yield True
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)


def append_lines_durably(path: Path, lines: list[bytes]) -> int:
    """Append newline-terminated lines in one write under an exclusive lock; fsync; return
    the new size. A line torn by a writer killed mid-append is closed first, so these
    lines start fresh."""
    assert all(line.endswith(b"\n") and b"\n" not in line[:-1] for line in lines)
    data = b"".join(lines)
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        with locked(fd):
            size = os.fstat(fd).st_size
            if size and os.pread(fd, 1, size - 1) != b"\n":
                data = b"\n" + data
            _write_all(fd, data)
            os.fsync(fd)
            return size + len(data)
    finally:
        os.close(fd)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]
