"""Index rows, held by one of two backends chosen once: Arrow, or plain Python.

``backend()`` decides (pyarrow importable or not) and everything that reads or writes
index rows goes through the ``Rows`` and ``Backend`` interfaces below, so no other
module branches on which one is in use. Only the index parses manifest lines.
"""

from __future__ import annotations

import functools
import importlib
import json
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from neurolens.storage.filters import RunFilter
from neurolens.storage.manifest import coerce_entry

INDEX_VERSION = "1"


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

    def ids(self) -> list[str]:
        return self.columns(["run_id"])["run_id"]

    def without_duplicates(self, known: Rows | None = None) -> tuple[Rows, list[str]]:
        """These rows less run ids seen in ``known`` or earlier here (the first wins),
        and the duplicate ids dropped."""
        seen = set(known.ids()) if known is not None else set()
        keep, duplicates = [], []
        for run_id in self.ids():
            duplicate = run_id in seen
            keep.append(not duplicate)
            if duplicate:
                duplicates.append(run_id)
            seen.add(run_id)
        return (self.keep(keep) if duplicates else self), duplicates


class Backend(ABC):
    """Makes, parses, encodes and decodes Rows, and names the index file."""

    index_name: str

    @abstractmethod
    def from_entries(self, entries: list[dict[str, Any]]) -> Rows: ...

    @abstractmethod
    def concat(self, parts: Sequence[Rows]) -> Rows: ...

    @abstractmethod
    def write_index(self, rows: Rows, meta: IndexMeta) -> dict[str, bytes]:
        """File name -> bytes of the index holding ``rows``; written in this order."""

    @abstractmethod
    def read_meta(self, root: Path) -> IndexMeta | None:
        """What the index at ``root`` claims to cover; None if it is unusable."""

    @abstractmethod
    def read_index(self, root: Path) -> tuple[IndexMeta, Rows] | None:
        """The index's metadata and rows, read together (one open file, so a compaction
        replacing it meanwhile cannot pair old metadata with new rows); None if unusable."""

    def parse_block(self, offset: int, block: bytes) -> tuple[Rows, list[str]]:
        """Complete manifest lines starting at byte ``offset``: rows, and lines skipped."""
        entries, problems = parse_lines(offset, block)
        return self.from_entries(entries), problems


def parse_lines(offset: int, block: bytes) -> tuple[list[dict[str, Any]], list[str]]:
    """Manifest lines one by one: valid entries, and a problem per skipped line."""
    entries: list[dict[str, Any]] = []
    problems: list[str] = []
    position = offset
    for line in block.split(b"\n")[:-1]:
        if not line.strip():
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
        position += len(line) + 1
    return entries, problems


@functools.cache
def backend() -> Backend:
    """Arrow where pyarrow can be imported, else plain Python: decided here, once."""
    try:
        importlib.import_module("pyarrow")
        importlib.import_module("pyarrow.parquet")
    except ImportError:
        from neurolens.storage.rows_plain import PlainBackend

        return PlainBackend()
    from neurolens.storage.rows_arrow import ArrowBackend

    return ArrowBackend()
