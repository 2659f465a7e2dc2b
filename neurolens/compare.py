"""Compare two sets of runs group by group and decide whether the candidate regressed.

Runs are paired by a group key (model, backend, precision, batch size, sequence length and
GPU by default). Within a group the runs of each side are pooled: the statistic compared
is the median of the metric over the side's runs. Where each side has enough samples
(several runs, or the per-iteration latencies ``measure`` stores) a two-sided
Mann-Whitney U test says whether the difference is real.

A gate never passes by mistake: a comparison where nothing was compared (an empty
side, no group on both sides) says why in ``nothing_compared``; a metric no run
carries is an ``UnknownMetricError``.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from neurolens.storage.files import check_run_path, read_store_file
from neurolens.storage.filters import RunFilter
from neurolens.storage.manifest import COLUMNS
from neurolens.storage.query import select
from neurolens.storage.root import StrPath, resolve_root

if TYPE_CHECKING:
    import pandas as pd

DEFAULT_GROUP_BY = ("model", "backend", "precision", "batch_size", "seq_len", "gpu_name")
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
MIN_SAMPLES = 5  # fewer on a side and no significance test is made
VERDICT_ORDER = {"regressed": 0, "improved": 1, "unchanged": 2, "new": 3, "missing": 4}
_EPSILON = 1e-9  # a change exactly at the threshold is within it, float noise included


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
    verdict: str  # regressed, improved, unchanged, new, missing
    baseline: float | None = None
    candidate: float | None = None
    change_abs: float | None = None
    change_pct: float | None = None
    p_value: float | None = None
    significant: bool | None = None
    baseline_runs: int = 0
    candidate_runs: int = 0
    fails: bool = False

    def label(self) -> str:
        return " ".join("-" if v is None else str(v) for v in self.group.values())


@dataclass
class Comparison:
    metric: str
    higher_is_better: bool
    threshold: Threshold
    gate: bool
    require_significance: bool
    alpha: float
    fail_on_missing: bool = False
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
            "failed": self.failed,
            "nothing_compared": self.nothing_compared,
            "counts": self.counts(),
            "groups": [asdict(g) for g in self.groups],
            "warnings": self.warnings,
        }


def compare(
    root: StrPath | None,
    baseline: RunFilter | Mapping[str, Any],
    candidate: RunFilter | Mapping[str, Any],
    *,
    metric: str = DEFAULT_METRIC,
    group_by: Sequence[str] = DEFAULT_GROUP_BY,
    threshold: Threshold | str | None = None,
    require_significance: bool = False,
    alpha: float = 0.05,
    fail_on_missing: bool = False,
    higher_better: bool | None = None,
    baseline_root: StrPath | None = None,
) -> Comparison:
    """Compare the candidate's runs with the baseline's, group by group.

    ``baseline`` and ``candidate`` select runs: a :class:`RunFilter` or a dict of its
    fields (``{"tags": {"branch": "main"}}``, ``{"session_id": "latest"}``); each must
    select something. A run both select counts for the candidate only (a warning says
    so). ``threshold`` (``"5%"`` or ``"0.5ms"``; default 5%) separates regressions and
    improvements from noise; when given the comparison is a gate, and ``failed`` says
    whether any group regressed by more (with ``require_significance``, only with
    p < ``alpha``; with ``fail_on_missing``, also a group the candidate lacks).
    ``baseline_root`` reads the baseline from another store.
    """
    sides = [RunFilter.coerce(baseline, "baseline"), RunFilter.coerce(candidate, "candidate")]
    for name, side in zip(("baseline", "candidate"), sides, strict=True):
        if not side.selects():
            raise ValueError(f"{name}: give it a selector (a tag, day, session, model, backend or precision)")
    metric = resolve_metric(metric)
    unknown = [k for k in group_by if k not in COLUMNS]
    if unknown or not group_by:
        raise ValueError(
            f"group-by columns must be among {', '.join(COLUMNS)}; got {', '.join(unknown) or 'none'}"
        )
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 < alpha < 1:
        raise ValueError(f"alpha must be between 0 and 1, not {alpha!r}")
    limit = threshold if isinstance(threshold, Threshold) else Threshold.parse(threshold or "5%")
    result = Comparison(
        metric=metric,
        higher_is_better=higher_is_better(metric) if higher_better is None else higher_better,
        threshold=limit,
        gate=threshold is not None,
        require_significance=require_significance,
        alpha=alpha,
        fail_on_missing=fail_on_missing,
    )
    roots = [resolve_root(baseline_root if baseline_root is not None else root), resolve_root(root)]
    needed = list(dict.fromkeys([*group_by, "run_id", "run_json", "gpu_name", "driver_version"]))
    if metric in COLUMNS:
        needed.append(metric)
    candidate_data = select(roots[1], sides[1]).columns(needed)
    baseline_rows = select(roots[0], sides[0])
    if roots[0] == roots[1]:
        overlap = set(candidate_data["run_id"]) & set(baseline_rows.ids())
        if overlap:
            result.warnings.append(
                f"{len(overlap)} run(s) match both sides; they count for the candidate only"
            )
            baseline_rows = baseline_rows.without("run_id", sorted(overlap))
    data = [baseline_rows.columns(needed), candidate_data]
    for name, side, columns in zip(("baseline", "candidate"), sides, data, strict=True):
        if not columns["run_id"] and result.nothing_compared is None:
            result.nothing_compared = f"the {name} is empty: no run matches {side.describe()}"
    groups = [_group(data[0], group_by), _group(data[1], group_by)]
    docs = _Documents(roots)
    for key in sorted(set(groups[0]) | set(groups[1]), key=repr):
        group = dict(zip(group_by, key, strict=True))
        picks = [(0, data[0], groups[0].get(key, [])), (1, data[1], groups[1].get(key, []))]
        result.groups.append(_compare_group(docs, result, group, picks[0], picks[1]))
        _warn_mixed_hardware(result, group, picks)
    if result.groups and all(g.baseline is None and g.candidate is None for g in result.groups):
        raise UnknownMetricError(metric, sorted(docs.metrics_seen | set(METRIC_COLUMNS)))
    compared = any(g.verdict in ("regressed", "improved", "unchanged") for g in result.groups)
    if result.nothing_compared is None and not compared:
        result.nothing_compared = "no group has runs on both sides"
    # compared groups worst first, then new, then missing
    result.groups.sort(key=lambda g: (max(VERDICT_ORDER[g.verdict], 2), -_badness(result, g), g.label()))
    return result


METRIC_COLUMNS = ("total_latency_ms", "gpu_utilization")


def _group(data: dict[str, list[Any]], group_by: Sequence[str]) -> dict[tuple[Any, ...], list[int]]:
    """Row positions by group key."""
    groups: dict[tuple[Any, ...], list[int]] = {}
    for position, key in enumerate(zip(*(data[k] for k in group_by), strict=True)):
        groups.setdefault(key, []).append(position)
    return groups


def _badness(result: Comparison, g: GroupResult) -> float:
    if g.change_pct is None:
        return -math.inf
    return -g.change_pct if result.higher_is_better else g.change_pct


class _Documents:
    """Run documents read on demand (only for metrics the index does not hold)."""

    def __init__(self, roots: list[Path]) -> None:
        self.roots = roots
        self.metrics_seen: set[str] = set()

    def read(self, side: int, run_json: str) -> dict[str, Any] | None:
        try:
            document = json.loads(read_store_file(self.roots[side], check_run_path(run_json)))
        except (OSError, ValueError, RecursionError):
            return None
        if not isinstance(document, dict):
            return None
        metrics = document.get("metrics")
        if isinstance(metrics, dict):
            self.metrics_seen.update(k for k, v in metrics.items() if isinstance(v, (int, float)))
        return document


Side = tuple[int, dict[str, list[Any]], list[int]]  # (0 baseline / 1 candidate, columns, positions)


def _values(
    docs: _Documents, metric: str, side: Side, warnings: list[str]
) -> tuple[list[float], list[float]]:
    """(per-run metric values, pooled per-iteration latencies where there are any)."""
    which, data, positions = side
    values: list[float] = []
    iterations: list[float] = []
    indexed = metric in data
    if indexed and len(positions) >= MIN_SAMPLES:  # the common, large case: the index alone
        column = data[metric]
        return [float(column[i]) for i in positions if column[i] is not None], iterations
    for i in positions:
        document = docs.read(which, data["run_json"][i])
        if document is None:
            warnings.append(f"run {data['run_id'][i]}: its run file cannot be read")
        value = data[metric][i] if indexed else (document or {}).get("metrics", {}).get(metric)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            values.append(float(value))
        if document is not None and (metric == "total_latency_ms" or metric.startswith("latency_")):
            iterations.extend(v for v in document.get("latencies_ms") or [] if isinstance(v, (int, float)))
    return values, iterations


def _compare_group(
    docs: _Documents, result: Comparison, group: dict[str, Any], base_side: Side, cand_side: Side
) -> GroupResult:
    from neurolens.stats import mann_whitney_u

    base_values, base_iters = _values(docs, result.metric, base_side, result.warnings)
    cand_values, cand_iters = _values(docs, result.metric, cand_side, result.warnings)
    out = GroupResult(
        group=group, verdict="unchanged", baseline_runs=len(base_side[2]), candidate_runs=len(cand_side[2])
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
    if worse > limit + tolerance:
        out.verdict = "regressed"
    elif -worse > limit + tolerance:
        out.verdict = "improved"
    # samples for the test: several runs a side, else the per-iteration latencies
    samples = [
        values if len(values) >= MIN_SAMPLES else iterations
        for values, iterations in ((base_values, base_iters), (cand_values, cand_iters))
    ]
    if all(len(s) >= MIN_SAMPLES for s in samples):
        out.p_value = mann_whitney_u(samples[0], samples[1])[1]
        out.significant = out.p_value < result.alpha
    out.fails = (
        result.gate
        and out.verdict == "regressed"
        and (out.significant is True or not result.require_significance)
    )
    return out


def _warn_mixed_hardware(result: Comparison, group: dict[str, Any], sides: list[Side]) -> None:
    kinds = sorted(
        {
            (data["gpu_name"][i] or "-", data["driver_version"][i] or "-")
            for _, data, positions in sides
            for i in positions
        }
    )
    if len(kinds) > 1:
        shown = ", ".join(f"{gpu} (driver {driver})" for gpu, driver in kinds)
        label = " ".join("-" if v is None else str(v) for v in group.values())
        result.warnings.append(f"group {label}: runs on different GPUs or drivers: {shown}")


def compare_frame(
    root: StrPath | None,
    baseline: RunFilter | Mapping[str, Any],
    candidate: RunFilter | Mapping[str, Any],
    **options: Any,
) -> pd.DataFrame:
    """:func:`compare` as a pandas DataFrame, one row per group (group columns first).

    ``baseline`` and ``candidate`` are RunFilters or dicts of their fields (see
    :func:`compare`, whose keyword options this takes too); the whole comparison is in
    ``frame.attrs["comparison"]``.
    """
    import pandas as pd

    comparison = compare(root, baseline, candidate, **options)
    records = [{**g.group, **{k: v for k, v in asdict(g).items() if k != "group"}} for g in comparison.groups]
    frame: pd.DataFrame = pd.DataFrame.from_records(records)
    frame.attrs["comparison"] = comparison.to_dict()
    return frame
