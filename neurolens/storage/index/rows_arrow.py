"""Index rows held in a pyarrow Table (``ArrowRows``); ``arrow_backend`` makes and stores them."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from neurolens.storage.index.arrow_filters import bool_array, filter_mask
from neurolens.storage.index.arrow_kernels import (
    any_true,
    call,
    filter_rows,
    select_k,
    set_lookup,
    sort_indices,
    starts_with,
    take,
)
from neurolens.storage.index.filters import RunFilter
from neurolens.storage.index.rows import (
    Rows,
)
from neurolens.storage.ledger.manifest import COLUMNS

# Columns of few distinct values, dictionary-encoded in the index. The unique ones (ids,
# hashes, paths, times) stay plain: an overflowing dictionary slows writes and reads 2x.
DICTIONARY_COLUMNS = (
    "day",
    "model",
    "backend",
    "precision",
    "batch_size",
    "seq_len",
    "gpu_name",
    "driver_version",
    "cuda_version",
    "fp_json",
    "tags",
    "session_id",
    "fingerprint_hash",
    "outcome",
    "repeat",
)
_NEWEST_FIRST = [("created_at", "descending"), ("run_id", "descending")]


class ArrowRows(Rows):
    def __init__(self, table: Any) -> None:
        self.table = table

    def __len__(self) -> int:
        return int(self.table.num_rows)

    def arrow(self) -> Any:
        return self.table

    def columns(self, names: Sequence[str]) -> dict[str, list[Any]]:
        data: dict[str, list[Any]] = self.table.select(list(names)).to_pydict()
        return data

    def records(self) -> list[dict[str, Any]]:
        records: list[dict[str, Any]] = self.table.select(list(COLUMNS)).to_pylist()
        return records

    def keep(self, mask: Sequence[bool]) -> Rows:
        return ArrowRows(filter_rows(self.table, bool_array(mask)))

    def filter(self, flt: RunFilter) -> Rows:
        mask = filter_mask(self.table, flt)
        if mask is None:
            return self
        return ArrowRows(filter_rows(self.table, mask))

    def with_prefix(self, column: str, prefix: str) -> Rows:
        return ArrowRows(filter_rows(self.table, starts_with(self.table.column(column), prefix)))

    def without(self, column: str, values: Sequence[Any]) -> Rows:
        import pyarrow as pa

        if not values:
            return self
        found = set_lookup("is_in", self.table.column(column), pa.array(list(values)))
        return ArrowRows(filter_rows(self.table, call("invert", call("coalesce", found, pa.scalar(False)))))

    def newest(self, limit: int | None = None) -> Rows:
        table = self.table
        if limit is not None and limit < table.num_rows:
            table = take(table, select_k(table, limit, _NEWEST_FIRST))
        return ArrowRows(take(table, sort_indices(table, _NEWEST_FIRST)))

    def newest_candidates(self, limit: int) -> Rows:
        table = self.table
        if limit >= table.num_rows:
            return self
        if limit == 0:
            return ArrowRows(table.slice(0, 0))
        newest = select_k(table, limit, [("created_at", "descending")])
        last = call("min", take(table.column("created_at"), newest))
        return ArrowRows(filter_rows(table, call("greater_equal", table.column("created_at"), last)))

    def equals(self, other: Rows) -> bool:
        return isinstance(other, ArrowRows) and bool(self.table.equals(other.table))

    def shared_ids(self, other: Rows) -> list[str]:
        if not isinstance(other, ArrowRows):
            return super().shared_ids(other)
        ids = self.table.column("run_id")
        found = set_lookup("is_in", ids, other.table.column("run_id"))
        shared: list[str] = filter_rows(ids, found).to_pylist()
        return sorted(shared)

    def without_duplicates(self, known: Rows | None = None) -> tuple[Rows, list[str]]:
        ids = self.table.column("run_id")
        clash = None
        if isinstance(known, ArrowRows) and len(known) and len(self):
            clash = set_lookup("is_in", ids, known.table.column("run_id"))
            if not any_true(clash):
                clash = None
        if clash is None and call("count_distinct", ids).as_py() == len(self):
            return self, []  # the common case: nothing to drop, no Python loop
        return super().without_duplicates(known)
