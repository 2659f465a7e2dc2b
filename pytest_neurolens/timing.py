"""The timing loop of ``measure``: warm-up, then timed calls, either a fixed count or until
the measurement is stable.

The rule (``calibrated``), in the spirit of Triton perf_analyzer and
``torch.utils.benchmark``'s ``adaptive_autorange``:

1. Warm up: at least ``warmup`` calls and at least a fifth of ``min_time`` (untimed).
2. Time calls in windows: a window ends after ``MIN_WINDOW_CALLS`` calls once it has lasted
   a fifth of ``min_time``, or once ``max_time`` of wall time has passed (calls slower than
   the budget: windows of one). Windows are measured in time, not calls, so that a
   microsecond call is judged over as long as a millisecond one.
3. After each window, the stability figure is max/min - 1 of the medians of the last three
   windows. Stop as soon as there are three windows, the timed calls have lasted
   ``min_time`` and the figure is within ``stability``: the measurement is ``stable``. Stop
   past ``max_time`` of wall time with three windows, or at ``MAX_TIMED_CALLS``, in any
   case: then it is stable only if the figure is within ``stability``. At least three calls
   are timed, whatever they cost.
4. A run stores at most ``MAX_SAMPLES`` latencies: when more calls were timed, an evenly
   spaced subsample of them (``iterations`` counts every timed call, ``latency_samples``
   the stored ones the percentiles come from).

A fixed count (``iterations=``) times exactly that many calls after ``warmup`` calls; its
stability figure compares the medians of its three thirds. Every run records how it was
measured (calls, warm-up, the figure, ``stable``), so an unstable one can be named.
"""

from __future__ import annotations

import statistics
import time
from array import array
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

DEFAULT_WARMUP = 3
DEFAULT_MIN_TIME_S = 0.5
DEFAULT_MAX_TIME_S = 5.0
DEFAULT_STABILITY = 0.05  # the last three windows' medians within 5% of each other
MIN_WINDOW_CALLS = 5
MAX_TIMED_CALLS = 5_000_000  # bounds memory while timing (8 bytes a call)
MAX_SAMPLES = 10_000  # bounds a run document: the per-call latencies are stored


@dataclass(frozen=True)
class Budget:
    """How long to measure: ``iterations`` fixes the count; otherwise the rule above."""

    warmup: int = DEFAULT_WARMUP
    iterations: int | None = None
    min_time_s: float = DEFAULT_MIN_TIME_S
    max_time_s: float = DEFAULT_MAX_TIME_S
    stability: float = DEFAULT_STABILITY

    def __post_init__(self) -> None:
        if not 0 < self.min_time_s <= self.max_time_s:
            raise ValueError(
                f"min_time must be > 0 and at most max_time, got {self.min_time_s} and {self.max_time_s}"
            )
        if not 0 < self.stability < 1:
            raise ValueError(f"stability must be a fraction between 0 and 1, got {self.stability}")


@dataclass
class Timed:
    """The calls' latencies and how they were measured."""

    samples_ns: list[int] = field(default_factory=list)  # at most MAX_SAMPLES, in call order
    timed_calls: int = 0
    warmup_calls: int = 0
    stability: float | None = None  # max/min - 1 of the last three windows' medians
    stable: bool = False
    timed_s: float = 0.0
    calibrated: bool = False

    def metrics(self, limit: float) -> dict[str, Any]:
        """What a run records about its measurement (``limit``: the stability asked for)."""
        return {
            "iterations": self.timed_calls,
            "warmup": self.warmup_calls,
            "calibrated": self.calibrated,
            "stability_pct": None if self.stability is None else self.stability * 100,
            "stability_limit_pct": limit * 100,
            "stable": self.stable,
            "measured_s": self.timed_s,
        }


def time_calls(call: Callable[[], Any], budget: Budget, sync: Callable[[], Any] | None = None) -> Timed:
    """Warm up and time ``call`` by ``budget``'s rule; ``sync`` runs before each clock read."""
    clock = time.perf_counter_ns
    out = Timed()
    started = clock()
    warmup_ns = 0 if budget.iterations is not None else budget.min_time_s / 5 * 1e9
    while out.warmup_calls < budget.warmup or clock() - started < warmup_ns:
        call()
        out.warmup_calls += 1

    timed: array[int] = array("q")

    def timed_call() -> None:
        if sync is not None:
            sync()
        start = clock()
        call()
        if sync is not None:
            sync()
        timed.append(clock() - start)

    if budget.iterations is not None:
        for _ in range(budget.iterations):
            timed_call()
        out.stability = _spread([_median(part) for part in _thirds(timed)])
    else:
        out.calibrated = True
        _calibrated(timed_call, timed, out, budget, clock)
    out.timed_calls = len(timed)
    out.timed_s = sum(timed) / 1e9
    out.stable = out.stability is not None and out.stability <= budget.stability
    step = -(-len(timed) // MAX_SAMPLES)  # evenly spaced, at most MAX_SAMPLES
    out.samples_ns = timed[::step].tolist()
    return out


def _calibrated(
    timed_call: Callable[[], None], timed: array[int], out: Timed, budget: Budget, clock: Callable[[], int]
) -> None:
    window_ns = budget.min_time_s / 5 * 1e9
    min_ns, max_ns = budget.min_time_s * 1e9, budget.max_time_s * 1e9
    started = clock()
    medians: list[float] = []
    timed_ns = 0
    while True:
        first = len(timed)
        window_started = timed_ns
        while True:
            timed_call()
            timed_ns += timed[-1]
            calls = len(timed) - first
            long_enough = calls >= MIN_WINDOW_CALLS and timed_ns - window_started >= window_ns
            out_of_time = clock() - started >= max_ns  # slow calls: windows of fewer calls
            full = len(timed) >= MAX_TIMED_CALLS
            if long_enough or out_of_time or full:
                break
        medians.append(_median(timed[first:]))
        out.stability = _spread(medians[-3:])
        steady = out.stability is not None and out.stability <= budget.stability
        if timed_ns >= min_ns and steady:
            return
        if (out_of_time and len(medians) >= 3) or full:
            return


def _thirds(samples: Sequence[int]) -> list[Sequence[int]]:
    if len(samples) < 3:
        return []
    size = len(samples) // 3
    return [samples[:size], samples[size : 2 * size], samples[2 * size :]]


def _median(values: Sequence[int]) -> float:
    return float(statistics.median(values))


def _spread(medians: Sequence[float]) -> float | None:
    """max/min - 1 (None without three values, or when only the smallest is zero)."""
    if len(medians) < 3:
        return None
    low, high = min(medians), max(medians)
    if low <= 0:
        return 0.0 if high == low else None
    return high / low - 1
