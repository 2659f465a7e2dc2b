#!/usr/bin/env python3
"""`neurolens compare` over a large store: N runs in G groups, half baseline, half candidate.

    python benchmarks/compare_bench.py [--runs 1000000] [--groups 1000]

One group in ten is made 10% slower on the candidate side, so the gate has work to do.
Prints the in-process time of ``compare`` and the wall time of the whole command.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from neurolens.analysis.compare import compare
from neurolens.analysis.text import summary_line
from neurolens.storage.index.filters import RunFilter
from neurolens.storage.ledger.manifest import encode_entry, encode_tags
from neurolens.storage.store import compact_index

BACKENDS = ["onnxrt", "tensorrt", "torch", "openvino"]


def entry(i: int, groups: int) -> dict[str, object]:
    g = i % groups
    candidate = (i // groups) % 2 == 1
    latency = 10.0 + g % 17 + (i % 13) / 100
    if candidate and g % 10 == 0:
        latency *= 1.10
    run_id = f"{i:012x}-0000-7000-8000-{i:012x}"
    return {
        "run_id": run_id,
        "created_at": f"2025-03-01T00:00:00.{i % 1000000:06d}Z",
        "day": "2025-03-01",
        "model": f"model-{g // 20}",
        "backend": BACKENDS[(g // 5) % 4],
        "precision": "fp16",
        "batch_size": 2 ** (g % 5),
        "seq_len": 128,
        "total_latency_ms": latency,
        "gpu_utilization": 50.0,
        "gpu_name": "NVIDIA H100 80GB HBM3",
        "driver_version": "550.54.15",
        "cuda_version": "12.4",
        "run_json": f"2025/03/01/x/{run_id}.json",
        "fp_json": None,
        "tags": encode_tags({"branch": "pr" if candidate else "main"}),
        "sha256": "0" * 64,
        "session_id": None,
        "fingerprint_hash": None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=1_000_000)
    parser.add_argument("--groups", type=int, default=1000)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="neurolens-compare-bench-"))
    try:
        with open(root / "_manifest.jsonl", "wb") as handle:
            for first in range(0, args.runs, 10000):
                handle.write(
                    b"".join(
                        encode_entry(entry(i, args.groups))
                        for i in range(first, min(first + 10000, args.runs))
                    )
                )
        compact_index(root)
        start = time.perf_counter()
        result = compare(
            root,
            RunFilter(tags={"branch": "main"}),
            RunFilter(tags={"branch": "pr"}),
            threshold="5%",
        )
        in_process = time.perf_counter() - start
        print(f"{args.runs:,} runs, {len(result.groups)} groups: {summary_line(result)}")
        print(f"compare() in-process: {in_process:.2f} s")
        cli = str(Path(sys.executable).with_name("neurolens"))
        argv = [cli, "compare", "--root", str(root), "--baseline-tag", "branch=main"]
        argv += ["--candidate-tag", "branch=pr", "--fail-above", "5%", "--json"]
        walls = []
        for _ in range(3):
            start = time.perf_counter()
            done = subprocess.run(argv, capture_output=True)
            walls.append(time.perf_counter() - start)
        print(
            f"neurolens compare --fail-above 5% (whole command, exit {done.returncode}): "
            f"{statistics.median(walls):.2f} s (median of 3; {min(walls):.2f}-{max(walls):.2f} s)"
        )
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
