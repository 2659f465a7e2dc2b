#!/usr/bin/env python3
"""How often the gate cries wolf, and how often it catches a real slowdown, on ONNX Runtime.

    python benchmarks/noise_bench.py [--sessions 5] [--slowdown 1.5] [--threshold 5%]

Records the example's ONNX MLP (256 -> HIDDEN -> 16, CPU, one thread, batch 1, 8 and 64)
in ``--sessions`` pytest sessions of the same build ("fast", HIDDEN=1024) and as many of a
slower build ("slow", HIDDEN scaled by ``--slowdown``), interleaved, each a separate
process as CI jobs are. Then it runs the gate (``--fail-above``) under each rule set and
prints, per rule set, the false alarms (groups failed between sessions of the same build)
and the detections (groups failed between the fast build and the slow one). With
``--repeats`` it records one more pair of sessions per build whose measurements are
taken in rounds (``--neurolens-repeats``), so one session a side can be tested.
Needs the ``examples`` extra (onnx, onnxruntime).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from neurolens.analysis.compare import compare
from neurolens.sources import query
from neurolens.storage.index.filters import RunFilter

# The example's model (examples/test_onnx_mlp.py) at the hidden size of the build
TEST_MODULE = """
import os
import numpy as np
import onnxruntime as ort
import pytest

from examples.test_onnx_mlp import FEATURES, build_mlp


@pytest.fixture(scope="module")
def session():
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    model = build_mlp(hidden=int(os.environ["NOISE_BENCH_HIDDEN"]))
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


@pytest.mark.neurolens(model="mlp", backend="onnxrt", precision="fp32")
@pytest.mark.parametrize("batch_size", [1, 8, 64])
def test_mlp(neurolens, session, batch_size):
    x = np.random.default_rng(batch_size).standard_normal((batch_size, FEATURES)).astype(np.float32)
    neurolens.measure(session.run, None, {"input": x}, batch_size=batch_size, warmup=5, iterations=100)
"""


def record(store: Path, work: Path, build: str, hidden: int, number: int, repeats: int = 1) -> str:
    """One pytest session in its own process; returns its session id."""
    repository = str(Path(__file__).resolve().parent.parent)  # for examples.test_onnx_mlp
    env = {**os.environ, "NOISE_BENCH_HIDDEN": str(hidden), "PYTHONPATH": repository}
    env.pop("NEUROLENS_STORE_ROOT", None)
    command = [
        sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:benchmark",
        "-p", "no:xdist", "test_noise_mlp.py", f"--neurolens-store={store}",
        f"--neurolens-tag=build={build}", f"--neurolens-tag=number={number}",
        f"--neurolens-repeats={repeats}",
    ]  # fmt: skip
    subprocess.run(command, cwd=work, env=env, check=True, capture_output=True)
    rows = query(store, tags={"build": build, "number": str(number)})
    return str(rows[0]["session_id"])


def failed_groups(
    store: Path, baseline: RunFilter, candidate: RunFilter, threshold: str, **rules: Any
) -> int:
    """How many groups the gate fails."""
    result = compare(store, baseline, candidate, threshold=threshold, **rules)
    return sum(g.fails for g in result.groups)


def pair(store: Path, base: str, cand: str, threshold: str, **rules: Any) -> int:
    """The gate between two sessions."""
    return failed_groups(store, RunFilter(session_id=base), RunFilter(session_id=cand), threshold, **rules)


def sides(store: Path, work: Path, base: list[str], cand: list[str], threshold: str, **rules: Any) -> int:
    """The gate between several sessions a side: their runs copied to a new store, tagged
    side=base / side=cand (a filter selects one session, or one tag)."""
    from neurolens.storage.store import write_run

    target = Path(tempfile.mkdtemp(dir=work, prefix="sides-"))
    for side, sessions in (("base", base), ("cand", cand)):
        for session_id in sessions:
            for row in query(store, session_id=session_id):
                document = json.loads((store / row["run_json"]).read_text())
                document["tags"] = {**document["tags"], "side": side}
                write_run(target, document)
    baseline, candidate = RunFilter(tags={"side": "base"}), RunFilter(tags={"side": "cand"})
    return failed_groups(target, baseline, candidate, threshold, **rules)


def trial(work: Path, args: argparse.Namespace) -> list[tuple[str, int, int, int, int]]:
    """Record the sessions of one trial into a fresh store; the gate's counts per rule set."""
    store = Path(tempfile.mkdtemp(dir=work, prefix="runs-"))
    hidden = {"fast": 1024, "slow": round(1024 * args.slowdown)}
    sessions: dict[str, list[str]] = {"fast": [], "slow": []}
    started = time.perf_counter()
    for number in range(args.sessions):  # interleaved, so drift hits both builds alike
        for build in ("fast", "slow"):
            sessions[build].append(record(store, work, build, hidden[build], number))
    elapsed = time.perf_counter() - started
    fast, slow = sessions["fast"], sessions["slow"]
    groups = 3
    t = args.threshold
    ratios = []
    for batch in (1, 8, 64):
        medians = {
            build: sorted(
                r["total_latency_ms"]
                for r in query(store, tags={"build": build}, model="mlp")
                if r["batch_size"] == batch
            )
            for build in ("fast", "slow")
        }
        spread = (medians["fast"][-1] - medians["fast"][0]) / medians["fast"][0] * 100
        step = (medians["slow"][len(slow) // 2] / medians["fast"][len(fast) // 2] - 1) * 100
        ratios.append(
            f"batch {batch}: fast p50 {medians['fast'][0]:.4f}-{medians['fast'][-1]:.4f} ms "
            f"(spread {spread:.0f}%), slow build {step:+.0f}%"
        )
    print(
        f"trial: {2 * args.sessions} sessions (hidden {hidden['fast']} vs {hidden['slow']}) "
        f"in {elapsed:.1f} s; " + "; ".join(ratios)
    )
    rows = []
    same_pairs = list(itertools.permutations(fast, 2))
    cross_pairs = list(itertools.product(fast, slow))
    for name, rules in (
        ("one session a side, threshold only", {"noise_floor": False}),
        ("one session a side, --require-significance", {"require_significance": True}),
    ):
        alarms = sum(pair(store, a, b, t, **rules) for a, b in same_pairs)
        found = sum(pair(store, a, b, t, **rules) for a, b in cross_pairs)
        rows.append((name, alarms, len(same_pairs) * groups, found, len(cross_pairs) * groups))
    # history: the other fast sessions as baseline, one held-out session as candidate
    alarms = sum(sides(store, work, [s for s in fast if s != held], [held], t) for held in fast)
    found = sum(sides(store, work, fast, [candidate], t) for candidate in slow)
    name = f"{len(fast) - 1} baseline sessions vs 1, noise floor (default)"
    rows.append((name, alarms, len(fast) * groups, found, len(slow) * groups))
    half = max(2, len(fast) // 2)
    strict = {"require_significance": True}
    alarms = sides(store, work, fast[:half], fast[half:], t, **strict)
    found = sides(store, work, fast, slow, t, **strict)
    name = f"{half} vs {len(fast) - half} / {len(fast)} vs {len(slow)} sessions, --require-significance"
    rows.append((name, alarms, groups, found, groups))
    if args.repeats > 1:
        fast_r = [record(store, work, "fast", hidden["fast"], 100 + i, args.repeats) for i in range(2)]
        slow_r = record(store, work, "slow", hidden["slow"], 200, args.repeats)
        alarms = pair(store, fast_r[0], fast_r[1], t, **strict)
        found = pair(store, fast_r[0], slow_r, t, **strict)
        name = f"one session a side in {args.repeats} rounds, --require-significance"
        rows.append((name, alarms, groups, found, groups))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sessions", type=int, default=5)
    parser.add_argument("--slowdown", type=float, default=1.5, help="the slow build's hidden size ratio")
    parser.add_argument("--threshold", default="5%")
    parser.add_argument("--repeats", type=int, default=5, help="rounds for the repeats rows (0: skip them)")
    parser.add_argument("--trials", type=int, default=3, help="independent trials, counts summed")
    args = parser.parse_args()
    if args.sessions < 4:
        parser.error("--sessions must be at least 4 (the history rows need 3 baseline sessions)")
    work = Path(tempfile.mkdtemp(prefix="neurolens-noise-bench-"))
    try:
        (work / "test_noise_mlp.py").write_text(TEST_MODULE)
        totals: dict[str, list[int]] = {}
        for _ in range(args.trials):
            for name, *counts in trial(work, args):
                totals[name] = [a + b for a, b in zip(totals.get(name, [0, 0, 0, 0]), counts, strict=True)]
        print(f"gate --fail-above {args.threshold}, groups failed, summed over {args.trials} trial(s):")
        width = max(len(name) for name in totals)
        print(f"{'rules':<{width}}  false alarms  detections")
        for name, (alarms, tried, found, chances) in totals.items():
            print(f"{name:<{width}}  {alarms:>5} / {tried:<5}  {found:>4} / {chances}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
