"""The derived index: ``_index.parquet`` (or ``_index.jsonl`` without pyarrow).

Like a Delta Lake checkpoint, the index covers a prefix of the manifest and records
how far (``manifest_bytes``) and the hash of the last line it covers, so a reader can
check it against the manifest in O(1) and add the uncovered tail itself. Compaction
folds the tail in; a rebuild makes the same bytes from the manifest alone.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from neurolens.errors import IndexWarning, ManifestWarning
from neurolens.storage.files import locked, open_in_store, replace_file_atomically
from neurolens.storage.manifest import (
    MANIFEST_NAME,
    ManifestRead,
    Progress,
    last_line_sha256_before,
    manifest_size,
    read_blocks,
)
from neurolens.storage.rows import IndexMeta, Rows, backend

LOCK_NAME = "_index.lock"

# Compact once the uncovered tail passes this share of the covered manifest (and a
# floor): amortised O(1) per write, while readers parse at most ~1/64 of the manifest.
_TAIL_FLOOR_BYTES = 1024 * 1024
_TAIL_SHARE = 64


def index_path(root: Path) -> Path:
    return root / backend().index_name


@dataclass
class IndexState:
    rows: Rows
    manifest_bytes: int  # how much of the manifest the rows cover


def read_tail(
    root: Path, start: int = 0, *, progress: Progress | None = None, stop: int | None = None
) -> tuple[Rows, ManifestRead]:
    """Rows of the manifest from byte ``start`` (to ``stop``), in manifest order, duplicates
    included; skipped lines are in the ``ManifestRead``'s problems."""
    rows = backend()
    read = ManifestRead()
    parts = []
    for offset, block in read_blocks(root, read, start, progress=progress, stop=stop):
        part, problems = rows.parse_block(offset, block)
        parts.append(part)
        read.problems.extend(problems)
    return rows.concat(parts), read


def duplicate_message(run_id: str) -> str:
    return f"duplicate run id {run_id!r}: the first manifest entry is kept"


def read_index(root: Path) -> tuple[IndexState | None, str | None]:
    """The index, checked against the manifest; else (None, why it cannot be used)."""
    name = backend().index_name
    if not os.path.lexists(root / name):
        return None, f"index {name} is missing"
    try:
        found = backend().read_index(root)
    except Exception as exc:  # any damage means "no usable index"; the manifest still answers
        return None, f"index {name} is corrupt or unreadable ({type(exc).__name__})"
    if found is None:
        return None, f"index {name} is corrupt or from another version"
    meta, rows = found
    if meta.manifest_bytes > manifest_size(root):
        return None, f"index {name} covers more than the manifest holds"
    try:
        if (
            meta.manifest_bytes
            and last_line_sha256_before(root, meta.manifest_bytes) != meta.last_line_sha256
        ):
            return None, f"index {name} does not match the manifest"
    except OSError as exc:
        return None, f"the manifest cannot be read ({exc.strerror or exc})"
    return IndexState(rows=rows, manifest_bytes=meta.manifest_bytes), None


def _fold_tail(
    root: Path, state: IndexState | None, progress: Progress | None = None
) -> tuple[Rows, ManifestRead]:
    """The index's rows plus the manifest tail it does not cover, duplicates dropped."""
    tail_rows, tail = read_tail(root, state.manifest_bytes if state else 0, progress=progress)
    fresh, duplicates = tail_rows.without_duplicates(state.rows if state else None)
    tail.problems.extend(duplicate_message(run_id) for run_id in duplicates)
    if state is None:
        return fresh, tail
    return (backend().concat([state.rows, fresh]) if len(fresh) else state.rows), tail


def snapshot(root: Path, *, warn: bool = True) -> Rows:
    """Every valid manifest entry, for readers: never reads run JSON files, never writes.
    Problems with the index or the manifest are warnings when ``warn``."""
    state, problem = read_index(root)
    size = manifest_size(root)
    if state is not None and size == state.manifest_bytes:
        # Fully compacted: the index alone answers. (Building even an empty Table in
        # Python makes pyarrow import pandas, which would double `neurolens ls` time.)
        return state.rows
    rows, tail = _fold_tail(root, state)
    if warn:
        if problem and size:  # an empty or new store has nothing to index
            warnings.warn(
                f"{problem}; answering from the manifest (`neurolens rebuild` restores the index)",
                IndexWarning,
                stacklevel=2,
            )
        for message in tail.problems:
            warnings.warn(message, ManifestWarning, stacklevel=2)
    return rows


def has_run(root: Path, run_id: str) -> bool:
    """Whether the store holds a run of this id (whatever its day or backend)."""
    if not os.path.lexists(root / MANIFEST_NAME):
        return False
    return run_id in snapshot(root, warn=False).with_prefix("run_id", run_id).ids()


@contextlib.contextmanager
def _index_lock(root: Path, *, blocking: bool) -> Iterator[bool]:
    fd = open_in_store(root, LOCK_NAME, os.O_RDWR | os.O_CREAT)
    try:
        with locked(fd, blocking=blocking) as acquired:
            yield acquired
    finally:
        os.close(fd)


@dataclass
class IndexReport:
    path: Path
    rows: int
    problems: list[str]


def compact(
    root: Path,
    *,
    from_scratch: bool = False,
    blocking: bool = True,
    warn: bool = True,
    progress: Progress | None = None,
) -> IndexReport | None:
    """Fold the manifest tail into the index (or rebuild it from the manifest alone).

    Runs under the index lock; with ``blocking=False`` it gives up at once (None) when
    another process is compacting. Writers are never blocked: they only take the
    manifest lock.
    """
    path = index_path(root)
    with _index_lock(root, blocking=blocking) as acquired:
        if not acquired:
            return None
        state = None if from_scratch else read_index(root)[0]
        rows, tail = _fold_tail(root, state, progress)
        if warn:
            for message in tail.problems:
                warnings.warn(message, ManifestWarning, stacklevel=3)
        if state is None or tail.end != state.manifest_bytes:  # else nothing new: already compact
            files = backend().write_index(rows, IndexMeta(tail.end, tail.last_line_sha256))
            for name, data in files.items():
                replace_file_atomically(root, name, data)
        return IndexReport(path=path, rows=len(rows), problems=tail.problems)


# (root, the index files' identities) -> what the index covers: a writer asks after every
# run, and the index changes rarely, so its footer is read once per change, not per write.
_covered: dict[tuple[Any, ...], IndexMeta | None] = {}


def _index_identity(root: Path) -> tuple[Any, ...] | None:
    rows = backend()
    names = [rows.index_name, *([rows.meta_name] if hasattr(rows, "meta_name") else [])]
    identity: list[Any] = [str(root.absolute())]
    for name in names:
        try:
            st = os.stat(root / name, follow_symlinks=False)
        except OSError:
            return None
        identity += [st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]
    return tuple(identity)


def needs_compaction(root: Path, manifest_bytes: int) -> bool:
    """Whether a writer that just grew the manifest to ``manifest_bytes`` should compact."""
    identity = _index_identity(root)
    if identity is None:
        return True
    if identity not in _covered:
        if len(_covered) > 64:
            _covered.clear()
        _covered[identity] = backend().read_meta(root)
    meta = _covered[identity]
    if meta is None:
        return True
    covered = meta.manifest_bytes
    return manifest_bytes - covered > max(_TAIL_FLOOR_BYTES, covered // _TAIL_SHARE)
