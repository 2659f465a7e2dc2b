"""Latency statistics of one measurement, and what ``neurolens.measure`` returns."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from neurolens.storage.ledger.document import PreparedRun


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default method)."""
    if not sorted_values:
        raise ValueError("no values")
    position = (len(sorted_values) - 1) * q / 100
    low = math.floor(position)
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (position - low)


@dataclass(frozen=True)
class LatencyStats:
    """Per-call latency statistics in milliseconds."""

    mean_ms: float
    p50_ms: float
    p90_ms: float
    p95_ms: float
    p99_ms: float
    min_ms: float
    max_ms: float
    stdev_ms: float
    count: int

    @classmethod
    def from_ms(cls, samples_ms: Sequence[float]) -> LatencyStats:
        ordered = sorted(samples_ms)
        return cls(
            mean_ms=statistics.fmean(ordered),
            p50_ms=percentile(ordered, 50),
            p90_ms=percentile(ordered, 90),
            p95_ms=percentile(ordered, 95),
            p99_ms=percentile(ordered, 99),
            min_ms=ordered[0],
            max_ms=ordered[-1],
            stdev_ms=statistics.stdev(ordered) if len(ordered) > 1 else 0.0,
            count=len(ordered),
        )

    def as_metrics(self) -> dict[str, float]:
        return {
            "latency_mean_ms": self.mean_ms,
            "latency_p50_ms": self.p50_ms,
            "latency_p90_ms": self.p90_ms,
            "latency_p95_ms": self.p95_ms,
            "latency_p99_ms": self.p99_ms,
            "latency_min_ms": self.min_ms,
            "latency_max_ms": self.max_ms,
            "latency_stdev_ms": self.stdev_ms,
        }


def latency_metrics(
    latencies_ms: Sequence[float], batch_size: int, **counts: Any
) -> tuple[LatencyStats, dict[str, Any]]:
    """The statistics of per-call latencies and the run metrics built from them: the one
    place a run's latency metrics are made (the fixture and the pytest-benchmark bridge).
    ``counts`` (iterations, warmup, rounds, ...) are stored beside them."""
    stats = LatencyStats.from_ms(latencies_ms)
    metrics: dict[str, Any] = {
        "total_latency_ms": stats.p50_ms,
        **stats.as_metrics(),
        **tail_bounds(sorted(latencies_ms)),
        "latency_samples": stats.count,
        "throughput_per_s": batch_size * 1000 / stats.mean_ms if stats.mean_ms > 0 else None,
        **counts,
    }
    return stats, metrics


# The tail percentiles bounded from above, and the confidence of the bound.
TAIL_PERCENTILES = (90, 95, 99)
BOUND_CONFIDENCE = 0.99


def tail_bounds(sorted_ms: Sequence[float]) -> dict[str, float | None]:
    """``latency_pNN_upper_ms``: a distribution-free upper bound of each tail percentile at
    99% confidence, an order statistic of the samples (MLPerf LoadGen's early-stopping
    idea); None where the samples are too few for one (fewer than 44 for p90, 90 for p95,
    459 for p99)."""
    from neurolens.analysis.stats import percentile_upper_bound_rank

    bounds: dict[str, float | None] = {}
    for q in TAIL_PERCENTILES:
        rank = percentile_upper_bound_rank(len(sorted_ms), q / 100, BOUND_CONFIDENCE)
        bounds[f"latency_p{q}_upper_ms"] = None if rank is None else sorted_ms[rank - 1]
    return bounds


@dataclass
class Measurement:
    """What one ``measure``/``record`` call produced; ``run`` is the document to be stored."""

    run: dict[str, Any]
    latency: LatencyStats | None = None
    recorded: bool = False  # False when no store is set: measured, not written
    rounds: list[Measurement] = field(default_factory=list)  # measure(repeats=N): each round's run
    # run as record() validated it: written without a second check if nothing changed it since
    prepared: PreparedRun | None = field(default=None, repr=False, compare=False)

    @property
    def run_id(self) -> str | None:
        """The stored run's id; None for the pooled result of several rounds (see ``rounds``)."""
        return None if self.run["run_id"] is None else str(self.run["run_id"])

    @property
    def metrics(self) -> dict[str, Any]:
        metrics: dict[str, Any] = self.run["metrics"]
        return metrics

    @property
    def total_latency_ms(self) -> float:
        return float(self.metrics["total_latency_ms"])

    @property
    def throughput(self) -> float | None:
        """Samples per second: batch_size x calls per second."""
        value = self.metrics.get("throughput_per_s")
        return None if value is None else float(value)

    @property
    def gpu_utilization(self) -> float | None:
        value = self.metrics.get("gpu_utilization")
        return None if value is None else float(value)

    def __getattr__(self, name: str) -> Any:
        # mean_ms, p50_ms, ... straight from the latency statistics
        latency = self.__dict__.get("latency")
        if latency is not None and name in LatencyStats.__dataclass_fields__:
            return getattr(latency, name)
        raise AttributeError(name)
