"""No-clobber atomic creation of a store's files: a run is all there or not there, and
an existing name (a symlink included) is never overwritten."""

from __future__ import annotations

import contextlib
import errno
import os
from typing import Any

from neurolens.errors import RunExistsError
from neurolens.storage.ledger.files import CLOEXEC, NOFOLLOW, write_all


def create_file_atomically(dir_fd: int, name: str, data: bytes, *, durable: bool = True) -> None:
    """Write ``data`` to a new file ``name`` in the folder ``dir_fd``: all or nothing, never
    overwriting, never through a link.

    The bytes go to a file with no name yet (``O_TMPFILE``; elsewhere a temporary name)
    that is fsynced, then hard-linked into place: the link fails if ``name`` exists (a
    symlink included), so a clash raises RunExistsError and leaves both files as they
    were. ``durable=False`` skips the fsync for callers that sync a whole batch.
    """
    if _create_unnamed(dir_fd, name, data, durable=durable):
        return
    tmp = f".{name}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | NOFOLLOW | CLOEXEC, 0o644, dir_fd=dir_fd)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            if durable:
                os.fsync(handle.fileno())
        if not _link_new(tmp, name, dir_fd, src_dir_fd=dir_fd, follow_symlinks=False):
            _create_exclusive(dir_fd, name, data)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp, dir_fd=dir_fd)


# Whether unnamed (O_TMPFILE) files are linked into place. They are linked through /proc
# (linkat with AT_EMPTY_PATH needs a privilege): off without it, or once a link through it fails.
_unnamed_files = hasattr(os, "O_TMPFILE") and os.path.isdir("/proc/self/fd")


def _create_unnamed(dir_fd: int, name: str, data: bytes, *, durable: bool) -> bool:
    """``create_file_atomically`` through an unnamed file: no temporary name is created and
    removed (two folder updates fewer), and a crash leaves nothing behind. False where the
    file system or kernel has no ``O_TMPFILE``: the caller uses a temporary name."""
    global _unnamed_files
    if not _unnamed_files:
        return False
    try:
        fd = os.open(".", os.O_WRONLY | os.O_TMPFILE | CLOEXEC, 0o644, dir_fd=dir_fd)
    except OSError as exc:  # not supported by this file system (or kernel: EISDIR)
        if exc.errno in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL, errno.ENOENT):
            return False
        raise
    try:
        write_all(fd, data)
        if durable:
            os.fsync(fd)
        no_proc = (*_NO_HARD_LINKS, errno.ENOENT)
        linked = _link_new(f"/proc/self/fd/{fd}", name, dir_fd, unsupported=no_proc, follow_symlinks=True)
    finally:
        os.close(fd)
    if not linked:  # /proc hidden, or no hard links here: temporary names from now on
        _unnamed_files = False
    return linked


_NO_HARD_LINKS = (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV)


def _link_new(
    source: str, name: str, dir_fd: int, *, unsupported: tuple[int, ...] = _NO_HARD_LINKS, **how: Any
) -> bool:
    """Hard-link ``source`` as the new ``name`` in the folder ``dir_fd``: RunExistsError
    if ``name`` exists (a symlink included); False where the link fails with an errno of
    ``unsupported`` (a file system without hard links)."""
    try:
        os.link(source, name, dst_dir_fd=dir_fd, **how)
    except FileExistsError:
        raise _exists(name) from None
    except OSError as exc:
        if exc.errno not in unsupported:
            raise
        return False
    return True


def _exists(name: str) -> RunExistsError:
    return RunExistsError(f"{name} already exists; runs are never overwritten")


def _create_exclusive(dir_fd: int, name: str, data: bytes) -> None:
    try:
        fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | NOFOLLOW, 0o644, dir_fd=dir_fd)
    except FileExistsError:
        raise _exists(name) from None
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
