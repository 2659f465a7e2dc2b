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


# Which way is better, from the name: rates are higher-is-better, durations, sizes and
# energy lower. "*_rate" is neither (an error rate is lower-is-better); the caller says.
_HIGHER_SUFFIXES = ("_per_s", "_per_sec", "_per_second", "_per_minute", "_per_min")
_HIGHER_PREFIXES = ("tokens_per_", "samples_per_", "images_per_", "requests_per_", "queries_per_",
                    "items_per_", "frames_per_", "sequences_per_")  # fmt: skip
_HIGHER_NAMES = frozenset({"qps", "fps", "tps", "rps", "ips", "throughput"})
_LOWER_SUFFIXES = ("_ms", "_us", "_ns", "_s", "_sec", "_seconds", "_mb", "_mib", "_gb", "_gib",
                   "_bytes", "_j", "_joules", "_w", "_watts")  # fmt: skip
_LOWER_WORDS = ("latency", "memory", "energy", "power", "time")


class UnknownDirectionError(NeurolensError, ValueError):
    """The metric's name does not say which way is better; the message names the fix."""

    def __init__(self, metric: str) -> None:
        self.metric = metric
        super().__init__(
            f"which way is better for {metric!r} cannot be told from its name: "
            "say --higher-is-better or --lower-is-better (higher_better= in Python)"
        )


def higher_is_better(metric: str) -> bool:
    """True for rates (throughput, ``*_per_s``, ``qps``, ``tokens_per_*``, ...), False for
    durations, sizes and energy (``*_ms``, ``latency*``, ``*_bytes``, ...); an
    ``UnknownDirectionError`` for anything else, never a guess."""
    name = metric.lower()
    if "throughput" in name or name in _HIGHER_NAMES:
        return True
    if name.endswith(_HIGHER_SUFFIXES) or name.startswith(_HIGHER_PREFIXES):
        return True
    if name.endswith(_LOWER_SUFFIXES) or any(word in name for word in _LOWER_WORDS):
        return False
    if name == "gpu_utilization":  # busier for the same work: the work got heavier
        return False
    raise UnknownDirectionError(metric)
