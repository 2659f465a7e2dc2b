"""Verdicts: the threshold, each group's verdict (``judge``, the one place a verdict is
made) and a comparison's result.

``compare.compare`` and the HTML report make them; ``text`` prints them.

A group regresses when its change is beyond the threshold and beyond the noise floor
(the largest change the baseline's own session-to-session noise makes, at 99%); under
``require_significance`` also only with p < alpha across sessions (Mann-Whitney U over
the samples, never over the per-call latencies of one session).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from neurolens.analysis.stats import mann_whitney_u, robust_spread, smallest_p_value, t_quantile_99
from neurolens.errors import InvalidArgumentError

NOISE_SESSIONS = 10  # the baseline's newest samples the noise floor is learned from
NOISE_MIN_SAMPLES = 3  # fewer and there is no floor
_EPSILON = 1e-9  # a change exactly at the threshold is within it, float noise included

VERDICT_ORDER = {"regressed": 0, "improved": 1, "noise": 2, "unchanged": 3, "new": 4, "missing": 5}
COMPARED = ("regressed", "improved", "noise", "unchanged")


def group_label(group: Mapping[str, Any]) -> str:
    """A group's values in a line, "-" for none."""
    return " ".join("-" if v is None else str(v) for v in group.values())


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
            raise InvalidArgumentError(
                f"threshold {text!r} needs a unit: a share of the baseline like 5% "
                "or an absolute change like 0.5ms"
            )
        if not math.isfinite(value) or value < 0:
            raise InvalidArgumentError(f"threshold must be a non-negative number, not {text!r}")
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
        return group_label(self.group)

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


def judge(
    result: Comparison, group: dict[str, Any], base_values: list[float], cand_values: list[float]
) -> GroupResult:
    """One group's verdict from its sides' sample values (oldest first), by the comparison's
    rules: the one place a verdict is made (``compare`` and the HTML report use it)."""
    out = GroupResult(
        group=group,
        verdict="unchanged",
        baseline_runs=len(base_values),
        candidate_runs=len(cand_values),
        baseline_samples=len(base_values),
        candidate_samples=len(cand_values),
    )
    if not cand_values:
        out.verdict = "missing"
        out.baseline = statistics.median(base_values) if base_values else None
        out.fails = result.gate and result.fail_on_missing and out.baseline is not None
        return out
    if not base_values:
        out.verdict = "new"
        out.candidate = statistics.median(cand_values)
        return out
    base, cand = statistics.median(base_values), statistics.median(cand_values)
    out.baseline, out.candidate = base, cand
    out.change_abs = cand - base
    out.change_pct = (cand - base) / base * 100 if base else (0.0 if cand == base else math.inf)
    worse = (base - cand) if result.higher_is_better else (cand - base)
    limit = result.threshold.value * abs(base) if result.threshold.relative else result.threshold.value
    tolerance = _EPSILON * max(abs(base), 1.0)
    if result.noise_floor:
        out.noise_floor = _noise_floor(base_values, len(cand_values))
    if abs(worse) > limit + tolerance:
        if out.noise_floor is not None and abs(worse) <= out.noise_floor + tolerance:
            out.verdict = "noise"
        else:
            out.verdict = "regressed" if worse > 0 else "improved"
    _significance(out, base_values, cand_values, result.alpha)
    out.fails = (
        result.gate
        and out.verdict == "regressed"
        and (out.significant is True or not result.require_significance)
    )
    return out


def _noise_floor(base_values: list[float], candidate_samples: int) -> float | None:
    """The largest change session-to-session noise alone makes between the sides' means,
    at 99% (one-sided): Student's t quantile for the baseline's newest m samples, times
    their robust standard deviation (from the MAD), times sqrt(1/m + 1/n). Few baseline
    sessions give a wide floor: with little history little is known about the noise."""
    recent = base_values[-NOISE_SESSIONS:]
    m = len(recent)
    if m < NOISE_MIN_SAMPLES:
        return None
    return t_quantile_99(m - 1) * robust_spread(recent) * math.sqrt(1 / m + 1 / candidate_samples)


def _significance(out: GroupResult, base_values: list[float], cand_values: list[float], alpha: float) -> None:
    """A Mann-Whitney U test across the sides' samples (sessions or rounds), never across
    the per-call latencies of one session."""
    m, n = len(base_values), len(cand_values)
    if min(m, n) < 2:
        out.significance_note = "cannot tell: one session on " + (
            "each side" if max(m, n) < 2 else "the baseline" if m < 2 else "the candidate"
        )
        return
    out.p_value = mann_whitney_u(base_values, cand_values)[1]
    out.significant = out.p_value < alpha
    if smallest_p_value(m, n) >= alpha:
        out.significance_note = f"cannot tell: {m} and {n} sessions cannot give p < {alpha:g}"
