#!/usr/bin/env python3
"""`neurolens merge` of two stores and `neurolens verify` of a large one, with real run files.

    python benchmarks/merge_verify_bench.py [--merge-runs 100000] [--verify-runs 1000000] [--workdir DIR]

``--workdir /dev/shm`` runs it on tmpfs, where file creation and syncs cost next to nothing:
what is left is merge's and verify's own work.

Stores are synthesised file by file in the exact form write_run produces (canonical run
JSON, manifest entry with its hash), without write_run's per-run fsyncs, so building a
1M-run store takes minutes rather than hours. Figures are wall times on this machine.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from neurolens.storage.exchange.merge import merge_stores
from neurolens.storage.ledger.canonical import canonical_bytes
from neurolens.storage.ledger.document import run_relpaths
from neurolens.storage.ledger.manifest import encode_entry, entry_for
from neurolens.storage.store import compact_index


def build_store(root: Path, runs: int, prefix: str) -> Path:
    lines = []
    made_dirs: set[Path] = set()
    root.mkdir(parents=True)
    with open(root / "_manifest.jsonl", "wb") as manifest:
        for i in range(runs):
            document = {
                "schema_version": 1,
                "run_id": f"{prefix}-{i:09d}",
                "created_at": f"2025-04-{1 + i % 28:02d}T00:00:00.{i % 1000000:06d}Z",
                "model": f"model-{i % 50}",
                "backend": ("onnxrt", "tensorrt", "torch")[i % 3],
                "precision": "fp16",
                "batch_size": 2 ** (i % 6),
                "seq_len": 128,
                "metrics": {"total_latency_ms": 10 + i % 97 / 10, "gpu_utilization": 55.0},
                "hardware": {
                    "gpu_name": "NVIDIA H100 80GB HBM3",
                    "driver_version": "550.54.15",
                    "cuda_version": "12.4",
                },
                "tags": {"runner": prefix},
            }
            data = canonical_bytes(document)
            run_rel, _ = run_relpaths(document, with_fingerprint=False)
            path = root / run_rel
            if path.parent not in made_dirs:
                path.parent.mkdir(parents=True, exist_ok=True)
                made_dirs.add(path.parent)
            path.write_bytes(data)
            lines.append(encode_entry(entry_for(document, run_rel, None, hashlib.sha256(data).hexdigest())))
            if len(lines) == 10000:
                manifest.write(b"".join(lines))
                lines.clear()
        manifest.write(b"".join(lines))
    compact_index(root)
    return root


def copied_bare(sources: list[Path], dest: Path) -> float:
    """Baseline for merge: seconds to copy the sources' files as they are (no checks, no
    fsync), the file creation a merge cannot avoid."""
    start = time.perf_counter()
    for source in sources:
        shutil.copytree(source, dest / source.name, copy_function=shutil.copyfile)
    return time.perf_counter() - start


def read_bare(root: Path) -> tuple[float, int]:
    """Baseline for verify: seconds to read and hash every file of the store, one process."""
    start = time.perf_counter()
    count = 0
    for folder, _, names in os.walk(root):
        for name in names:
            with open(os.path.join(folder, name), "rb") as handle:
                hashlib.sha256(handle.read()).digest()
            count += 1
    return time.perf_counter() - start, count


def timed(argv: list[str]) -> tuple[float, str]:
    start = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True)
    return time.perf_counter() - start, (done.stdout.strip().splitlines() or [""])[-1]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--merge-runs", type=int, default=100_000)
    parser.add_argument("--verify-runs", type=int, default=1_000_000)
    parser.add_argument("--workdir", type=Path, default=None, help="where the stores go")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="neurolens-merge-bench-", dir=args.workdir))
    cli = str(Path(sys.executable).with_name("neurolens"))
    try:
        start = time.perf_counter()
        a = build_store(work / "a", args.merge_runs, "a")
        b = build_store(work / "b", args.merge_runs, "b")
        print(f"built two {args.merge_runs:,}-run stores in {time.perf_counter() - start:.1f} s")
        os.sync()  # their writeback would otherwise land in the first timed sync
        bare = copied_bare([a, b], work / "copied")
        shutil.rmtree(work / "copied")
        os.sync()
        seconds, line = timed([cli, "merge", str(a), str(b), "--root", str(work / "merged")])
        print(
            f"neurolens merge of two {args.merge_runs:,}-run stores: {seconds:.1f} s ({line}); "
            f"baseline, their files copied bare: {bare:.1f} s ({seconds / bare:.1f}x)"
        )
        seconds, line = timed([cli, "merge", str(a), str(b), "--root", str(work / "merged")])
        print(f"the same merge again (everything already present): {seconds:.1f} s ({line})")
        os.sync()
        start = time.perf_counter()
        alone = merge_stores(work / "merged_alone", [a, b], workers=1)
        print(
            f"the first merge in one process (merge_stores(..., workers=1), in-process): "
            f"{time.perf_counter() - start:.1f} s ({alone.added:,} added)"
        )
        shutil.rmtree(work / "merged_alone")
        seconds, line = timed([cli, "verify", "--root", str(work / "merged")])
        print(f"neurolens verify of the merged store: {seconds:.1f} s ({line})")
        shutil.rmtree(a)
        shutil.rmtree(b)
        shutil.rmtree(work / "merged")
        start = time.perf_counter()
        big = build_store(work / "big", args.verify_runs, "v")
        print(f"built a {args.verify_runs:,}-run store in {time.perf_counter() - start:.1f} s")
        os.sync()
        bare, files = read_bare(big)
        seconds, line = timed([cli, "verify", "--root", str(big)])
        print(
            f"neurolens verify of {args.verify_runs:,} runs: {seconds:.1f} s ({line}); "
            f"baseline, its {files:,} files read and hashed bare in one process: {bare:.1f} s "
            f"({seconds / bare:.1f}x)"
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
