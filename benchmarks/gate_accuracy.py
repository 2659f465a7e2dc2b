#!/usr/bin/env python3
"""How often the gate fails a same-build run (A/A) and catches a slower build (A/B), on real
models in fresh pytest sessions, once on a quiet machine and once beside a CPU-bound neighbour.

    python benchmarks/gate_accuracy.py [--aa 40] [--ab 15] [--threshold 5%] [--conditions quiet,noisy]

Two model families on ONNX Runtime (CPU, one thread), built here with the ``onnx`` helper:
the example's MLP (256 -> 1024 -> 16) at batch 1, 8 and 64 (tens to hundreds of
microseconds a call) and a small convolutional network (16 -> 64 -> 16 channels, 3x3, on
64x64, a few milliseconds a call). A build's work is scaled by widening the hidden layer
and the middle channels (+10%, +25%, +100%). Each session is a separate ``pytest`` process
with the default calibrated ``measure()``, as CI jobs are.

Per condition: 5 baseline sessions of build A, then ``--aa`` candidate sessions of A and
``--ab`` of each slower build, interleaved so drift hits all builds alike. Each candidate
session runs the pytest gate against the 5 baseline sessions (``--neurolens-compare``,
``--neurolens-fail-above``, ``--neurolens-confirm``), as a CI job would. Printed, per build:
failing gate runs on the first verdict (the session alone, as without confirmation) and
after confirmation (the session's exit status): false alarms for A/A, detections for A/B;
how long confirming took; the slowdown each build really had (median over sessions, per
group); and for A/A every suspected group with what confirmation said. Needs the
``examples`` extra (onnx, onnxruntime).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from neurolens.analysis.compare import compare
from neurolens.sources import query
from neurolens.storage.index.filters import RunFilter

BASELINE_SESSIONS = 5
LEVELS = (1.10, 1.25, 2.00)  # the slower builds' work, as a multiple of build A's

TEST_MODULE = """
import os
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from examples.test_onnx_mlp import FEATURES, build_mlp

SCALE = float(os.environ["GATE_BENCH_SCALE"])


def build_conv(channels):
    rng = np.random.default_rng(0)

    def weight(name, *shape):
        return numpy_helper.from_array((rng.standard_normal(shape) * 0.05).astype(np.float32), name)

    nodes = [
        helper.make_node("Conv", ["input", "w1"], ["h"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["h"], ["h_relu"]),
        helper.make_node("Conv", ["h_relu", "w2"], ["output"], pads=[1, 1, 1, 1]),
    ]
    graph = helper.make_graph(
        nodes, "conv",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 16, 64, 64])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 16, 64, 64])],
        initializer=[weight("w1", channels, 16, 3, 3), weight("w2", 16, channels, 3, 3)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    return model.SerializeToString()


def open_model(model):
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def mlp():
    return open_model(build_mlp(hidden=round(1024 * SCALE)))


@pytest.fixture(scope="module")
def conv():
    return open_model(build_conv(round(64 * SCALE)))


@pytest.mark.neurolens(model="mlp", backend="onnxrt", precision="fp32")
@pytest.mark.parametrize("batch_size", [1, 8, 64])
def test_mlp(neurolens, mlp, batch_size):
    x = np.random.default_rng(batch_size).standard_normal((batch_size, FEATURES)).astype(np.float32)
    neurolens.measure(mlp.run, None, {"input": x}, batch_size=batch_size)


@pytest.mark.neurolens(model="conv", backend="onnxrt", precision="fp32", batch_size=1)
def test_conv(neurolens, conv):
    x = np.random.default_rng(0).standard_normal((1, 16, 64, 64)).astype(np.float32)
    neurolens.measure(conv.run, None, {"input": x})
"""


def record(
    store: Path, work: Path, build: str, scale: float, role: str, number: int, gate: Sequence[str] = ()
) -> tuple[str, float, int, str]:
    """One pytest session in its own process (with ``gate``: the pytest gate, confirmation
    included): its session id, how long it took, its exit status and its output."""
    repository = str(Path(__file__).resolve().parent.parent)  # for examples.test_onnx_mlp
    env = {**os.environ, "GATE_BENCH_SCALE": str(scale), "PYTHONPATH": repository}
    env.pop("NEUROLENS_STORE_ROOT", None)
    command = [
        sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:benchmark",
        "-p", "no:xdist", "-p", "no:randomly", "test_gate_models.py", f"--neurolens-store={store}",
        f"--neurolens-tag=build={build}", f"--neurolens-tag=role={role}", f"--neurolens-tag=number={number}",
        *gate,
    ]  # fmt: skip
    started = time.perf_counter()
    done = subprocess.run(command, cwd=work, env=env, capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - started
    if done.returncode not in (0, 1):
        raise SystemExit(f"session failed (exit {done.returncode}):\n{done.stdout}\n{done.stderr}")
    rows = query(store, tags={"build": build, "number": str(number), "role": role})
    first = min(rows, key=lambda row: row["created_at"])  # the gated session, not its re-runs
    return str(first["session_id"]), elapsed, done.returncode, done.stdout


def neighbour() -> subprocess.Popen[bytes]:
    """A CPU-bound process beside the sessions (one core of the machine kept busy)."""
    # busy until this process is gone: a killed benchmark leaves no neighbour behind
    busy = f"import os\nwhile os.getppid() == {os.getpid()}: pass"
    return subprocess.Popen([sys.executable, "-c", busy])


def condition(work: Path, name: str, args: argparse.Namespace) -> dict[str, Any]:
    store = work / f"runs-{name}"
    gate = ["--neurolens-compare=--tag build=A --tag role=base", f"--neurolens-fail-above={args.threshold}",
            f"--neurolens-confirm={args.confirm}"]  # fmt: skip
    noisy = neighbour() if name == "noisy" else None
    session_times: list[float] = []
    results: dict[str, list[tuple[str, int, str]]] = {"A": [], **{f"x{level:g}": [] for level in LEVELS}}
    try:
        for number in range(BASELINE_SESSIONS):
            session_times.append(record(store, work, "A", 1.0, "base", number)[1])
        for number in range(max(args.aa, args.ab)):
            builds = [("A", 1.0)] if number < args.aa else []
            builds += [(f"x{level:g}", level) for level in LEVELS] if number < args.ab else []
            for build, scale in builds:
                session_id, elapsed, status, output = record(store, work, build, scale, "cand", number, gate)
                results[build].append((session_id, status, output))
                session_times.append(elapsed)
    finally:
        if noisy is not None:
            noisy.kill()
            noisy.wait()
    baseline = RunFilter(tags={"build": "A", "role": "base"})
    out: dict[str, Any] = {"condition": name, "session_s": statistics.median(session_times), "builds": {}}
    for build, sessions in results.items():
        first_failed = 0
        confirm_s: list[float] = []
        suspected: list[str] = []
        for session_id, _, output in sessions:
            # the first verdict, before confirmation: the session's own runs against the baseline
            first_failed += compare(
                store, baseline, RunFilter(session_id=session_id), threshold=args.threshold
            ).failed
            confirm_s += [float(m) for m in re.findall(r"^confirmation: .*, ([0-9.]+) s$", output, re.M)]
            suspected += [line for line in output.splitlines() if ": suspected " in line]
        out["builds"][build] = {
            "gate_runs": len(sessions),
            "first_verdict_failed": first_failed,
            "failed": sum(status == 1 for _, status, _ in sessions),
            "confirmations": len(confirm_s),
            "confirm_s": statistics.median(confirm_s) if confirm_s else None,
            "slowdown_pct": slowdowns(store, build),
            "suspected": suspected,
        }
    return out


def slowdowns(store: Path, build: str) -> dict[str, float]:
    """Per group, the build's median session latency against build A's baseline, in percent."""

    def medians(tags: dict[str, str]) -> dict[str, float]:
        by_group: dict[str, list[float]] = {}
        for row in query(store, tags=tags):
            by_group.setdefault(f"{row['model']} batch {row['batch_size']}", []).append(
                row["total_latency_ms"]
            )
        return {group: statistics.median(values) for group, values in by_group.items()}

    base = medians({"build": "A", "role": "base"})
    cand = medians({"build": build, "role": "cand"})
    return {group: (cand[group] / base[group] - 1) * 100 for group in sorted(base) if group in cand}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--aa", type=int, default=40, help="same-build candidate sessions (gate runs)")
    parser.add_argument("--ab", type=int, default=15, help="candidate sessions of each slower build")
    parser.add_argument("--threshold", default="5%")
    parser.add_argument(
        "--confirm", type=int, default=3, help="--neurolens-confirm for the candidate sessions"
    )
    parser.add_argument("--conditions", default="quiet,noisy")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="neurolens-gate-accuracy-"))
    results = []
    try:
        (work / "test_gate_models.py").write_text(TEST_MODULE)
        for name in args.conditions.split(","):
            started = time.perf_counter()
            results.append(condition(work, name, args))
            results[-1]["wall_s"] = time.perf_counter() - started
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(
        f"gate --fail-above {args.threshold}, "
        f"one candidate session against {BASELINE_SESSIONS} baseline sessions"
    )
    print("condition  build      first verdict  after confirmation  confirming took (median)  slowdown (%)")
    for result in results:
        for build, figures in result["builds"].items():
            kind = "A/A" if build == "A" else f"A/B {build}"
            shown = ", ".join(f"{g} {v:+.0f}" for g, v in figures["slowdown_pct"].items())
            runs = figures["gate_runs"]
            first = f"{figures['first_verdict_failed']:>3} / {runs:<3}"
            final = f"{figures['failed']:>3} / {runs:<3}"
            spent = (
                "-"
                if figures["confirm_s"] is None
                else f"{figures['confirm_s']:.1f} s x {figures['confirmations']}"
            )
            columns = f"{result['condition']:<9}  {kind:<9}  {first}      {final}           {spent:<24}"
            print(f"{columns}  {shown}")
            if build == "A":
                for line in figures["suspected"]:
                    print(f"{'':<13}{line}")
        took = f"a session took {result['session_s']:.1f} s (median, confirmation included)"
        print(f"{result['condition']:<9}  {took}; the condition {result['wall_s'] / 60:.1f} min")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
