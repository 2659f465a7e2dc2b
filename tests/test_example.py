"""The README's first command, minus the install: the ONNX example records runs that `ls` lists."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_onnx_example_records_runs_and_ls_lists_them(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    store = tmp_path / "runs_store"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-W",
            "error",
            "-p",
            "no:cacheprovider",
            "examples",
            f"--neurolens-store={store}",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "recorded 3 runs" in done.stdout
    listing = subprocess.run(
        [str(Path(sys.executable).with_name("neurolens")), "ls", "--root", str(store), "--json"],
        capture_output=True,
        text=True,
        check=True,
    )
    rows = json.loads(listing.stdout)
    assert sorted(r["batch_size"] for r in rows) == [1, 8, 64]
    assert {r["backend"] for r in rows} == {"onnxrt"}
    assert all(r["total_latency_ms"] > 0 and r["tags"]["example"] == "onnx-mlp" for r in rows)


@pytest.mark.slow
def test_gpu_smoke_script_says_what_it_timed_and_cleans_up(tmp_path: Path) -> None:
    script = Path(__file__).parents[1] / "scripts" / "gpu_smoke.py"
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    if importlib.util.find_spec("torch") is None:  # no GPU workload possible: it must say so
        assert "== timing: NO GPU WORKLOAD: torch is not installed" in done.stdout
        assert "on the CPU is timed instead" in done.stdout
    assert list(tmp_path.iterdir()) == []  # its temporary store is gone
