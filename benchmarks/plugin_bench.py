#!/usr/bin/env python3
"""Plugin overhead: a suite of N small tests with the plugin off, loaded-but-unused, and recording.

    python benchmarks/plugin_bench.py [--tests 200] [--repeat 5] [--history 1000000] [--other-code DIR]

Each configuration runs ``pytest`` in a fresh process; a round runs every configuration
once, and each figure is the median over --repeat rounds, so a machine whose speed drifts
during the run skews every configuration alike. The extra time per recorded test is
(configuration - plugin off) / N. Recording goes into a new store (a CI job's first
session), into a store that already holds --history runs (synthesised and indexed first,
as store_bench does) and into a store on tmpfs (no disk syncs). ``--other-code DIR`` times
the recording configurations with another checkout too (``git worktree add DIR REV``), in
the same rounds: old against new on the same machine at the same time.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
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


@dataclass
class Config:
    """One way of running a suite; timed once per round, the rounds interleaved."""

    label: str
    args: list[str]
    before: Callable[[], None] | None = None
    code: Path | None = None  # another checkout's neurolens, put first on the path
    times: list[float] = field(default_factory=list)

    def run_once(self, cwd: Path) -> None:
        if self.before is not None:
            self.before()
        env = dict(os.environ)
        if self.code is not None:
            env["PYTHONPATH"] = os.pathsep.join([str(self.code), env.get("PYTHONPATH", "")]).rstrip(
                os.pathsep
            )
        start = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-m", "pytest", *COMMON, *self.args],
            capture_output=True,
            text=True,
            env=env,
            cwd=cwd,
        )
        self.times.append(time.perf_counter() - start)
        if done.returncode != 0:
            raise SystemExit(f"{self.label}: {done.stdout}{done.stderr}")

    @property
    def median(self) -> float:
        return statistics.median(self.times)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tests", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--history", type=int, default=1_000_000, help="runs already in the store (0: none)")
    parser.add_argument(
        "--other-code",
        type=Path,
        default=None,
        metavar="DIR",
        help="also record with the neurolens checked out in DIR (e.g. a git worktree of an older commit)",
    )
    args = parser.parse_args()
    n = args.tests
    work = Path(tempfile.mkdtemp(prefix="neurolens-plugin-bench-"))
    plain = suite(work / "plain", PLAIN, n)
    recorded = suite(work / "recorded", RECORDED, n)
    measured = suite(work / "measured", MEASURED, n)
    memory = (
        Path(tempfile.mkdtemp(prefix="neurolens-plugin-bench-", dir="/dev/shm"))
        if Path("/dev/shm").is_dir()
        else None
    )

    def fresh(store: Path) -> Callable[[], None]:
        return lambda: shutil.rmtree(store, ignore_errors=True)

    off = Config("plugin off (-p no:neurolens), plain tests", [str(plain), "-p", "no:neurolens"])
    configs = [
        off,
        Config("plugin loaded, no store, plain tests", [str(plain)]),
        Config("plugin on, no store, record() in every test", [str(recorded)]),
    ]
    codes: list[tuple[str, Path | None]] = [("", None)]
    if args.other_code is not None:
        codes.append((f" [code in {args.other_code}]", args.other_code.resolve()))
    history = None
    if args.history:
        start = time.perf_counter()
        history = make_store(work / "history", args.history)
        print(f"made a store of {args.history:,} runs in {time.perf_counter() - start:.0f} s")
    for suffix, code in codes:
        store = work / f"new{len(configs)}"
        configs.append(
            Config(
                f"record() into a new store{suffix}",
                [str(recorded), f"--neurolens-store={store}"],
                fresh(store),
                code,
            )
        )
        if history is not None:
            configs.append(
                Config(
                    f"record() into the {args.history:,}-run store{suffix}",
                    [str(recorded), f"--neurolens-store={history}"],
                    None,
                    code,
                )
            )
        if memory is not None:
            store = memory / f"s{len(configs)}"
            configs.append(
                Config(
                    f"record() into a store on tmpfs, no disk syncs{suffix}",
                    [str(recorded), f"--neurolens-store={store}"],
                    None,
                    code,
                )
            )
    store = work / "measured_store"
    configs.append(
        Config("measure() x10 into a new store", [str(measured), f"--neurolens-store={store}"], fresh(store))
    )
    os.sync()  # the store just made would otherwise be written back during the timed runs
    for _ in range(args.repeat):
        for config in configs:
            config.run_once(work)  # not in a checkout: `-m` puts the working folder first on the path
    print(
        f"{n} tests, python {sys.version.split()[0]}; "
        f"median of {args.repeat} rounds, each running every configuration once"
    )
    for config in configs:
        extra = (config.median - off.median) / n * 1000
        spread = f"{min(config.times):.2f}-{max(config.times):.2f} s"
        print(
            f"{config.label:<60} {config.median:6.3f} s ({spread})  {extra:6.2f} ms per test over plugin off"
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
    shutil.rmtree(work, ignore_errors=True)
    if memory is not None:
        shutil.rmtree(memory, ignore_errors=True)


if __name__ == "__main__":
    main()
