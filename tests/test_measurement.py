"""How ``measure()`` measures: until stable by default, a fixed count on request; what each
run records about it; tail percentiles with their evidence, and a gate that will not compare
a p99 from too few calls."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import pandas  # noqa: F401  (loaded before pytester runs: numpy cannot be imported twice)
import pyarrow.compute
import pyarrow.parquet  # noqa: F401
import pytest

import neurolens.storage.index.arrow_backend
import neurolens.storage.index.parquet  # noqa: F401
from neurolens.analysis.stats import percentile_upper_bound_rank
from neurolens.sources import query
from neurolens.storage.store import write_run
from pytest_neurolens.measurement import tail_bounds
from pytest_neurolens.timing import MAX_SAMPLES, MIN_WINDOW_CALLS, Budget, time_calls
from tests.factories import Cli, make_run

MARKED = """
import time
import pytest

pytestmark = pytest.mark.neurolens(model="tiny", backend="cpu", precision="fp32", batch_size=1)
"""


def run(tester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return tester.runpytest("-W", "error", "-p", "no:cacheprovider", "-p", "no:benchmark", *args)


def documents(tester: pytest.Pytester, store: str = "runs") -> list[dict[str, Any]]:
    root = tester.path / store
    return [json.loads((root / r["run_json"]).read_text()) for r in query(root, include_failed=True)]


# --- the timing rule, directly -------------------------------------------------------


def test_a_steady_call_is_measured_until_stable_within_the_budget() -> None:
    # a loose stability, so that a busy test machine cannot make it flaky
    timed = time_calls(lambda: sum(range(100)), Budget(min_time_s=0.05, max_time_s=2.0, stability=0.5))
    assert timed.calibrated and timed.stable
    assert timed.stability is not None and timed.stability <= 0.5
    assert 3 * MIN_WINDOW_CALLS <= len(timed.samples_ns) <= MAX_SAMPLES
    assert timed.timed_calls >= len(timed.samples_ns)  # a subsample when more were timed
    assert timed.timed_s >= 0.05  # judged over min_time, however short the call
    assert timed.warmup_calls >= 3


def test_a_drifting_call_stops_at_the_maximum_and_is_unstable() -> None:
    started: list[float] = []

    def slower_and_slower() -> None:
        """50 us, growing e-fold every 50 ms: every window is slower than the last."""
        now = time.perf_counter()
        started[:] = started or [now]
        end = now + 5e-5 * math.exp((now - started[0]) / 0.05)
        while time.perf_counter() < end:
            pass

    timed = time_calls(slower_and_slower, Budget(min_time_s=0.02, max_time_s=0.3))
    assert timed.calibrated and not timed.stable
    assert timed.stability is not None and timed.stability > 0.05
    assert timed.timed_s < 0.6  # the maximum held (the timed part of it)


def test_a_fixed_count_times_exactly_that_many_calls() -> None:
    timed = time_calls(lambda: None, Budget(warmup=2, iterations=7))
    assert (len(timed.samples_ns), timed.warmup_calls, timed.calibrated) == (7, 2, False)
    assert timed.stability is not None  # its thirds compared


def test_a_tail_is_bounded_only_from_enough_calls() -> None:
    few = tail_bounds([float(v) for v in range(100)])
    assert few["latency_p99_upper_ms"] is None  # 100 calls cannot bound a p99
    assert few["latency_p90_upper_ms"] is not None and few["latency_p90_upper_ms"] > 90
    many = [float(v) for v in range(1000)]
    rank = percentile_upper_bound_rank(1000, 0.99)
    assert rank is not None and tail_bounds(many)["latency_p99_upper_ms"] == many[rank - 1]


# --- through pytest --------------------------------------------------------------------


def test_measure_without_iterations_records_how_it_measured(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        MARKED
        + """
def test_calibrated(neurolens):
    result = neurolens.measure(time.sleep, 0.0002)
    assert result.count >= 15

def test_fixed(neurolens):
    neurolens.measure(time.sleep, 0.0002, warmup=1, iterations=9)
"""
    )
    result = run(pytester, "--neurolens-store=runs", "--neurolens-min-time=0.05", "--neurolens-max-time=2")
    result.assert_outcomes(passed=2)
    by_test = {d["test"]["nodeid"].rpartition("::")[2]: d["metrics"] for d in documents(pytester)}
    calibrated, fixed = by_test["test_calibrated"], by_test["test_fixed"]
    assert calibrated["calibrated"] is True and fixed["calibrated"] is False
    assert calibrated["latency_samples"] == calibrated["iterations"] >= 15
    assert calibrated["measured_s"] >= 0.05 and calibrated["stability_limit_pct"] == 5
    assert isinstance(calibrated["stable"], bool) and math.isfinite(calibrated["stability_pct"])
    assert (fixed["iterations"], fixed["warmup"], fixed["latency_samples"]) == (9, 1, 9)
    assert fixed["latency_p99_upper_ms"] is None  # nine calls bound no p99


def test_an_unstable_measurement_is_named_in_the_summary(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        MARKED
        + """
import math
STARTED = []

def drifting():
    # 50 us, growing e-fold every 50 ms: every window is slower than the last
    now = time.perf_counter()
    STARTED[:] = STARTED or [now]
    end = now + 5e-5 * math.exp((now - STARTED[0]) / 0.05)
    while time.perf_counter() < end:
        pass

def test_drifts(neurolens):
    neurolens.measure(drifting, max_time=0.2)

def test_steady(neurolens):
    neurolens.measure(time.sleep, 0.0002)
"""
    )
    result = run(pytester, "--neurolens-store=runs", "--neurolens-min-time=0.05")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(
        ["unstable: test_an_unstable_measurement_is_named_in_the_summary.py::test_drifts (windows *% apart;*"]
    )
    assert "::test_steady (" not in result.stdout.str()
    stable = {d["test"]["nodeid"].rpartition("::")[2]: d["metrics"]["stable"] for d in documents(pytester)}
    assert stable["test_drifts"] is False


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--neurolens-min-time=0"], "--neurolens-min-time must be in (0, 3600]"),
        (["--neurolens-min-time=3", "--neurolens-max-time=1"], "--neurolens-min-time (3) is above"),
        (["--neurolens-stability=lots"], "--neurolens-stability expects a number"),
        (["--neurolens-stability=150%"], "--neurolens-stability must be in (0, 100]"),
    ],
)
def test_bad_budgets_are_usage_errors(pytester: pytest.Pytester, args: list[str], message: str) -> None:
    pytester.makepyfile(MARKED + "\ndef test_nothing():\n    pass\n")
    result = run(pytester, *args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert message in result.stderr.str()


def test_bad_keywords_name_themselves(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        MARKED
        + """
def test_bad(neurolens):
    with pytest.raises(ValueError, match="min_time must be > 0 and at most max_time"):
        neurolens.measure(time.sleep, 0, min_time=2, max_time=1)
    with pytest.raises(TypeError, match="stability must be a number"):
        neurolens.measure(time.sleep, 0, stability="5%")
"""
    )
    run(pytester).assert_outcomes(passed=1)


# --- tails in the gate --------------------------------------------------------------------


def tail_run(branch: str, session: str, p99: float, calls: int) -> dict[str, Any]:
    return make_run(
        session_id=session,
        tags={"branch": branch},
        metrics={"total_latency_ms": p99 / 2, "gpu_utilization": None, "latency_p99_ms": p99,
                 "latency_samples": calls},
    )  # fmt: skip


def compare_args(root: Path) -> tuple[str, ...]:
    return ("compare", "--root", str(root), "--baseline-tag", "branch=main", "--candidate-tag", "branch=pr")


def test_compare_p99_of_runs_too_small_to_bound_it_says_so_and_fails(tmp_path: Path, cli: Cli) -> None:
    write_run(tmp_path, tail_run("main", "a", 2.0, 20))
    write_run(tmp_path, tail_run("pr", "b", 9.0, 20))
    args = compare_args(tmp_path)
    status, out = cli(*args, "--metric", "p99", "--fail-above", "5%")
    assert status == 3  # nothing was compared: never a pass by mistake
    assert "too few samples" in out
    assert (
        "latency_p99_ms needs 459 timed calls a run to be bounded at 99%; these runs have as few as 20" in out
    )
    status, out = cli(*args, "--metric", "p99", "--fail-above", "5%", "--json")
    (group,) = json.loads(out)["groups"]
    assert group["verdict"] == "insufficient" and group["p_value"] is None
    # the median of the same runs compares
    assert cli(*args, "--fail-above", "5%")[0] == 1


def test_a_p99_from_enough_calls_is_compared_and_small_runs_are_left_out(tmp_path: Path, cli: Cli) -> None:
    write_run(tmp_path, tail_run("main", "a", 2.0, 500))
    write_run(tmp_path, tail_run("pr", "b", 9.0, 500))
    write_run(tmp_path, tail_run("pr", "c", 1.0, 30))  # too small: left out, with a warning
    args = compare_args(tmp_path)
    status, out = cli(*args, "--metric", "p99", "--fail-above", "5%", "--json")
    data = json.loads(out)
    assert status == 1 and data["groups"][0]["verdict"] == "regressed"
    assert data["groups"][0]["candidate"] == 9.0
    assert any("1 run(s) left out, fewer than 459 timed calls" in w for w in data["warnings"])
