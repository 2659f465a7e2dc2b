"""The index's read paths agree with reading every row: pushed-down filters, a limited
query's rows read from their manifest lines, the uncovered tail, and the streamed writer."""

from __future__ import annotations

import json
import random
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from neurolens.analysis.run_values import Documents, side_samples
from neurolens.analysis.samples import arrow_samples
from neurolens.errors import ManifestWarning
from neurolens.storage.index import arrow_kernels
from neurolens.storage.index import reading as _index
from neurolens.storage.index.backend import backend
from neurolens.storage.index.filters import RunFilter
from neurolens.storage.index.query import select
from neurolens.storage.ledger.manifest import encode_entry, encode_tags
from neurolens.storage.store import compact_index, rebuild_index_from_manifest


def entry(i: int, *, created: int | None = None, run_id: str | None = None) -> dict[str, Any]:
    when = i if created is None else created
    rid = run_id or f"{i:012x}-0000-7000-8000-{i:012x}"
    return {
        "run_id": rid,
        "created_at": f"2025-{1 + when % 12:02d}-{1 + when % 28:02d}T00:00:{when % 60:02d}.{when:06d}Z",
        "day": f"2025-{1 + when % 12:02d}-{1 + when % 28:02d}",
        "model": ["gpt2", "bert"][i % 2],
        "backend": ["onnxrt", "torch", "tensorrt"][i % 3],
        "precision": "fp16",
        "batch_size": 1 + i % 4,
        "seq_len": None if i % 5 == 0 else 128,
        "total_latency_ms": 1.0 + i % 97,
        "gpu_utilization": None,
        "gpu_name": None,
        "driver_version": None,
        "cuda_version": None,
        "run_json": f"2025/01/01/x/{rid}.json",
        "fp_json": None,
        "tags": encode_tags({"branch": f"b{i % 7}", **({"q": 'say "hi"'} if i % 11 == 0 else {})}),
        "sha256": "0" * 64,
        "session_id": None if i % 3 == 0 else f"s{i % 13}",
        "fingerprint_hash": None,
        "outcome": [None, "passed", "failed"][i % 3],
        "repeat": None,
        "latency_p99_ms": None,
        "cpu_model": None,
    }


def write_manifest(root: Path, entries: list[dict[str, Any]], *, append: bool = False) -> None:
    root.mkdir(parents=True, exist_ok=True)
    with open(root / "_manifest.jsonl", "ab" if append else "wb") as handle:
        handle.write(b"".join(encode_entry(e) for e in entries))


def every_row(root: Path, flt: RunFilter) -> list[dict[str, Any]]:
    """The reference, in plain Python: every row of the index and tail, filtered, newest first."""
    conditions = RunFilter(**{**flt.__dict__, "session_id": None, "limit": None})
    records = [r for r in _index.snapshot(root, warn=False).records() if conditions.matches(r)]
    records.sort(key=lambda r: (r["created_at"], r["run_id"]), reverse=True)
    session = flt.session_id
    if session == "latest":
        session = next((r["session_id"] for r in records if r["session_id"] is not None), None)
    if session is not None:  # FILTERS name whole session ids
        records = [r for r in records if r["session_id"] == session]
    return records if flt.limit is None else records[: flt.limit]


@pytest.fixture(params=["pyarrow._compute", "pyarrow.compute"])
def kernels(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Readers call Arrow's kernels by name; where pyarrow has no ``_compute`` module they
    come from the public ``pyarrow.compute``, with the same answers."""
    if request.param == "pyarrow.compute":
        monkeypatch.setattr(arrow_kernels, "_KERNELS_MODULE", "pyarrow._moved_elsewhere")
    arrow_kernels._kernels.cache_clear()
    yield request.param
    arrow_kernels._kernels.cache_clear()


FILTERS = [
    RunFilter(tags={"branch": "b3"}, limit=5),
    RunFilter(tags={"q": 'say "hi"'}, limit=3),
    RunFilter(tags={"branch": "b3"}, limit=5, include_failed=True),
    RunFilter(model="gpt2", backend="torch", limit=2000),
    RunFilter(day="2025-03-03"),
    RunFilter(session_id="s4", limit=4),
    RunFilter(session_id="latest", limit=2),
    RunFilter(tags={"branch": "b1"}),
    RunFilter(limit=0),
]


@pytest.mark.parametrize("flt", FILTERS, ids=repr)
def test_reads_equal_every_row_with_and_without_a_tail(tmp_path: Path, flt: RunFilter, kernels: str) -> None:
    write_manifest(tmp_path, [entry(i, created=(i * 7919) % 3000) for i in range(3000)])
    compact_index(tmp_path)
    assert select(tmp_path, flt).records() == every_row(tmp_path, flt)
    # a tail the index does not cover, with a duplicate of an indexed run (the first wins)
    tail = [entry(i, created=(i * 104729) % 5000) for i in range(3000, 3400)]
    tail.append({**entry(9999), "run_id": entry(5)["run_id"], "total_latency_ms": 12345.0})
    write_manifest(tmp_path, tail, append=True)
    with pytest.warns(ManifestWarning, match="duplicate run id"):
        got = select(tmp_path, flt).records()
    assert got == every_row(tmp_path, flt)
    assert all(r["total_latency_ms"] != 12345.0 for r in got)
    assert arrow_kernels._kernels().__name__ == kernels


def test_a_limited_query_reads_only_its_rows_lines_and_falls_back_when_one_was_edited(tmp_path: Path) -> None:
    write_manifest(tmp_path, [entry(i) for i in range(500)])
    compact_index(tmp_path)
    flt = RunFilter(tags={"branch": "b2"}, limit=3)
    expected = every_row(tmp_path, flt)
    # edit the newest match's line in place (same length) under the index: its time changes
    data = (tmp_path / "_manifest.jsonl").read_bytes()
    old = json.dumps(expected[0]["created_at"]).encode()
    new = old.replace(b"2025-", b"2024-")
    (tmp_path / "_manifest.jsonl").write_bytes(data.replace(old, new, 1))
    # the line no longer holds the row the index points at: the index's own rows answer
    assert select(tmp_path, flt).records() == expected


def test_the_index_has_fixed_row_groups_and_rebuild_equals_compaction_across_them(tmp_path: Path) -> None:
    count = 64 * 1024 + 5000
    order = list(range(count))
    random.Random(4).shuffle(order)
    write_manifest(tmp_path, [entry(i, created=order[i]) for i in range(count - 1000)])
    compact_index(tmp_path)
    write_manifest(tmp_path, [entry(i, created=order[i]) for i in range(count - 1000, count)], append=True)
    compact_index(tmp_path)  # the old index's groups streamed, then the tail
    compacted = (tmp_path / "_index.parquet").read_bytes()
    assert rebuild_index_from_manifest(tmp_path).read_bytes() == compacted
    meta = pq.ParquetFile(tmp_path / "_index.parquet").metadata
    assert [meta.row_group(g).num_rows for g in range(meta.num_row_groups)] == [64 * 1024, 5000]
    offsets = pq.read_table(tmp_path / "_index.parquet", columns=["manifest_offset"]).column(0).to_pylist()
    manifest = (tmp_path / "_manifest.jsonl").read_bytes()
    assert offsets[:3] == [0, manifest.index(b"\n") + 1, manifest.index(b"\n", manifest.index(b"\n") + 1) + 1]
    assert all(manifest[o - 1 : o] == b"\n" for o in offsets[1:])


def test_an_index_of_the_previous_version_is_not_used_and_the_next_write_replaces_it(tmp_path: Path) -> None:
    write_manifest(tmp_path, [entry(i) for i in range(50)])
    compact_index(tmp_path)
    table = pq.read_table(tmp_path / "_index.parquet")
    pq.write_table(table.drop(["manifest_offset"]).replace_schema_metadata({"neurolens.index_version": "1"}),
                   tmp_path / "_index.parquet")  # fmt: skip
    flt = RunFilter(tags={"branch": "b1"}, limit=3)
    with pytest.warns(Warning, match="from another version"):
        got = select(tmp_path, flt).records()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert got == every_row(tmp_path, flt)
    compact_index(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert select(tmp_path, flt).records() == got


samples_rows = st.lists(
    st.tuples(
        st.sampled_from(["gpt2", "bert"]),
        st.sampled_from([None, 128]),
        st.one_of(st.none(), st.sampled_from(["s1", "s2", "s3"])),
        st.one_of(st.none(), st.integers(0, 2)),
        st.integers(0, 40),
        st.one_of(st.none(), st.floats(0.5, 50, allow_nan=False)),
        st.sampled_from([None, "H100", "A100"]),
    ),
    max_size=60,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(samples_rows)
def test_vectorised_samples_equal_the_run_by_run_rule(rows: list[tuple[Any, ...]]) -> None:
    entries = []
    for i, (model, seq, session, repeat, when, latency, gpu) in enumerate(rows):
        e = entry(i, created=when)
        e.update(
            model=model, seq_len=seq, session_id=session, repeat=repeat, gpu_utilization=latency, gpu_name=gpu
        )
        entries.append(e)
    group_by = ["model", "seq_len"]
    arrow_rows = backend().from_entries(entries)
    vectorised = arrow_samples(arrow_rows.arrow(), group_by, "gpu_utilization")
    names = [
        *group_by,
        "run_id",
        "session_id",
        "repeat",
        "created_at",
        "gpu_utilization",
        "gpu_name",
        "driver_version",
    ]
    by_run = side_samples(Documents([]), "gpu_utilization", 0, arrow_rows.columns(names), group_by, [])
    assert vectorised == by_run
    # the same, with text columns dictionary-encoded as compare reads them from the index: a
    # dictionary per row group, nulls outside the dictionary; grouped by a nullable one too
    encoded = _dictionary_chunks(arrow_rows.arrow(), ["model", "gpu_name", "driver_version"])
    assert arrow_samples(encoded, group_by, "gpu_utilization") == by_run
    by_gpu = ["gpu_name", "model"]
    assert arrow_samples(encoded, by_gpu, "gpu_utilization") == side_samples(
        Documents([]), "gpu_utilization", 0, arrow_rows.columns([*names, *by_gpu]), by_gpu, []
    )


def _dictionary_chunks(table: Any, names: list[str]) -> Any:
    """``table`` in two chunks whose ``names`` columns each have their own dictionary."""
    import pyarrow as pa

    half = table.num_rows // 2
    parts = [table.slice(0, half), table.slice(half)]
    columns = {}
    for name in table.column_names:
        chunks = [part.column(name).combine_chunks() for part in parts]
        if name in names:
            chunks = [chunk.dictionary_encode() for chunk in chunks]
        columns[name] = pa.chunked_array(chunks)
    return pa.table(columns)


def test_a_run_id_held_by_the_index_or_the_tail_is_refused_and_a_new_one_stored(tmp_path: Path) -> None:
    from neurolens.errors import RunExistsError
    from neurolens.storage.store import write_run
    from tests.factories import make_run

    write_manifest(tmp_path, [entry(i) for i in range(300)])
    compact_index(tmp_path)
    write_manifest(tmp_path, [entry(i) for i in range(300, 310)], append=True)  # not indexed
    before = (tmp_path / "_manifest.jsonl").read_bytes()
    for held in (entry(0)["run_id"], entry(150)["run_id"], entry(305)["run_id"]):
        with pytest.raises(RunExistsError, match=held):
            write_run(tmp_path, make_run(run_id=held, created_at="2026-01-01T00:00:00Z"))
    assert (tmp_path / "_manifest.jsonl").read_bytes() == before
    fresh = f"{999:012x}-0000-7000-8000-{999:012x}"
    assert write_run(tmp_path, make_run(run_id=fresh, created_at="2026-01-01T00:00:00Z"))["run_id"] == fresh


@pytest.mark.parametrize(
    ("one", "other", "excluded"),
    [
        (RunFilter(tags={"branch": "main"}), RunFilter(tags={"branch": "pr"}), True),
        (RunFilter(tags={"branch": "main"}), RunFilter(tags={"branch": "main", "x": "1"}), False),
        (RunFilter(tags={"branch": "main"}), RunFilter(tags={"job": "1"}), False),
        (RunFilter(model="a"), RunFilter(model="b", tags={"k": "v"}), True),
        (RunFilter(day="2025-01-01"), RunFilter(session_id="latest"), False),
        (RunFilter(session_id="abc"), RunFilter(session_id="abd"), False),  # prefixes: not proven
    ],
)
def test_filters_that_exclude_each_other(one: RunFilter, other: RunFilter, excluded: bool) -> None:
    assert one.excludes(other) is excluded and other.excludes(one) is excluded


def test_rebuild_and_verify_import_no_pandas(tmp_path: Path) -> None:
    # pyarrow imports pandas (0.4 s and tens of MB) on its first conversion of a Python value
    import subprocess
    import sys

    write_manifest(tmp_path, [entry(i) for i in range(20)])
    script = (
        "import sys; from neurolens.storage.store import rebuild_index_from_manifest\n"
        "from neurolens.storage.exchange.verify import verify_store\n"
        "rebuild_index_from_manifest(sys.argv[1]); verify_store(sys.argv[1])\n"
        "print('pandas' in sys.modules)"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True, check=True
    )
    assert done.stdout.split() == ["False"]


def test_a_manifest_written_by_hand_or_another_tool_reads_as_the_canonical_one(tmp_path: Path) -> None:
    # spaces after separators (json.dumps' default), tags spaced and unsorted, ASCII escapes:
    # the same rows, the same tag filters
    entries = [entry(i) for i in range(300)]
    for e in entries[::50]:  # and non-ASCII tags, which json.dumps escapes as \\uXXXX
        e["tags"] = encode_tags({**json.loads(e["tags"]), "café": "crème"})
    write_manifest(tmp_path / "canonical", entries)
    spaced = tmp_path / "spaced"
    spaced.mkdir()
    with open(spaced / "_manifest.jsonl", "w") as handle:
        for e in entries:
            tags = json.loads(e["tags"])
            other = dict(reversed(list(tags.items())))
            handle.write(json.dumps({**e, "tags": json.dumps(other)}) + "\n")
    for root in (tmp_path / "canonical", spaced):
        rebuild_index_from_manifest(root)
    rows = [select(root, RunFilter()).records() for root in (tmp_path / "canonical", spaced)]
    assert [{**r, "tags": json.loads(r["tags"])} for r in rows[0]] == [
        {**r, "tags": json.loads(r["tags"])} for r in rows[1]
    ]
    for flt in (RunFilter(tags={"branch": "b3"}), RunFilter(tags={"q": 'say "hi"', "branch": "b0"}),
                RunFilter(tags={"café": "crème"})):  # fmt: skip
        found = [
            [r["run_id"] for r in select(root, flt).records()] for root in (tmp_path / "canonical", spaced)
        ]
        assert found[0] == found[1] and found[0]


def test_an_index_of_a_shape_no_writer_makes_is_not_read(tmp_path: Path) -> None:
    import subprocess
    import sys

    import pyarrow as pa

    write_manifest(tmp_path, [entry(i) for i in range(6)])
    rebuild_index_from_manifest(tmp_path)
    index = tmp_path / "_index.parquet"
    rows, claims = pq.read_table(index), pq.ParquetFile(index).metadata.metadata  # what it covers
    neurolens = str(Path(sys.executable).with_name("neurolens"))

    def listed() -> tuple[int, str]:
        done = subprocess.run([neurolens, "ls", "--root", str(tmp_path), "--json", "--include-failed"],
                              capture_output=True, text=True, timeout=60)  # fmt: skip
        assert done.returncode == 0
        return len(json.loads(done.stdout)), done.stderr

    # 6,000 one-row row groups, claiming to cover the same 6-line manifest
    with pq.ParquetWriter(index, rows.schema) as writer:
        writer.write_table(pa.concat_tables([rows] * 1_000), row_group_size=1)
        writer.add_key_value_metadata({k.decode(): v.decode() for k, v in claims.items()})
    assert pq.ParquetFile(index).metadata.num_row_groups == 6_000
    count, warned = listed()
    assert count == 6 and "claims 6,000 runs in 6,000 row groups for a manifest of" in warned
    # a footer bigger than any index of ours: not even parsed
    index.write_bytes(b"PAR1" + b"\0" * 64 + (200 * 1024 * 1024).to_bytes(4, "little") + b"PAR1")
    count, warned = listed()
    assert count == 6 and "has a 209,715,200-byte footer" in warned
