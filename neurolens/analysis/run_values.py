"""A side's sample values read run by run: the metric from index rows, or from each run's
document for metrics only run files hold (and for tail percentiles, whose runs must have
enough timed calls to bound them: ``metrics.TAIL_MINIMUM``). ``samples.arrow_samples`` is
the same rule vectorised for the metrics the index holds."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from neurolens.analysis.metrics import TAIL_MINIMUM
from neurolens.analysis.samples import GroupKey, SampleRun, SideGroup, samples
from neurolens.errors import StoreError
from neurolens.sources import RunSource


def _group(data: dict[str, list[Any]], group_by: Sequence[str]) -> dict[tuple[Any, ...], list[int]]:
    """Row positions by group key."""
    groups: dict[tuple[Any, ...], list[int]] = {}
    for position, key in enumerate(zip(*(data[k] for k in group_by), strict=True)):
        groups.setdefault(key, []).append(position)
    return groups


class Documents:
    """Run documents read on demand (only for metrics the index does not hold)."""

    def __init__(self, sources: list[RunSource]) -> None:
        self.sources = sources
        self.metrics_seen: set[str] = set()
        self.directions: dict[str, set[bool]] = {}  # metric -> what runs said of it (higher is better)

    def read(self, side: int, entry: Mapping[str, Any]) -> dict[str, Any] | None:
        try:
            document = json.loads(self.sources[side].document(entry))
        except (ValueError, RecursionError, StoreError):
            return None
        if not isinstance(document, dict):
            return None
        stated = document.get("higher_is_better")
        if isinstance(stated, dict):
            for name, higher in stated.items():
                if isinstance(higher, bool):
                    self.directions.setdefault(name, set()).add(higher)
        metrics = document.get("metrics")
        if isinstance(metrics, dict):
            self.metrics_seen.update(k for k, v in metrics.items() if _is_number(v))  # not the flags
        return document


def side_samples(
    docs: Documents,
    metric: str,
    which: int,
    data: dict[str, list[Any]],
    group_by: Sequence[str],
    warnings: list[str],
) -> dict[GroupKey, SideGroup]:
    """Per group: the side's samples, run by run in Python (for metrics only run files
    hold, or rows without Arrow); ``samples.arrow_samples`` is the same rule vectorised."""
    out = {}
    for key, positions in _group(data, group_by).items():
        side = SideGroup(
            runs=len(positions),
            hardware={(data["gpu_name"][i] or "-", data["driver_version"][i] or "-") for i in positions},
        )
        side.samples = _samples(docs, metric, which, data, positions, warnings, side.too_few)
        out[key] = side
    return out


def _samples(
    docs: Documents,
    metric: str,
    which: int,
    data: dict[str, list[Any]],
    positions: list[int],
    warnings: list[str],
    too_few: list[int],
) -> list[float]:
    """The side's sample values (``samples``' rule), the metric from the rows or run files;
    for a tail percentile, runs with fewer timed calls than bound it go to ``too_few``."""
    indexed = metric in data
    minimum = TAIL_MINIMUM.get(metric)
    runs = []
    for i in positions:
        if indexed:
            value = data[metric][i]
        else:
            entry = {"run_id": data["run_id"][i], "run_json": data["run_json"][i]}
            document = docs.read(which, entry)
            if document is None:
                warnings.append(f"run {data['run_id'][i]}: its run file cannot be read")
            value = (document or {}).get("metrics", {}).get(metric)
            if minimum is not None and document is not None and _is_number(value):
                count = _timed_calls(document)
                if count < minimum:
                    too_few.append(count)
                    continue
        if not _is_number(value):
            continue
        runs.append(
            SampleRun(
                value, data["session_id"][i], data["run_id"][i], data["repeat"][i], data["created_at"][i]
            )
        )
    return samples(runs)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _timed_calls(document: Mapping[str, Any]) -> int:
    """How many timed calls a run's percentiles come from: ``latency_samples``, else (runs
    of earlier versions) ``iterations`` or the stored latencies; 0 when none says."""
    metrics = document.get("metrics")
    metrics = metrics if isinstance(metrics, dict) else {}
    for name in ("latency_samples", "iterations"):
        count = metrics.get(name)
        if isinstance(count, (int, float)) and not isinstance(count, bool):
            return int(count)
    latencies = document.get("latencies_ms")
    return len(latencies) if isinstance(latencies, list) else 0
