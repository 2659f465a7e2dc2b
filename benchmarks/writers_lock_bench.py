#!/usr/bin/env python3
"""What the writers lock (``_writers.lock``, held shared from a run's first file to its
manifest line, so ``verify --fix`` never takes a live writer's files) costs ``write_run``.

    python benchmarks/writers_lock_bench.py [--writes 200] [--rounds 5] [--dir /dev/shm]

Rounds alternate between ``write_run`` as it is and the same calls with the lock replaced
by nothing, in this process, on the same file system (tmpfs by default, where no fsync
hides the difference); prints the median per write of each and their ratio.
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script: the repository

import neurolens.storage.store as store

RUN: dict[str, Any] = {"model": "m", "backend": "b", "precision": "p", "batch_size": 1,
                       "metrics": {"total_latency_ms": 1.0}, "tags": {"bench": "lock"}}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--writes", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--dir", default="/dev/shm" if Path("/dev/shm").is_dir() else None)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="writers_lock_bench_", dir=args.dir))
    namespace = vars(store)  # write_run looks the lock up here, at each call
    locked = namespace["writing"]
    kinds = {"with the lock": locked, "without": lambda root: contextlib.nullcontext(True)}
    spent: dict[str, list[float]] = {name: [] for name in kinds}
    try:
        for number in range(args.rounds):
            for name, lock in kinds.items():
                namespace["writing"] = lock
                root = work / f"{number}-{len(spent[name])}-{name.replace(' ', '_')}"
                store.write_run(root, RUN)  # the store exists before the clock starts
                start = time.perf_counter()
                for i in range(args.writes):
                    store.write_run(root, {**RUN, "seq_len": i})
                spent[name].append((time.perf_counter() - start) * 1000 / args.writes)
    finally:
        namespace["writing"] = locked
        shutil.rmtree(work, ignore_errors=True)
    medians = {name: statistics.median(values) for name, values in spent.items()}
    for name, value in medians.items():
        rounds = f"median of {args.rounds} rounds of {args.writes}"
        print(f"write_run {name}: {value:.3f} ms ({rounds}, {work.parent})")
    print(f"ratio: {medians['with the lock'] / medians['without']:.2f}x")


if __name__ == "__main__":
    main()
