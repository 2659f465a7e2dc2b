"""write_run, the manifest, the index and rebuild: behaviour of the documented API."""

from __future__ import annotations

import datetime as dt
import errno
import hashlib
import json
import os
from pathlib import Path

import pytest

from neurolens import load_runs
from neurolens.errors import IndexWarning, ManifestWarning, RunExistsError, RunValidationError, StoreError
from neurolens.storage.index import compaction as index_module
from neurolens.storage.index.reading import opened_index
from neurolens.storage.ledger import creating as creating_module
from neurolens.storage.ledger.run_ids import new_run_id
from neurolens.storage.store import compact_index, rebuild_index_from_manifest, write_run
from tests.factories import make_run


def manifest_lines(root: Path) -> list[dict]:
    return [json.loads(line) for line in (root / "_manifest.jsonl").read_text().splitlines()]


def all_files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


@pytest.fixture(params=["unnamed file", "temporary name"])
def file_creation(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run files are made as unnamed files (O_TMPFILE) linked into place, or where the
    file system has none, under a temporary name: the store is the same either way."""
    if request.param == "temporary name":
        monkeypatch.setattr(creating_module, "_unnamed_files", False)
    return str(request.param)


def _has_unnamed_files(folder: Path) -> bool:
    try:
        os.close(os.open(folder, os.O_WRONLY | os.O_TMPFILE))
    except (AttributeError, OSError):
        return False
    return True


def test_unnamed_files_are_linked_into_place_where_the_file_system_has_them(tmp_path: Path) -> None:
    dir_fd = os.open(tmp_path, os.O_RDONLY)
    try:
        made = creating_module._create_unnamed(dir_fd, "a.json", b'{"a": 1}', durable=True)
        assert made is _has_unnamed_files(tmp_path)
        if made:
            assert (tmp_path / "a.json").read_bytes() == b'{"a": 1}'
            with pytest.raises(RunExistsError):  # never over an existing name
                creating_module._create_unnamed(dir_fd, "a.json", b"other", durable=True)
            assert (tmp_path / "a.json").read_bytes() == b'{"a": 1}'
        assert os.listdir(tmp_path) == (["a.json"] if made else [])
    finally:
        os.close(dir_fd)


def test_files_are_created_whole_where_the_file_system_has_no_hard_links(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # some network and FUSE file systems refuse link(2): files are then created exclusively
    def no_links(*args: object, **kwargs: object) -> None:
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(creating_module, "_unnamed_files", creating_module._unnamed_files)
    monkeypatch.setattr(os, "link", no_links)
    result = write_run(tmp_path, make_run(), fingerprint={"a": 1})
    assert creating_module._unnamed_files is False  # temporary names from then on
    stored = Path(result["run_json"])
    assert json.loads(stored.read_bytes())["run_id"] == result["run_id"]
    assert json.loads(Path(result["fp_json"]).read_bytes()) == {"a": 1}
    before = all_files(tmp_path)
    dir_fd = os.open(stored.parent, os.O_RDONLY)
    try:
        with pytest.raises(RunExistsError):  # still never over an existing file
            creating_module.create_file_atomically(dir_fd, stored.name, b"other")
    finally:
        os.close(dir_fd)
    assert all_files(tmp_path) == before
    assert sorted(os.listdir(stored.parent)) == sorted([stored.name, Path(result["fp_json"]).name])


def test_write_run_lays_out_files_and_returns_paths(tmp_path: Path, file_creation: str) -> None:
    result = write_run(tmp_path, make_run(created_at="2025-10-20T08:30:00Z"), fingerprint={"python": "3.11"})
    run_id = result["run_id"]
    assert result["run_json"] == str(tmp_path / "2025/10/20/onnxrt" / f"{run_id}.json")
    assert result["fp_json"] == str(tmp_path / "2025/10/20/onnxrt" / f"{run_id}.fp.json")
    stored = json.loads(Path(result["run_json"]).read_text(encoding="utf-8"))
    assert stored["schema_version"] == 1
    assert stored["run_id"] == run_id
    assert stored["created_at"] == "2025-10-20T08:30:00.000000Z"
    assert stored["metrics"]["p99_ms"] == 14.0
    assert json.loads(Path(result["fp_json"]).read_text()) == {"python": "3.11"}
    # canonical bytes: sorted keys, so re-serialising gives the same file
    raw = Path(result["run_json"]).read_bytes()
    assert raw == (json.dumps(stored, sort_keys=True, ensure_ascii=False, indent=2) + "\n").encode()


def test_manifest_entry_has_flat_fields_and_hash(tmp_path: Path) -> None:
    result = write_run(tmp_path, make_run(tags={"b": "2", "a": "1"}))
    (entry,) = manifest_lines(tmp_path)
    assert entry["run_id"] == result["run_id"]
    assert entry["day"] == result["created_at"][:10]
    assert entry["model"] == "gpt2" and entry["backend"] == "onnxrt" and entry["precision"] == "fp16"
    assert entry["batch_size"] == 8 and entry["seq_len"] == 128
    assert entry["total_latency_ms"] == 12.5 and entry["gpu_utilization"] == 73.0
    assert entry["gpu_name"] == "NVIDIA H100 80GB HBM3"
    assert entry["driver_version"] == "550.54.15" and entry["cuda_version"] == "12.4"
    assert entry["fp_json"] is None
    assert entry["tags"] == '{"a":"1","b":"2"}'
    run_path = tmp_path / entry["run_json"]
    assert entry["sha256"] == hashlib.sha256(run_path.read_bytes()).hexdigest()
    assert result["fp_json"] is None


def test_created_at_is_normalised_to_utc_day(tmp_path: Path) -> None:
    result = write_run(tmp_path, make_run(created_at="2025-10-20T23:30:00-02:00"))
    assert result["created_at"] == "2025-10-21T01:30:00.000000Z"
    assert result["day"] == "2025-10-21"
    assert Path(result["run_json"]).parent == tmp_path / "2025/10/21/onnxrt"


def test_generated_run_ids_are_unique_and_time_sortable() -> None:
    ids = [new_run_id() for _ in range(5000)]
    assert len(set(ids)) == len(ids)
    assert ids == sorted(ids)
    assert all(len(i) == 36 and i[14] == "7" for i in ids)  # UUID version 7


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"model": ""}, "model"),
        ({"model": None}, "model"),
        ({"backend": "a/b"}, "backend"),
        ({"backend": ".."}, "backend"),
        ({"backend": "."}, "backend"),
        ({"backend": ""}, "backend"),
        ({"backend": "on\nnx"}, "backend"),
        ({"backend": "a\\b"}, "backend"),
        ({"precision": 16}, "precision"),
        ({"batch_size": 0}, "batch_size"),
        ({"batch_size": 2.5}, "batch_size"),
        ({"batch_size": True}, "batch_size"),
        ({"seq_len": -1}, "seq_len"),
        ({"metrics": {}}, "metrics.total_latency_ms"),
        ({"metrics": {"total_latency_ms": -1}}, "metrics.total_latency_ms"),
        ({"metrics": {"total_latency_ms": float("nan")}}, "metrics.total_latency_ms"),
        ({"metrics": {"total_latency_ms": 1, "x": float("inf")}}, "metrics.x"),
        ({"metrics": {"total_latency_ms": 1, "gpu_utilization": 101}}, "metrics.gpu_utilization"),
        ({"metrics": {"total_latency_ms": 1, "nested": {"a": 1}}}, "metrics.nested"),
        ({"hardware": {"gpu_name": 3.5j}}, "hardware.gpu_name"),
        ({"tags": {"k": 1}}, "tags.k"),
        ({"run_id": "../evil"}, "run_id"),
        ({"run_id": "a.fp"}, "run_id"),
        ({"created_at": "yesterday"}, "created_at"),
        ({"created_at": "2025-10-20T08:30:00"}, "created_at"),
        ({"created_at": "2025-02-30T08:30:00.000000Z"}, "created_at"),  # the stored form, no such day
        ({"created_at": "2025-10-20T24:00:00.000000Z"}, "created_at"),
        ({"bogus": 1}, "bogus"),
    ],
)
def test_invalid_runs_name_the_field_and_write_nothing(tmp_path: Path, overrides: dict, field: str) -> None:
    root = tmp_path / "store"
    with pytest.raises(RunValidationError) as excinfo:
        write_run(root, make_run(**overrides))
    assert excinfo.value.field == field
    assert str(excinfo.value).startswith(field)
    assert isinstance(excinfo.value, ValueError)
    assert not root.exists()


def test_missing_required_field_is_named(tmp_path: Path) -> None:
    run = make_run()
    del run["precision"]
    with pytest.raises(RunValidationError, match=r"^precision: is missing"):
        write_run(tmp_path, run)


def test_invalid_run_leaves_existing_store_untouched(tmp_path: Path) -> None:
    write_run(tmp_path, make_run())
    before = all_files(tmp_path)
    with pytest.raises(RunValidationError):
        write_run(tmp_path, make_run(batch_size=-3))
    with pytest.raises(RunValidationError, match=r"fingerprint\.x"):
        write_run(tmp_path, make_run(), fingerprint={"x": float("nan")})
    with pytest.raises(RunValidationError, match=r"^fingerprint: must be a mapping"):
        write_run(tmp_path, make_run(), fingerprint=["not", "a", "mapping"])  # type: ignore[arg-type]
    assert all_files(tmp_path) == before


def test_clashing_run_id_is_an_error_and_changes_nothing(tmp_path: Path, file_creation: str) -> None:
    run = make_run(run_id="fixed-id", created_at="2025-01-01T00:00:00Z")
    write_run(tmp_path, run, fingerprint={"a": 1})
    before = all_files(tmp_path)
    with pytest.raises(RunExistsError):
        write_run(tmp_path, make_run(run_id="fixed-id", created_at="2025-01-01T05:00:00Z", model="other"))
    assert all_files(tmp_path) == before


def test_fingerprint_clash_removes_the_half_written_run(tmp_path: Path, file_creation: str) -> None:
    folder = tmp_path / "2025/01/01/onnxrt"
    folder.mkdir(parents=True)
    (folder / "r1.fp.json").write_text("{}")
    with pytest.raises(RunExistsError):
        write_run(tmp_path, make_run(run_id="r1", created_at="2025-01-01T00:00:00Z"), fingerprint={"a": 1})
    assert sorted(p.name for p in folder.iterdir()) == ["r1.fp.json"]
    assert not (tmp_path / "_manifest.jsonl").exists()


def test_root_may_be_str_or_pathlike_and_defaults_to_env(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_run(str(tmp_path / "as_str"), make_run())
    write_run(tmp_path / "as_path", make_run())
    monkeypatch.setenv("NEUROLENS_STORE_ROOT", str(tmp_path / "from_env"))
    write_run(None, make_run())
    monkeypatch.delenv("NEUROLENS_STORE_ROOT")
    monkeypatch.chdir(tmp_path)
    write_run(None, make_run())
    for name in ("as_str", "as_path", "from_env", "runs_store"):
        assert len(manifest_lines(tmp_path / name)) == 1


def test_root_that_is_a_file_is_a_store_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(StoreError, match="not a directory"):
        write_run(tmp_path / "file", make_run())


def test_index_has_one_row_per_manifest_entry(tmp_path: Path) -> None:
    ids = [write_run(tmp_path, make_run(batch_size=b))["run_id"] for b in (1, 2, 4)]
    assert (tmp_path / "_index.parquet").exists()
    frame = load_runs(tmp_path)
    assert list(frame["run_id"]) == ids[::-1]  # newest first
    assert list(frame["batch_size"]) == [4, 2, 1]
    assert frame["tags"][0] == {"experiment": "smoke"}


def test_rebuild_is_byte_identical_and_equals_compaction(tmp_path: Path) -> None:
    for i in range(20):
        write_run(tmp_path, make_run(batch_size=i + 1, tags={"i": str(i)}))
    compacted = compact_index(tmp_path).read_bytes()
    first = rebuild_index_from_manifest(tmp_path).read_bytes()
    second = rebuild_index_from_manifest(tmp_path).read_bytes()
    assert first == second == compacted


def test_incremental_compaction_equals_rebuild(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(index_module, "_TAIL_FLOOR_BYTES", 1500)  # compact every few writes
    for i in range(40):
        write_run(tmp_path, make_run(seq_len=i))
    monkeypatch.setattr(index_module, "_TAIL_FLOOR_BYTES", 10**9)  # then leave a tail
    for i in range(3):
        write_run(tmp_path, make_run(seq_len=100 + i))
    with opened_index(tmp_path) as (index, problem):
        assert index is not None, problem
        covered = index.meta.manifest_bytes
    assert 0 < covered < (tmp_path / "_manifest.jsonl").stat().st_size  # a tail exists
    assert len(load_runs(tmp_path)) == 43  # readers add the uncovered tail
    incremental = compact_index(tmp_path).read_bytes()
    assert rebuild_index_from_manifest(tmp_path).read_bytes() == incremental


@pytest.mark.parametrize(("floor", "share"), [(300, 16), (400, 4)])
def test_writers_keep_the_uncovered_tail_bounded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, floor: int, share: int
) -> None:
    """Compaction points depend on the manifest's size alone: linear up to share x floor,
    then geometric; the tail never passes about twice max(floor, manifest / share)."""
    monkeypatch.setattr(index_module, "_TAIL_FLOOR_BYTES", floor)
    monkeypatch.setattr(index_module, "_TAIL_SHARE", share)
    manifest = tmp_path / "_manifest.jsonl"
    compactions = 0
    for i in range(60):
        write_run(tmp_path, make_run(seq_len=i, tags={"n": "x" * (i % 7 * 20)}))
        size = manifest.stat().st_size
        with opened_index(tmp_path) as (index, problem):
            assert index is not None, problem
            tail = size - index.meta.manifest_bytes
        compactions += tail == 0
        assert tail <= 2 * max(floor, size / share), (i, size, tail)
    assert size > 2 * share * floor  # the geometric points were reached (and the linear ones)
    assert 3 < compactions < 60  # neither every write nor never


def test_readers_answer_from_manifest_when_index_is_corrupt_or_missing(tmp_path: Path) -> None:
    for _ in range(3):
        write_run(tmp_path, make_run())
    index = tmp_path / "_index.parquet"
    index.write_bytes(b"garbage")
    with pytest.warns(IndexWarning, match="corrupt"):
        assert len(load_runs(tmp_path)) == 3
    index.unlink()
    with pytest.warns(IndexWarning, match="missing"):
        assert len(load_runs(tmp_path)) == 3
    assert rebuild_index_from_manifest(tmp_path) == index
    assert len(load_runs(tmp_path)) == 3


def test_index_that_disagrees_with_manifest_is_not_trusted(tmp_path: Path) -> None:
    for _ in range(3):
        write_run(tmp_path, make_run())
    compact_index(tmp_path)
    manifest = tmp_path / "_manifest.jsonl"
    lines = manifest.read_bytes().splitlines(keepends=True)
    manifest.write_bytes(lines[0] + lines[2] + lines[1])  # same size, other last line
    with pytest.warns(IndexWarning, match="does not match"):
        assert len(load_runs(tmp_path)) == 3


def test_torn_last_line_is_skipped_and_next_writer_starts_fresh(tmp_path: Path) -> None:
    write_run(tmp_path, make_run())
    manifest = tmp_path / "_manifest.jsonl"
    with open(manifest, "ab") as handle:
        handle.write(b'{"run_id": "torn", "crea')
    with pytest.warns(ManifestWarning, match="incomplete last line"):
        assert len(load_runs(tmp_path)) == 1
    write_run(tmp_path, make_run(model="after"))
    with pytest.warns(ManifestWarning, match="torn or unparsable"):
        rebuild_index_from_manifest(tmp_path)
    frame = load_runs(tmp_path)
    assert list(frame["model"]) == ["after", "gpt2"]
    assert manifest.read_bytes().endswith(b"\n")


def test_a_run_id_is_unique_in_the_store_whatever_its_path(tmp_path: Path) -> None:
    write_run(tmp_path, make_run(run_id="dup", created_at="2025-01-01T00:00:00Z"))
    before = all_files(tmp_path)
    for other in ({"created_at": "2025-01-02T00:00:00Z"}, {"backend": "tensorrt"}):
        with pytest.raises(RunExistsError, match="dup"):
            write_run(tmp_path, make_run(run_id="dup", **other))
    assert all_files(tmp_path) == before


def test_duplicate_run_ids_keep_the_first_entry(tmp_path: Path) -> None:
    write_run(tmp_path, make_run(run_id="dup", model="first", created_at="2025-01-01T00:00:00Z"))
    second = write_run(tmp_path / "other", make_run(run_id="dup", model="second"))
    with open(tmp_path / "_manifest.jsonl", "ab") as handle:  # a hand-merged manifest
        handle.write((tmp_path / "other" / "_manifest.jsonl").read_bytes())
    assert second["run_id"] == "dup"
    with pytest.warns(ManifestWarning, match="duplicate run id 'dup'"):
        rebuild_index_from_manifest(tmp_path)
    assert list(load_runs(tmp_path)["model"]) == ["first"]


def test_invalid_manifest_line_is_skipped(tmp_path: Path) -> None:
    write_run(tmp_path, make_run())
    with open(tmp_path / "_manifest.jsonl", "ab") as handle:
        handle.write(b'{"run_id": "x"}\n[1,2]\n\n')
    with pytest.warns(ManifestWarning) as record:
        rebuild_index_from_manifest(tmp_path)
    messages = " | ".join(str(w.message) for w in record)
    assert "'created_at' is missing" in messages and "not a JSON object" in messages
    assert "empty line" in messages
    assert len(load_runs(tmp_path)) == 1


def test_load_runs_filters(tmp_path: Path) -> None:
    write_run(
        tmp_path, make_run(model="a", backend="ort", created_at="2025-01-01T00:00:00Z", tags={"x": "1"})
    )
    write_run(
        tmp_path, make_run(model="b", backend="trt", created_at="2025-01-02T00:00:00Z", tags={"x": "2"})
    )
    write_run(
        tmp_path, make_run(model="a", backend="trt", precision="int8", created_at="2025-01-03T00:00:00Z")
    )
    assert list(load_runs(tmp_path, model="a")["backend"]) == ["trt", "ort"]
    assert list(load_runs(tmp_path, backend="trt", model="a")["precision"]) == ["int8"]
    assert list(load_runs(tmp_path, day="2025-01-02")["model"]) == ["b"]
    assert list(load_runs(tmp_path, tags={"x": "1"})["model"]) == ["a"]
    assert list(load_runs(tmp_path, tags={"experiment": "smoke"})["precision"]) == ["int8"]
    assert load_runs(tmp_path, tags={"x": "1", "experiment": "smoke"}).empty
    assert load_runs(tmp_path, tags={"x": "3"}).empty
    newest = load_runs(tmp_path, limit=1)
    assert list(newest["day"]) == [dt.date(2025, 1, 3)]  # typed: a date, a UTC timestamp, a dict
    assert str(newest["created_at"].dt.tz) == "UTC"
    assert newest["created_at"][0] == dt.datetime(2025, 1, 3, tzinfo=dt.timezone.utc)
    assert newest["tags"][0] == {"experiment": "smoke"} and newest["total_latency_ms"][0] == 12.5
    assert load_runs(tmp_path, limit=0).empty
    with pytest.raises(StoreError, match="no store"):
        load_runs(tmp_path / "missing")
    assert not (tmp_path / "missing").exists()
    with pytest.raises(ValueError, match="day"):
        load_runs(tmp_path, day="2025-13-01")
    with pytest.raises(ValueError, match="limit"):
        load_runs(tmp_path, limit=-1)


def test_tag_filter_is_exact_with_quotes_and_backslashes(tmp_path: Path) -> None:
    # '"a\\":"b"' appears inside the JSON of this run's tags, but its tag a\ is not b.
    write_run(tmp_path, make_run(tags={'x"a\\': "b"}, model="tricky"))
    write_run(tmp_path, make_run(tags={"a\\": "b"}, model="real"))
    assert list(load_runs(tmp_path, tags={"a\\": "b"})["model"]) == ["real"]
    assert list(load_runs(tmp_path, tags={'x"a\\': "b"})["model"]) == ["tricky"]


def test_non_ascii_values_round_trip(tmp_path: Path) -> None:
    write_run(tmp_path, make_run(model="modèle-日本", tags={"équipe": "nuit"}))
    frame = load_runs(tmp_path, tags={"équipe": "nuit"})
    assert list(frame["model"]) == ["modèle-日本"]


def test_manifest_is_append_only(tmp_path: Path) -> None:
    write_run(tmp_path, make_run())
    first = (tmp_path / "_manifest.jsonl").read_bytes()
    write_run(tmp_path, make_run())
    assert (tmp_path / "_manifest.jsonl").read_bytes().startswith(first)


def test_written_files_are_not_left_as_temporaries(tmp_path: Path, file_creation: str) -> None:
    for _ in range(3):
        write_run(tmp_path, make_run(), fingerprint={"a": 1})
    rebuild_index_from_manifest(tmp_path)
    leftovers = [p for p in tmp_path.rglob("*") if p.name.endswith(".tmp")]
    assert leftovers == []
    assert os.listdir(tmp_path)  # sanity


def test_a_prepared_run_is_stored_as_write_run_stores_it(tmp_path: Path) -> None:
    from neurolens.storage.ledger.document import PreparedRun
    from neurolens.storage.store import fingerprint_bytes, write_prepared_run

    fingerprint = {"fingerprint_hash": "f" * 16, "python": "3.11"}
    run = make_run(test={"nodeid": "t.py::test_a", "outcome": None})
    direct = write_run(
        tmp_path / "a", {**run, "run_id": "r1", "created_at": "2025-01-01T00:00:00Z"}, fingerprint
    )
    prepared = PreparedRun({**run, "run_id": "r1", "created_at": "2025-01-01T00:00:00Z"})
    stored_prepared = write_prepared_run(tmp_path / "b", prepared, fingerprint_bytes(fingerprint))
    for key in ("run_json", "fp_json"):
        a, b = Path(direct[key]), Path(stored_prepared[key])
        assert a.read_bytes() == b.read_bytes() and a.relative_to(tmp_path / "a") == b.relative_to(
            tmp_path / "b"
        )
    assert direct["entry"] == stored_prepared["entry"]
    # a run id already stored is refused as write_run refuses it, and nothing changes
    manifest = (tmp_path / "b" / "_manifest.jsonl").read_bytes()
    with pytest.raises(RunExistsError):
        write_prepared_run(tmp_path / "b", prepared, None)
    assert (tmp_path / "b" / "_manifest.jsonl").read_bytes() == manifest


def test_a_prepared_run_changes_only_by_a_valid_test_result() -> None:
    from neurolens.storage.ledger.document import PreparedRun

    run = make_run(test={"nodeid": "t.py::test_a", "outcome": None}, run_id="r1")
    assert not PreparedRun(run).matches(run)  # it was given a time: not what is stored
    run["created_at"] = "2025-01-01T00:00:00.000000Z"
    prepared = PreparedRun(run)
    assert prepared.matches(run) and prepared.matches({**run, "schema_version": 1})
    assert not prepared.matches({**run, "tags": {"experiment": "other"}})
    assert not prepared.matches({**run, "metrics": {**run["metrics"], "p99_ms": float("nan")}})
    done = prepared.with_test_result("failed", 2)
    assert done.document["test"] == {"nodeid": "t.py::test_a", "outcome": "failed", "attempt": 2}
    assert prepared.document["test"]["outcome"] is None  # the original is unchanged
    for outcome, attempt, field in [
        ("passed", 0, "test.attempt"),
        ("passed", True, "test"),
        (1, None, "test"),
    ]:
        with pytest.raises(RunValidationError) as refused:
            prepared.with_test_result(outcome, attempt)  # type: ignore[arg-type]
        assert refused.value.field == field
    with pytest.raises(RunValidationError, match="test"):
        PreparedRun(make_run()).with_test_result("passed")
    with pytest.raises(RunValidationError, match="batch_size"):
        PreparedRun(make_run(batch_size=0))
