"""Runs as typed columns: the layout an analyst opens with their own tools (``neurolens
export``, ``load_runs``): ``created_at`` a UTC timestamp, ``day`` a date, ``tags`` a
``map<string, string>``, each latency statistic, throughput, GPU utilization, memory and
energy, the sample count and the hardware as columns of their own. No JSON to parse.

The metrics come from each run's document, read a batch at a time, so a store of any size
is turned into typed rows in bounded memory (the index rows the filters selected, plus
one batch of documents).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from neurolens.errors import StoreError
from neurolens.sources import RunSource, open_source
from neurolens.storage.index.filters import RunFilter
from neurolens.storage.index.rows import Rows
from neurolens.storage.ledger.root import StrPath
from neurolens.typed_columns import (
    BOOL_METRICS,
    COLUMN_NAMES,
    FLOAT_METRICS,
    INT_METRICS,
    INTEGERS,
    typed_schema,
    typed_values,
)

if TYPE_CHECKING:
    import pandas as pd

BATCH_RUNS = 10_000  # documents held at once


def typed_batches(
    source: RunSource,
    flt: RunFilter,
    *,
    tags_as_json: bool = False,
    unreadable: list[str] | None = None,
    streamed: bool = False,
) -> Iterator[Any]:
    """The selected runs as typed Arrow tables of at most ``BATCH_RUNS`` rows, newest first
    (``streamed``: in the store's order, a part of the store held at a time, when the filter
    has no session or limit); a run whose document cannot be read keeps its index columns
    (its other metrics null) and its id goes to ``unreadable``."""
    import pyarrow as pa

    schema = typed_schema(tags_as_json=tags_as_json)
    form = "json" if tags_as_json else "pairs"
    for columns in typed_value_batches(source, flt, tags=form, unreadable=unreadable, streamed=streamed):
        yield pa.Table.from_pydict(columns, schema=schema)


def typed_value_batches(
    source: RunSource,
    flt: RunFilter,
    *,
    tags: str = "pairs",
    unreadable: list[str] | None = None,
    streamed: bool = False,
) -> Iterator[dict[str, list[Any]]]:
    """:func:`typed_batches` as Python lists (no pyarrow needed); ``tags`` as ``"pairs"``
    (for a map), ``"json"`` or ``"dict"``."""
    for rows in source.parts(flt) if streamed else [source.select(flt)]:
        for batch in _slices(rows):
            yield typed_values(batch, _documents(source, batch, unreadable), tags)


def _slices(rows: Rows) -> Iterator[list[dict[str, Any]]]:
    """``rows`` as lists of dicts of at most ``BATCH_RUNS``."""
    table = rows.arrow()
    if table is None:  # rows held without Arrow
        records = rows.records()
        yield from (records[i : i + BATCH_RUNS] for i in range(0, len(records), BATCH_RUNS))
    else:
        yield from (table.slice(i, BATCH_RUNS).to_pylist() for i in range(0, table.num_rows, BATCH_RUNS))


def load_runs(root: RunSource | StrPath | None = None, **filters: Any) -> pd.DataFrame:
    """Matching runs as a pandas DataFrame of the typed columns, newest first (``tags`` a
    dict per row). Filters: ``model``, ``backend``, ``precision``, ``day`` (``YYYY-MM-DD``),
    ``session_id`` (an id, a unique prefix or ``"latest"``), ``tags`` (a dict; every pair
    must match), ``include_failed`` and ``limit``. Each run's document is read for its
    metrics: give a ``limit`` or filters on a large store. Works without pyarrow."""
    import pandas as pd

    columns: dict[str, list[Any]] = {name: [] for name in COLUMN_NAMES}
    with open_source(root) as source:
        for batch in typed_value_batches(source, RunFilter(**filters), tags="dict"):
            for name, values in batch.items():
                columns[name].extend(values)
    frame: pd.DataFrame = pd.DataFrame(columns, columns=list(COLUMN_NAMES))
    frame["created_at"] = pd.to_datetime(frame["created_at"], utc=True)
    kinds: dict[str, Any] = {
        **dict.fromkeys((*INTEGERS, *INT_METRICS), pd.Int64Dtype()),
        **dict.fromkeys(FLOAT_METRICS, pd.Float64Dtype()),
        **dict.fromkeys(BOOL_METRICS, pd.BooleanDtype()),
    }
    frame = frame.astype(kinds)  # nullable: a missing value stays missing and the type stays
    return frame


def _documents(
    source: RunSource, batch: list[dict[str, Any]], unreadable: list[str] | None
) -> list[dict[str, Any] | None]:
    documents: list[dict[str, Any] | None] = []
    for entry in batch:
        try:
            document = json.loads(source.document(entry))
        except (StoreError, ValueError, RecursionError):
            document = None
        if not isinstance(document, dict):
            document = None
            if unreadable is not None:
                unreadable.append(str(entry["run_id"]))
        documents.append(document)
    return documents
