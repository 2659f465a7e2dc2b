"""Metric names: the aliases ``compare --metric`` takes, and which way is better."""

from __future__ import annotations

from collections.abc import Sequence

from neurolens.analysis.stats import samples_to_bound
from neurolens.errors import NeurolensError

DEFAULT_METRIC = "total_latency_ms"
METRIC_ALIASES = {
    "latency": "total_latency_ms",
    "mean": "latency_mean_ms",
    "p50": "latency_p50_ms",
    "p90": "latency_p90_ms",
    "p95": "latency_p95_ms",
    "p99": "latency_p99_ms",
    "min": "latency_min_ms",
    "max": "latency_max_ms",
    "throughput": "throughput_per_s",
}
# A tail percentile is compared only from runs with enough timed calls that their largest
# value bounds it with 99% confidence (44 calls for p90, 90 for p95, 459 for p99): from
# fewer, a run's p99 is one of its few largest values, noise rather than a tail.
TAIL_CONFIDENCE = 0.99
TAIL_MINIMUM = {f"latency_p{q}_ms": samples_to_bound(q / 100, TAIL_CONFIDENCE) for q in (90, 95, 99)}

# Metrics the index holds as columns (the rest are read from run documents)
METRIC_COLUMNS = ("total_latency_ms", "gpu_utilization")


class UnknownMetricError(NeurolensError, ValueError):
    """No compared run carries the metric; ``known`` lists the metrics they do carry."""

    def __init__(self, metric: str, known: Sequence[str]) -> None:
        self.metric, self.known = metric, list(known)
        super().__init__(
            f"no run carries the metric {metric!r}; the runs carry: {', '.join(known) or 'none'}"
        )


def resolve_metric(name: str) -> str:
    return METRIC_ALIASES.get(name, name)


def higher_is_better(metric: str) -> bool:
    return "throughput" in metric or metric.endswith("_per_s")
