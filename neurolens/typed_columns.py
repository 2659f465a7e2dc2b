"""A run as typed columns (the layout outside tools read): which columns, their Arrow types,
and how index rows and run documents become them. Used by ``typed_runs`` (export,
``load_runs``) and by the remote table, which stores runs in this layout."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

# Index columns carried as they are (strings and integers).
CARRIED = (
    "run_id", "model", "backend", "precision", "batch_size", "seq_len", "session_id", "outcome",
    "repeat", "gpu_name", "driver_version", "cuda_version", "cpu_model", "fingerprint_hash",
)  # fmt: skip
INTEGERS = frozenset({"batch_size", "seq_len", "repeat"})
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


def typed_schema(*, tags_as_json: bool = False) -> Any:
    """The typed columns as a pyarrow schema; ``tags_as_json`` for formats without maps (CSV)."""
    import pyarrow as pa

    text, whole = pa.string(), pa.int64()
    kinds: dict[str, Any] = {
        "created_at": pa.timestamp("us", tz="UTC"),
        "day": pa.date32(),
        "tags": text if tags_as_json else pa.map_(text, text),
        **dict.fromkeys(INTEGERS | set(INT_METRICS), whole),
        **dict.fromkeys(FLOAT_METRICS, pa.float64()),
        **dict.fromkeys(BOOL_METRICS, pa.bool_()),
    }
    required = {"run_id", "created_at", "day"}
    return pa.schema([pa.field(name, kinds.get(name, text), name not in required) for name in COLUMN_NAMES])


def typed_values(
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
    metrics = [metrics_of(d) for d in documents]
    for name in FLOAT_METRICS:  # the index's copy where a document lacks it
        columns[name] = [
            _number(m.get(name, r.get(name)), float) for m, r in zip(metrics, batch, strict=True)
        ]
    for name in INT_METRICS:
        columns[name] = [_number(m.get(name), int) for m in metrics]
    for name in BOOL_METRICS:
        columns[name] = [m.get(name) if isinstance(m.get(name), bool) else None for m in metrics]
    return columns


def metrics_of(document: dict[str, Any] | None) -> dict[str, Any]:
    metrics = (document or {}).get("metrics")
    return metrics if isinstance(metrics, dict) else {}


def _number(value: Any, kind: type) -> Any:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if kind is int:
        return value if isinstance(value, int) else None
    return float(value)
