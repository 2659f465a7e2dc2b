"""Index rows without pyarrow: a list of dicts, and ``_index.jsonl`` with a sidecar."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from neurolens.errors import StoreError
from neurolens.storage.index.filters import RunFilter
from neurolens.storage.index.rows import INDEX_VERSION, PLAIN_INDEX_NAME, Backend, IndexFile, IndexMeta, Rows
from neurolens.storage.ledger.files import read_store_file, replace_file_atomically


class RecordRows(Rows):
    def __init__(self, records: list[dict[str, Any]]) -> None:
        self._records = records

    def __len__(self) -> int:
        return len(self._records)

    def columns(self, names: Sequence[str]) -> dict[str, list[Any]]:
        return {name: [r[name] for r in self._records] for name in names}

    def records(self) -> list[dict[str, Any]]:
        return [dict(r) for r in self._records]

    def keep(self, mask: Sequence[bool]) -> Rows:
        return RecordRows([r for r, k in zip(self._records, mask, strict=True) if k])

    def filter(self, flt: RunFilter) -> Rows:
        return RecordRows([r for r in self._records if flt.matches(r)])

    def with_prefix(self, column: str, prefix: str) -> Rows:
        return RecordRows(
            [r for r in self._records if isinstance(r[column], str) and r[column].startswith(prefix)]
        )

    def without(self, column: str, values: Sequence[Any]) -> Rows:
        excluded = set(values)
        return RecordRows([r for r in self._records if r[column] is None or r[column] not in excluded])

    def newest(self, limit: int | None = None) -> Rows:
        ordered = sorted(self._records, key=lambda r: (r["created_at"], r["run_id"]), reverse=True)
        return RecordRows(ordered if limit is None else ordered[:limit])

    def equals(self, other: Rows) -> bool:
        return self.records() == other.records()


class PlainBackend(Backend):
    """Without pyarrow: rows are dicts and the index is ``_index.jsonl``, rows only, with
    its checkpoint metadata in a sidecar that also pins the rows file's hash."""

    index_name = PLAIN_INDEX_NAME
    meta_name = "_index.jsonl.meta.json"

    def from_entries(self, entries: list[dict[str, Any]], offsets: Sequence[int] | None = None) -> Rows:
        return RecordRows(entries)  # the JSONL index is read whole: no offsets needed

    def concat(self, parts: Sequence[Rows]) -> Rows:
        return RecordRows([r for part in parts for r in part.records()])

    def write_index_stream(self, root: Path, parts: Iterable[Rows], meta: Callable[[], IndexMeta]) -> int:
        rows = self.concat(list(parts))
        for name, data in self._files(rows, meta()).items():
            replace_file_atomically(root, name, data)  # rows first: the sidecar pins their hash
        return len(rows)

    def _files(self, rows: Rows, meta: IndexMeta) -> dict[str, bytes]:
        body = "".join(json.dumps(r, sort_keys=True, ensure_ascii=False) + "\n" for r in rows.records())
        data = body.encode("utf-8")
        sidecar = {
            "neurolens_index": int(INDEX_VERSION),
            "manifest_bytes": meta.manifest_bytes,
            "last_line_sha256": meta.last_line_sha256,
            "rows_sha256": hashlib.sha256(data).hexdigest(),
        }
        return {self.index_name: data, self.meta_name: (json.dumps(sidecar, sort_keys=True) + "\n").encode()}

    def _sidecar(self, root: Path) -> dict[str, Any] | None:
        try:
            sidecar = json.loads(read_store_file(root, self.meta_name))
        except (OSError, ValueError, StoreError):
            return None
        if not isinstance(sidecar, dict) or sidecar.get("neurolens_index") != int(INDEX_VERSION):
            return None
        if not isinstance(sidecar.get("manifest_bytes"), int):
            return None
        return sidecar

    def open_index(self, root: Path) -> IndexFile | None:
        sidecar = self._sidecar(root)
        data = read_store_file(root, self.index_name)
        # the rows and the sidecar are two files: a mismatch is a rewrite in progress
        if sidecar is None or hashlib.sha256(data).hexdigest() != sidecar.get("rows_sha256"):
            return None
        meta = IndexMeta(sidecar["manifest_bytes"], sidecar.get("last_line_sha256"))
        return RecordIndex(meta, RecordRows([json.loads(line) for line in data.splitlines()]))


class RecordIndex(IndexFile):
    def __init__(self, meta: IndexMeta, rows: Rows) -> None:
        self.meta = meta
        self._rows = rows

    def rows(self) -> Rows:
        return self._rows

    def parts(self) -> Iterator[Rows]:
        yield self._rows

    def count(self) -> int:
        return len(self._rows)

    def matching(
        self,
        flt: RunFilter,
        columns: Sequence[str] | None,
        extra: Rows | None = None,
        *,
        as_dictionary: Sequence[str] = (),
    ) -> Rows:
        rows = self._rows if extra is None else PlainBackend().concat([self._rows, extra])
        return rows.filter(flt)
