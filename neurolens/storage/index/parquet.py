"""Reading `_index.parquet`: the open index `ArrowBackend.open_index` gives readers."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from neurolens.storage.index.arrow_filters import filter_mask
from neurolens.storage.index.arrow_kernels import cast_table, filter_rows
from neurolens.storage.index.filters import EQUALITY_FILTERS, RunFilter
from neurolens.storage.index.rows import OFFSET_COLUMN, IndexFile, IndexMeta, Rows
from neurolens.storage.index.rows_arrow import DICTIONARY_COLUMNS, ArrowRows
from neurolens.storage.ledger.manifest import COLUMNS


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
            if n in kept and n in DICTIONARY_COLUMNS and self.schema.field(n).type == text
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
            read_dictionary=[n for n in DICTIONARY_COLUMNS if n in conditions or n in encoded],
        )
        parts = [file.read(columns=names)]
        if extra is not None and len(extra):
            assert isinstance(extra, ArrowRows)
            parts.append(extra.table.select(names))
        selected = []
        for table in parts:
            mask = filter_mask(table, flt)
            if mask is not None:
                table = filter_rows(table, mask)
            # dictionaries back to strings, the index's field types (but those asked for)
            selected.append(cast_table(table.select(kept), schema))
        table = selected[0] if len(selected) == 1 else pa.concat_tables(selected)
        return ArrowRows(table)
