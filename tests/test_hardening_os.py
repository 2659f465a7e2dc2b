"""Failures the operating system makes real: a read-only mount, a full disk, a killed worker.

The file systems are real: a tmpfs mounted in a private user and mount namespace
(``unshare``), so a read-only store fails with EROFS and a full one with ENOSPC, even for
root, where ``chmod`` blocks nothing.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

PYTHON = sys.executable


def _can_mount() -> str | None:
    """Why a private tmpfs cannot be mounted here, or None when it can."""
    if shutil.which("unshare") is None:
        return "no unshare(1) on this machine"
    probe = subprocess.run(
        ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", "mount -t tmpfs tmpfs /mnt"],
        capture_output=True,
        text=True,
    )
    return None if probe.returncode == 0 else f"user namespaces are off here: {probe.stderr.strip()}"


# One probe per session; where the kernel refuses user namespaces the reason is the skip.
_MOUNT_REFUSED = _can_mount()
needs_mount = pytest.mark.skipif(_MOUNT_REFUSED is not None, reason=str(_MOUNT_REFUSED))


def in_private_mount(tmp_path: Path, script: str) -> subprocess.CompletedProcess[str]:
    """Run a bash script in its own mount namespace, with a 2 MiB tmpfs mounted at ``$MNT``."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    body = f'set -u\nmount -t tmpfs -o size=2m tmpfs "$MNT"\n{textwrap.dedent(script)}'
    return subprocess.run(
        ["unshare", "--user", "--map-root-user", "--mount", "bash", "-c", body],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={"MNT": str(mnt), "PY": PYTHON, "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
        timeout=120,
    )


WRITE_RUNS = """
import sys
from neurolens.storage.store import write_run
from tests.factories import make_run
for i in range(int(sys.argv[2])):
    write_run(sys.argv[1], make_run(model=f"m{i % 7}", metrics={"total_latency_ms": 1.0 + i}))
"""


@needs_mount
def test_the_plugin_on_a_read_only_store_stops_at_startup_with_one_line(tmp_path: Path) -> None:
    (tmp_path / "test_ro.py").write_text(
        "import pytest\n\n"
        '@pytest.mark.neurolens(model="m", backend="cpu", precision="fp32", batch_size=1)\n'
        "def test_a(neurolens):\n"
        "    neurolens.record(total_latency_ms=1.0)\n"
    )
    (tmp_path / "write_runs.py").write_text(WRITE_RUNS)
    repo = Path(__file__).resolve().parent.parent
    result = in_private_mount(
        tmp_path,
        f"""
        export PYTHONPATH={repo}
        "$PY" write_runs.py "$MNT/store" 3 || exit 90
        cp "$MNT/store/_manifest.jsonl" before.jsonl
        mount -o remount,ro "$MNT" || exit 91
        "$PY" -m pytest -W error -p no:cacheprovider -p no:benchmark -p no:hypothesispytest \\
            --neurolens-store="$MNT/store" test_ro.py
        echo "pytest-exit=$?"
        "$PY" -m neurolens ls --root "$MNT/store" --json > listed.json
        echo "ls-exit=$?"
        cmp -s before.jsonl "$MNT/store/_manifest.jsonl" && echo manifest-unchanged
        """,
    )
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    # pytest's usage error: exit 4, one line that names the option, the path and the reason
    assert "pytest-exit=4" in out, out
    store = tmp_path / "mnt" / "store"
    assert f"--neurolens-store {store}: cannot write there (Read-only file system)" in out
    assert "Traceback" not in out
    # reading a read-only store works, and nothing in it changed
    assert "ls-exit=0" in out and "manifest-unchanged" in out
    assert (tmp_path / "listed.json").read_text().count('"run_id"') == 3


@needs_mount
def test_rebuild_and_write_run_on_a_full_disk_leave_the_store_as_it_was(tmp_path: Path) -> None:
    (tmp_path / "write_runs.py").write_text(WRITE_RUNS)
    (tmp_path / "write_one.py").write_text(
        "import sys\n"
        "from neurolens.storage.store import write_run\n"
        "from tests.factories import make_run\n"
        "try:\n"
        "    write_run(sys.argv[1], make_run(model='late'))\n"
        "except OSError as exc:\n"
        "    print('write_run-refused', exc.errno)\n"
    )
    repo = Path(__file__).resolve().parent.parent
    result = in_private_mount(
        tmp_path,
        f"""
        export PYTHONPATH={repo}
        "$PY" write_runs.py "$MNT/store" 40 || exit 90
        "$PY" -m neurolens rebuild --root "$MNT/store" > /dev/null || exit 91
        sha256sum "$MNT/store/_index.parquet" "$MNT/store/_manifest.jsonl" > before.sha
        # fill the file system to the last block
        dd if=/dev/zero of="$MNT/filler" bs=4096 2> /dev/null
        "$PY" -m neurolens rebuild --root "$MNT/store"
        echo "rebuild-exit=$?"
        "$PY" write_one.py "$MNT/store"
        sha256sum -c --quiet before.sha && echo store-unchanged
        find "$MNT/store" -name '*.tmp' -o -name '.*tmp*' | sed 's/^/litter: /'
        rm "$MNT/filler"
        "$PY" -m neurolens verify --root "$MNT/store"
        echo "verify-exit=$?"
        "$PY" -m neurolens rebuild --root "$MNT/store" > /dev/null
        sha256sum -c --quiet before.sha && echo rebuilt-identical
        """,
    )
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    # one line naming the cause, exit 1, no traceback
    assert "rebuild-exit=1" in out, out
    assert "No space left on device (" in out and "_index.parquet)" in out, out
    assert "Traceback" not in out, out
    assert "write_run-refused 28" in out, out  # ENOSPC, raised to the caller: nothing committed
    assert "store-unchanged" in out and "litter:" not in out, out
    assert "verify-exit=0" in out, out
    # with space again, the index rebuilt from the untouched manifest is the same bytes
    assert "rebuilt-identical" in out, out


@pytest.mark.slow
def test_a_killed_xdist_worker_s_runs_are_counted_in_the_summary(pytester: pytest.Pytester) -> None:
    pytest.importorskip("xdist")
    # loadfile: both tests of test_dies.py run on one worker, which records and is then killed
    pytester.makepyfile(
        test_dies="""
        import os, signal
        import pytest

        @pytest.mark.neurolens(model="m", backend="cpu", precision="fp32", batch_size=1)
        def test_records(neurolens):
            neurolens.record(total_latency_ms=1.0)

        def test_kills_its_worker():
            os.kill(os.getpid(), signal.SIGKILL)
        """,
        test_lives="""
        import pytest

        @pytest.mark.neurolens(model="m", backend="cpu", precision="fp32", batch_size=1)
        def test_records_too(neurolens):
            neurolens.record(total_latency_ms=2.0)
        """,
    )
    result = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "-n", "2", "--dist", "loadfile", "--neurolens-store=runs"
    )
    from neurolens.sources import query

    rows = query(pytester.path / "runs")
    assert sorted(r["total_latency_ms"] for r in rows) == [1.0, 2.0]
    assert len({r["session_id"] for r in rows}) == 1
    result.stdout.fnmatch_lines(["*worker*crashed*", "recorded 2 runs in *"])
    assert result.ret == pytest.ExitCode.TESTS_FAILED
