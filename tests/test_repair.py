"""``neurolens verify --fix`` never deletes a live writer's run, nor a sound run whose manifest
line was damaged (it restores the line from the file). Real processes, the real command."""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from neurolens.storage.exchange.verify import verify_store
from neurolens.storage.store import write_run
from tests.factories import make_run

NEUROLENS = str(Path(sys.executable).with_name("neurolens"))
REPO = Path(__file__).resolve().parents[1]


def neurolens(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([NEUROLENS, *argv], capture_output=True, text=True, timeout=60)


def test_fix_leaves_a_live_writers_files_and_the_writer_completes(tmp_path: Path) -> None:
    root = tmp_path / "store"
    write_run(root, make_run())
    known = set(root.rglob("*.json"))
    # hold the manifest's lock: the next writer links its files, then waits for it
    manifest = os.open(root / "_manifest.jsonl", os.O_RDWR)
    fcntl.flock(manifest, fcntl.LOCK_EX)
    writer = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; sys.path.insert(0, sys.argv[2])\n"
            "from neurolens.storage.store import write_run\n"
            "from tests.factories import make_run\n"
            "print(write_run(sys.argv[1], make_run(seq_len=7), fingerprint={'a': 1})['run_json'])",
            str(root),
            str(REPO),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while len([p for p in root.rglob("*.json")]) < 3:  # the first run, the new run and its fingerprint
            assert time.monotonic() < deadline and writer.poll() is None
            time.sleep(0.01)
        pending = sorted(str(p.relative_to(root)) for p in set(root.rglob("*.json")) - known)
        done = neurolens("verify", "--root", str(root), "--fix", "--json")
        report = json.loads(done.stdout)
        assert sorted(report["leftovers"]) == pending  # what a killed writer would leave ...
        assert report["removed"] == [] and all("a writer is at work" in r for r in report["kept"].values())
        assert all((root / p).exists() for p in pending)  # ... but its writer is alive
    finally:
        fcntl.flock(manifest, fcntl.LOCK_UN)
        os.close(manifest)
    stored = writer.communicate(timeout=30)[0].strip()
    assert writer.returncode == 0
    assert Path(stored).exists() and len(pending) == 2
    after = neurolens("verify", "--root", str(root), "--json")
    assert after.returncode == 0 and json.loads(after.stdout)["leftovers"] == []
    listed = json.loads(neurolens("ls", "--root", str(root), "--json").stdout)
    assert sorted(r["seq_len"] for r in listed) == [7, 128]


def test_fix_waits_for_no_writer_and_says_so(tmp_path: Path) -> None:
    root = tmp_path / "store"
    write_run(root, make_run())
    # a run file with no line, as a writer leaves it between its file and its line
    other = write_run(tmp_path / "other", make_run(created_at="2025-05-05T00:00:00Z"))
    relative = Path(other["run_json"]).relative_to(tmp_path / "other")
    (root / relative).parent.mkdir(parents=True)
    (root / relative).write_bytes(Path(other["run_json"]).read_bytes())
    lock = os.open(root / "_writers.lock", os.O_RDWR)
    fcntl.flock(lock, fcntl.LOCK_SH)  # a writer at work
    try:
        done = neurolens("verify", "--root", str(root), "--fix")
        assert (root / relative).exists()
        assert "a writer is at work in the store" in done.stderr
    finally:
        os.close(lock)
    done = neurolens("verify", "--root", str(root), "--fix")  # the writer is gone (killed)
    assert not (root / relative).exists() and "removed" in done.stderr


def test_a_damaged_line_keeps_its_run_files_and_fix_restores_the_line(tmp_path: Path) -> None:
    root = tmp_path / "store"
    first = write_run(root, make_run(seq_len=1), fingerprint={"python": "3.11"})
    write_run(root, make_run(seq_len=2))
    manifest = root / "_manifest.jsonl"
    data = bytearray(manifest.read_bytes())
    data[data.index(b'"batch_size"') + 1] = ord("#")  # one byte of the first line
    manifest.write_bytes(bytes(data))
    before = {p: p.read_bytes() for p in root.rglob("*.json")}

    checked = neurolens("verify", "--root", str(root), "--json")
    report = json.loads(checked.stdout)
    # the damaged line, and the index that no longer matches the manifest
    assert checked.returncode == 1 and report["counts"] == {"manifest_line": 1, "index": 1}
    assert report["leftovers"] == [] and len(report["restorable"]) == 2  # the run and its fingerprint
    assert "verify --fix restores its line" in neurolens("verify", "--root", str(root)).stderr

    fixed = json.loads(neurolens("verify", "--root", str(root), "--fix", "--json").stdout)
    assert fixed["removed"] == [] and fixed["restored"] == [str(Path(first["run_json"]).relative_to(root))]
    assert {p: p.read_bytes() for p in root.rglob("*.json")} == before  # nothing deleted or altered
    listed = json.loads(neurolens("ls", "--root", str(root), "--json").stdout)
    assert sorted(r["seq_len"] for r in listed) == [1, 2]
    restored = next(r for r in listed if r["seq_len"] == 1)
    assert restored["fp_json"] == str(Path(first["fp_json"]).relative_to(root))
    assert fixed["fixed"] == ["index rebuilt from the manifest"]
    again = verify_store(root)  # the damaged line stays in the append-only ledger, nothing else
    assert again.restorable == [] and again.leftovers == [] and again.counts() == {"manifest_line": 1}
