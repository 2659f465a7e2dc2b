#!/usr/bin/env python3
"""Plugin overhead: a suite of N small tests with the plugin off, loaded-but-unused, and recording.

    python benchmarks/plugin_bench.py [--tests 200] [--repeat 3] [--history 1000000]

Each configuration runs ``pytest`` in a fresh process (median wall time of --repeat runs).
The extra time per recorded test is (recording - off) / N; every number is a wall time
on this machine, compared only with the other configurations measured in the same run.
Recording goes into a new store (a CI job's first session) and into a store that already
holds --history runs (synthesised and indexed first, as store_bench does).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from store_bench import BareFileOps, make_store  # type: ignore[import-not-found]  # run as a script: this folder is on sys.path

PLAIN = """
def test_{i}():
    sum(range(100))
"""

RECORDED = """
@pytest.mark.neurolens(model="m", backend="cpu", precision="fp32", batch_size=1)
def test_{i}(neurolens):
    neurolens.record(total_latency_ms=float(sum(range(100)) % 7))
"""

MEASURED = """
@pytest.mark.neurolens(model="m", backend="cpu", precision="fp32", batch_size=1)
def test_{i}(neurolens):
    neurolens.measure(sum, range(100), warmup=0, iterations=10)
"""

COMMON = ["-q", "-p", "no:cacheprovider", "-p", "no:benchmark", "-p", "no:hypothesispytest", "-p", "no:xdist"]


def suite(folder: Path, template: str, tests: int) -> Path:
    folder.mkdir(parents=True)
    body = "import pytest\n" + "".join(template.format(i=i) for i in range(tests))
    (folder / "test_suite.py").write_text(body)
    return folder


def wall(args: list[str], repeat: int, before: object = None) -> float:
    times = []
    for _ in range(repeat):
        if callable(before):
            before()
        start = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-m", "pytest", *COMMON, *args], capture_output=True, text=True
        )
        times.append(time.perf_counter() - start)
        if done.returncode != 0:
            raise SystemExit(done.stdout + done.stderr)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tests", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--history", type=int, default=1_000_000, help="runs already in the store (0: skip)")
    args = parser.parse_args()
    n = args.tests
    work = Path(tempfile.mkdtemp(prefix="neurolens-plugin-bench-"))
    plain = suite(work / "plain", PLAIN, n)
    recorded = suite(work / "recorded", RECORDED, n)
    measured = suite(work / "measured", MEASURED, n)
    store = work / "runs_store"

    def fresh_store() -> None:
        import shutil

        shutil.rmtree(store, ignore_errors=True)

    off = wall([str(plain), "-p", "no:neurolens"], args.repeat)
    loaded = wall([str(plain)], args.repeat)
    unstored = wall([str(recorded)], args.repeat)
    on = wall([str(recorded), f"--neurolens-store={store}"], args.repeat, fresh_store)
    on_measure = wall([str(measured), f"--neurolens-store={store}"], args.repeat, fresh_store)
    print(f"{n} tests, median of {args.repeat} runs each, python {sys.version.split()[0]}")
    print(f"plugin off (-p no:neurolens), plain tests:      {off:.3f} s")
    print(f"plugin loaded, no store, plain tests:          {loaded:.3f} s  ({loaded / off:.2f}x off)")
    print(f"plugin on, no store, record() in every test:   {unstored:.3f} s  ({unstored / off:.2f}x off)")
    print(f"plugin on, store set, record() in every test:  {on:.3f} s  ({on / off:.2f}x off)")
    print(f"plugin on, store set, measure() x10 per test:  {on_measure:.3f} s  ({on_measure / off:.2f}x off)")
    print(
        f"extra wall time per recorded test: {(on - off) / n * 1000:.2f} ms "
        f"(of which the run store write and snapshot: {(on - unstored) / n * 1000:.2f} ms)"
    )
    if args.history:
        start = time.perf_counter()
        history = make_store(work / "history", args.history)
        made = time.perf_counter() - start
        os.sync()  # its writeback would otherwise slow the timed runs' syncs
        with_history = wall([str(recorded), f"--neurolens-store={history}"], args.repeat)
        print(
            f"plugin on, store holding {args.history:,} runs (made in {made:.0f} s), record(): "
            f"{with_history:.3f} s: {(with_history - off) / n * 1000:.2f} ms extra per recorded test"
        )
    memory = Path("/dev/shm")  # tmpfs: a sync costs nothing, so what is left is the plugin's own
    if memory.is_dir():
        memory_store = Path(tempfile.mkdtemp(prefix="neurolens-plugin-bench-", dir=memory))
        try:
            in_memory = wall([str(recorded), f"--neurolens-store={memory_store / 's'}"], args.repeat)
        finally:
            import shutil

            shutil.rmtree(memory_store, ignore_errors=True)
        print(
            f"plugin on, store on tmpfs ({memory}), record():  {in_memory:.3f} s: "
            f"{(in_memory - off) / n * 1000:.2f} ms extra per recorded test without the disk's syncs"
        )
    bare = BareFileOps(work / "bare")
    start = time.perf_counter()
    for _ in range(n):
        bare.write()
    floor = (time.perf_counter() - start) / n * 1000
    print(
        f"baseline, a durable write's file operations done bare (2 files, folder, line), "
        f"{n} times right after: {floor:.2f} ms each"
    )


if __name__ == "__main__":
    main()
