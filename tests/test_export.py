"""``neurolens export`` and ``load_runs``: typed columns an analyst reads with their own tools
(Polars here), without parsing JSON; through the real command."""

from __future__ import annotations

import csv
import datetime as dt
import json
from pathlib import Path

import pytest

from neurolens.storage.store import write_run
from tests.factories import Cli, make_run


def week(root: Path) -> None:
    """Two groups over a week, on two branches; p50, p90, samples and throughput per run."""
    for day in range(1, 8):
        for branch in ("main", "pr"):
            for batch, level in ((1, 2.0), (8, 9.0)):
                p50 = level * (1 + day / 100) * (1.5 if branch == "pr" else 1.0)
                metrics = {
                    "total_latency_ms": p50, "latency_p50_ms": p50, "latency_p90_ms": p50 * 1.2,
                    "latency_samples": 1000, "throughput_per_s": batch * 1000 / p50, "stable": True,
                }  # fmt: skip
                run = make_run(batch_size=batch, created_at=f"2026-11-0{day}T12:00:00Z",
                               tags={"branch": branch}, metrics=metrics)  # fmt: skip
                write_run(root, run)


@pytest.mark.parametrize("suffix", [".parquet", ".csv", ".jsonl"])
def test_export_writes_typed_columns_a_polars_user_reads_without_json(
    tmp_path: Path, cli: Cli, suffix: str
) -> None:
    import polars as pl

    week(tmp_path / "store")
    out = tmp_path / "out" / f"runs{suffix}"
    if suffix == ".parquet":  # every run; the tag filtered by the analyst
        status, said = cli("export", "--root", str(tmp_path / "store"), "--out", str(out))
        assert status == 0 and said == f"wrote 28 runs to {out} (parquet)\n"
        frame = pl.read_parquet(out)
        assert frame.schema["created_at"] == pl.Datetime("us", "UTC") and frame.schema["day"] == pl.Date
        assert frame.schema["tags"] == pl.Map(pl.String, pl.String)
        assert frame.schema["latency_samples"] == pl.Int64 and frame.schema["stable"] == pl.Boolean
        # the analyst's question: per group, the median p50 over the week, on one branch
        weekly = (
            frame.filter(pl.col("day") >= dt.date(2026, 11, 1), pl.col("tags").map.get("branch") == "main")
            .group_by("model", "backend", "batch_size")
            .agg(pl.col("latency_p50_ms").median().alias("p50"), pl.len().alias("runs"))
            .sort("batch_size")
        )
        assert weekly["runs"].to_list() == [7, 7]
        assert weekly["p50"].to_list() == pytest.approx([2.0 * 1.04, 9.0 * 1.04])
        return
    status, said = cli("export", "--root", str(tmp_path / "store"), "--out", str(out), "--tag", "branch=main")
    assert status == 0 and said == f"wrote 14 runs to {out} ({suffix[1:]})\n"
    if suffix == ".csv":
        with out.open() as handle:
            rows = list(csv.DictReader(handle))
        assert len(rows) == 14 and all(json.loads(r["tags"]) == {"branch": "main"} for r in rows)
        assert max(r["created_at"] for r in rows) == "2026-11-07 12:00:00.000000Z"
        assert {r["latency_samples"] for r in rows} == {"1000"}
    else:
        frame = pl.read_ndjson(out)
        assert all(tags == {"branch": "main"} for tags in frame["tags"].to_list())
        assert frame["created_at"].max() == "2026-11-07T12:00:00.000000Z"
        assert frame.height == 14 and frame["latency_p90_ms"].null_count() == 0


def test_export_refuses_what_it_cannot_write_and_never_leaves_half_a_file(tmp_path: Path, cli: Cli) -> None:
    week(tmp_path / "store")
    assert cli("export", "--root", str(tmp_path / "store"), "--out", str(tmp_path / "runs.xlsx"))[0] == 2
    status, _ = cli("export", "--root", str(tmp_path / "missing"), "--out", str(tmp_path / "runs.parquet"))
    assert status == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["store"]  # no file, no temporary left


def test_export_streams_the_store_a_part_at_a_time(
    tmp_path: Path, cli: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pyarrow.parquet as pq

    from neurolens.storage.index import arrow_backend, reading
    from neurolens.storage.store import compact_index

    monkeypatch.setattr(arrow_backend, "_ROW_GROUP_SIZE", 10)  # an index of 10-run row groups
    week(tmp_path / "store")
    compact_index(tmp_path / "store")
    write_run(tmp_path / "store", make_run(model="tail", tags={"branch": "main"}))  # and a tail
    held: list[int] = []
    streamed = reading.stream_rows

    def counting(root: Path, flt: object) -> object:
        for part in streamed(root, flt):  # type: ignore[arg-type]
            held.append(len(part))
            yield part

    monkeypatch.setattr(reading, "stream_rows", counting)
    out = tmp_path / "runs.parquet"
    assert cli("export", "--root", str(tmp_path / "store"), "--out", str(out), "--tag", "branch=main")[0] == 0
    assert pq.read_table(out).num_rows == 15
    assert len(held) == 4 and max(held) <= 10  # three row groups and the tail, never the store


def test_load_runs_returns_the_typed_columns(tmp_path: Path) -> None:
    from neurolens import load_runs

    week(tmp_path)
    frame = load_runs(tmp_path, tags={"branch": "pr"}, limit=3)
    assert len(frame) == 3 and frame["tags"][0] == {"branch": "pr"}
    assert frame["day"][0] == dt.date(2026, 11, 7) and str(frame["created_at"].dt.tz) == "UTC"
    assert frame["latency_samples"].tolist() == [1000] * 3 and frame["stable"].all()
    assert frame["latency_p90_ms"][0] == pytest.approx(frame["latency_p50_ms"][0] * 1.2)
