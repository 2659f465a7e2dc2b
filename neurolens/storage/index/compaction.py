"""Compaction: folding the manifest tail into the derived index, or rebuilding it from the
manifest alone, at points set by the manifest's size (amortised O(1) work per write)."""

from __future__ import annotations

import contextlib
import itertools
import math
import os
import stat
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from neurolens.errors import ManifestWarning
from neurolens.storage.index.backend import backend, index_name
from neurolens.storage.index.prefetch import prefetched
from neurolens.storage.index.reading import (
    FirstOfEachId,
    duplicate_message,
    index_path,
    opened_index,
    parsed_blocks,
)
from neurolens.storage.index.rows import IndexFile, IndexMeta, Rows
from neurolens.storage.ledger.files import locked, open_in_store
from neurolens.storage.ledger.manifest import ManifestRead, Progress

LOCK_NAME = "_index.lock"

# Writers compact at points spaced by this share of the manifest (and at least a floor
# apart): amortised O(1) per write, while readers parse about 1/64 of the manifest at most.
_TAIL_FLOOR_BYTES = 1024 * 1024
_TAIL_SHARE = 64


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
    manifest lock. Rows stream from the old index and the manifest into the new index,
    so memory stays bounded whatever the store's size.
    """
    with _index_lock(root, blocking=blocking) as acquired:
        if not acquired:
            return None
        report = None
        if not from_scratch:
            with opened_index(root) as (index, _):
                if index is not None:
                    try:
                        report = _rewrite(root, index, progress)
                    except _DamagedIndex:  # its footer was sound, a row group was not
                        report = None
        if report is None:
            report = _rewrite(root, None, progress)
    if warn:
        for message in report.problems:
            warnings.warn(message, ManifestWarning, stacklevel=3)
    return report


def _rewrite(root: Path, index: IndexFile | None, progress: Progress | None) -> IndexReport:
    """Write the index of ``index``'s rows and the manifest after them (all of it without)."""
    tail = ManifestRead()
    blocks = parsed_blocks(root, tail, index.meta.manifest_bytes if index else 0, progress=progress)
    if index is not None:
        first = next(blocks, None)  # a tail of no complete line leaves the index as it is
        if first is None:
            return IndexReport(path=index_path(root), rows=index.count(), problems=tail.problems)
        blocks = itertools.chain(_index_parts(index), [first], blocks)
    first_of_each = FirstOfEachId()
    rows = backend().write_index_stream(
        root,
        prefetched(kept for part in blocks if len(kept := first_of_each(part))),
        lambda: IndexMeta(tail.end, tail.last_line_sha256),
    )
    tail.problems.extend(duplicate_message(run_id) for run_id in first_of_each.duplicates)
    return IndexReport(path=index_path(root), rows=rows, problems=tail.problems)


class _DamagedIndex(Exception):
    pass


def _index_parts(index: IndexFile) -> Iterator[Rows]:
    try:
        yield from index.parts()
    except Exception as exc:
        raise _DamagedIndex from exc


def needs_compaction(root: Path, size_before: int, size_after: int) -> bool:
    """Whether a writer that grew the manifest from ``size_before`` to ``size_after`` bytes
    should compact: when there is no index file yet (or something else in its place), or
    when its append crossed a compaction point. The points depend on the manifest's size
    alone, so the question needs neither the index's footer nor pyarrow (most writers
    never read the index)."""
    try:
        if not stat.S_ISREG(os.lstat(root / index_name()).st_mode):
            return True
    except OSError:
        return True
    return _compaction_point(size_before) != _compaction_point(size_after)


def _compaction_point(size: int) -> int:
    """How many compaction points lie at or below ``size``: one per floor's worth of bytes
    up to ``_TAIL_SHARE`` floors, then one each time the manifest grows by 1/_TAIL_SHARE.
    So the uncovered tail stays under about twice max(floor, manifest / _TAIL_SHARE)
    (amortised O(1) index work per write) even when a compaction is skipped."""
    linear = _TAIL_SHARE * _TAIL_FLOOR_BYTES
    if size < linear:
        return size // _TAIL_FLOOR_BYTES
    return _TAIL_SHARE + int(math.log(size / linear) / math.log1p(1 / _TAIL_SHARE))
