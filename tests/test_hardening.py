"""A store's files are untrusted: nothing escapes the root, every accepted run stays
readable, nothing is committed and then reported as an error, no false alarms."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from neurolens.errors import IndexWarning, ManifestWarning, RunValidationError, StoreError
from neurolens.sources import query
from neurolens.storage.exchange.merge import ArchiveLimits, merge_stores
from neurolens.storage.exchange.verify import verify_store
from neurolens.storage.store import rebuild_index_from_manifest, write_run
from tests.factories import Cli

SCRIPT = str(Path(sys.executable).with_name("neurolens"))


def tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# --- nothing outside the root is read or written -----------------------------------------


@pytest.mark.parametrize("name", ["_manifest.jsonl", "_index.lock"])
def test_writes_never_follow_a_symlinked_store_file(
    tmp_path: Path, make_run: Callable[..., dict[str, Any]], name: str
) -> None:
    root = tmp_path / "store"
    write_run(root, make_run())
    victim = tmp_path / "victim.txt"
    victim.write_text("keep\n")
    target = root / name
    kept = target.read_bytes() if target.exists() else None
    if target.exists():
        target.unlink()
    target.symlink_to(victim)
    with pytest.raises(StoreError, match="symlink"):
        write_run(root, make_run())
        if name == "_index.lock":  # the lock is taken by compaction, after the commit
            rebuild_index_from_manifest(root)
    assert victim.read_text() == "keep\n"
    if kept is not None:
        target.unlink()
        target.write_bytes(kept)


def test_a_lock_symlink_to_a_missing_file_creates_nothing(
    tmp_path: Path, make_run: Callable[..., dict[str, Any]]
) -> None:
    root = tmp_path / "store"
    write_run(root, make_run())
    (root / "_index.lock").unlink()
    (root / "_index.lock").symlink_to(tmp_path / "created-through-link")
    with pytest.raises(StoreError, match="symlink"):
        rebuild_index_from_manifest(root)
    assert not (tmp_path / "created-through-link").exists()


def test_a_symlinked_day_folder_never_receives_a_run(
    tmp_path: Path, make_run: Callable[..., dict[str, Any]]
) -> None:
    root, elsewhere = tmp_path / "store", tmp_path / "elsewhere"
    elsewhere.mkdir()
    write_run(root, make_run())
    (root / "2030/01/01").mkdir(parents=True)
    (root / "2030/01/01/onnxrt").symlink_to(elsewhere)
    before = (root / "_manifest.jsonl").read_bytes()
    with pytest.raises(StoreError, match="symlink"):
        write_run(root, make_run(created_at="2030-01-01T00:00:00Z"))
    assert list(elsewhere.iterdir()) == [] and (root / "_manifest.jsonl").read_bytes() == before


@pytest.mark.parametrize("field", ["run_json", "fp_json"])
@pytest.mark.parametrize(
    "path", ["../../etc/hostname", "/etc/hostname", "2025/10/20/onnxrt/../../../../x.json"]
)
def test_manifest_paths_outside_the_layout_are_never_opened(
    cli: Cli,
    tmp_path: Path,
    make_run: Callable[..., dict[str, Any]],
    field: str,
    path: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    root = tmp_path / "store"
    result = write_run(root, make_run(created_at="2025-10-20T00:00:00Z"), fingerprint={"p": 1})
    secret = tmp_path / "secret.json"
    secret.write_text('{"password": "hunter2"}\n')
    manifest = root / "_manifest.jsonl"
    entry = json.loads(manifest.read_text())
    entry[field] = str(secret) if path == "SECRET_ABSOLUTE" else path
    manifest.write_text(json.dumps(entry) + "\n")
    for json_flag in ([], ["--json"]):
        status, out = cli("show", result["run_id"], "--root", str(root), *json_flag)
        assert "hunter2" not in out
        if field == "run_json" or not json_flag:  # --json prints the run file only
            assert status == 1
            assert "not a run file path of the store layout" in capsys.readouterr().err


def test_a_run_file_that_is_a_symlink_is_refused(
    cli: Cli, tmp_path: Path, make_run: Callable[..., dict[str, Any]], capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "store"
    result = write_run(root, make_run())
    secret = tmp_path / "secret.json"
    secret.write_text('{"secret": true}\n')
    Path(result["run_json"]).unlink()
    Path(result["run_json"]).symlink_to(secret)
    status, out = cli("show", result["run_id"], "--root", str(root), "--json")
    assert status == 1 and "secret" not in out
    assert "symlink" in capsys.readouterr().err
    assert verify_store(root).counts() == {"unreadable_run_file": 1, "symlink": 1}


def test_a_symlinked_manifest_is_never_read_through(
    cli: Cli, tmp_path: Path, make_run: Callable[..., dict[str, Any]], capsys: pytest.CaptureFixture[str]
) -> None:
    # a manifest elsewhere, of a valid run: read through the link it would list as the store's
    elsewhere = tmp_path / "elsewhere"
    write_run(elsewhere, make_run(model="outside-the-root"))
    root = tmp_path / "store"
    root.mkdir()
    (root / "_manifest.jsonl").symlink_to(elsewhere / "_manifest.jsonl")
    for argv in (
        ["ls", "--json"],
        ["verify"],
        ["rebuild"],
        ["compare", "--baseline-tag", "a=b", "--candidate-tag", "a=c"],
    ):
        status, out = cli(*argv, "--root", str(root))
        err = capsys.readouterr().err
        assert status == 1 and "outside-the-root" not in out, argv
        assert "_manifest.jsonl is a symlink: refusing to follow it" in err, argv
    with pytest.raises(StoreError, match="symlink"):
        query(root)
    with pytest.raises(StoreError, match="symlink"):
        write_run(root, make_run())
    assert sorted(p.name for p in root.iterdir()) == ["_manifest.jsonl"]  # nothing written


def test_a_fifo_in_place_of_a_run_file_does_not_hang_a_reader(
    tmp_path: Path, make_run: Callable[..., dict[str, Any]]
) -> None:
    root = tmp_path / "store"
    result = write_run(root, make_run())
    Path(result["run_json"]).unlink()
    os.mkfifo(result["run_json"])
    done = subprocess.run(
        [SCRIPT, "show", result["run_id"], "--root", str(root)], capture_output=True, text=True, timeout=20
    )
    assert done.returncode == 1 and "not a regular file" in done.stderr
    done = subprocess.run([SCRIPT, "verify", "--root", str(root)], capture_output=True, text=True, timeout=20)
    assert done.returncode == 1 and "unreadable_run_file" in done.stdout


def test_control_characters_from_the_store_never_reach_the_terminal(
    cli: Cli, tmp_path: Path, make_run: Callable[..., dict[str, Any]]
) -> None:
    root = tmp_path / "store"
    result = write_run(root, make_run(model="gpt\x1b[31mred\r", tags={"k": "v\x07"}))
    for argv in (["ls"], ["show", result["run_id"]]):
        status, out = cli(*argv, "--root", str(root))
        assert status == 0 and "\x1b" not in out and "\r" not in out and "\x07" not in out
        assert "\\x1b[31m" in out or "\\u001b[31m" in out


# --- every accepted run stays readable, every rejected one names its field ---------------


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"batch_size": 2**63}, "batch_size"),
        ({"seq_len": -(2**63) - 1}, "seq_len"),
        ({"batch_size": 1.0}, "batch_size"),
        ({"created_at": "0999-06-01T00:00:00Z"}, "created_at"),
        ({"created_at": "9999-12-31T23:00:00-05:00"}, "created_at"),
        ({"created_at": "0001-01-01T00:30:00+01:00"}, "created_at"),
        ({"metrics": {"total_latency_ms": 10**400}}, "metrics.total_latency_ms"),
        ({"extra": {"big": 10**5000}}, "extra.big"),
    ],
)
def test_what_readers_could_not_read_is_refused_naming_the_field(
    tmp_path: Path, make_run: Callable[..., dict[str, Any]], overrides: dict[str, Any], field: str
) -> None:
    with pytest.raises(RunValidationError) as excinfo:
        write_run(tmp_path / "store", make_run(**overrides))
    assert excinfo.value.field == field
    assert not (tmp_path / "store" / "_manifest.jsonl").exists()


def test_deep_nesting_is_refused_with_a_documented_limit(
    tmp_path: Path, make_run: Callable[..., dict[str, Any]]
) -> None:
    deep: dict[str, Any] = {}
    cursor = deep
    for _ in range(10_000):
        cursor["a"] = {}
        cursor = cursor["a"]
    with pytest.raises(RunValidationError, match="nested deeper than 64 levels") as excinfo:
        write_run(tmp_path, make_run(extra=deep))
    assert excinfo.value.field.startswith("extra.a.a")


def test_bad_manifest_lines_are_skipped_not_fatal(
    cli: Cli, tmp_path: Path, make_run: Callable[..., dict[str, Any]], capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "store"
    good = write_run(root, make_run())
    entry = dict(good["entry"])
    lines = [
        {**entry, "run_id": "bad-tags", "tags": "not json"},
        {**entry, "run_id": "list-tags", "tags": "[1, 2]"},
        {**entry, "run_id": "huge", "batch_size": 2**64},
        {**entry, "run_id": "float-batch", "batch_size": 1.5},
    ]
    with open(root / "_manifest.jsonl", "a") as handle:
        handle.writelines(json.dumps(line) + "\n" for line in lines)
    for argv in (["ls", "--json"], ["ls", "--tag", "experiment=smoke", "--json"]):
        status, out = cli(*argv, "--root", str(root))
        assert status == 0 and [r["run_id"] for r in json.loads(out)] == [good["run_id"]]
        assert capsys.readouterr().err.count("invalid entry skipped") == 4
    with pytest.warns(ManifestWarning, match="manifest byte"):
        rebuild_index_from_manifest(root)
    assert cli("show", good["run_id"], "--root", str(root))[0] == 0
    assert verify_store(root).counts() == {"manifest_line": 4}


# --- no commit followed by an error, no litter --------------------------------------------


def test_a_broken_index_never_turns_a_stored_run_into_an_error(
    tmp_path: Path, make_run: Callable[..., dict[str, Any]]
) -> None:
    root = tmp_path / "store"
    write_run(root, make_run())
    (root / "_index.parquet").unlink(missing_ok=True)
    (root / "_index.parquet").mkdir()
    with pytest.warns(IndexWarning, match="run stored"):
        result = write_run(root, make_run())
    assert not [p for p in root.iterdir() if p.name.endswith(".tmp")]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", IndexWarning)
        assert result["run_id"] in {r["run_id"] for r in query(root)}


def test_a_truncated_archive_is_one_line_and_exit_1(
    tmp_path: Path, make_run: Callable[..., dict[str, Any]]
) -> None:
    src = tmp_path / "src"
    write_run(src, make_run())
    archive = tmp_path / "a.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(src, arcname="store")
    archive.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    done = subprocess.run(
        [SCRIPT, "merge", str(archive), "--root", str(tmp_path / "dest")], capture_output=True, text=True
    )
    assert done.returncode == 1 and done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    assert not (tmp_path / "dest").exists()


def _archive(path: Path, members: list[tuple[str, bytes]]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_merging_an_archive_of_an_empty_store_makes_an_empty_store(cli: Cli, tmp_path: Path) -> None:
    empty = _archive(tmp_path / "empty.tar.gz", [("_manifest.jsonl", b"")])
    dest = tmp_path / "dest"
    assert cli("merge", str(empty), "--root", str(dest))[0] == 0
    assert (dest / "_manifest.jsonl").read_bytes() == b""
    assert cli("ls", "--root", str(dest), "--json") == (0, "[]\n")
    assert cli("verify", "--root", str(dest))[0] == 0


def test_archive_extraction_is_bounded_and_refuses_duplicates(
    tmp_path: Path, make_run: Callable[..., dict[str, Any]]
) -> None:
    src = tmp_path / "src"
    write_run(src, make_run(run_id="r1", created_at="2025-01-01T00:00:00Z"))
    members = [(str(p.relative_to(src)), p.read_bytes()) for p in sorted(src.rglob("*")) if p.is_file()]
    bomb = _archive(tmp_path / "bomb.tar.gz", [*members, ("pad.bin", b"\0" * 2_000_000)])
    assert bomb.stat().st_size < 100_000
    with pytest.raises(StoreError, match="unpacks to more than 1,000,000 bytes"):
        merge_stores(tmp_path / "dest", [bomb], ArchiveLimits(max_bytes=1_000_000))
    with pytest.raises(StoreError, match="more than 2 members"):
        merge_stores(tmp_path / "dest", [bomb], ArchiveLimits(max_members=2))
    assert not (tmp_path / "dest").exists()
    duplicated = _archive(tmp_path / "dup.tar.gz", [*members, (members[-1][0], b"{}")])
    report = merge_stores(tmp_path / "dest", [duplicated])
    assert report.added == 1 and any("duplicate member name" in r for r in report.refused)
    assert not report.complete


# --- no false alarms ---------------------------------------------------------------------


def test_leftovers_of_a_killed_writer_are_not_damage_and_fix_removes_them(
    cli: Cli, tmp_path: Path, make_run: Callable[..., dict[str, Any]]
) -> None:
    root = tmp_path / "store"
    write_run(root, make_run())
    # a writer killed after its run file and before its manifest line
    other = tmp_path / "other"
    orphan = write_run(other, make_run(created_at="2025-05-05T00:00:00Z"))
    relative = Path(orphan["run_json"]).relative_to(other)
    (root / relative).parent.mkdir(parents=True)
    (root / relative).write_bytes(Path(orphan["run_json"]).read_bytes())
    (root / relative.parent / ".x.json.1.tmp").write_text("{")
    report = verify_store(root)
    assert report.clean and sorted(report.leftovers) == sorted(
        [str(relative), f"{relative.parent}/.x.json.1.tmp"]
    )
    status, out = cli("verify", "--root", str(root), "--fix", "--json")
    assert status == 0 and len(json.loads(out)["removed"]) == 2
    assert verify_store(root).leftovers == [] and not (root / relative).exists()


def spawn_writer(root: Path, count: int, *, compact: bool = False) -> subprocess.Popen[bytes]:
    """Another process writing ``count`` runs into ``root`` (compacting after each when ``compact``)."""
    body = (
        "import sys; sys.path.insert(0, sys.argv[2])\n"
        "from neurolens.storage.store import compact_index, write_run\n"
        "from tests.factories import make_run\n"
        f"for i in range({count}):\n"
        "    write_run(sys.argv[1], make_run(seq_len=i))\n"
        + ("    compact_index(sys.argv[1])\n" if compact else "")
    )
    return subprocess.Popen([sys.executable, "-c", body, str(root), str(Path(__file__).parents[1])])


def test_an_append_in_progress_is_not_reported_as_torn_until_its_writer_is_gone(
    tmp_path: Path, make_run: Callable[..., dict[str, Any]]
) -> None:
    # A reader can see a writer's line part-written (the page cache fills page by page);
    # while that writer holds the manifest's lock the partial line is no problem.
    root = tmp_path / "store"
    write_run(root, make_run())
    manifest = root / "_manifest.jsonl"
    whole = manifest.read_bytes()
    half_line = whole[: len(whole) // 2]
    body = (
        "import fcntl, os, sys\n"
        "fd = os.open(sys.argv[1], os.O_WRONLY | os.O_APPEND)\n"
        "fcntl.flock(fd, fcntl.LOCK_EX)\n"
        "os.write(fd, bytes.fromhex(sys.argv[2]))\n"
        "print('appending', flush=True)\n"
        "sys.stdin.read()\n"
    )
    command = [sys.executable, "-c", body, str(manifest), half_line.hex()]
    with subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE) as writer:
        assert writer.stdin is not None and writer.stdout is not None
        assert writer.stdout.readline() == b"appending\n"
        assert manifest.read_bytes() == whole + half_line
        during = verify_store(root)
        writer.stdin.close()  # the writer ends mid-line, its lock released with it
        assert writer.wait(timeout=60) == 0
    assert (during.runs, during.problems) == (1, [])
    after = verify_store(root)
    assert after.runs == 1
    torn = f"manifest byte {len(whole)}: incomplete last line ({len(half_line)} bytes) ignored"
    assert [(p.kind, p.message) for p in after.problems] == [("manifest_line", torn)]


def test_verify_beside_a_live_writer_reports_no_orphans(
    tmp_path: Path, make_run: Callable[..., dict[str, Any]]
) -> None:
    root = tmp_path / "store"
    write_run(root, make_run())
    writer = spawn_writer(root, 150)
    try:
        reports = []
        while writer.poll() is None:
            reports.append(verify_store(root))
    finally:
        writer.wait(timeout=60)
    assert writer.returncode == 0 and reports
    for report in reports:
        assert [p for p in report.problems if p.kind != "index"] == [], report.problems


def test_readers_racing_compaction_see_no_false_duplicates(
    tmp_path: Path, make_run: Callable[..., dict[str, Any]]
) -> None:
    root = tmp_path / "store"
    write_run(root, make_run())
    compactor = spawn_writer(root, 120, compact=True)
    reads = 0
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            while compactor.poll() is None:
                query(root)
                reads += 1
    finally:
        compactor.wait(timeout=120)
    assert compactor.returncode == 0 and reads > 10
    assert [str(w.message) for w in caught if "duplicate" in str(w.message)] == []
