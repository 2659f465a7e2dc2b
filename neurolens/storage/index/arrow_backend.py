"""The Arrow backend: manifest blocks parsed into ArrowRows, and ``_index.parquet`` written
(row groups of a fixed size, metadata in the footer) and opened (``ParquetIndex``)."""

from __future__ import annotations

import contextlib
import operator
import os
import re
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from neurolens.errors import StoreError
from neurolens.storage.index.arrow_filters import int64_array, string_array
from neurolens.storage.index.arrow_io import arrow_copy, arrow_file
from neurolens.storage.index.arrow_kernels import any_true, call, cast_table, match_substring, replace_regex
from neurolens.storage.index.parquet import ParquetIndex
from neurolens.storage.index.rows import (
    ARROW_INDEX_NAME,
    INDEX_VERSION,
    OFFSET_COLUMN,
    Backend,
    IndexFile,
    IndexMeta,
    Rows,
    parse_lines,
)
from neurolens.storage.index.rows_arrow import DICTIONARY_COLUMNS, ArrowRows
from neurolens.storage.ledger.files import MAX_LINE_BYTES, open_in_store, replacing
from neurolens.storage.ledger.manifest import COLUMNS, decode_tags, encode_tags

# Rows per Parquet row group, fixed: the same rows always give the same bytes.
_ROW_GROUP_SIZE = 64 * 1024
_NEWLINE = re.compile(b"\n")
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

# The canonical encoding of a JSON object of strings to strings (what ``encode_tags``
# writes): a block whose tags all match it needs no per-row JSON parse.
_JSON_STRING = r'"(?:[^"\\\x00-\x1f]|\\(?:["\\/bfnrt]|u[0-9a-fA-F]{4}))*"'
TAGS_PATTERN = rf"^\{{(?:{_JSON_STRING}:{_JSON_STRING}(?:,{_JSON_STRING}:{_JSON_STRING})*)?\}}$"


_SPACED_STRING = rf"\s*({_JSON_STRING})\s*"


def _plain_form(tags: Any) -> Any:
    """Per row: the tags are one JSON object of strings with no space between tokens and
    no ``\\u`` escape (``write_run`` writes characters as they are: a tag filter matches
    their text), so only other rows need Python."""
    escaped = match_substring(tags, "\\u")
    return call("and", match_substring(tags, TAGS_PATTERN, regex=True), call("invert", escaped))


def _canonical_tags(table: Any) -> Any:
    """``table`` with every row's tags in the canonical form ``write_run`` writes (a hand
    edit or another tool may space them out: only those rows are decoded in Python, so a
    block of them stays on Arrow's path), or None if a row's tags are not a JSON object of
    strings (the block is then read line by line, each problem named)."""
    tags = table.column("tags").combine_chunks()
    canonical = _plain_form(tags)
    if call("all", canonical).as_py() is not False:
        return table
    tags = replace_regex(tags, _SPACED_STRING, r"\1")  # spaces around the strings, in C++
    canonical = _plain_form(tags)
    values: list[str] | None = None
    if call("all", canonical).as_py() is False:  # what is left: decoded and encoded again
        values, again = tags.to_pylist(), {}
        for i, sound in enumerate(canonical.to_pylist()):
            if not sound:
                if values[i] not in again:
                    decoded = decode_tags(values[i]) if values[i] is not None else None
                    if decoded is None:
                        return None
                    again[values[i]] = encode_tags(decoded)
                values[i] = again[values[i]]
    index = table.schema.get_field_index("tags")
    return table.set_column(
        index, table.schema.field(index), tags if values is None else string_array(values)
    )


# What an index this store wrote can look like; anything else is not read (the manifest
# answers, with a warning), so a file's shape cannot cost more than the store's size.
_MAX_FOOTER_BYTES = 16 * 1024 * 1024  # 1M runs take about 100 KB
_MIN_LINE_BYTES = 200  # a manifest line (every column named) is longer


def _check_footer(fd: int, name: str) -> None:
    size = os.fstat(fd).st_size
    tail = os.pread(fd, 8, max(0, size - 8))
    if len(tail) == 8 and tail[4:] == b"PAR1":
        footer = int.from_bytes(tail[:4], "little")
        if footer > _MAX_FOOTER_BYTES:
            raise StoreError(f"index {name} has a {footer:,}-byte footer, more than an index of ours holds")


def _check_shape(name: str, metadata: Any, meta: IndexMeta) -> None:
    rows, groups = metadata.num_rows, metadata.num_row_groups
    most_rows = meta.manifest_bytes // _MIN_LINE_BYTES
    most_groups = max(1, -(-rows // _ROW_GROUP_SIZE))
    if rows > most_rows or groups > most_groups:
        raise StoreError(
            f"index {name} claims {rows:,} runs in {groups:,} row groups for a manifest of "
            f"{meta.manifest_bytes:,} bytes; one of ours has at most {most_rows:,} runs in {most_groups:,}"
        )


class ArrowBackend(Backend):
    """Rows are a pyarrow Table; the index is ``_index.parquet`` with its metadata in the footer."""

    index_name = ARROW_INDEX_NAME

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
        import pyarrow.json as pa_json

        line_ends = list(map(re.Match.end, _NEWLINE.finditer(block)))
        if (
            len(block) > MAX_LINE_BYTES
            and max(map(operator.sub, line_ends, [0, *line_ends])) > MAX_LINE_BYTES
        ):
            entries, offsets, problems = parse_lines(offset, block)  # skips the long line, saying so
            return self.from_entries(entries, offsets), problems
        try:
            table = pa_json.read_json(
                pa.BufferReader(arrow_copy(block)),
                read_options=pa_json.ReadOptions(block_size=1 << 20),
                parse_options=pa_json.ParseOptions(
                    explicit_schema=self.schema, unexpected_field_behavior="ignore"
                ),
            )
            table = _canonical_tags(cast_table(table.select(list(COLUMNS)), self.schema))
            sound = (
                table is not None
                and table.num_rows == len(line_ends)
                and all(
                    nullable or table.column(name).null_count == 0 for name, (_, nullable) in COLUMNS.items()
                )
                and all(
                    not any_true(call("is_nan", table.column(name)))
                    and not any_true(call("is_inf", table.column(name)))
                    for name, (kind, _) in COLUMNS.items()
                    if kind is float
                )
            )
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
            sound = False
        if sound:
            ends = int64_array(line_ends)
            starts = pa.concat_arrays([int64_array([0]), ends.slice(0, len(ends) - 1)])
            shifted = call("add", starts, int64_array([offset])[0])  # a Python int would import pandas
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
                use_dictionary=list(DICTIONARY_COLUMNS),
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

    def open_index(self, root: Path) -> IndexFile | None:
        import pyarrow.parquet as pq

        fd = open_in_store(root, self.index_name, os.O_RDONLY)
        try:
            _check_footer(fd, self.index_name)
        except BaseException:
            os.close(fd)
            raise
        handle = arrow_file(fd)
        try:
            file = pq.ParquetFile(handle)
            meta = self._meta(file)
            if meta is not None and not file.schema_arrow.remove_metadata().equals(self.index_schema):
                raise ValueError("unexpected index columns")
            if meta is not None:
                _check_shape(self.index_name, file.metadata, meta)
        except BaseException:
            handle.close()
            raise
        if meta is None:
            handle.close()
            return None
        return ParquetIndex(handle, file, meta, self.index_schema)
