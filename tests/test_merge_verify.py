"""neurolens merge and verify: overlapping, conflicting, damaged and hostile sources; damage found."""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from neurolens.errors import StoreError
from neurolens.sources import query
from neurolens.storage.exchange import verify, workers
from neurolens.storage.exchange.merge import merge_stores
from neurolens.storage.exchange.verify import verify_store
from neurolens.storage.store import rebuild_index_from_manifest, write_run
from tests.factories import Cli, make_run


def fill(root: Path, count: int, prefix: str, **fields: object) -> list[str]:
    return [
        write_run(
            root, make_run(run_id=f"{prefix}{i:04d}", batch_size=i + 1, **fields), fingerprint={"p": prefix}
        )["run_id"]
        for i in range(count)
    ]


def ids(root: Path) -> list[str]:
    return sorted(r["run_id"] for r in query(root))


def manifest_ids(root: Path) -> list[str]:
    return [json.loads(line)["run_id"] for line in (root / "_manifest.jsonl").read_text().splitlines()]


# --- merge -------------------------------------------------------------------------------


def test_merge_overlapping_stores_is_idempotent(tmp_path: Path) -> None:
    a, b, dest = tmp_path / "a", tmp_path / "b", tmp_path / "dest"
    fill(a, 3, "a")
    shutil.copytree(a, b)
    fill(b, 2, "b")
    report = merge_stores(dest, [a, b])
    assert (report.added, report.skipped, report.conflicts, report.damaged) == (5, 3, [], [])
    assert ids(dest) == ["a0000", "a0001", "a0002", "b0000", "b0001"]
    for row in query(dest):  # files and fingerprints copied with the layout
        assert (dest / row["run_json"]).read_bytes() == (
            (a if row["run_id"][0] == "a" else b) / row["run_json"]
        ).read_bytes()
        assert (dest / row["fp_json"]).is_file()
    again = merge_stores(dest, [a, b])
    assert (again.added, again.skipped) == (0, 8)
    assert sorted(manifest_ids(dest)) == ids(dest)  # no duplicate lines
    assert verify_store(dest).clean
    assert rebuild_index_from_manifest(dest).read_bytes() == (dest / "_index.parquet").read_bytes()


def test_conflicting_run_is_reported_not_copied(tmp_path: Path) -> None:
    a, b, dest = tmp_path / "a", tmp_path / "b", tmp_path / "dest"
    write_run(a, make_run(run_id="same", created_at="2025-01-01T00:00:00Z"))
    write_run(b, make_run(run_id="same", created_at="2025-01-01T00:00:00Z", model="other"))
    merge_stores(dest, [a])
    before = (dest / "2025/01/01/onnxrt/same.json").read_bytes()
    report = merge_stores(dest, [b])
    assert report.added == 0 and len(report.conflicts) == 1 and "same" in report.conflicts[0]
    assert (dest / "2025/01/01/onnxrt/same.json").read_bytes() == before
    assert [r["model"] for r in query(dest)] == ["gpt2"]


def test_damaged_source_runs_are_reported_and_skipped(tmp_path: Path) -> None:
    src, dest = tmp_path / "src", tmp_path / "dest"
    fill(src, 4, "r", created_at="2025-02-02T00:00:00Z")
    folder = src / "2025/02/02/onnxrt"
    (folder / "r0000.json").write_text((folder / "r0000.json").read_text().replace("gpt2", "gpt3"))  # hash
    (folder / "r0001.json").unlink()  # missing
    (folder / "r0002.fp.json").write_text("{not json")  # broken fingerprint
    with open(src / "_manifest.jsonl", "ab") as handle:
        handle.write(b'{"torn\n')
    report = merge_stores(dest, [src])
    assert report.added == 1 and ids(dest) == ["r0003"]
    text = "\n".join(report.damaged)
    assert "r0000.json does not match its manifest hash" in text
    assert "r0001.json cannot be read" in text
    assert "r0002.fp.json cannot be read" in text
    assert "torn or unparsable line" in text
    assert not (dest / "2025/02/02/onnxrt/r0000.json").exists()


def store_tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.slow
def test_worker_processes_merge_exactly_as_one_process_does(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Large sources are checked and copied by worker processes in parts; every kind of
    run (new, already there, in conflict, damaged, an id twice in a source) ends the same."""
    from neurolens.storage.exchange import merge

    a, b = tmp_path / "a", tmp_path / "b"
    fill(a, 14, "a", created_at="2025-03-03T00:00:00Z")
    fill(b, 9, "b", created_at="2025-03-03T00:00:00Z")
    shutil.copytree(a / "2025", b / "2025", dirs_exist_ok=True)
    lines = (a / "_manifest.jsonl").read_bytes().splitlines(keepends=True)
    with open(b / "_manifest.jsonl", "ab") as manifest:  # a's runs again, one of them twice
        manifest.write(b"".join(lines[:6]) + lines[2])
    folder = a / "2025/03/03/onnxrt"
    (folder / "a0003.json").write_text((folder / "a0003.json").read_text().replace("gpt2", "gpt3"))
    (folder / "a0007.json").unlink()
    with open(a / "_manifest.jsonl", "ab") as manifest:  # an id twice, the second differing
        manifest.write(lines[9].replace(b'"sha256":"', b'"sha256":"0'))
    seeded = tmp_path / "seed"
    write_run(seeded, make_run(run_id="a0011", created_at="2025-03-03T00:00:00Z", model="other"))
    fill(seeded, 1, "a", created_at="2025-03-03T00:00:00Z")  # a0000, identical to a's
    monkeypatch.setattr(merge, "_RUNS_PER_MERGE_PART", 3)  # parts of 3 runs: a's 12 fresh runs make 4 parts
    pools: list[int] = []

    def counted_pool(count: int) -> Any:
        pools.append(count)
        return workers.process_pool(count)

    monkeypatch.setattr(merge, "process_pool", counted_pool)
    results = {}
    for count in (1, 2):
        dest = tmp_path / f"dest{count}"
        shutil.copytree(seeded, dest)
        results[count] = (merge_stores(dest, [a, b], workers=count).to_dict(), store_tree(dest))
    assert pools == [2]  # one pool, for both sources, and only when asked for two workers
    assert results[1] == results[2]
    report, tree = results[2]
    # from a: 10 new, a0000 already there, a0011 and a0009's second entry in conflict, a0003
    # and a0007 damaged; from b: its 9, and a0003 (sound there); a's others again skipped
    assert (report["added"], report["skipped"]) == (20, 7)
    assert len(report["damaged"]) == 2 and len(report["conflicts"]) == 2
    assert "_manifest.jsonl" in tree and verify_store(tmp_path / "dest2").clean


def test_manifest_entry_pointing_outside_is_never_followed(tmp_path: Path) -> None:
    src, dest = tmp_path / "src", tmp_path / "dest"
    write_run(src, make_run(run_id="r1", created_at="2025-02-02T00:00:00Z"))
    manifest = src / "_manifest.jsonl"
    entry = json.loads(manifest.read_text())
    evil = (src / entry["run_json"]).read_bytes()
    (tmp_path / "evil.json").write_bytes(evil)
    entry["run_json"] = "../evil.json"
    manifest.write_text(json.dumps(entry) + "\n")
    report = merge_stores(dest, [src])
    assert report.added == 0 and "not a run file path of the store layout" in report.damaged[0]
    assert list(dest.rglob("*.json")) == [] and (tmp_path / "evil.json").read_bytes() == evil


def make_archive(path: Path, store: Path, arcname: str) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        tar.add(store, arcname=arcname)
    return path


@pytest.mark.parametrize("arcname", [".", "runs_store"])
def test_merge_from_archives(tmp_path: Path, arcname: str) -> None:
    src, dest = tmp_path / "src", tmp_path / "dest"
    fill(src, 3, "t")
    archive = make_archive(tmp_path / "store.tar.gz", src, arcname)
    report = merge_stores(dest, [archive])
    assert report.added == 3 and ids(dest) == ["t0000", "t0001", "t0002"]
    assert verify_store(dest).clean


def test_an_archive_of_hard_linked_files_merges_whole(tmp_path: Path) -> None:
    # tar records a second name of a file as a link member (a store deduplicated with
    # `hardlink`, say): it unpacks as a copy of the earlier member, bytes and all
    src, dest = tmp_path / "src", tmp_path / "dest"
    fill(src, 3, "k", created_at="2025-03-03T00:00:00Z")
    folder = src / "2025/03/03/onnxrt"
    shared = folder / "k0000.fp.json"
    for name in ("k0001.fp.json", "k0002.fp.json"):
        assert (folder / name).read_bytes() == shared.read_bytes()
        (folder / name).unlink()
        os.link(shared, folder / name)
    archive = make_archive(tmp_path / "linked.tar.gz", src, ".")
    with tarfile.open(archive) as tar:
        assert sum(m.islnk() for m in tar.getmembers()) == 2
    report = merge_stores(dest, [archive])
    assert (report.added, report.refused, report.damaged) == (3, [], [])
    for name in ("k0000.fp.json", "k0001.fp.json", "k0002.fp.json"):
        copied = dest / "2025/03/03/onnxrt" / name
        assert copied.read_bytes() == shared.read_bytes() and copied.stat().st_nlink == 1
    assert verify_store(dest).clean


def test_hostile_archive_members_are_refused(tmp_path: Path) -> None:
    src, dest = tmp_path / "src", tmp_path / "dest"
    fill(src, 2, "h")
    archive = tmp_path / "hostile.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(src, arcname=".")
        for name in ("/tmp/neurolens-abs-escape.json", "../escape.json", "2025/../../escape2.json"):
            info = tarfile.TarInfo(name)
            payload = b'{"evil": true}'
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
        link = tarfile.TarInfo("2025/link.json")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(link)
        hostile_links = (("hard1.json", "/etc/passwd"), ("hard2.json", "../../x"), ("hard3.json", "nope"))
        for name, target in hostile_links:
            hard = tarfile.TarInfo(name)
            hard.type, hard.linkname = tarfile.LNKTYPE, target
            tar.addfile(hard)
    report = merge_stores(dest, [archive])
    assert report.added == 2
    refused = "\n".join(report.refused)
    assert len(report.refused) == 7, refused
    assert "absolute path" in refused and "'..'" in refused and "(link)" in refused
    assert refused.count("(link outside the archive)") == 2
    assert "'hard3.json' refused (hard link to no earlier file of the archive)" in refused
    assert not Path("/tmp/neurolens-abs-escape.json").exists()
    assert not (tmp_path / "escape.json").exists() and not (tmp_path.parent / "escape2.json").exists()
    assert not any(p.is_symlink() for p in dest.rglob("*"))


def test_archive_without_a_store_is_an_error(
    cli: Cli, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    archive = tmp_path / "empty.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        info = tarfile.TarInfo("readme.txt")
        tar.addfile(info, io.BytesIO(b""))
    with pytest.raises(StoreError, match="holds no run store"):
        merge_stores(tmp_path / "dest", [archive])
    assert cli("merge", str(archive), "--root", str(tmp_path / "dest"))[0] == 1
    assert cli("merge", str(tmp_path / "nope"), "--root", str(tmp_path / "dest"))[0] == 1
    assert "does not exist" in capsys.readouterr().err


def test_merge_cli_reports_counts(cli: Cli, tmp_path: Path) -> None:
    fill(tmp_path / "a", 2, "c")
    status, out = cli("merge", str(tmp_path / "a"), "--root", str(tmp_path / "dest"))
    assert status == 0 and out.startswith(f"merged into {tmp_path / 'dest'}: 2 added, 0 already present")
    status, out = cli("merge", str(tmp_path / "a"), "--root", str(tmp_path / "dest"), "--json")
    assert json.loads(out) == {
        "added": 0,
        "skipped": 2,
        "conflicts": [],
        "damaged": [],
        "refused": [],
        "complete": True,
    }


WRITER = textwrap.dedent(
    """
    import sys
    from neurolens.storage.store import write_run
    for i in range(int(sys.argv[2])):
        write_run(sys.argv[1], {"model": "live", "backend": "ort", "precision": "fp32", "batch_size": 1,
                                "metrics": {"total_latency_ms": float(i)}})
    """
)

MERGER = textwrap.dedent(
    """
    import sys
    import neurolens.storage.exchange.importer as importer
    import neurolens.storage.exchange.merge as merge
    importer._BATCH = int(sys.argv[3])
    print(merge.merge_stores(sys.argv[1], [sys.argv[2]]).to_dict())
    """
)


@pytest.mark.slow
def test_merge_while_another_process_writes(tmp_path: Path) -> None:
    src, dest = tmp_path / "src", tmp_path / "dest"
    fill(src, 150, "m")
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(dest), "150"])
    merger = subprocess.run(
        [sys.executable, "-c", MERGER, str(dest), str(src), "20"], capture_output=True, text=True
    )
    assert writer.wait(timeout=120) == 0
    assert merger.returncode == 0, merger.stderr
    rows = query(dest)
    assert len(rows) == 300 and sum(r["model"] == "live" for r in rows) == 150
    assert verify_store(dest).clean


@pytest.mark.slow
def test_merge_killed_then_rerun_completes_without_duplicates(tmp_path: Path) -> None:
    src, dest = tmp_path / "src", tmp_path / "dest"
    fill(src, 400, "k")
    proc = subprocess.Popen([sys.executable, "-c", MERGER, str(dest), str(src), "25"])
    manifest = dest / "_manifest.jsonl"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and (not manifest.exists() or manifest.stat().st_size == 0):
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    partial = len(manifest_ids(dest))
    assert 0 < partial < 400  # killed half way
    report = merge_stores(dest, [src])
    assert report.added == 400 - partial and report.skipped == partial
    assert sorted(manifest_ids(dest)) == [f"k{i:04d}" for i in range(400)]
    final = verify_store(dest)
    assert final.clean, final.problems
    assert all(name.endswith(".tmp") for name in final.leftovers)  # the kill's litter, named


# --- verify ------------------------------------------------------------------------------


@pytest.fixture
def store(make_store: Callable[..., Path]) -> Path:
    runs = [
        make_run(run_id=f"v{i:04d}", batch_size=i + 1, created_at="2025-03-03T00:00:00Z") for i in range(6)
    ]
    root = make_store(*runs, fingerprint={"p": "v"})
    rebuild_index_from_manifest(root)
    return root


def kinds(root: Path) -> dict[str, int]:
    return verify_store(root).counts()


def test_clean_store_verifies(cli: Cli, store: Path) -> None:
    report = verify_store(store, full=True)
    assert report.clean and report.runs == 6 and report.files == 12
    assert cli("verify", "--root", str(store)) == (0, f"{store}: 6 runs, 12 files: clean\n")


def test_verify_finds_each_kind_of_damage(store: Path) -> None:
    folder = store / "2025/03/03/onnxrt"
    manifest = store / "_manifest.jsonl"
    lines = manifest.read_text().splitlines(keepends=True)
    # entry mismatch: the manifest says another model for v0000 (its file is intact)
    lines[0] = lines[0].replace('"model":"gpt2"', '"model":"bert"')
    manifest.write_text("".join(lines) + lines[1] + '{"torn\n' + "[1]\n")  # duplicate, torn, invalid
    (folder / "v0001.json").write_text("{broken")  # hash mismatch + invalid
    (folder / "v0002.json").unlink()  # missing
    (folder / "v0003.json").unlink()
    (folder / "v0003.json").mkdir()  # unreadable
    (folder / "v0004.fp.json").unlink()  # missing fingerprint
    (folder / "stray.json").write_text("{}")  # orphan
    (folder / ".v0009.json.123.tmp").write_text("{")  # a killed writer's temporary file
    assert verify_store(store).leftovers == ["2025/03/03/onnxrt/.v0009.json.123.tmp"]
    counts = kinds(store)
    assert counts == {
        "manifest_line": 2,
        "duplicate_run_id": 1,
        "entry_mismatch": 1,
        "hash_mismatch": 1,
        "invalid_run": 1,
        "missing_run_file": 1,
        "unreadable_run_file": 1,
        "missing_fingerprint": 1,
        "orphan_file": 1,
        "index": 1,
    }
    problems = verify_store(store).problems
    assert any(p.kind == "entry_mismatch" and "model" in p.message for p in problems)
    assert any(p.kind == "orphan_file" and p.where == "2025/03/03/onnxrt/stray.json" for p in problems)


def test_verify_in_worker_processes_gives_the_same_report(
    store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = store / "2025/03/03/onnxrt"
    (folder / "v0001.json").write_text("{broken")
    (folder / "v0002.json").unlink()
    (folder / "v0004.fp.json").unlink()
    alone = verify_store(store, workers=1).to_dict()
    monkeypatch.setattr(verify, "_RUNS_PER_CHECK_PART", 2)  # parts of two runs: three worker tasks
    seen: list[tuple[int, int]] = []
    spread = verify_store(store, workers=2, progress=lambda done, total: seen.append((done, total)))
    assert spread.to_dict() == alone
    assert [kind for kind in alone["counts"]] == ["hash_mismatch", "invalid_run", "missing_run_file",
                                                   "missing_fingerprint"]  # fmt: skip
    assert seen[-1] == (6, 6) and [done for done, _ in seen] == sorted(done for done, _ in seen)


def test_a_worker_s_part_travels_as_its_own_rows_not_its_parent_table() -> None:
    import pickle

    import pyarrow as pa

    table = pa.table({"run_id": [f"run-{i:06d}" for i in range(100_000)], "n": list(range(100_000))})
    part = table.slice(50_000, 1_000)
    payload = workers._ipc_bytes(part)
    # a pickled slice carries all 100,000 rows; the payload about its 1,000
    assert len(pickle.dumps(payload)) * 20 < len(pickle.dumps(part))
    assert workers.entries_of(pickle.loads(pickle.dumps(payload))) == part.to_pylist()


def test_verify_index_problems(store: Path) -> None:
    index = store / "_index.parquet"
    index.unlink()
    assert kinds(store) == {"index": 1}
    rebuild_index_from_manifest(store)
    # same size and same last line, other content before it: the cheap check passes, rows differ
    manifest = store / "_manifest.jsonl"
    lines = manifest.read_text().splitlines(keepends=True)
    lines[0], lines[1] = lines[1], lines[0]
    manifest.write_text("".join(lines))
    problems = verify_store(store).problems
    assert [p.kind for p in problems] == ["index"] and "differ" in problems[0].message
    rebuild_index_from_manifest(store)
    assert verify_store(store).clean


def test_verify_cli_json_and_exit_status(cli: Cli, store: Path) -> None:
    (store / "2025/03/03/onnxrt/v0005.json").unlink()
    status, out = cli("verify", "--root", str(store), "--json")
    data = json.loads(out)
    assert status == 1 and data["clean"] is False and data["counts"] == {"missing_run_file": 1}
    assert data["problems"][0]["where"] == "2025/03/03/onnxrt/v0005.json"
    status, out = cli("verify", "--root", str(store))
    assert status == 1 and out.startswith("missing_run_file")
    assert cli("verify", "--root", str(store.parent / "none"))[0] == 1
