"""The remote table's two layouts, and the one place rows are turned from one to the other.

Typed (version 2, what ``push`` creates and ``remote migrate`` turns a table into): the
typed columns of ``typed_columns`` (``created_at`` a UTC timestamp, ``day`` a date, ``tags``
a ``map<string, string>``, every latency statistic, throughput, GPU and energy, the sample
count, the hardware), so Polars or Spark answer questions without parsing JSON; plus the
run's place in a store (``run_json``, ``fp_json``), its ``sha256``, and the document and
fingerprint a ``pull`` restores byte for byte.

Plain (version 1, tables made before 0.2): the manifest's columns as text. Read and pushed
to as they are until migrated.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from neurolens.storage.ledger.manifest import COLUMNS, encode_tags
from neurolens.typed_columns import COLUMN_NAMES, typed_schema, typed_values

PAYLOAD_COLUMNS = ("document", "fingerprint", "pushed_at")
STORE_COLUMNS = ("run_json", "fp_json", "sha256")  # where the run lives in a store, its hash
# Columns version 1 gained later: a table made before them lacks them until a push adds them.
LATER_COLUMNS = ("cpu_model",)
# A table property ``remote migrate`` sets while it works: pushes of this version wait for it.
MIGRATING = "neurolens.migrating"
# How a typed column reads as the index's text (the format write_run stores).
_AS_INDEX_TEXT = {
    "created_at": "to_char(created_at, '%Y-%m-%dT%H:%M:%S.%6fZ') AS created_at",
    "day": "CAST(day AS VARCHAR) AS day",
}


def is_typed(table: Any) -> bool:
    """Whether a Delta table has the typed layout (its ``created_at`` is a timestamp)."""
    kind = next((f.type for f in table.schema().fields if f.name == "created_at"), None)
    return kind is not None and "timestamp" in str(kind).lower()


def is_migrating(table: Any) -> bool:
    return bool(table.metadata().configuration.get(MIGRATING) == "true")


def schema(*, typed: bool = True) -> Any:
    """A layout's pyarrow schema."""
    import pyarrow as pa

    payload = [
        pa.field("document", pa.string(), False),
        pa.field("fingerprint", pa.string(), True),
        pa.field("pushed_at", pa.timestamp("us", tz="UTC"), False),
    ]
    if typed:
        text = pa.string()
        store = [
            pa.field("run_json", text, False),
            pa.field("fp_json", text),
            pa.field("sha256", text, False),
        ]
        return pa.schema([*typed_schema(), *store, *payload])
    kinds = {str: pa.string(), int: pa.int64(), float: pa.float64()}
    return pa.schema([*(pa.field(n, kinds[k], null) for n, (k, null) in COLUMNS.items()), *payload])


def lacking(table: Any) -> list[str]:
    """The later columns a plain table lacks."""
    names = {f.name for f in table.schema().fields}
    return [name for name in LATER_COLUMNS if name not in names]


def index_select_list(table: Any) -> list[str]:
    """The index's columns as SQL select items over either layout (text as the index holds
    it; a later column a plain table lacks reads as null; typed tags are converted after)."""
    if is_typed(table):
        return [_AS_INDEX_TEXT.get(name, name) for name in COLUMNS]
    missing = lacking(table)
    return [f"CAST(NULL AS VARCHAR) AS {name}" if name in missing else name for name in COLUMNS]


def as_index(result: Any) -> Any:
    """Query results of ``index_select_list`` as the index's schema (tags as canonical JSON)."""
    import pyarrow as pa

    from neurolens.storage.index.arrow_filters import string_array

    tags = result.column("tags")
    if pa.types.is_map(tags.type):
        texts = [encode_tags(dict(pairs or [])) for pairs in tags.to_pylist()]
        result = result.set_column(result.schema.get_field_index("tags"), "tags", string_array(texts))
    index_schema = pa.schema([f for f in schema(typed=False) if f.name in COLUMNS])
    return result.select(list(COLUMNS)).cast(index_schema)


def rows_for(records: Sequence[dict[str, Any]], *, typed: bool) -> Any:
    """Rows to write in a layout, from dicts of the index's columns (text) plus the payload
    (``document`` and ``fingerprint`` text, ``pushed_at``)."""
    import pyarrow as pa

    if not typed:
        names = [f.name for f in schema(typed=False)]
        return pa.Table.from_pydict(
            {n: [r.get(n) for r in records] for n in names}, schema=schema(typed=False)
        )
    documents = [_parsed(r["document"]) for r in records]
    index_rows = [
        {**r, "tags": r["tags"] if isinstance(r["tags"], str) else encode_tags(r["tags"])} for r in records
    ]
    columns = typed_values(index_rows, documents, "pairs")
    for name in (*STORE_COLUMNS, *PAYLOAD_COLUMNS):
        columns[name] = [r.get(name) for r in records]
    assert set(columns) == {*COLUMN_NAMES, *STORE_COLUMNS, *PAYLOAD_COLUMNS}
    return pa.Table.from_pydict(columns, schema=schema(typed=True))


def _parsed(document: Any) -> dict[str, Any] | None:
    try:
        parsed = json.loads(document)
    except (TypeError, ValueError, RecursionError):
        return None
    return parsed if isinstance(parsed, dict) else None
