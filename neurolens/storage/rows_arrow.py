"""Index rows with pyarrow: a Table, and ``_index.parquet`` with its metadata in the footer."""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from neurolens.storage.arrow_filters import filter_mask, int64_array
from neurolens.storage.files import open_in_store, replacing
from neurolens.storage.filters import EQUALITY_FILTERS, RunFilter
from neurolens.storage.manifest import COLUMNS
from neurolens.storage.rows import (
    INDEX_VERSION,
    OFFSET_COLUMN,
    Backend,
    IndexFile,
    IndexMeta,
    Rows,
    parse_lines,
)

# Rows per Parquet row group, fixed: the same rows always give the same bytes.
_ROW_GROUP_SIZE = 64 * 1024
_NEWLINE = re.compile(b"\n")
# Columns of few distinct values, dictionary-encoded in the index. The unique ones (ids,
# hashes, paths, times) stay plain: an overflowing dictionary slows writes and reads 2x.
_DICTIONARY_COLUMNS = (
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
# Columns a reader filters or orders by: their row group min/max let a scan skip groups.
_STATISTICS_COLUMNS = (
    "run_id",
    "created_at",
    "day",
    "model",
    "backend",
    "precision",
    "batch_size",
    "session_id",
    "outcome",
    OFFSET_COLUMN,
)
_NEWEST_FIRST = [("created_at", "descending"), ("run_id", "descending")]

# The canonical encoding of a JSON object of strings to strings (what ``encode_tags``
# writes): a block whose tags all match it needs no per-row JSON parse.
_JSON_STRING = r'"(?:[^"\\\x00-\x1f]|\\(?:["\\/bfnrt]|u[0-9a-fA-F]{4}))*"'
_TAGS_PATTERN = rf"^\{{(?:{_JSON_STRING}:{_JSON_STRING}(?:,{_JSON_STRING}:{_JSON_STRING})*)?\}}$"


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
        return ArrowRows(self.table.filter(list(mask)))

    def filter(self, flt: RunFilter) -> Rows:
        mask = filter_mask(self.table, flt)
        if mask is None:
            return self
        return ArrowRows(self.table.filter(mask, null_selection_behavior="drop"))

    def with_prefix(self, column: str, prefix: str) -> Rows:
        import pyarrow.compute as pc

        matches = pc.starts_with(self.table.column(column), pattern=prefix)
        return ArrowRows(self.table.filter(matches, null_selection_behavior="drop"))

    def without(self, column: str, values: Sequence[Any]) -> Rows:
        import pyarrow as pa
        import pyarrow.compute as pc

        if not values:
            return self
        found = pc.is_in(self.table.column(column), value_set=pa.array(list(values)))
        return ArrowRows(self.table.filter(pc.invert(pc.fill_null(found, False))))

    def newest(self, limit: int | None = None) -> Rows:
        import pyarrow.compute as pc

        table = self.table
        if limit is not None and limit < table.num_rows:
            table = table.take(pc.select_k_unstable(table, k=limit, sort_keys=_NEWEST_FIRST))
        return ArrowRows(table.take(pc.sort_indices(table, sort_keys=_NEWEST_FIRST)))

    def newest_candidates(self, limit: int) -> Rows:
        import pyarrow.compute as pc

        table = self.table
        if limit >= table.num_rows:
            return self
        if limit == 0:
            return ArrowRows(table.slice(0, 0))
        newest = pc.select_k_unstable(table, k=limit, sort_keys=[("created_at", "descending")])
        last = pc.min(table.column("created_at").take(newest))
        return ArrowRows(table.filter(pc.greater_equal(table.column("created_at"), last)))

    def equals(self, other: Rows) -> bool:
        return isinstance(other, ArrowRows) and bool(self.table.equals(other.table))

    def shared_ids(self, other: Rows) -> list[str]:
        import pyarrow.compute as pc

        if not isinstance(other, ArrowRows):
            return super().shared_ids(other)
        ids = self.table.column("run_id")
        shared: list[str] = ids.filter(pc.is_in(ids, value_set=other.table.column("run_id"))).to_pylist()
        return sorted(shared)

    def without_duplicates(self, known: Rows | None = None) -> tuple[Rows, list[str]]:
        import pyarrow.compute as pc

        ids = self.table.column("run_id")
        clash = None
        if isinstance(known, ArrowRows) and len(known) and len(self):
            clash = pc.is_in(ids, value_set=known.table.column("run_id"))
            if not pc.any(clash).as_py():
                clash = None
        if clash is None and pc.count_distinct(ids).as_py() == len(self):
            return self, []  # the common case: nothing to drop, no Python loop
        return super().without_duplicates(known)


def _arrow_file(fd: int) -> Any:
    """The file open at ``fd`` (opened inside the store without following links) as a file
    Arrow reads itself: through a Python file object, Arrow's reader threads hold Python
    buffers, and one released on such a thread as the interpreter exits aborts the process
    ("terminate called without an active exception"). Reopened through /proc/self/fd, the
    same file, not a path looked up again; a Python file object where there is no /proc."""
    import pyarrow as pa

    try:
        native = pa.OSFile(f"/proc/self/fd/{fd}", "r")
    except (OSError, pa.ArrowException):
        return os.fdopen(fd, "rb")
    try:
        if not os.path.samestat(os.fstat(native.fileno()), os.fstat(fd)):
            raise OSError(f"/proc/self/fd/{fd} is not the file opened")
    except BaseException:
        native.close()
        os.close(fd)
        raise
    os.close(fd)
    return native


def _arrow_copy(block: bytes | memoryview) -> Any:
    """``block`` copied into memory Arrow owns. The JSON reader reads ahead on Arrow's IO
    threads; a slice of a Python-owned buffer (``pa.py_buffer``) released by one of them
    as the interpreter exits takes the GIL there and aborts the process ("terminate called
    without an active exception", 1 run in 40 of `ls` with a tail). A copy costs ~2 ms per
    8 MiB manifest slice."""
    import pyarrow as pa

    copy = pa.allocate_buffer(len(block))
    if len(block):
        memoryview(copy).cast("B")[:] = block
    return copy


class ArrowBackend(Backend):
    """Rows are a pyarrow Table; the index is ``_index.parquet`` with its metadata in the footer."""

    index_name = "_index.parquet"

    def __init__(self) -> None:
        import pyarrow as pa

        kinds = {str: pa.string(), int: pa.int64(), float: pa.float64()}
        self.schema = pa.schema(
            [pa.field(name, kinds[kind], nullable) for name, (kind, nullable) in COLUMNS.items()]
        )
        self.offset_field = pa.field(OFFSET_COLUMN, pa.int64(), nullable=False)
        self.index_schema = self.schema.append(self.offset_field)

    def from_entries(self, entries: list[dict[str, Any]], offsets: Sequence[int] | None = None) -> Rows:
        import pyarrow as pa

        columns = {name: [e[name] for e in entries] for name in COLUMNS}
        table = pa.Table.from_pydict(columns, schema=self.schema)
        if offsets is not None:
            table = table.append_column(self.offset_field, int64_array(offsets))
        return ArrowRows(table)

    def concat(self, parts: Sequence[Rows]) -> Rows:
        import pyarrow as pa

        tables = [part.table for part in parts if isinstance(part, ArrowRows)]
        if not tables:
            return self.from_entries([])
        return ArrowRows(pa.concat_tables(tables).combine_chunks())

    def parse_block(self, offset: int, block: bytes | memoryview) -> tuple[Rows, list[str]]:
        """Arrow's JSON reader (C++, ~20x faster than line by line) for a block it can take
        whole and that passes every check; any other block is parsed line by line. Rows
        carry their line's offset in the manifest."""
        import pyarrow as pa
        import pyarrow.compute as pc
        import pyarrow.json as pa_json

        line_ends = list(map(re.Match.end, _NEWLINE.finditer(block)))
        try:
            table = pa_json.read_json(
                pa.BufferReader(_arrow_copy(block)),
                read_options=pa_json.ReadOptions(block_size=1 << 20),
                parse_options=pa_json.ParseOptions(
                    explicit_schema=self.schema, unexpected_field_behavior="ignore"
                ),
            )
            table = table.select(list(COLUMNS)).cast(self.schema)
            sound = (
                table.num_rows == len(line_ends)
                and all(
                    nullable or table.column(name).null_count == 0 for name, (_, nullable) in COLUMNS.items()
                )
                and all(
                    not pc.any(pc.is_nan(table.column(name))).as_py()
                    and not pc.any(pc.is_inf(table.column(name))).as_py()
                    for name, (kind, _) in COLUMNS.items()
                    if kind is float
                )
                and pc.all(pc.match_substring_regex(table.column("tags"), _TAGS_PATTERN)).as_py() is not False
            )
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
            sound = False
        if sound:
            ends = int64_array(line_ends)
            starts = pa.concat_arrays([int64_array([0]), ends.slice(0, len(ends) - 1)])
            shifted = pc.add(starts, int64_array([offset])[0])  # a Python int would import pandas
            return ArrowRows(table.append_column(self.offset_field, shifted)), []
        entries, offsets, problems = parse_lines(offset, block)
        return self.from_entries(entries, offsets), problems

    def write_index_stream(self, root: Path, parts: Iterable[Rows], meta: Callable[[], IndexMeta]) -> int:
        """Row groups of exactly ``_ROW_GROUP_SIZE`` rows (the last one shorter), written as
        the parts come: memory holds about one group, whatever the store's size."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        written = 0
        with replacing(root, self.index_name) as handle:
            writer = pq.ParquetWriter(
                handle,
                self.index_schema,
                compression="zstd",
                write_statistics=list(_STATISTICS_COLUMNS),
                store_schema=True,
                use_dictionary=list(_DICTIONARY_COLUMNS),
            )
            try:
                pending: list[Any] = []
                count = 0
                for part in parts:
                    assert isinstance(part, ArrowRows)
                    pending.append(part.table)
                    count += len(part)
                    while count >= _ROW_GROUP_SIZE:
                        table = pa.concat_tables(pending)
                        writer.write_table(table.slice(0, _ROW_GROUP_SIZE).combine_chunks())
                        pending, count = [table.slice(_ROW_GROUP_SIZE)], count - _ROW_GROUP_SIZE
                        written += _ROW_GROUP_SIZE
                if count:
                    writer.write_table(pa.concat_tables(pending).combine_chunks())
                    written += count
                info = meta()
                writer.add_key_value_metadata(
                    {
                        "neurolens.index_version": INDEX_VERSION,
                        "neurolens.manifest_bytes": str(info.manifest_bytes),
                        "neurolens.last_line_sha256": info.last_line_sha256 or "",
                    }
                )
            except BaseException:
                with contextlib.suppress(Exception):  # the temporary file is removed anyway
                    writer.close()
                raise
            writer.close()
        return written

    @staticmethod
    def _meta(file: Any) -> IndexMeta | None:
        meta = file.metadata.metadata or {}
        if meta.get(b"neurolens.index_version") != INDEX_VERSION.encode():
            return None
        return IndexMeta(
            int(meta[b"neurolens.manifest_bytes"]), meta[b"neurolens.last_line_sha256"].decode() or None
        )

    def read_meta(self, root: Path) -> IndexMeta | None:
        import pyarrow.parquet as pq

        try:
            with _arrow_file(open_in_store(root, self.index_name, os.O_RDONLY)) as handle:
                return self._meta(pq.ParquetFile(handle))
        except Exception:  # any damage means "no usable index"; the manifest still answers
            return None

    def open_index(self, root: Path) -> IndexFile | None:
        import pyarrow.parquet as pq

        handle = _arrow_file(open_in_store(root, self.index_name, os.O_RDONLY))
        try:
            file = pq.ParquetFile(handle)
            meta = self._meta(file)
            if meta is not None and not file.schema_arrow.remove_metadata().equals(self.index_schema):
                raise ValueError("unexpected index columns")
        except BaseException:
            handle.close()
            raise
        if meta is None:
            handle.close()
            return None
        return ParquetIndex(handle, file, meta, self.index_schema)


class ParquetIndex(IndexFile):
    """An open ``_index.parquet``: read by row group or by column, as a caller needs."""

    line_offsets = True

    def __init__(self, handle: Any, file: Any, meta: IndexMeta, schema: Any) -> None:
        self.handle = handle
        self.file = file
        self.meta = meta
        self.schema = schema

    def close(self) -> None:
        self.handle.close()

    def count(self) -> int:
        return int(self.file.metadata.num_rows)

    def rows(self) -> Rows:
        return ArrowRows(self.file.read().replace_schema_metadata(None))

    def parts(self) -> Iterator[Rows]:
        for group in range(self.file.metadata.num_row_groups):
            yield ArrowRows(self.file.read_row_group(group).replace_schema_metadata(None))

    def run_ids(self, among: Sequence[str]) -> Rows:
        """Reads the run_id column of the row groups whose id range (statistics) holds one
        of ``among``: generated ids grow with time, so new runs usually fall in none."""
        import bisect

        import pyarrow as pa

        wanted = sorted(among)
        groups = []
        for group in range(self.file.metadata.num_row_groups):
            stats = (
                self.file.metadata.row_group(group).column(self.schema.get_field_index("run_id")).statistics
            )
            if stats is None or not stats.has_min_max:
                groups.append(group)
                continue
            low, high = stats.min, stats.max
            if bisect.bisect_left(wanted, low) < bisect.bisect_right(wanted, high):
                groups.append(group)
        if not groups:  # built from no chunks: an empty pa.array or empty_table imports pandas
            return ArrowRows(pa.Table.from_arrays([pa.chunked_array([], type=pa.string())], names=["run_id"]))
        return ArrowRows(self.file.read_row_groups(groups, columns=["run_id"]).replace_schema_metadata(None))

    def matching(
        self,
        flt: RunFilter,
        columns: Sequence[str] | None,
        extra: Rows | None = None,
        *,
        as_dictionary: Sequence[str] = (),
    ) -> Rows:
        """Reads only the columns asked for and the ones the conditions need, the latter
        as dictionaries where the index encodes them so (tested once per distinct value),
        the former too when in ``as_dictionary``."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        asked = [*COLUMNS, OFFSET_COLUMN] if columns is None else list(columns)
        conditions = [
            *(["outcome"] if not flt.include_failed else []),
            *(name for name in EQUALITY_FILTERS if getattr(flt, name) is not None),
            *(["tags"] if flt.tags else []),
        ]
        names = [n for n in self.schema.names if n in {*asked, *conditions}]
        kept = [n for n in names if n in asked]  # condition-only columns go after filtering
        text = pa.string()
        encoded = {
            n
            for n in as_dictionary
            if n in kept and n in _DICTIONARY_COLUMNS and self.schema.field(n).type == text
        }
        schema = pa.schema(
            [
                self.schema.field(n).with_type(pa.dictionary(pa.int32(), text))
                if n in encoded
                else self.schema.field(n)
                for n in kept
            ]
        )
        file = pq.ParquetFile(
            self.handle,
            metadata=self.file.metadata,
            read_dictionary=[n for n in _DICTIONARY_COLUMNS if n in conditions or n in encoded],
        )
        parts = [file.read(columns=names)]
        if extra is not None and len(extra):
            assert isinstance(extra, ArrowRows)
            parts.append(extra.table.select(names))
        selected = []
        for table in parts:
            mask = filter_mask(table, flt)
            if mask is not None:
                table = table.filter(mask, null_selection_behavior="drop")
            # dictionaries back to strings, the index's field types (but those asked for)
            selected.append(table.select(kept).cast(schema))
        table = selected[0] if len(selected) == 1 else pa.concat_tables(selected)
        return ArrowRows(table)
