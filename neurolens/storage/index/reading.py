"""Reading the derived index: ``_index.parquet`` (or ``_index.jsonl`` without pyarrow)
with the manifest tail it does not cover yet.

Like a Delta Lake checkpoint, the index covers a prefix of the manifest and records
how far (``manifest_bytes``) and the hash of the last line it covers, so a reader can
check it against the manifest in O(1) and add the uncovered tail itself (``compaction``
folds the tail in; a rebuild makes the same bytes from the manifest alone).
"""

from __future__ import annotations

import contextlib
import json
import os
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from neurolens.errors import IndexWarning, ManifestWarning, StoreError
from neurolens.storage.index.backend import backend, index_name, plain_rows
from neurolens.storage.index.filters import RunFilter
from neurolens.storage.index.rows import OFFSET_COLUMN, IndexFile, IndexMeta, Rows, parse_lines
from neurolens.storage.ledger.manifest import (
    MANIFEST_NAME,
    ManifestRead,
    Progress,
    coerce_entry,
    last_line_sha256_before,
    manifest_size,
    open_manifest,
    read_blocks,
)


def index_path(root: Path) -> Path:
    return root / index_name()


@dataclass
class IndexState:
    rows: Rows
    manifest_bytes: int  # how much of the manifest the rows cover


def read_tail(
    root: Path, start: int = 0, *, progress: Progress | None = None, stop: int | None = None
) -> tuple[Rows, ManifestRead]:
    """Rows of the manifest from byte ``start`` (to ``stop``), in manifest order, duplicates
    included; skipped lines are in the ``ManifestRead``'s problems."""
    read = ManifestRead()
    parts = list(parsed_blocks(root, read, start, progress=progress, stop=stop))
    return backend().concat(parts), read


def session_run_ids(root: Path, session_id: str, start: int) -> set[str]:
    """Ids of the runs of ``session_id`` among the manifest's lines from byte ``start``:
    a session that noted the manifest's size when it began counts its runs without the
    index (nor pyarrow), and counts those of every process that wrote for it."""
    read = ManifestRead()
    ids: set[str] = set()
    for offset, block in read_blocks(root, read, start):
        entries, _, _ = parse_lines(offset, block)
        ids.update(entry["run_id"] for entry in entries if entry["session_id"] == session_id)
    return ids


def parsed_blocks(
    root: Path, read: ManifestRead, start: int, *, progress: Progress | None = None, stop: int | None = None
) -> Iterator[Rows]:
    rows = backend()
    for offset, block in read_blocks(root, read, start, progress=progress, stop=stop):
        part, problems = rows.parse_block(offset, block)
        read.problems.extend(problems)
        yield part


def duplicate_message(run_id: str) -> str:
    return f"duplicate run id {run_id!r}: the first manifest entry is kept"


class FirstOfEachId:
    """Drops rows whose run id an earlier row had, as parts stream by (the first wins)."""

    def __init__(self) -> None:
        self.seen: set[str] = set()
        self.duplicates: list[str] = []

    def __call__(self, part: Rows) -> Rows:
        ids = part.ids()
        fresh = set(ids)
        if len(fresh) == len(ids) and self.seen.isdisjoint(fresh):
            self.seen |= fresh  # the common case: no Python loop over the rows
            return part
        kept, duplicates = part.without_seen(self.seen)
        self.duplicates.extend(duplicates)
        return kept


def _check_covers(root: Path, meta: IndexMeta, name: str) -> str | None:
    """Why an index claiming ``meta`` does not fit the manifest (None if it does)."""
    if meta.manifest_bytes > manifest_size(root):
        return f"index {name} covers more than the manifest holds"
    try:
        covered = meta.manifest_bytes
        if covered and last_line_sha256_before(root, covered) != meta.last_line_sha256:
            return f"index {name} does not match the manifest"
    except OSError as exc:
        return f"the manifest cannot be read ({exc.strerror or exc})"
    return None


@contextlib.contextmanager
def opened_index(root: Path) -> Iterator[tuple[IndexFile | None, str | None]]:
    """The index, open and checked against the manifest; else (None, why it cannot be used)."""
    name = backend().index_name
    if not os.path.lexists(root / name):
        yield None, f"index {name} is missing"
        return
    try:
        index = backend().open_index(root)
    except StoreError as exc:  # a shape no index of ours has
        yield None, f"{exc}: not used"
        return
    except Exception as exc:  # any damage means "no usable index"; the manifest still answers
        yield None, f"index {name} is corrupt or unreadable ({type(exc).__name__})"
        return
    if index is None:
        yield None, f"index {name} is corrupt or from another version"
        return
    with index:
        problem = _check_covers(root, index.meta, name)
        yield (None, problem) if problem else (index, None)


def read_index(root: Path) -> tuple[IndexState | None, str | None]:
    """The index's rows, checked against the manifest; else (None, why they cannot be used)."""
    name = backend().index_name
    with opened_index(root) as (index, problem):
        if index is None:
            return None, problem
        try:
            rows = index.rows()
        except Exception as exc:  # damage past the footer
            return None, f"index {name} is corrupt or unreadable ({type(exc).__name__})"
        return IndexState(rows=rows, manifest_bytes=index.meta.manifest_bytes), None


def _fresh_tail(
    root: Path, start: int, known: Callable[[list[str]], Rows] | None, progress: Progress | None = None
) -> tuple[Rows, ManifestRead]:
    """The manifest's rows from byte ``start``, less ids seen earlier there or among the
    rows ``known`` gives for the tail's ids (the first wins); problems name the dropped."""
    tail_rows, tail = read_tail(root, start, progress=progress)
    fresh, duplicates = tail_rows.without_duplicates(known(tail_rows.ids()) if known else None)
    tail.problems.extend(duplicate_message(run_id) for run_id in duplicates)
    return fresh, tail


def _fold_tail(
    root: Path, state: IndexState | None, progress: Progress | None = None
) -> tuple[Rows, ManifestRead]:
    """The index's rows plus the manifest tail it does not cover, duplicates dropped."""
    start = state.manifest_bytes if state else 0
    fresh, tail = _fresh_tail(root, start, (lambda _: state.rows) if state else None, progress)
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


def stream_rows(root: Path, flt: RunFilter) -> Iterator[Rows]:
    """The rows meeting ``flt``'s conditions (not its session or limit), part by part in the
    manifest's order: the index's row groups, then the tail it does not cover; without a
    usable index, the manifest's blocks (duplicate ids dropped as they stream by). Holds a
    part at a time, not the store: for readers that need no order (export)."""
    conditions = replace(flt, session_id=None, limit=None)
    with opened_index(root) as (index, problem):
        if index is not None:
            for part in index.parts():
                yield part.filter(conditions)
            covered = index.meta.manifest_bytes
            if manifest_size(root) > covered:
                extra, tail = _fresh_tail(root, covered, index.run_ids)
                for message in tail.problems:
                    warnings.warn(message, ManifestWarning, stacklevel=2)
                yield extra.filter(conditions)
            return
    if problem and manifest_size(root):
        warnings.warn(f"{problem}; answering from the manifest", IndexWarning, stacklevel=2)
    read, first = ManifestRead(), FirstOfEachId()
    for part in parsed_blocks(root, read, 0):
        yield first(part).filter(conditions)
    for message in read.problems:
        warnings.warn(message, ManifestWarning, stacklevel=2)


# A query with a limit up to this many rows reads its rows' lines from the manifest (one
# small read each) instead of every column of the index.
_LINES_AT_MOST = 1000


def select_rows(
    root: Path,
    flt: RunFilter,
    narrowing: Callable[[Rows], Rows],
    columns: Sequence[str] | None = None,
    *,
    ordered: bool = True,
    as_dictionary: Sequence[str] = (),
) -> Rows:
    """The rows meeting ``flt``'s conditions, then ``narrowing`` (the session), newest
    first (in no order when not ``ordered`` and there is no limit), at most
    ``flt.limit``; with at least ``columns`` (None: all), those in ``as_dictionary``
    perhaps dictionary-encoded. Reads only the columns it needs; never reads run files,
    never writes."""
    conditions = replace(flt, session_id=None, limit=None)
    with opened_index(root) as (index, _):
        if index is None:  # snapshot says why, and answers from the manifest
            return narrowing(snapshot(root).filter(conditions)).newest(flt.limit)
        covered = index.meta.manifest_bytes
        extra = None
        if manifest_size(root) > covered:
            extra, tail = _fresh_tail(root, covered, index.run_ids)
            for message in tail.problems:
                warnings.warn(message, ManifestWarning, stacklevel=3)
        order = ["created_at", "run_id", "session_id"]
        if index.line_offsets and flt.limit is not None and flt.limit <= _LINES_AT_MOST:
            # Only times and offsets (ids too for a session query): the run_id column is the
            # costliest to read, and it is in the lines read after.
            keys = ["created_at", OFFSET_COLUMN, *(order[1:] if flt.session_id else [])]
            chosen = narrowing(index.matching(conditions, keys, extra)).newest_candidates(flt.limit)
            fetched = _lines_at(root, chosen) if len(chosen) <= _LINES_AT_MOST else None
            if fetched is not None:
                return fetched.newest(flt.limit)
        wanted = None if columns is None else [*columns, *order]
        rows = narrowing(index.matching(conditions, wanted, extra, as_dictionary=as_dictionary))
        return rows if flt.limit is None and not ordered else rows.newest(flt.limit)


def _lines_at(root: Path, rows: Rows) -> Rows | None:
    """The manifest entries of ``rows`` (in their order), read at their lines' offsets;
    None if a line there is not the row's (the manifest was edited under the index)."""
    keys = rows.columns(["created_at", OFFSET_COLUMN])
    entries = []
    with open_manifest(root) as handle:
        for created_at, offset in zip(keys["created_at"], keys[OFFSET_COLUMN], strict=True):
            line = _line_at(handle.fileno(), offset)
            try:
                entry = coerce_entry(json.loads(line))
            except (ValueError, RecursionError):
                return None
            if isinstance(entry, str) or entry["created_at"] != created_at:
                return None
            entries.append(entry)
    return plain_rows(entries)


def _line_at(fd: int, offset: int) -> bytes:
    size = 4096
    while True:
        data = os.pread(fd, size, offset)
        end = data.find(b"\n")
        if end >= 0 or len(data) < size:
            return data if end < 0 else data[:end]
        size *= 4


def has_run(root: Path, run_id: str) -> bool:
    """Whether the store holds a run of this id (whatever its day or backend)."""
    if not os.path.lexists(root / MANIFEST_NAME):
        return False
    with opened_index(root) as (index, _):
        if index is None:
            return run_id in snapshot(root, warn=False).with_prefix("run_id", run_id).ids()
        # only the row groups whose id range could hold it, then the uncovered tail
        if run_id in index.run_ids([run_id]).with_prefix("run_id", run_id).ids():
            return True
        return run_id in read_tail(root, index.meta.manifest_bytes)[0].ids()
