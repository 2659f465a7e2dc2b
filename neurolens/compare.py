"""Compare two sets of runs group by group and decide whether the candidate regressed.

Runs are paired by a group key (model, backend, precision, batch size, sequence length and
GPU by default). Within a group each side's runs form samples: one per pytest session (or
per round, for a measurement repeated in one session; a run without a session is a sample
of its own). The statistic compared is the median of the samples' values.

Three rules decide a regression, all together (see the README):

1. the threshold: the change is larger than ``--fail-above``;
2. the noise floor: the change is larger than the baseline's own newest sessions say
   session-to-session noise can make (a one-sided 99% bound from Student's t and the
   median absolute deviation); a change inside it is "noise", even above the threshold;
3. significance (only under ``require_significance``): a Mann-Whitney U test over the
   samples gives p < alpha. The test is made on sessions, never on the per-call
   latencies of one session: those carry only the noise inside a session, so with one
   session a side the answer is "cannot tell", and that does not fail the gate.

A gate never passes by mistake: a comparison where nothing was compared (an empty
side, no group on both sides) says why in ``nothing_compared``; a metric no run
carries is an ``UnknownMetricError``.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from neurolens.comparison import (
    COMPARED,
    DEFAULT_METRIC,
    VERDICT_ORDER,
    Comparison,
    GroupResult,
    Threshold,
    UnknownMetricError,
    higher_is_better,
    resolve_metric,
)
from neurolens.errors import StoreError
from neurolens.samples import GroupKey, SideGroup, arrow_samples
from neurolens.storage.index.filters import RunFilter
from neurolens.storage.index.query import select
from neurolens.storage.ledger.files import check_run_path, read_store_file
from neurolens.storage.ledger.manifest import COLUMNS
from neurolens.storage.ledger.root import Location, StrPath, resolve_location

if TYPE_CHECKING:
    import pandas as pd

    from neurolens.remote.table import RemoteTable

DEFAULT_GROUP_BY = ("model", "backend", "precision", "batch_size", "seq_len", "gpu_name")
NOISE_SESSIONS = 10  # the baseline's newest samples the noise floor is learned from
NOISE_MIN_SAMPLES = 3  # fewer and there is no floor
_EPSILON = 1e-9  # a change exactly at the threshold is within it, float noise included


def compare(
    root: StrPath | RemoteTable | None,
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
    baseline_root: StrPath | RemoteTable | None = None,
    noise_floor: bool = True,
) -> Comparison:
    """Compare the candidate's runs with the baseline's, group by group.

    ``baseline`` and ``candidate`` select runs: a :class:`RunFilter` or a dict of its
    fields (``{"tags": {"branch": "main"}}``, ``{"session_id": "latest"}``); each must
    select something. A run both select counts for the candidate only (a warning says
    so). ``threshold`` (``"5%"`` or ``"0.5ms"``; default 5%) separates regressions and
    improvements from noise; when given the comparison is a gate, and ``failed`` says
    whether any group regressed by more (and by more than the baseline's noise floor,
    unless ``noise_floor=False``; with ``require_significance``, only with p < ``alpha``
    across sessions; with ``fail_on_missing``, also a group the candidate lacks).
    ``root`` and ``baseline_root`` may be remote tables (a URL, or a ``RemoteTable``);
    ``baseline_root`` reads the baseline from another store. Runs of tests that did not
    pass are left out unless a side's filter has ``include_failed``.
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
        noise_floor=noise_floor,
    )
    roots = [resolve_location(baseline_root if baseline_root is not None else root), resolve_location(root)]
    per_run = ["run_id", "gpu_name", "driver_version", "session_id", "repeat", "created_at"]
    # the metric from the index, or each run's file
    needed = list(dict.fromkeys([*group_by, *per_run, metric if metric in COLUMNS else "run_json"]))
    # grouped by code, not by text: these may come dictionary-encoded from the index
    encoded = [c for c in (*group_by, "gpu_name", "driver_version") if c not in ("run_id", "session_id")]
    rows = [
        select(root, side, needed, ordered=False, as_dictionary=encoded)
        for root, side in zip(roots, sides, strict=True)
    ]
    if roots[0] == roots[1] and not sides[0].excludes(sides[1]):
        overlap = rows[0].shared_ids(rows[1])
        if overlap:
            result.warnings.append(
                f"{len(overlap)} run(s) match both sides; they count for the candidate only"
            )
            rows[0] = rows[0].without("run_id", overlap)
    for name, side, side_rows in zip(("baseline", "candidate"), sides, rows, strict=True):
        if not len(side_rows) and result.nothing_compared is None:
            result.nothing_compared = f"the {name} is empty: no run matches {side.describe()}"
    docs = _Documents(roots)
    tables = [r.arrow() for r in rows]
    if metric in COLUMNS and tables[0] is not None and tables[1] is not None:
        by_side = [arrow_samples(table, group_by, metric) for table in tables]
    else:
        data = [r.columns(needed) for r in rows]
        by_side = [_side_samples(docs, metric, i, data[i], group_by, result.warnings) for i in (0, 1)]
    for key in sorted(set(by_side[0]) | set(by_side[1]), key=repr):
        group = dict(zip(group_by, key, strict=True))
        base, cand = by_side[0].get(key, SideGroup()), by_side[1].get(key, SideGroup())
        out = judge(result, group, base.samples, cand.samples)
        out.baseline_runs, out.candidate_runs = base.runs, cand.runs
        result.groups.append(out)
        _warn_mixed_hardware(result, group, base.hardware | cand.hardware)
    if result.groups and all(g.baseline is None and g.candidate is None for g in result.groups):
        raise UnknownMetricError(metric, sorted(docs.metrics_seen | set(METRIC_COLUMNS)))
    compared = any(g.verdict in COMPARED for g in result.groups)
    if result.nothing_compared is None and not compared:
        result.nothing_compared = "no group has runs on both sides"
    # compared groups worst first, then new, then missing
    compared_rank = VERDICT_ORDER["unchanged"]
    result.groups.sort(
        key=lambda g: (max(VERDICT_ORDER[g.verdict], compared_rank), -_badness(result, g), g.label())
    )
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

    def __init__(self, roots: list[Location]) -> None:
        self.roots = roots
        self.metrics_seen: set[str] = set()

    def read(self, side: int, run_id: str, run_json: str) -> dict[str, Any] | None:
        root = self.roots[side]
        try:
            if isinstance(root, Path):
                data = read_store_file(root, check_run_path(run_json))
            else:
                data = "".join(r["document"] for r in root.with_ids([run_id], ["document"])).encode()
            document = json.loads(data)
        except (OSError, ValueError, RecursionError, StoreError):
            return None
        if not isinstance(document, dict):
            return None
        metrics = document.get("metrics")
        if isinstance(metrics, dict):
            self.metrics_seen.update(k for k, v in metrics.items() if isinstance(v, (int, float)))
        return document


def _side_samples(
    docs: _Documents,
    metric: str,
    which: int,
    data: dict[str, list[Any]],
    group_by: Sequence[str],
    warnings: list[str],
) -> dict[GroupKey, SideGroup]:
    """Per group: the side's samples, run by run in Python (for metrics only run files
    hold, or rows without Arrow); ``samples.arrow_samples`` is the same rule vectorised."""
    return {
        key: SideGroup(
            _samples(docs, metric, which, data, positions, warnings),
            len(positions),
            {(data["gpu_name"][i] or "-", data["driver_version"][i] or "-") for i in positions},
        )
        for key, positions in _group(data, group_by).items()
    }


def _samples(
    docs: _Documents,
    metric: str,
    which: int,
    data: dict[str, list[Any]],
    positions: list[int],
    warnings: list[str],
) -> list[float]:
    """The side's sample values, oldest first: per session (and round), the median of its
    runs' metric. A run without a session is a sample of its own."""
    indexed = metric in data
    by_sample: dict[tuple[bool, str, Any], list[float]] = {}
    newest: dict[tuple[bool, str, Any], str] = {}
    for i in positions:
        if indexed:
            value = data[metric][i]
        else:
            document = docs.read(which, data["run_id"][i], data["run_json"][i])
            if document is None:
                warnings.append(f"run {data['run_id'][i]}: its run file cannot be read")
            value = (document or {}).get("metrics", {}).get(metric)
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            continue
        session = data["session_id"][i]
        key = (session is not None, session if session is not None else data["run_id"][i], data["repeat"][i])
        by_sample.setdefault(key, []).append(float(value))
        newest[key] = max(newest.get(key, ""), data["created_at"][i])
    # oldest first by the newest run; ties: session-less runs, then by id and round (None last)
    order = sorted(by_sample, key=lambda k: (newest[k], k[0], k[1], k[2] is None, k[2] or 0))
    return [statistics.median(by_sample[key]) for key in order]


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
    from neurolens.stats import robust_spread, t_quantile_99

    recent = base_values[-NOISE_SESSIONS:]
    m = len(recent)
    if m < NOISE_MIN_SAMPLES:
        return None
    return t_quantile_99(m - 1) * robust_spread(recent) * math.sqrt(1 / m + 1 / candidate_samples)


def _significance(out: GroupResult, base_values: list[float], cand_values: list[float], alpha: float) -> None:
    """A Mann-Whitney U test across the sides' samples (sessions or rounds), never across
    the per-call latencies of one session."""
    from neurolens.stats import mann_whitney_u, smallest_p_value

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


def _warn_mixed_hardware(result: Comparison, group: dict[str, Any], kinds: set[tuple[str, str]]) -> None:
    if len(kinds) > 1:
        shown = ", ".join(f"{gpu} (driver {driver})" for gpu, driver in sorted(kinds))
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
    records = [
        {**g.group, **{k: v for k, v in g.to_dict().items() if k != "group"}} for g in comparison.groups
    ]
    frame: pd.DataFrame = pd.DataFrame.from_records(records)
    frame.attrs["comparison"] = comparison.to_dict()
    return frame
