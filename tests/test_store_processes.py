"""The store under real processes: concurrent writers, kill -9, no pyarrow, a wheel install."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import venv
from pathlib import Path

import pytest

from neurolens import load_runs
from neurolens.errors import IndexWarning
from neurolens.storage.store import compact_index, rebuild_index_from_manifest

REPO = Path(__file__).resolve().parents[1]

WRITER = textwrap.dedent(
    """
    import sys
    from neurolens.storage.store import write_run
    root, worker, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
    for i in range(count):
        write_run(root, {
            "model": "m", "backend": "ort", "precision": "fp32", "batch_size": 1,
            "metrics": {"total_latency_ms": float(i)},
            "tags": {"worker": worker, "i": str(i), "pad": "x" * 200},
        }, fingerprint={"worker": worker})
    """
)


def check_store_consistent(root: Path) -> list[dict]:
    """Every manifest line is whole and names a run file whose bytes match its hash."""
    raw = (root / "_manifest.jsonl").read_bytes()
    assert raw.endswith(b"\n")
    entries = [json.loads(line) for line in raw.splitlines()]
    for entry in entries:
        data = (root / entry["run_json"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == entry["sha256"]
        assert json.loads(data)["run_id"] == entry["run_id"]
    assert len({e["run_id"] for e in entries}) == len(entries)
    return entries


@pytest.mark.slow
def test_concurrent_writers_lose_and_tear_nothing(tmp_path: Path) -> None:
    workers, per_worker = 4, 60
    procs = [
        subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path), str(w), str(per_worker)])
        for w in range(workers)
    ]
    assert [p.wait(timeout=120) for p in procs] == [0] * workers
    entries = check_store_consistent(tmp_path)
    assert len(entries) == workers * per_worker
    for w in range(workers):
        seen = sorted(
            int(json.loads(e["tags"])["i"]) for e in entries if json.loads(e["tags"])["worker"] == str(w)
        )
        assert seen == list(range(per_worker))
    assert len(load_runs(tmp_path)) == workers * per_worker
    compacted = compact_index(tmp_path).read_bytes()
    assert rebuild_index_from_manifest(tmp_path).read_bytes() == compacted


@pytest.mark.slow
def test_writer_killed_with_sigkill_loses_nothing_written(tmp_path: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path), "k", "100000"])
    manifest = tmp_path / "_manifest.jsonl"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and (not manifest.exists() or manifest.stat().st_size < 40_000):
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    # Simulate the worst moment too: a line torn mid-append.
    with open(manifest, "ab") as handle:
        handle.write(b'{"run_id":"half-writ')
    complete = manifest.read_bytes().count(b"\n")
    assert complete > 10
    subprocess.run([sys.executable, "-c", WRITER, str(tmp_path), "after", "3"], check=True)
    with pytest.warns(Warning):  # the torn line is reported
        rebuild_index_from_manifest(tmp_path)
    frame = load_runs(tmp_path)
    # every line that was complete before the kill is still there, plus the 3 new runs
    lines_now = manifest.read_bytes().count(b"\n")
    assert lines_now == complete + 1 + 3  # the torn fragment was closed, not overwritten
    assert _invalid_lines(manifest) == 1
    assert len(frame) == lines_now - 1
    assert sorted(frame[frame["tags"].map(lambda t: t["worker"] == "after")]["total_latency_ms"]) == [0, 1, 2]
    lines = manifest.read_bytes().splitlines()
    assert b"half-writ" in b"".join(lines) and lines[-1].startswith(b"{")


def _invalid_lines(manifest: Path) -> int:
    bad = 0
    for line in manifest.read_bytes().splitlines():
        try:
            json.loads(line)
        except ValueError:
            bad += 1
    return bad


BLOCK_PYARROW = textwrap.dedent(
    """
    import sys
    class Block:
        def find_spec(self, name, path=None, target=None):
            if name == "pyarrow" or name.startswith("pyarrow."):
                raise ImportError("pyarrow blocked for this test")
    sys.meta_path.insert(0, Block())
    """
)


def test_a_write_between_compaction_points_imports_no_pyarrow(tmp_path: Path) -> None:
    """Deciding whether to compact reads no index footer: a process that only writes
    (the plugin, a training script) never pays for importing pyarrow."""
    from neurolens.storage.store import write_run
    from tests.factories import make_run

    write_run(tmp_path, make_run())  # a new store: this first write builds the index
    script = textwrap.dedent(
        """
        import sys
        from neurolens.storage.store import write_run
        from tests.factories import make_run
        for _ in range(3):
            write_run(sys.argv[1], make_run())
        print(" ".join(sorted(m for m in ("pyarrow", "pandas") if m in sys.modules)))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=Path(__file__).parents[1],
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == ""
    assert len((tmp_path / "_manifest.jsonl").read_bytes().splitlines()) == 4


@pytest.mark.slow
def test_without_pyarrow_the_index_falls_back_to_jsonl(tmp_path: Path) -> None:
    script = BLOCK_PYARROW + textwrap.dedent(
        """
        import json, sys, warnings
        warnings.simplefilter("error")
        from neurolens import load_runs
        from neurolens.storage.store import write_run, rebuild_index_from_manifest, compact_index
        root = sys.argv[1]
        for i in range(5):
            write_run(root, {"model": "m", "backend": "ort", "precision": "fp32", "batch_size": i + 1,
                             "metrics": {"total_latency_ms": 1.0}, "tags": {"i": str(i)}})
        a = open(compact_index(root), "rb").read()
        path = rebuild_index_from_manifest(root)
        assert open(path, "rb").read() == a
        frame = load_runs(root, tags={"i": "3"})
        assert "pyarrow" not in sys.modules
        print(json.dumps({"index": str(path), "batch": frame["batch_size"].tolist(),
                          "all": load_runs(root, limit=2)["batch_size"].tolist()}))
        """
    )
    out = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result == {"index": str(tmp_path / "_index.jsonl"), "batch": [4], "all": [5, 4]}
    assert not (tmp_path / "_index.parquet").exists()
    # The same store read with pyarrow: the Parquet index is built from the same manifest.
    with pytest.warns(IndexWarning, match="_index.parquet is missing"):
        assert list(load_runs(tmp_path, tags={"i": "3"})["batch_size"]) == [4]


@pytest.mark.slow
def test_built_wheel_ships_the_schema_and_writes_runs(tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(dist),
            str(REPO),
        ],
        check=True,
    )
    (wheel,) = dist.glob("pytest_neurolens-*.whl")
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=False)
    python = env_dir / "bin" / "python"
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    # Dependencies come from this environment (read-only path entry, no .pth processing);
    # the package itself only from the wheel.
    import jsonschema
    import pyarrow

    deps = {str(Path(str(m.__file__)).resolve().parents[1]) for m in (jsonschema, pyarrow)}
    Path(site, "_deps.pth").write_text("\n".join(sorted(deps)) + "\n")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", site, str(wheel)], check=True
    )
    script = textwrap.dedent(
        """
        import json, sys, neurolens
        from neurolens.storage.store import write_run
        paths = write_run(sys.argv[1], {"model": "m", "backend": "ort", "precision": "fp32",
                                        "batch_size": 1, "metrics": {"total_latency_ms": 2.0}})
        print(json.dumps({"module": neurolens.__file__, "run_json": paths["run_json"]}))
        """
    )
    out = subprocess.run(
        [str(python), "-c", script, str(tmp_path / "store")], capture_output=True, text=True, cwd=tmp_path
    )
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["module"].startswith(site)
    assert Path(site, "neurolens", "schema", "run.schema.json").is_file()
    assert Path(result["run_json"]).is_file()


@pytest.mark.slow
def test_writers_killed_at_random_points_leave_a_store_that_verifies(tmp_path: Path) -> None:
    import random

    from neurolens.storage.exchange.verify import verify_store

    rng = random.Random(7)
    manifest = tmp_path / "_manifest.jsonl"
    for attempt in range(8):
        before = manifest.stat().st_size if manifest.exists() else 0
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path), f"kill{attempt}", "100000"])
        deadline = time.monotonic() + 60
        # past its imports (slow on a loaded machine): it has appended a line of its own
        while (manifest.stat().st_size if manifest.exists() else 0) == before:
            assert time.monotonic() < deadline and proc.poll() is None, "the writer never wrote"
            time.sleep(0.005)
        time.sleep(rng.random() * 0.3)  # then somewhere among the writes
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    report = verify_store(tmp_path)
    # a torn last line is possible; anything else is damage
    assert {p.kind for p in report.problems} <= {"manifest_line", "index"}, report.problems
    assert all("incomplete last line" in p.message for p in report.problems if p.kind == "manifest_line")
    subprocess.run([sys.executable, "-c", WRITER, str(tmp_path), "after", "1"], check=True)
    rebuild_index_from_manifest(tmp_path)
    after = verify_store(tmp_path)
    assert {p.kind for p in after.problems} <= {"manifest_line"}
    assert all("torn or unparsable" in p.message for p in after.problems)
