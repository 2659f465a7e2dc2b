"""Runs as typed columns: the layout an analyst opens with their own tools (``neurolens
export``, ``load_runs``): ``created_at`` a UTC timestamp, ``day`` a date, ``tags`` a
``map<string, string>``, each latency statistic, throughput, GPU utilization, memory and
energy, the sample count and the hardware as columns of their own. No JSON to parse.

The metrics come from each run's document, read a batch at a time, so a store of any size
is turned into typed rows in bounded memory (the index rows the filters selected, plus
one batch of documents).
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from neurolens.errors import StoreError
from neurolens.sources import RunSource, open_source
from neurolens.storage.index.filters import RunFilter
from neurolens.storage.ledger.root import StrPath

if TYPE_CHECKING:
    import pandas as pd

# Index columns carried as they are (strings and integers).
CARRIED = (
    "run_id", "model", "backend", "precision", "batch_size", "seq_len", "session_id", "outcome",
    "repeat", "gpu_name", "driver_version", "cuda_version", "cpu_model", "fingerprint_hash",
)  # fmt: skip
_INTEGERS = frozenset({"batch_size", "seq_len", "repeat"})
# Metrics read from each run's document (null where a run has none).
FLOAT_METRICS = (
    "total_latency_ms", "latency_mean_ms", "latency_p50_ms", "latency_p90_ms", "latency_p95_ms",
    "latency_p99_ms", "latency_min_ms", "latency_max_ms", "latency_stdev_ms", "latency_p90_upper_ms",
    "latency_p95_upper_ms", "latency_p99_upper_ms", "throughput_per_s", "gpu_utilization",
    "gpu_utilization_max", "gpu_memory_peak_mb", "energy_j",
)  # fmt: skip
INT_METRICS = ("latency_samples",)
BOOL_METRICS = ("stable",)
COLUMN_NAMES = (
    "run_id",
    "created_at",
    "day",
    *CARRIED[1:],
    "tags",
    *FLOAT_METRICS,
    *INT_METRICS,
    *BOOL_METRICS,
)
BATCH_RUNS = 10_000


def typed_schema(*, tags_as_json: bool = False) -> Any:
    """The typed columns as a pyarrow schema; ``tags_as_json`` for formats without maps (CSV)."""
    import pyarrow as pa

    text, whole = pa.string(), pa.int64()
    kinds: dict[str, Any] = {
        "created_at": pa.timestamp("us", tz="UTC"),
        "day": pa.date32(),
        "tags": text if tags_as_json else pa.map_(text, text),
        **dict.fromkeys(_INTEGERS | set(INT_METRICS), whole),
        **dict.fromkeys(FLOAT_METRICS, pa.float64()),
        **dict.fromkeys(BOOL_METRICS, pa.bool_()),
    }
    required = {"run_id", "created_at", "day"}
    return pa.schema([pa.field(name, kinds.get(name, text), name not in required) for name in COLUMN_NAMES])


def typed_batches(
    source: RunSource, flt: RunFilter, *, tags_as_json: bool = False, unreadable: list[str] | None = None
) -> Iterator[Any]:
    """The selected runs as typed Arrow tables of at most ``BATCH_RUNS`` rows, newest first;
    a run whose document cannot be read keeps its index columns (its other metrics null)
    and its id goes to ``unreadable``."""
    import pyarrow as pa

    schema = typed_schema(tags_as_json=tags_as_json)
    form = "json" if tags_as_json else "pairs"
    for columns in typed_columns(source, flt, tags=form, unreadable=unreadable):
        yield pa.Table.from_pydict(columns, schema=schema)


def typed_columns(
    source: RunSource, flt: RunFilter, *, tags: str = "pairs", unreadable: list[str] | None = None
) -> Iterator[dict[str, list[Any]]]:
    """:func:`typed_batches` as Python lists (no pyarrow needed); ``tags`` as ``"pairs"``
    (for a map), ``"json"`` or ``"dict"``."""
    rows = source.select(flt)
    table = rows.arrow()
    if table is None:  # rows held without Arrow
        records = rows.records()
        slices: Iterator[list[dict[str, Any]]] = (
            records[i : i + BATCH_RUNS] for i in range(0, len(records), BATCH_RUNS)
        )
    else:
        slices = (table.slice(i, BATCH_RUNS).to_pylist() for i in range(0, table.num_rows, BATCH_RUNS))
    for batch in slices:
        yield _columns(batch, _documents(source, batch, unreadable), tags)


def typed_table(source: RunSource, flt: RunFilter) -> Any:
    """Every batch of :func:`typed_batches` as one pyarrow Table."""
    import pyarrow as pa

    parts = list(typed_batches(source, flt))
    return pa.concat_tables(parts) if parts else typed_schema().empty_table()


def load_runs(root: RunSource | StrPath | None = None, **filters: Any) -> pd.DataFrame:
    """Matching runs as a pandas DataFrame of the typed columns, newest first (``tags`` a
    dict per row). Filters: ``model``, ``backend``, ``precision``, ``day`` (``YYYY-MM-DD``),
    ``session_id`` (an id, a unique prefix or ``"latest"``), ``tags`` (a dict; every pair
    must match), ``include_failed`` and ``limit``. Each run's document is read for its
    metrics: give a ``limit`` or filters on a large store. Works without pyarrow."""
    import pandas as pd

    columns: dict[str, list[Any]] = {name: [] for name in COLUMN_NAMES}
    with open_source(root) as source:
        for batch in typed_columns(source, RunFilter(**filters), tags="dict"):
            for name, values in batch.items():
                columns[name].extend(values)
    frame: pd.DataFrame = pd.DataFrame(columns, columns=list(COLUMN_NAMES))
    frame["created_at"] = pd.to_datetime(frame["created_at"], utc=True)
    kinds: dict[str, Any] = {
        **dict.fromkeys((*_INTEGERS, *INT_METRICS), pd.Int64Dtype()),
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


def _columns(
    batch: list[dict[str, Any]], documents: list[dict[str, Any] | None], tags_form: str
) -> dict[str, list[Any]]:
    columns: dict[str, list[Any]] = {name: [r[name] for r in batch] for name in CARRIED}
    columns["created_at"] = [dt.datetime.fromisoformat(r["created_at"].replace("Z", "+00:00")) for r in batch]
    columns["day"] = [dt.date.fromisoformat(r["day"]) for r in batch]
    tags = [r["tags"] if isinstance(r["tags"], str) else json.dumps(r["tags"]) for r in batch]
    if tags_form == "json":
        columns["tags"] = tags
    else:
        decoded = [json.loads(t) for t in tags]
        columns["tags"] = decoded if tags_form == "dict" else [list(d.items()) for d in decoded]
    metrics = [_metrics_of(d) for d in documents]
    for name in FLOAT_METRICS:  # the index's copy where a document lacks it
        columns[name] = [
            _number(m.get(name, r.get(name)), float) for m, r in zip(metrics, batch, strict=True)
        ]
    for name in INT_METRICS:
        columns[name] = [_number(m.get(name), int) for m in metrics]
    for name in BOOL_METRICS:
        columns[name] = [m.get(name) if isinstance(m.get(name), bool) else None for m in metrics]
    return columns


def _metrics_of(document: dict[str, Any] | None) -> dict[str, Any]:
    metrics = (document or {}).get("metrics")
    return metrics if isinstance(metrics, dict) else {}


def _number(value: Any, kind: type) -> Any:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if kind is int:
        return value if isinstance(value, int) else None
    return float(value)
