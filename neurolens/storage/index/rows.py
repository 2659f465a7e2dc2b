"""The interface both index backends implement (``rows_plain``, ``rows_arrow`` with
``arrow_backend``): ``Rows``, the open ``IndexFile`` and the ``Backend`` that makes them.

The choice of backend is made once, in ``backend``; readers and writers go through these
interfaces. Only the index parses manifest lines (``parse_lines``).
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from neurolens.storage.index.filters import RunFilter
from neurolens.storage.ledger.files import MAX_LINE_BYTES
from neurolens.storage.ledger.manifest import coerce_entry

# Index-only column: where a row's line starts in the manifest, so a reader that found a
# few rows through narrow columns reads those lines, not every column of every row.
OFFSET_COLUMN = "manifest_offset"

INDEX_VERSION = "2"  # 2: Parquet row groups of 64Ki rows and the manifest_offset column


@dataclass(frozen=True)
class IndexMeta:
    """How much of the manifest an index covers, and the hash of the last line it covers."""

    manifest_bytes: int
    last_line_sha256: str | None


class Rows(ABC):
    """Index rows (the manifest's columns, ``tags`` as stored JSON), in a fixed order."""

    @abstractmethod
    def __len__(self) -> int: ...

    @abstractmethod
    def columns(self, names: Sequence[str]) -> dict[str, list[Any]]:
        """The named columns as Python lists."""

    @abstractmethod
    def records(self) -> list[dict[str, Any]]:
        """One dict per row."""

    @abstractmethod
    def keep(self, mask: Sequence[bool]) -> Rows:
        """The rows where ``mask`` is true."""

    @abstractmethod
    def filter(self, flt: RunFilter) -> Rows:
        """Rows meeting the equality and tag conditions of ``flt`` (not its limit)."""

    @abstractmethod
    def with_prefix(self, column: str, prefix: str) -> Rows:
        """Rows whose ``column`` starts with ``prefix`` (null never matches)."""

    @abstractmethod
    def without(self, column: str, values: Sequence[Any]) -> Rows:
        """Rows whose ``column`` is not among ``values`` (null is kept)."""

    @abstractmethod
    def newest(self, limit: int | None = None) -> Rows:
        """Newest first (``created_at``, then ``run_id``), at most ``limit`` rows."""

    @abstractmethod
    def equals(self, other: Rows) -> bool: ...

    def newest_candidates(self, limit: int) -> Rows:
        """The ``limit`` newest rows by ``created_at`` alone, and every row as new as the
        last of them: a superset of ``newest(limit)`` that needs no run_id."""
        times = self.columns(["created_at"])["created_at"]
        if limit >= len(times):
            return self
        last = sorted(times, reverse=True)[limit - 1] if limit else None
        return self.keep([last is not None and t >= last for t in times])

    def arrow(self) -> Any:
        """These rows as a pyarrow Table, or None where they are held otherwise."""
        return None

    def shared_ids(self, other: Rows) -> list[str]:
        """The run ids both these rows and ``other`` hold, sorted."""
        return sorted(set(self.ids()) & set(other.ids()))

    def ids(self) -> list[str]:
        return self.columns(["run_id"])["run_id"]

    def without_duplicates(self, known: Rows | None = None) -> tuple[Rows, list[str]]:
        """These rows less run ids seen in ``known`` or earlier here (the first wins),
        and the duplicate ids dropped."""
        return self.without_seen(set(known.ids()) if known is not None else set())

    def without_seen(self, seen: set[str]) -> tuple[Rows, list[str]]:
        """These rows less run ids in ``seen`` or earlier here, and the duplicate ids
        dropped; ``seen`` gains these rows' ids."""
        keep, duplicates = [], []
        for run_id in self.ids():
            duplicate = run_id in seen
            keep.append(not duplicate)
            if duplicate:
                duplicates.append(run_id)
            seen.add(run_id)
        return (self.keep(keep) if duplicates else self), duplicates


class IndexFile(ABC):
    """An open index whose metadata has been read; rows are read on demand."""

    meta: IndexMeta

    @abstractmethod
    def rows(self) -> Rows:
        """Every row, in manifest order."""

    @abstractmethod
    def parts(self) -> Iterator[Rows]:
        """Every row, in manifest order, a bounded number at a time."""

    @abstractmethod
    def count(self) -> int:
        """How many rows the index holds."""

    # Whether rows from ``matching`` carry OFFSET_COLUMN, so a few can be read from the manifest.
    line_offsets = False

    @abstractmethod
    def matching(
        self,
        flt: RunFilter,
        columns: Sequence[str] | None,
        extra: Rows | None = None,
        *,
        as_dictionary: Sequence[str] = (),
    ) -> Rows:
        """The rows of the index, then ``extra``, that meet ``flt``'s conditions (not its
        session or limit), with at least ``columns`` (None: all); text columns in
        ``as_dictionary`` may stay dictionary-encoded where the index encodes them."""

    def run_ids(self, among: Sequence[str]) -> Rows:
        """Rows with at least the run_id column: every row whose id is among ``among``
        (and perhaps others)."""
        return self.rows()

    def close(self) -> None:  # noqa: B027 - an index held in memory has nothing to close
        """Release the open file."""

    def __enter__(self) -> IndexFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Backend(ABC):
    """Makes, parses, encodes and decodes Rows, and names the index file."""

    index_name: str

    @abstractmethod
    def from_entries(self, entries: list[dict[str, Any]], offsets: Sequence[int] | None = None) -> Rows:
        """Rows of these entries (``offsets``: where each one's manifest line starts)."""

    @abstractmethod
    def concat(self, parts: Sequence[Rows]) -> Rows: ...

    @abstractmethod
    def write_index_stream(self, root: Path, parts: Iterable[Rows], meta: Callable[[], IndexMeta]) -> int:
        """Write the index of ``parts`` (in order) in place of the old one, atomically;
        ``meta`` is asked once every part is consumed. Returns the row count."""

    @abstractmethod
    def open_index(self, root: Path) -> IndexFile | None:
        """The index, open (its metadata and rows come from one open file, so a compaction
        replacing it meanwhile cannot pair old metadata with new rows); None if it is from
        another version. Raises on damage."""

    def parse_block(self, offset: int, block: bytes | memoryview) -> tuple[Rows, list[str]]:
        """Complete manifest lines starting at byte ``offset``: rows, and lines skipped."""
        entries, offsets, problems = parse_lines(offset, block)
        return self.from_entries(entries, offsets), problems


_LONG = f"a manifest line holds {MAX_LINE_BYTES:,} bytes at most"


def parse_lines(offset: int, block: bytes | memoryview) -> tuple[list[dict[str, Any]], list[int], list[str]]:
    """Manifest lines one by one: valid entries, the byte offset of each one's line, and a
    problem per skipped line."""
    entries: list[dict[str, Any]] = []
    offsets: list[int] = []
    problems: list[str] = []
    position = offset
    for line in bytes(block).split(b"\n")[:-1]:
        if len(line) > MAX_LINE_BYTES:
            problems.append(f"manifest byte {position}: line of {len(line):,} bytes skipped ({_LONG})")
        elif not line.strip():
            problems.append(f"manifest byte {position}: empty line skipped")
        else:
            try:
                raw = json.loads(line)
            except (ValueError, RecursionError):
                problems.append(f"manifest byte {position}: torn or unparsable line skipped")
            else:
                entry = coerce_entry(raw)
                if isinstance(entry, str):
                    problems.append(f"manifest byte {position}: invalid entry skipped ({entry})")
                else:
                    entries.append(entry)
                    offsets.append(position)
        position += len(line) + 1
    return entries, offsets, problems


ARROW_INDEX_NAME = "_index.parquet"
PLAIN_INDEX_NAME = "_index.jsonl"
