"""What a comparison says: the threshold, and the verdict of each group and of the whole.

``neurolens.compare.compare`` makes one; ``compare_format`` prints it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from typing import Any

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
VERDICT_ORDER = {"regressed": 0, "improved": 1, "noise": 2, "unchanged": 3, "new": 4, "missing": 5}
COMPARED = ("regressed", "improved", "noise", "unchanged")


class UnknownMetricError(ValueError):
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


@dataclass(frozen=True)
class Threshold:
    """``5%`` (relative to the baseline) or ``0.5ms`` (absolute, in milliseconds)."""

    value: float
    relative: bool

    @classmethod
    def parse(cls, text: str) -> Threshold:
        raw = str(text).strip().lower()
        relative = raw.endswith("%")
        number = raw[:-1] if relative else raw[:-2] if raw.endswith("ms") else None
        try:
            value = float(number) if number is not None else math.nan
        except ValueError:
            value = math.nan
        if math.isnan(value):
            raise ValueError(
                f"threshold {text!r} needs a unit: a share of the baseline like 5% "
                "or an absolute change like 0.5ms"
            )
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"threshold must be a non-negative number, not {text!r}")
        return cls(value / 100 if relative else value, relative)

    def __str__(self) -> str:
        return f"{self.value * 100:g}%" if self.relative else f"{self.value:g} ms"


@dataclass
class GroupResult:
    group: dict[str, Any]
    # regressed, improved, noise (above the threshold, inside the floor), unchanged, new, missing
    verdict: str
    baseline: float | None = None
    candidate: float | None = None
    change_abs: float | None = None
    change_pct: float | None = None
    p_value: float | None = None
    significant: bool | None = None
    significance_note: str | None = None  # why there is no p-value, or why it cannot be small
    noise_floor: float | None = None  # in the metric's unit; None: too few baseline samples
    baseline_runs: int = 0
    candidate_runs: int = 0
    baseline_samples: int = 0  # sessions (or rounds) the runs came from
    candidate_samples: int = 0
    fails: bool = False

    def label(self) -> str:
        return " ".join("-" if v is None else str(v) for v in self.group.values())

    def to_dict(self) -> dict[str, Any]:
        """The fields in order, as ``dataclasses.asdict`` gives them, without its deep copy
        of every value (a tenth of a second on a thousand groups)."""
        return {f.name: getattr(self, f.name) for f in fields(self)} | {"group": dict(self.group)}


@dataclass
class Comparison:
    metric: str
    higher_is_better: bool
    threshold: Threshold
    gate: bool
    require_significance: bool
    alpha: float
    fail_on_missing: bool = False
    noise_floor: bool = True
    groups: list[GroupResult] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    nothing_compared: str | None = None  # why no group was compared, when none was

    @property
    def failed(self) -> bool:
        return any(g.fails for g in self.groups)

    def counts(self) -> dict[str, int]:
        return {v: sum(g.verdict == v for g in self.groups) for v in VERDICT_ORDER}

    def to_dict(self) -> dict[str, Any]:
        return {
            "metric": self.metric,
            "higher_is_better": self.higher_is_better,
            "threshold": str(self.threshold),
            "require_significance": self.require_significance,
            "alpha": self.alpha,
            "noise_floor": self.noise_floor,
            "failed": self.failed,
            "nothing_compared": self.nothing_compared,
            "counts": self.counts(),
            "groups": [g.to_dict() for g in self.groups],
            "warnings": self.warnings,
        }
