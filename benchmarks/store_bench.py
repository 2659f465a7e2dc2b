#!/usr/bin/env python3
"""Store benchmarks: write cost against store size, rebuild at 1M lines, filtered reads.

    python benchmarks/store_bench.py [--big 1000000] [--writes 300] [--workdir DIR]

Histories are synthesised as manifest lines (what write_run appends) and then indexed by
the store itself, so a 1M-run store takes seconds to make rather than hours of fsyncs.
Prints one figure per line; ratios compare against a baseline measured in this process.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from neurolens.storage.ledger.manifest import encode_entry, encode_tags
from neurolens.storage.store import compact_index, write_run

MODELS = ["gpt2", "bert-base", "llama-7b", "resnet50", "whisper-small"]
BACKENDS = ["onnxrt", "tensorrt", "torch", "openvino"]
PRECISIONS = ["fp32", "fp16", "int8"]


def synthetic_entry(i: int) -> dict[str, object]:
    day = 1 + i % 28
    run_id = f"{i:012x}-0000-7000-8000-{i:012x}"
    backend = BACKENDS[i % len(BACKENDS)]
    return {
        "run_id": run_id,
        "created_at": f"2025-{1 + (i // 28) % 12:02d}-{day:02d}T{i % 24:02d}:00:00.{i % 1000000:06d}Z",
        "day": f"2025-{1 + (i // 28) % 12:02d}-{day:02d}",
        "model": MODELS[i % len(MODELS)],
        "backend": backend,
        "precision": PRECISIONS[i % len(PRECISIONS)],
        "batch_size": 2 ** (i % 7),
        "seq_len": 128,
        "total_latency_ms": 1.0 + (i % 997) / 10,
        "gpu_utilization": float(i % 100),
        "gpu_name": "NVIDIA H100 80GB HBM3",
        "driver_version": "550.54.15",
        "cuda_version": "12.4",
        "run_json": f"2025/01/01/{backend}/{run_id}.json",
        "fp_json": None,
        "tags": encode_tags({"branch": f"pr-{i % 500}", "job": str(i % 10000), "experiment": "bench"}),
        "sha256": "0" * 64,
        "session_id": f"session-{i // 1000}",
        "fingerprint_hash": "abcdef0123456789",
    }


def make_store(root: Path, runs: int, entry: Callable[[int], dict[str, object]] | None = None) -> Path:
    """A store of ``runs`` manifest lines (``entry(i)`` each, default ``synthetic_entry``), indexed."""
    make = entry or synthetic_entry
    root.mkdir(parents=True, exist_ok=True)
    with open(root / "_manifest.jsonl", "wb") as handle:
        batch = []
        for i in range(runs):
            batch.append(encode_entry(make(i)))
            if len(batch) == 10000:
                handle.write(b"".join(batch))
                batch = []
        handle.write(b"".join(batch))
    compact_index(root)
    return root


def run_doc(i: int) -> dict[str, object]:
    return {
        "model": "gpt2",
        "backend": "onnxrt",
        "precision": "fp16",
        "batch_size": 8,
        "seq_len": 128,
        "metrics": {"total_latency_ms": 12.5 + i, "gpu_utilization": 50.0},
        "hardware": {
            "gpu_name": "NVIDIA H100 80GB HBM3",
            "driver_version": "550.54.15",
            "cuda_version": "12.4",
        },
        "tags": {"bench": "write", "i": str(i)},
    }


class BareFileOps:
    """The file operations a durable write_run needs, done bare, as a baseline on the same
    disk: two new files each written to a temporary name, fsynced and linked into place,
    one folder fsync, one manifest-sized line appended and fsynced."""

    def __init__(self, folder: Path, run_bytes: int = 500, fp_bytes: int = 20, line_bytes: int = 650) -> None:
        folder.mkdir(parents=True)
        self.dir_fd = os.open(folder, os.O_RDONLY)
        self.manifest = os.open(folder / "manifest", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self.sizes = (run_bytes, fp_bytes)
        self.line = b"x" * (line_bytes - 1) + b"\n"
        self.count = 0

    def append(self) -> None:
        """The raw baseline: one line appended and fsynced."""
        os.write(self.manifest, self.line)
        os.fsync(self.manifest)

    def write(self) -> None:
        self.count += 1
        for name, size in zip((f"r{self.count}.json", f"r{self.count}.fp.json"), self.sizes, strict=True):
            fd = os.open(f".{name}.tmp", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644, dir_fd=self.dir_fd)
            os.write(fd, b"x" * size)
            os.fsync(fd)
            os.close(fd)
            os.link(f".{name}.tmp", name, src_dir_fd=self.dir_fd, dst_dir_fd=self.dir_fd)
            os.unlink(f".{name}.tmp", dir_fd=self.dir_fd)
        os.fsync(self.dir_fd)
        self.append()


def paired_write_ms(root: Path, bare: BareFileOps, writes: int) -> tuple[float, float, float]:
    """Mean ms of (write_run, the bare file operations, a raw append + fsync), taken in
    turn so that the disk's drift on a shared machine falls on all three alike."""
    spent = [0.0, 0.0, 0.0]
    for i in range(writes):
        run = run_doc(i)
        start = time.perf_counter()
        write_run(root, run, fingerprint={"bench": True})
        spent[0] += time.perf_counter() - start
        for slot, step in ((1, bare.write), (2, bare.append)):
            start = time.perf_counter()
            step()
            spent[slot] += time.perf_counter() - start
    return spent[0] * 1000 / writes, spent[1] * 1000 / writes, spent[2] * 1000 / writes


def child_peak(code: str, *args: str) -> tuple[float, float, str]:
    """(wall s, peak RSS MiB, stdout) of ``python -c code`` in a fresh process."""
    start = time.perf_counter()
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, check=True)
    wall = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return wall, max(peak, before) / 1024, out.stdout.strip()


def ls_and_import_ms(root: Path) -> tuple[float, float]:
    """Medians of 5 `neurolens ls --tag --limit 20` runs and of 5 bare `import pyarrow`, in turn."""
    cli = str(Path(sys.executable).with_name("neurolens"))
    ls_times, import_times = [], []
    for _ in range(5):
        start = time.perf_counter()
        subprocess.run(
            [cli, "ls", "--root", str(root), "--tag", "branch=pr-42", "--limit", "20"],
            capture_output=True,
            check=True,
        )
        ls_times.append(time.perf_counter() - start)
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import pyarrow"], check=True)
        import_times.append(time.perf_counter() - start)
    return statistics.median(ls_times) * 1000, statistics.median(import_times) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--small", type=int, default=1_000)
    parser.add_argument("--medium", type=int, default=100_000)
    parser.add_argument("--big", type=int, default=1_000_000)
    parser.add_argument("--writes", type=int, default=300)
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="neurolens-bench-", dir=args.workdir))
    try:
        print(f"python {sys.version.split()[0]}, {os.cpu_count()} cpus, workdir {work}")
        small = make_store(work / "small", args.small)
        medium = make_store(work / "medium", args.medium)
        bare = BareFileOps(work / "bare")
        base, _, _ = paired_write_ms(small, bare, args.writes)
        grown, floor, raw = paired_write_ms(medium, bare, args.writes)
        print(f"write_run mean per run, {args.small:,} runs in store: {base:.3f} ms")
        print(f"write_run mean per run, {args.medium:,} runs in store: {grown:.3f} ms")
        print(f"write_run ratio {args.medium:,} / {args.small:,}: {grown / base:.2f}")
        print(f"baseline, raw append + fsync of one line: {raw:.3f} ms")
        print(
            f"baseline, a durable write's file operations done bare (2 files, folder, line): {floor:.3f} ms "
            f"(write_run at {args.medium:,} runs: {grown / floor:.2f}x)"
        )

        start = time.perf_counter()
        big = make_store(work / "big", args.big)
        size_mb = (big / "_manifest.jsonl").stat().st_size / 2**20
        made = time.perf_counter() - start
        print(f"made {args.big:,}-line manifest ({size_mb:,.0f} MiB) and its index in {made:.1f} s")
        wall, peak, out = child_peak(
            "import sys, time; from neurolens.storage.store import rebuild_index_report as r\n"
            "t = time.perf_counter(); rep = r(sys.argv[1]); print(time.perf_counter() - t, rep.rows)",
            str(big),
        )
        seconds, rows = out.split()
        print(
            f"rebuild of {int(rows):,} manifest lines: {float(seconds):.2f} s in-process, {wall:.2f} s with "
            f"interpreter start, peak RSS {peak:,.0f} MiB"
        )
        _, _, out = child_peak(
            "import sys, time; t = time.perf_counter(); from neurolens import load_runs\n"
            "f = load_runs(sys.argv[1], model='llama-7b', tags={'branch': 'pr-42'}, limit=20)\n"
            "print(time.perf_counter() - t, len(f))",
            str(big),
        )
        seconds, count = out.split()
        print(
            f"load_runs(model=..., tags=..., limit=20) at {args.big:,} runs: {float(seconds) * 1000:.0f} ms "
            f"(imports included), {count} rows"
        )
        ls_ms, import_ms = ls_and_import_ms(big)
        ls_line = f"neurolens ls --tag branch=pr-42 --limit 20 at {args.big:,} runs"
        print(f"{ls_line}: {ls_ms:.0f} ms (median of 5)")
        print(f"python -c 'import pyarrow': {import_ms:.0f} ms (median of 5)")
        at_big, floor, raw = paired_write_ms(big, bare, args.writes)
        print(
            f"write_run mean per run, {args.big:,} runs in store: {at_big:.3f} ms "
            f"(raw append {raw:.3f} ms, bare file operations {floor:.3f} ms: {at_big / floor:.2f}x)"
        )
        # The largest tail writers leave (their compaction points are 1/64 of the manifest
        # apart): synthetic lines appended as write_run appends them, the index left as it is.
        manifest = big / "_manifest.jsonl"
        tail_bytes = manifest.stat().st_size // 64
        with open(manifest, "ab") as handle:
            written, i = 0, args.big
            while written < tail_bytes:
                line = encode_entry(synthetic_entry(i))
                handle.write(line)
                written, i = written + len(line), i + 1
        ls_ms, import_ms = ls_and_import_ms(big)
        print(
            f"{ls_line} and {i - args.big:,} more ({written / 2**20:.1f} MiB) not yet in the index: "
            f"{ls_ms:.0f} ms (import pyarrow {import_ms:.0f} ms)"
        )
        start = time.perf_counter()
        compact_index(big)
        print(
            f"compact_index folding them in: {time.perf_counter() - start:.2f} s "
            "(what every pytest session paid at its end before sessions left this to the writers)"
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
