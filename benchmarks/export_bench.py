#!/usr/bin/env python3
"""``neurolens export``: time and peak memory against the store's size.

    python benchmarks/export_bench.py [--runs 20000 200000]

Stores of real run files (``merge_verify_bench.build_store``) of each size; each export in a
fresh process (its own peak RSS), to Parquet and to JSON lines. Bounded memory means the
peak grows with the index rows the filters select (a few hundred bytes a run), not with the
documents read: the ratio of peaks against the ratio of sizes says which.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script: the repository

from benchmarks.merge_verify_bench import build_store
from benchmarks.peak import measured


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, nargs="+", default=[20_000, 200_000])
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="export_bench_"))
    try:
        peaks: dict[tuple[int, str], float] = {}
        for runs in args.runs:
            store = build_store(work / f"store{runs}", runs, "exp")
            for suffix in (".parquet", ".jsonl"):
                out = work / f"out{runs}{suffix}"
                wall, peak = measured("export", "--root", str(store), "--out", str(out))
                peaks[runs, suffix] = peak
                size = out.stat().st_size / 2**20
                print(
                    f"export of {runs:,} runs to {suffix}: {wall:.2f} s, {peak:.0f} MiB peak, "
                    f"{size:.1f} MiB written"
                )
        smallest, largest = min(args.runs), max(args.runs)
        for suffix in (".parquet", ".jsonl"):
            ratio = peaks[largest, suffix] / peaks[smallest, suffix]
            print(f"{suffix}: {largest // smallest}x the runs, {ratio:.2f}x the peak memory")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
