"""Where runs are read from: a local store or a remote table, behind one interface.

``open_source`` chooses once, from a root, a URL or a table; everything that reads runs
(``ls``, ``show``, ``compare``, the report, the gate) asks a ``RunSource`` to select rows,
find a run and read its document and fingerprint, and never branches on which it holds.
This module sits above both ``storage`` and ``remote``; neither imports it.
"""

from __future__ import annotations

import json
import os
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from neurolens.errors import StoreError
from neurolens.storage.index.filters import RunFilter
from neurolens.storage.index.rows import Rows
from neurolens.storage.ledger.root import StrPath, resolve_root

if TYPE_CHECKING:
    from neurolens.remote.table import RemoteTable
    from neurolens.storage.ledger.files import Folders


class RunSource(ABC):
    """Runs to read: index rows by filter, one run by id prefix, and each run's files."""

    @abstractmethod
    def select(
        self,
        flt: RunFilter,
        columns: Sequence[str] | None = None,
        *,
        ordered: bool = True,
        as_dictionary: Sequence[str] = (),
    ) -> Rows:
        """Matching rows, newest first (``created_at``, then ``run_id``), at most
        ``flt.limit``; ``columns``, ``ordered`` and ``as_dictionary`` are hints a source
        may use to read less (see ``storage.index.query.select``)."""

    def parts(self, flt: RunFilter) -> Iterator[Rows]:
        """The rows ``flt`` selects, a part at a time (a source that can stream them holds
        one part, in its own order, when ``flt`` has no session or limit); else all at once,
        newest first."""
        yield self.select(flt)

    @abstractmethod
    def find_run(self, prefix: str) -> dict[str, Any]:
        """The index row (``tags`` decoded) of the one run whose id is or starts with ``prefix``."""

    @abstractmethod
    def document(self, entry: Mapping[str, Any]) -> bytes:
        """The run document's stored bytes; a ``StoreError`` when they cannot be read."""

    @abstractmethod
    def fingerprint(self, entry: Mapping[str, Any]) -> bytes | None:
        """The run's fingerprint bytes (None for a run without one); ``StoreError`` if unreadable."""

    @abstractmethod
    def where(self, entry: Mapping[str, Any], column: str) -> str:
        """Where ``entry``'s ``run_json`` or ``fp_json`` lives, for a person to read."""

    def close(self) -> None:  # noqa: B027 - a remote table holds nothing open
        """Release what reading held open."""

    def __enter__(self) -> RunSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class LocalSource(RunSource):
    """A store on this machine; run files are read through one folder cache."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._folders: Folders | None = None

    def __str__(self) -> str:
        return str(self.root)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, LocalSource) and other.root == self.root

    def __hash__(self) -> int:
        return hash(self.root)

    def select(
        self,
        flt: RunFilter,
        columns: Sequence[str] | None = None,
        *,
        ordered: bool = True,
        as_dictionary: Sequence[str] = (),
    ) -> Rows:
        from neurolens.storage.index.query import select

        return select(self.root, flt, columns, ordered=ordered, as_dictionary=as_dictionary)

    def parts(self, flt: RunFilter) -> Iterator[Rows]:
        from neurolens.storage.index.reading import stream_rows
        from neurolens.storage.ledger.root import require_store

        if flt.session_id is not None or flt.limit is not None:
            yield self.select(flt)
            return
        require_store(self.root)
        yield from stream_rows(self.root, flt)

    def find_run(self, prefix: str) -> dict[str, Any]:
        from neurolens.storage.index.query import find_run

        return find_run(self.root, prefix)

    def _read(self, relative: str) -> bytes:
        from neurolens.storage.ledger.files import Folders

        if self._folders is None:
            self._folders = Folders(self.root)
        try:
            return self._folders.read_run_file(relative)
        except OSError as exc:
            raise StoreError(f"cannot read {relative!r} in {self.root}: {exc.strerror or exc}") from None

    def document(self, entry: Mapping[str, Any]) -> bytes:
        return self._read(str(entry["run_json"]))

    def fingerprint(self, entry: Mapping[str, Any]) -> bytes | None:
        return None if not entry.get("fp_json") else self._read(str(entry["fp_json"]))

    def where(self, entry: Mapping[str, Any], column: str) -> str:
        return str(self.root / str(entry[column]))

    def close(self) -> None:
        if self._folders is not None:
            self._folders.close()
            self._folders = None


class RemoteSource(RunSource):
    """A Delta table of runs: filters, session and limit go into its scan; the document and
    fingerprint are columns of the row."""

    def __init__(self, table: RemoteTable) -> None:
        self.table = table

    def __str__(self) -> str:
        return str(self.table)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RemoteSource) and other.table.url == self.table.url

    def __hash__(self) -> int:
        return hash(self.table.url)

    def select(
        self,
        flt: RunFilter,
        columns: Sequence[str] | None = None,
        *,
        ordered: bool = True,
        as_dictionary: Sequence[str] = (),
    ) -> Rows:
        from neurolens.storage.index.query import session_rows

        rows = self.table.select(flt)
        if flt.session_id is not None:
            rows = session_rows(rows, flt.session_id)
        return rows.newest(flt.limit)

    def find_run(self, prefix: str) -> dict[str, Any]:
        from neurolens.storage.index.query import unique_run

        def starting(text: str) -> list[dict[str, Any]]:
            found = self.table.find_run(text)
            for record in found:
                record["tags"] = json.loads(record["tags"])
            return found

        return unique_run(starting, prefix, str(self.table))

    def _column(self, entry: Mapping[str, Any], column: str) -> bytes | None:
        rows = self.table.with_ids([str(entry["run_id"])], [column])
        if not rows:
            raise StoreError(f"run {entry['run_id']} is not in {self.table}")
        value = rows[0][column]
        return None if value is None else str(value).encode("utf-8")

    def document(self, entry: Mapping[str, Any]) -> bytes:
        data = self._column(entry, "document")
        if data is None:
            raise StoreError(f"run {entry['run_id']} has no document in {self.table}")
        return data

    def fingerprint(self, entry: Mapping[str, Any]) -> bytes | None:
        return self._column(entry, "fingerprint")

    def where(self, entry: Mapping[str, Any], column: str) -> str:
        return f"{self.table}, {entry[column]}"


def open_source(
    location: RunSource | RemoteTable | StrPath | None, storage_options: Mapping[str, str] | None = None
) -> RunSource:
    """The source at ``location``: a remote table for a URL (``s3://...``), a local Delta
    table or a ``RemoteTable``; else a local store root (the default root for None)."""
    if isinstance(location, RunSource):
        return location
    from neurolens.remote.table import RemoteTable, is_remote

    if isinstance(location, RemoteTable):
        return RemoteSource(location)
    if location is not None and is_remote(location):
        return RemoteSource(RemoteTable(os.fspath(location), dict(storage_options or {})))
    return LocalSource(resolve_root(location))


def query(root: RunSource | StrPath | None = None, **filters: Any) -> list[dict[str, Any]]:
    """Matching runs as dicts, newest first. Filters as in :class:`RunFilter`."""
    from neurolens.storage.index.query import to_records

    return to_records(open_source(root).select(RunFilter(**filters)))


__all__ = ["LocalSource", "RemoteSource", "RunSource", "open_source", "query"]
