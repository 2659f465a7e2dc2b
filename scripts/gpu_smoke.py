#!/usr/bin/env python3
"""Real-GPU smoke test: run a small workload under the plugin and print what was recorded.

    python scripts/gpu_smoke.py [STORE]

With torch and CUDA: a half-precision matmul on the GPU, synchronised around each timed
call. Without them: the same test on the CPU (NVML is still asked for the hardware and
utilization, so a GPU machine without torch still checks the NVML path). Prints the NVML
snapshot, the pytest output and the stored runs; exits non-zero if nothing was recorded.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

TEST = textwrap.dedent(
    """
    import pytest

    try:
        import torch
        CUDA = torch.cuda.is_available()
    except ImportError:
        torch, CUDA = None, False

    @pytest.mark.neurolens(model="matmul-4096", backend="torch-cuda" if CUDA else "python",
                           precision="fp16" if CUDA else "fp64", tags={"smoke": "gpu"})
    @pytest.mark.parametrize("batch_size", [1, 8])
    def test_matmul(neurolens, batch_size):
        if CUDA:
            a = torch.randn(batch_size, 4096, 4096, device="cuda", dtype=torch.float16)
            b = torch.randn(4096, 4096, device="cuda", dtype=torch.float16)
            result = neurolens.measure(torch.matmul, a, b, batch_size=batch_size,
                                       sync=torch.cuda.synchronize, warmup=5, iterations=50)
        else:
            rows = [[float(i + j) for j in range(64)] for i in range(64)]
            work = lambda: [sum(x * y for x, y in zip(r, c)) for r in rows for c in rows[:8]]
            result = neurolens.measure(work, batch_size=batch_size, warmup=1, iterations=10)
        print("measured", batch_size, result.p50_ms, "ms, gpu util", result.gpu_utilization)
    """
)


CPU_WORK = "a pure-Python 64x64 matmul on the CPU"


def _what_is_timed() -> str:
    try:
        import torch  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        return f"NO GPU WORKLOAD: torch is not installed, so {CPU_WORK} is timed instead"
    if not torch.cuda.is_available():
        return f"NO GPU WORKLOAD: torch sees no CUDA device, so {CPU_WORK} is timed instead"
    return f"a 4096x4096 fp16 matmul on {torch.cuda.get_device_name(0)} (torch {torch.__version__})"


def main() -> int:
    from neurolens.hardware.host import host_facts
    from neurolens.hardware.nvml import Nvml

    nvml = Nvml()
    snapshot = nvml.snapshot()
    nvml.close()
    print("== NVML snapshot")
    print(json.dumps({**snapshot, "host": host_facts()}, indent=2))
    print(f"== timing: {_what_is_timed()}")
    if snapshot.get("nvml_error"):
        print(f"== NVML: {snapshot['nvml_error']}: GPU fields will be null, with this reason")

    work = Path(tempfile.mkdtemp(prefix="neurolens-smoke-"))
    try:
        return _run(work, Path(sys.argv[1]) if len(sys.argv) > 1 else work / "runs_store")
    finally:
        shutil.rmtree(work, ignore_errors=True)  # the temporary store too, unless STORE was given


def _run(work: Path, store: Path) -> int:
    (work / "test_gpu_smoke.py").write_text(TEST)
    print("== pytest")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-s",
            "-p",
            "no:cacheprovider",
            str(work),
            f"--neurolens-store={store}",
            "--neurolens-sample-interval=10",
            f"--rootdir={work}",
        ],
        check=False,
    )
    print("== neurolens ls")
    subprocess.run([sys.executable, "-m", "neurolens", "ls", "--root", str(store)], check=False)
    listing = subprocess.run(
        [sys.executable, "-m", "neurolens", "ls", "--root", str(store), "--json"],
        capture_output=True,
        text=True,
        check=False,
    )
    rows = json.loads(listing.stdout or "[]")
    for row in rows:
        document = json.loads((store / row["run_json"]).read_text())
        document.pop("latencies_ms", None)
        print(f"== run {row['run_id']}")
        print(json.dumps({k: document[k] for k in ("metrics", "hardware")}, indent=2))
    return 0 if done.returncode == 0 and rows else 1


if __name__ == "__main__":
    sys.exit(main())
