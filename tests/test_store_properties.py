"""Property-based round trips: what is written is what is read back, in any store."""

from __future__ import annotations

import datetime as dt
import tempfile
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from neurolens import load_runs
from neurolens.storage.query import query
from neurolens.storage.store import compact_index, rebuild_index_from_manifest, write_run

names = st.text(st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=12)
segments = names.filter(lambda s: "/" not in s and "\\" not in s and s not in {".", ".."})
tag_maps = st.dictionaries(names, st.text(max_size=8), max_size=3)
moments = st.datetimes(
    min_value=dt.datetime(2000, 1, 1), max_value=dt.datetime(2100, 1, 1), timezones=st.just(dt.timezone.utc)
)

runs = st.fixed_dictionaries(
    {
        "model": st.sampled_from(["gpt2", "bert", "résumé"]),
        "backend": segments,
        "precision": st.sampled_from(["fp32", "fp16"]),
        "batch_size": st.integers(1, 1024),
        "seq_len": st.none() | st.integers(0, 4096),
        "metrics": st.fixed_dictionaries(
            {
                "total_latency_ms": st.floats(0, 1e6, allow_nan=False),
                "gpu_utilization": st.none() | st.floats(0, 100),
            }
        ),
        "tags": tag_maps,
        "created_at": moments.map(lambda m: m.isoformat()),
    }
)


def _matches(run: dict[str, Any], filters: dict[str, Any]) -> bool:
    for name, value in filters.items():
        if name == "tags":
            if any(run["tags"].get(k) != v for k, v in value.items()):
                return False
        elif (run["created_at"][:10] if name == "day" else run[name]) != value:
            return False
    return True


def _expected(written: list[dict[str, Any]]) -> list[str]:
    ordered = sorted(written, key=lambda r: (r["created_at"], r["run_id"]), reverse=True)
    return [r["run_id"] for r in ordered]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(runs, min_size=1, max_size=8), st.integers(0, 7))
def test_round_trip_rebuild_and_filters(batch: list[dict[str, Any]], pick: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        written = []
        for run in batch:
            result = write_run(root, run)
            written.append({**run, "run_id": result["run_id"], "created_at": result["created_at"]})
        assert list(load_runs(root)["run_id"]) == _expected(written)

        compacted = compact_index(root).read_bytes()
        assert rebuild_index_from_manifest(root).read_bytes() == compacted

        probe = written[pick % len(written)]
        for filters in (
            {"backend": probe["backend"]},
            {"model": probe["model"], "precision": probe["precision"]},
            {"day": probe["created_at"][:10]},
            {"tags": probe["tags"]},
        ):
            got = [r["run_id"] for r in query(root, **filters)]
            want = _expected([r for r in written if _matches(r, filters)])
            assert got == want, filters
        rows = {r["run_id"]: r for r in query(root)}
        for run in written:
            row = rows[run["run_id"]]
            assert row["tags"] == run["tags"]
            assert row["batch_size"] == run["batch_size"] and row["seq_len"] == run["seq_len"]
            assert row["total_latency_ms"] == run["metrics"]["total_latency_ms"]
