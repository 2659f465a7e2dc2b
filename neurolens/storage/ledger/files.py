"""File primitives of the store: every path inside a root, opened without following links.

A store's files are untrusted (stores are merged from other machines and edited by
hand), so every open walks from the root one component at a time with ``O_NOFOLLOW``:
nothing is read or written through a symlink, nothing outside the root is reached, and
anything but a regular file (a FIFO, a device) is refused before it can block a reader.
On top of that: atomic replacement, durable appends, locks (no-clobber creation: creating.py).
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import stat
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from neurolens.errors import StoreError

if sys.platform != "win32":
    import fcntl

NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_DIRECTORY = getattr(os, "O_DIRECTORY", 0)
_NONBLOCK = getattr(os, "O_NONBLOCK", 0)
CLOEXEC = getattr(os, "O_CLOEXEC", 0)

# A run's files: YYYY/MM/DD/<backend>/<run_id>.json or .fp.json (see document.run_relpaths).
_RUN_FILE = re.compile(
    r"\d{4}/\d{2}/\d{2}/(?!\.{1,2}/)[^/\\\x00-\x1f\x7f]{1,100}/[A-Za-z0-9][A-Za-z0-9_-]{0,127}(\.fp)?\.json"
)


# What a store holds, so that every reader works in bounded memory: a run file (or its
# fingerprint) of at most 16 MiB, a manifest line of at most 1 MiB. Writers, merge and pull
# refuse more; readers skip it, saying where.
MAX_RUN_FILE_BYTES = 16 * 1024 * 1024
MAX_LINE_BYTES = 1024 * 1024


def check_run_path(relative: str) -> str:
    """``relative`` if it has the layout of a run file under a root, else StoreError."""
    if not isinstance(relative, str) or not _RUN_FILE.fullmatch(relative):
        raise StoreError(
            f"{relative!r} is not a run file path of the store layout (YYYY/MM/DD/<backend>/<id>.json)"
        )
    return relative


def _parts(relative: str) -> list[str]:
    parts = relative.split("/")
    if not relative or relative.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise StoreError(f"{relative!r} is not a path inside the store")
    return parts


def _refusal(root: Path, relative: str, exc: OSError) -> StoreError:
    if exc.errno in (errno.ELOOP, errno.ENOTDIR, errno.EMLINK):
        return StoreError(f"{root / relative}: refusing to follow a symlink or a non-folder inside the store")
    return StoreError(f"{root / relative}: {exc.strerror or exc}")


def open_dir(root: Path, relative: str = "", *, create: bool = False) -> int:
    """A file descriptor of the folder ``relative`` under ``root`` (created when ``create``)."""
    fd = os.open(root, os.O_RDONLY | _DIRECTORY | CLOEXEC)
    if not relative:
        return fd
    try:
        for part in _parts(relative):
            try:
                child = _open_child_dir(fd, part, create)
            except OSError as exc:
                raise _refusal(root, relative, exc) from None
            os.close(fd)
            fd = child
    except BaseException:
        os.close(fd)
        raise
    return fd


def _open_child_dir(fd: int, name: str, create: bool) -> int:
    """The folder ``name`` in the folder ``fd``, made first if missing and ``create``
    (the open comes first: the folders of a day exist for all but its first run)."""
    flags = os.O_RDONLY | _DIRECTORY | NOFOLLOW | CLOEXEC
    try:
        return os.open(name, flags, dir_fd=fd)
    except FileNotFoundError:
        if not create:
            raise
    with contextlib.suppress(FileExistsError):  # another writer made it meanwhile
        os.mkdir(name, 0o755, dir_fd=fd)
    return os.open(name, flags, dir_fd=fd)


def open_in_store(root: Path, relative: str, flags: int, mode: int = 0o644) -> int:
    """Open the regular file ``relative`` under ``root`` without following any link."""
    dir_fd = open_dir(root, relative.rpartition("/")[0])
    try:
        return _open_regular(dir_fd, root, relative, flags, mode)[0]
    finally:
        os.close(dir_fd)


def _open_regular(
    dir_fd: int, root: Path, relative: str, flags: int, mode: int = 0o644, *, reading: bool = False
) -> tuple[int, os.stat_result]:
    """Open the regular file ``relative``'s last component in its folder ``dir_fd``; the
    descriptor and the status it was checked with. ``reading``: for a read-only use that
    keeps O_NONBLOCK (it changes nothing for a regular file), a syscall saved per file."""
    name = relative.rpartition("/")[2]
    _parts(name)
    try:
        fd = os.open(name, flags | NOFOLLOW | _NONBLOCK | CLOEXEC, mode, dir_fd=dir_fd)
    except FileNotFoundError:
        raise
    except OSError as exc:
        if exc.errno == errno.EISDIR:
            raise StoreError(f"{root / relative} is a folder, not a file") from None
        raise _refusal(root, relative, exc) from None
    status = os.fstat(fd)
    if not stat.S_ISREG(status.st_mode):
        os.close(fd)
        raise StoreError(f"{root / relative} is not a regular file")
    if _NONBLOCK and not reading and sys.platform != "win32":  # only so a FIFO cannot block the open
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~_NONBLOCK)
    return fd, status


def read_store_file(root: Path, relative: str) -> bytes:
    """The bytes of a regular file inside the store, opened as ``open_in_store`` opens it."""
    with Folders(root) as folders:
        return folders.read(relative)


def read_run_file(root: Path, relative: str) -> bytes:
    """``Folders.read_run_file`` for one file."""
    with Folders(root) as folders:
        return folders.read_run_file(relative)


class Folders:
    """Folders under a root, each opened once (a component at a time, without following
    links, as ``open_dir`` does) and kept open: reading or writing a batch of run files in
    a few day folders costs one open per file, not one per path component."""

    def __init__(self, root: Path, *, create: bool = False, keep: int = 256) -> None:
        self.root = root
        self.create = create
        self.keep = keep
        self._open: dict[str, int] = {}

    def fd(self, folder: str) -> int:
        """The descriptor of ``folder`` (created when ``create``); owned by this object."""
        fd = self._open.pop(folder, None)
        if fd is None:
            fd = open_dir(self.root, folder, create=self.create)
            if len(self._open) >= self.keep:  # the least recently used goes
                os.close(self._open.pop(next(iter(self._open))))
        self._open[folder] = fd
        return fd

    def read(self, relative: str, *, limit: int | None = None) -> bytes:
        """The bytes of the regular file ``relative`` inside the root, never through a link;
        StoreError for a file of more than ``limit`` bytes (nothing of it read)."""
        folder = self.fd(relative.rpartition("/")[0])
        fd, status = _open_regular(folder, self.root, relative, os.O_RDONLY, reading=True)
        try:
            if limit is not None and status.st_size > limit:
                raise StoreError(f"{relative} is {status.st_size:,} bytes; a store holds {limit:,} at most")
            # one read of the size the file had (one more byte asks whether it grew since)
            data = os.read(fd, status.st_size + 1)
            if len(data) <= status.st_size:
                return data
            chunks = [data]
            while chunk := os.read(fd, 1 << 20):
                chunks.append(chunk)
                if limit is not None and sum(map(len, chunks)) > limit:  # it grew since
                    raise StoreError(f"{relative} is over {limit:,} bytes; a store holds {limit:,} at most")
            return b"".join(chunks)
        finally:
            os.close(fd)

    def read_run_file(self, relative: str) -> bytes:
        """A run file or fingerprint (its path checked against the layout, its size against
        ``MAX_RUN_FILE_BYTES``)."""
        return self.read(check_run_path(relative), limit=MAX_RUN_FILE_BYTES)

    def close(self) -> None:
        for fd in self._open.values():
            os.close(fd)
        self._open.clear()

    def __enter__(self) -> Folders:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def fsync_dir(dir_fd: int) -> None:
    """Make a rename or link inside a folder durable (no-op where unsupported)."""
    if os.name == "posix":
        os.fsync(dir_fd)


def replace_file_atomically(root: Path, name: str, data: bytes) -> None:
    """Replace a derived file (the index) at the top of ``root`` in one rename: readers see
    old or new, never half. The temporary file is removed on every failure."""
    with replacing(root, name) as handle:
        handle.write(data)


@contextlib.contextmanager
def replacing(root: Path, name: str) -> Iterator[BinaryIO]:
    """A file to write the new ``root/name`` into, streamed; on a clean exit it is fsynced
    and renamed over the old one in one step, on any failure removed (the old one stays)."""
    tmp = f".{name}.{os.getpid()}.tmp"
    dir_fd = open_dir(root)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | NOFOLLOW | CLOEXEC, 0o644, dir_fd=dir_fd)
        try:
            with os.fdopen(fd, "wb") as handle:
                yield handle
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        except BaseException as exc:
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=dir_fd)
            if isinstance(exc, OSError) and exc.filename is None:  # fd writes name no file
                raise OSError(exc.errno, exc.strerror, str(root / name)) from None
            raise
    finally:
        os.close(dir_fd)


@contextlib.contextmanager
def locked(fd: int, *, blocking: bool = True, shared: bool = False) -> Iterator[bool]:
    """Hold an OS lock (``flock``) on an open file, exclusive unless ``shared``; yields
    False if not acquired."""
    if sys.platform == "win32":  # pragma: no cover
        yield True
        return
    operation = fcntl.LOCK_SH if shared else fcntl.LOCK_EX
    try:
        fcntl.flock(fd, operation if blocking else operation | fcntl.LOCK_NB)
    except BlockingIOError:
        yield False
        return
    try:
        yield True
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)


# Held shared by every writer from its first file to its manifest line, exclusively by
# ``verify --fix``: a run file without a line is a killed writer's only while nobody holds it.
WRITERS_LOCK = "_writers.lock"


@contextlib.contextmanager
def writing(root: Path, *, alone: bool = False) -> Iterator[bool]:
    """Hold the store's writers lock: shared (a writer; blocks only while a fix runs), or
    ``alone`` (exclusive, not waiting: yields False while any writer is at work)."""
    fd = open_in_store(root, WRITERS_LOCK, os.O_RDWR | os.O_CREAT)
    try:
        with locked(fd, shared=not alone, blocking=not alone) as held:
            yield held
    finally:
        os.close(fd)


def append_lines_durably(root: Path, name: str, lines: list[bytes]) -> int:
    """Append newline-terminated lines to ``root/name`` in one write under an exclusive
    lock; fsync; return the new size. A line torn by a writer killed mid-append is closed
    first, so these lines start fresh."""
    assert all(line.endswith(b"\n") and b"\n" not in line[:-1] for line in lines)
    data = b"".join(lines)
    fd = open_in_store(root, name, os.O_RDWR | os.O_APPEND | os.O_CREAT)
    try:
        with locked(fd):
            size = os.fstat(fd).st_size
            if size and os.pread(fd, 1, size - 1) != b"\n":
                data = b"\n" + data
            write_all(fd, data)
            os.fsync(fd)
            return size + len(data)
    finally:
        os.close(fd)


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]
