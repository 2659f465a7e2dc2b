"""Verdicts: the threshold, each group's verdict and a comparison's result.

``judge`` weighs one group's evidence; ``settle`` then decides every group of a comparison at
once, so that the chance of a false alarm holds for the whole suite, not for each group
(``compare.compare`` and the HTML report call both; ``text`` prints the result).

The rules, in one place (the README's "How the gate decides" says the same):

- A group's statistic is the median of its samples (one per session, or per round).
- **Noise test.** The change must be larger than session-to-session noise alone makes.
  Student's two-sample t on the sessions: t = change / (s * sqrt(1/m + 1/n)), one-sided, m
  the baseline's newest ``NOISE_SESSIONS`` samples and n the candidate's. ``s`` pools the
  baseline's standard deviation (not the MAD: from a few samples its wide scatter breaks
  Student's t) with the candidate's robust spread (1.4826 x MAD: its sessions show the
  machine's noise now, and one wild session must not hide a regression the others show).
  Until the baseline has ``PRIOR_DF`` + 1 samples, the degrees of freedom it lacks are
  filled with a prior spread of ``PRIOR_SPREAD`` of the baseline's level, so that one, two
  or three baseline sessions already give a floor (about 16% with one session, 8% with three
  quiet ones) and a longer history is judged on its own noise. One candidate session is a
  prediction from the baseline's sessions this way.
- **Suite correction.** The groups' noise p-values are adjusted by Holm's step-down method;
  a group is outside the noise when its adjusted p < ``NOISE_ALPHA``. ``noise_floor`` is the
  change that would have been needed at the group's Holm level.
- **Significance** (``require_significance``): the Mann-Whitney U test over the sides'
  samples when both have two or more and the test can reach ``alpha``, else the noise
  test's p; Holm-adjusted over the groups, significant below ``alpha``.
- A group regresses (or improves) when its change is beyond the threshold and outside the
  noise; a gate fails on a regression (under ``require_significance``, a significant one).
- Its change comes with a 95% interval: Hodges-Lehmann over the samples where they are
  enough, else Student's t prediction interval.
"""

from __future__ import annotations

import math
import re
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

from neurolens.analysis.stats import (
    hodges_lehmann,
    holm,
    mann_whitney_u,
    robust_spread,
    smallest_p_value,
    t_quantile,
    t_upper_tail,
)
from neurolens.errors import InvalidArgumentError

NOISE_SESSIONS = 10  # the baseline's newest samples the noise is learned from
NOISE_ALPHA = 0.01  # a change outside the noise: Holm-adjusted one-sided p below this
PRIOR_SPREAD = 0.03  # session-to-session spread assumed before enough is seen: 3% of the level
PRIOR_DF = 4  # ... filling the degrees of freedom a short history lacks, up to this many
INTERVAL = 0.95  # the confidence of a change's interval
CORRECTION = "holm"
_EPSILON = 1e-9  # a change exactly at the threshold is within it, float noise included

VERDICT_ORDER = {
    "regressed": 0,
    "improved": 1,
    "noise": 2,
    "unchanged": 3,
    "insufficient": 4,  # a tail percentile from runs too small to bound it
    "new": 5,
    "missing": 6,
}
COMPARED = ("regressed", "improved", "noise", "unchanged")


# how a group's fields read in its label; model, backend and precision read as they are
_FIELD_NAMES = {"batch_size": "batch", "seq_len": "seq", "gpu_name": "GPU", "cpu_model": "CPU"}
_UNNAMED = frozenset({"model", "backend", "precision"})
_SAID_WHEN_SET = frozenset({"seq_len", "gpu_name", "cpu_model"})  # absent: nothing to say


def group_label(group: Mapping[str, Any]) -> str:
    """A group's values in a line, each field named ("mlp onnxrt fp32 batch 64 CPU ...")."""
    parts = []
    for name, value in group.items():
        if value is None and name in _SAID_WHEN_SET:
            continue
        shown = "-" if value is None else str(value)
        parts.append(shown if name in _UNNAMED else f"{_FIELD_NAMES.get(name, name)} {shown}")
    return " ".join(parts)


_THRESHOLD = re.compile(r"((?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:e[-+]?[0-9]+)?)\s*(%|us|µs|ms|s)")
_UNITS = {"%": 0.01, "us": 0.001, "µs": 0.001, "ms": 1.0, "s": 1000.0}  # to a fraction, or to ms


@dataclass(frozen=True)
class Threshold:
    """``5%`` (relative to the baseline) or ``0.5ms`` (absolute, in milliseconds)."""

    value: float
    relative: bool

    @classmethod
    def parse(cls, text: str) -> Threshold:
        """``5%``, or an absolute change in ``us``, ``ms`` or ``s`` (kept in milliseconds).
        Plain decimal numbers only: no ``nan``, ``inf`` or ``5_0``."""
        found = _THRESHOLD.fullmatch(str(text).strip().lower())
        if found is None:
            unitless = re.fullmatch(r"\s*[0-9.]+\s*", str(text))
            raise InvalidArgumentError(
                f"threshold {text!r} "
                + ("needs a unit" if unitless else "is not a number with a unit")
                + ": a share of the baseline like 5% or an absolute change like 500us, 0.5ms or 1s"
            )
        number, unit = found.groups()
        value = float(number) * _UNITS[unit]
        if not math.isfinite(value):
            raise InvalidArgumentError(f"threshold must be a finite number, not {text!r}")
        return cls(value, unit == "%")

    def __str__(self) -> str:
        return f"{self.value * 100:g}%" if self.relative else f"{self.value:g} ms"


@dataclass
class _Evidence:
    """What ``judge`` found for ``settle``: the noise test's raw p and how to turn a level
    into a floor, and the significance test's raw p."""

    worse: float  # the change in the bad direction (negative: better)
    beyond_threshold: bool
    noise_p: float | None = None
    scale: float | None = None  # spread * sqrt(1/m + 1/n): the floor is t quantile * scale
    df: float | None = None
    significance_p: float | None = None


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
    noise_floor: float | None = None  # in the metric's unit, at the group's Holm level
    noise_p: float | None = None  # one-sided p that session noise alone made the change (Holm-adjusted)
    change_low_pct: float | None = None  # the change's 95% interval, in percent of the baseline
    change_high_pct: float | None = None
    interval: str | None = None  # how: "hodges-lehmann" or "t"
    baseline_runs: int = 0
    candidate_runs: int = 0
    baseline_samples: int = 0  # sessions (or rounds) the runs came from
    candidate_samples: int = 0
    significance_test: str | None = None  # "mann-whitney" or "prediction"
    note: str | None = None  # why a group was not compared (insufficient)
    fails: bool = False
    _evidence: _Evidence | None = field(default=None, repr=False, compare=False)

    def label(self) -> str:
        return group_label(self.group)

    def to_dict(self) -> dict[str, Any]:
        """The fields in order, as ``dataclasses.asdict`` gives them, without its deep copy
        of every value (a tenth of a second on a thousand groups)."""
        shown = (f.name for f in fields(self) if not f.name.startswith("_"))
        return {name: getattr(self, name) for name in shown} | {"group": dict(self.group)}


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
            "noise_alpha": NOISE_ALPHA,
            "correction": CORRECTION,
            "failed": self.failed,
            "nothing_compared": self.nothing_compared,
            "counts": self.counts(),
            "groups": [g.to_dict() for g in self.groups],
            "warnings": self.warnings,
        }


def judge(
    result: Comparison, group: dict[str, Any], base_values: list[float], cand_values: list[float]
) -> GroupResult:
    """One group's evidence from its sides' sample values (oldest first), with a verdict
    for this group alone; ``settle`` decides the comparison's groups together."""
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
    evidence = _Evidence(worse, abs(worse) > limit + tolerance)
    _noise_test(evidence, base_values, cand_values)
    _significance(out, evidence, base_values, cand_values, result.alpha)
    _interval(out, evidence, base_values, cand_values)
    out._evidence = evidence
    settle(result, [out])
    return out


def settle(result: Comparison, groups: Sequence[GroupResult]) -> None:
    """Decide the groups together: Holm's correction over their noise and significance
    p-values, then each verdict and whether it fails the gate."""
    tested = [(g, g._evidence) for g in groups if g._evidence is not None]
    noise = [(g, e) for g, e in tested if e.noise_p is not None]
    adjusted = holm([e.noise_p for _, e in noise])  # type: ignore[misc]
    ranks = {id(g): r for r, (g, _) in enumerate(sorted(noise, key=lambda ge: ge[1].noise_p or 0.0))}
    for (g, e), p in zip(noise, adjusted, strict=True):
        g.noise_p = p
        level = NOISE_ALPHA / (len(noise) - ranks[id(g)])
        assert e.scale is not None and e.df is not None
        g.noise_floor = t_quantile(1 - level, e.df) * e.scale
    significance = [(g, e) for g, e in tested if e.significance_p is not None]
    for (g, _), p in zip(significance, holm([e.significance_p for _, e in significance]), strict=True):  # type: ignore[misc]
        g.p_value = p
        g.significant = p < result.alpha
    for g, e in tested:
        inside_noise = result.noise_floor and (g.noise_p is None or g.noise_p >= NOISE_ALPHA)
        g.verdict = "unchanged"
        if e.beyond_threshold:
            g.verdict = "noise" if inside_noise else "regressed" if e.worse > 0 else "improved"
        g.fails = (
            result.gate
            and g.verdict == "regressed"
            and (g.significant is True or not result.require_significance)
        )


def _noise_test(evidence: _Evidence, base_values: list[float], cand_values: list[float]) -> None:
    """The one-sided p that session-to-session noise alone made a change this large: the
    candidate's samples against the baseline's newest ones, Student's t with the spread
    pooled over both sides' sessions and the prior (see the module's rules)."""
    recent = base_values[-NOISE_SESSIONS:]
    m, n = len(recent), len(cand_values)
    level = abs(statistics.median(recent))
    squares = (m - 1) * statistics.variance(recent) if m > 1 else 0.0
    # the candidate's own sessions are noise seen too (a drifting machine shows it there),
    # robustly: one wild candidate session must not hide a regression the others show
    squares += (n - 1) * robust_spread(cand_values) ** 2 if n > 1 else 0.0
    prior_df = max(0, PRIOR_DF - (m - 1))
    df = (m - 1) + (n - 1) + prior_df
    spread = math.sqrt((squares + prior_df * (PRIOR_SPREAD * level) ** 2) / df)
    scale = spread * math.sqrt(1 / m + 1 / n)
    evidence.scale, evidence.df = scale, df
    if scale == 0:  # a baseline of zeros: any change is outside its noise
        evidence.noise_p = 0.0 if evidence.worse else 1.0
        return
    evidence.noise_p = t_upper_tail(abs(evidence.worse) / scale, df)


def _significance(
    out: GroupResult, evidence: _Evidence, base_values: list[float], cand_values: list[float], alpha: float
) -> None:
    """Mann-Whitney U across the sides' samples (sessions or rounds, never the per-call
    latencies of one session) where it can decide; else the noise test's prediction p,
    given two or more baseline samples (one says nothing of the noise)."""
    m, n = len(base_values), len(cand_values)
    if min(m, n) >= 2 and smallest_p_value(m, n) < alpha:
        evidence.significance_p = mann_whitney_u(base_values, cand_values)[1]
        out.significance_test = "mann-whitney"
        return
    if m >= 2:
        evidence.significance_p = evidence.noise_p
        out.significance_test = "prediction"
        return
    out.significance_note = "cannot tell: one session on " + ("each side" if n < 2 else "the baseline")


def _interval(
    out: GroupResult, evidence: _Evidence, base_values: list[float], cand_values: list[float]
) -> None:
    """The change's 95% interval in percent of the baseline: Hodges-Lehmann where the
    samples are enough for one, else Student's t prediction interval."""
    base = out.baseline
    if not base:
        return
    _, low, high = hodges_lehmann(base_values, cand_values, INTERVAL)
    if low is not None and high is not None:
        out.interval = "hodges-lehmann"
    elif evidence.scale is not None and evidence.df is not None and out.change_abs is not None:
        half = t_quantile(1 - (1 - INTERVAL) / 2, evidence.df) * evidence.scale
        low, high = out.change_abs - half, out.change_abs + half
        out.interval = "t"
    else:
        return
    out.change_low_pct, out.change_high_pct = low / abs(base) * 100, high / abs(base) * 100
