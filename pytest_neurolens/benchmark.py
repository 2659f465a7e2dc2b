"""The pytest-benchmark bridge: its statistics become a run, for tests with the marker."""

from __future__ import annotations

from collections.abc import Mapping

import pytest

from pytest_neurolens.context import item_context
from pytest_neurolens.measurement import Measurement, latency_metrics
from pytest_neurolens.runs import RunSink, new_run


def benchmark_measurement(
    item: pytest.Item, session_tags: Mapping[str, str], session_id: str, sink: RunSink
) -> Measurement | None:
    """pytest-benchmark's statistics as a run, for a test that also has the neurolens marker.

    pytest-benchmark times ``rounds`` rounds of ``iterations`` calls each and keeps one
    per-call time per round; both counts are kept.
    """
    funcargs = getattr(item, "funcargs", None) or {}
    meta = getattr(funcargs.get("benchmark"), "stats", None)  # pytest-benchmark's Metadata
    stats = getattr(meta, "stats", None)
    if stats is None or not getattr(stats, "data", None) or item.get_closest_marker("neurolens") is None:
        return None
    run = new_run(item, item_context(item, session_tags), session_id, sink, {})
    latencies_ms = [seconds * 1000 for seconds in stats.data]
    latency, metrics = latency_metrics(
        latencies_ms,
        run["batch_size"],
        rounds=len(latencies_ms),
        iterations=int(getattr(meta, "iterations", 1) or 1),
        gpu_utilization=None,
        source="pytest-benchmark",
    )
    run["metrics"] = metrics
    run["latencies_ms"] = latencies_ms
    return Measurement(run=run, latency=latency, recorded=True)
