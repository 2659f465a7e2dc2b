"""What the HTML report shows, computed from a store (or a remote table).

One series per group (the grouping of ``compare``): one point per session, the median of
its runs' latency, with the median p99 and GPU utilization beside it. Each group's verdict
compares its newest session with its earlier ones, by ``compare``'s own rules (``judge``).
Change points are found over each group's whole history (``changepoints``). Charts keep
their newest points within a budget for the page, and say what was cut.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from neurolens.analysis.changepoints import change_points
from neurolens.analysis.compare import DEFAULT_GROUP_BY
from neurolens.analysis.samples import SampleRun, cpu_class, samples
from neurolens.analysis.verdicts import (
    VERDICT_ORDER,
    Comparison,
    GroupResult,
    Threshold,
    group_label,
    judge,
    settle,
)
from neurolens.errors import StoreError
from neurolens.sources import RunSource, open_source
from neurolens.storage.index.filters import RunFilter
from neurolens.storage.ledger.root import StrPath

METRIC = "total_latency_ms"
POINT_BUDGET = 100_000  # points over all charts: keeps a 1,000-group page near 10 MB
MAX_POINTS = 200  # per chart
MIN_POINTS = 20  # per chart, whatever the budget
_HARDWARE = ("gpu_name", "driver_version", "cuda_version")


@dataclass
class Series:
    """One group's history, oldest first."""

    key: dict[str, Any]
    label: str
    times: list[str] = field(default_factory=list)  # the session's newest run, RFC 3339
    medians: list[float] = field(default_factory=list)
    p99: list[float | None] = field(default_factory=list)
    gpu: list[float | None] = field(default_factory=list)
    run_ids: list[str] = field(default_factory=list)  # the run nearest each session's median
    sessions: list[str] = field(default_factory=list)
    hardware: list[tuple[str | None, ...]] = field(default_factory=list)
    change_points: list[int] = field(default_factory=list)  # indices into the kept points
    hardware_changes: list[int] = field(default_factory=list)
    cut: int = 0  # older points left out of the chart
    verdict: GroupResult | None = None


@dataclass
class Report:
    root: str
    filter: str
    runs: int
    threshold: Threshold
    series: list[Series]
    commits: dict[str, str | None]  # session -> git commit, where a fingerprint says

    def regressed(self) -> list[Series]:
        return [s for s in self.series if s.verdict is not None and s.verdict.verdict == "regressed"]


def build_report(
    source: RunSource | StrPath,
    flt: RunFilter,
    *,
    group_by: Sequence[str] = DEFAULT_GROUP_BY,
    threshold: Threshold | None = None,
    max_points: int = MAX_POINTS,
    only_session: str | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Report:
    """The report's data for the runs ``flt`` selects in ``root``; with ``only_session``,
    only the groups that session's runs belong to (their whole history)."""
    source = open_source(source)
    threshold = threshold or Threshold.parse("5%")
    per_run = ["run_id", "created_at", "session_id", "repeat", METRIC, "latency_p99_ms", "gpu_utilization",
               *_HARDWARE, "fingerprint_hash", "fp_json"]  # fmt: skip
    wanted = list(dict.fromkeys([*group_by, *per_run]))
    data = cpu_class(source.select(flt, wanted).columns(wanted))
    rules = Comparison(METRIC, False, threshold, gate=True, require_significance=False, alpha=0.05)
    groups: dict[tuple[Any, ...], list[int]] = {}
    for position, key in enumerate(zip(*(data[k] for k in group_by), strict=True)):
        groups.setdefault(key, []).append(position)
    if only_session is not None:
        touched = {
            key for key, rows in groups.items() if any(data["session_id"][i] == only_session for i in rows)
        }
        groups = {key: rows for key, rows in groups.items() if key in touched}
    budget = max(MIN_POINTS, min(max_points, POINT_BUDGET // max(1, len(groups))))
    series = []
    for key, rows in groups.items():
        series.append(_series(data, dict(zip(group_by, key, strict=True)), rows, rules, budget))
        if progress is not None:  # (groups drawn, groups)
            progress(len(series), len(groups))
    # the page's groups decided together, as compare decides a suite's
    settle(rules, [s.verdict for s in series if s.verdict is not None])
    series.sort(key=_worst_first)
    return Report(
        root=str(source),
        filter=flt.describe(),
        runs=sum(len(rows) for rows in groups.values()),
        threshold=threshold,
        series=series,
        commits=_commits(source, data),
    )


def _series(
    data: dict[str, list[Any]], key: dict[str, Any], rows: list[int], rules: Comparison, budget: int
) -> Series:
    label = group_label(key)
    sessions: dict[str, list[int]] = {}
    for i in rows:
        session = data["session_id"][i] or f"run {data['run_id'][i]}"
        sessions.setdefault(session, []).append(i)
    ordered = sorted(
        sessions.items(), key=lambda item: (max(data["created_at"][i] for i in item[1]), item[0])
    )
    out = Series(key=key, label=label)
    for session, members in ordered:
        values = [data[METRIC][i] for i in members]
        middle = statistics.median(values)
        nearest = min(members, key=lambda i: (abs(data[METRIC][i] - middle), data["run_id"][i]))
        newest = max(members, key=lambda i: data["created_at"][i])
        out.times.append(data["created_at"][newest])
        out.medians.append(middle)
        out.p99.append(_median([data["latency_p99_ms"][i] for i in members]))
        out.gpu.append(_median([data["gpu_utilization"][i] for i in members]))
        out.run_ids.append(data["run_id"][nearest])
        out.sessions.append(session)
        out.hardware.append(tuple(data[k][newest] for k in _HARDWARE))
    # the newest session against the ones before it, by compare's rules
    *earlier, latest = ordered
    base = _samples(data, [i for _, members in earlier for i in members])
    out.verdict = judge(rules, key, base, _samples(data, latest[1]))
    found = change_points(out.medians)
    changes = [i for i in range(1, len(out.hardware)) if out.hardware[i] != out.hardware[i - 1]]
    out.cut = max(0, len(out.medians) - budget)
    if out.cut:
        for name in ("times", "medians", "p99", "gpu", "run_ids", "sessions", "hardware"):
            setattr(out, name, getattr(out, name)[out.cut :])
    out.change_points = [i - out.cut for i in found if i >= out.cut]
    out.hardware_changes = [i - out.cut for i in changes if i >= out.cut]
    return out


def _samples(data: dict[str, list[Any]], members: list[int]) -> list[float]:
    """These runs' samples, by compare's rule (``samples``)."""
    return samples(
        SampleRun(
            data[METRIC][i],
            data["session_id"][i],
            data["run_id"][i],
            data["repeat"][i],
            data["created_at"][i],
        )
        for i in members
    )


def _median(values: list[Any]) -> float | None:
    numbers = [v for v in values if v is not None]
    return statistics.median(numbers) if numbers else None


def _worst_first(series: Series) -> tuple[int, float, str]:
    verdict = series.verdict
    change = verdict.change_pct if verdict is not None and verdict.change_pct is not None else 0.0
    return (VERDICT_ORDER[verdict.verdict if verdict else "new"], -change, series.label)


def _commits(source: RunSource, data: dict[str, list[Any]]) -> dict[str, str | None]:
    """Session -> git commit, from one fingerprint per fingerprint hash (there are few)."""
    by_hash: dict[str, str | None] = {}
    commits: dict[str, str | None] = {}
    for session, digest, fp_json, run_id in zip(
        data["session_id"], data["fingerprint_hash"], data["fp_json"], data["run_id"], strict=True
    ):
        if session is None or digest is None or session in commits:
            continue
        if digest not in by_hash:
            by_hash[digest] = None
            try:
                text = source.fingerprint({"run_id": run_id, "fp_json": fp_json})
                commit = json.loads(text).get("git_commit") if text else None
                by_hash[digest] = commit if isinstance(commit, str) else None
            except (ValueError, AttributeError, RecursionError, StoreError):
                pass
        commits[session] = by_hash[digest]
    return commits


def timestamp(text: str) -> int:
    """Seconds since the epoch of a stored ``created_at`` (for a compact page)."""
    return int(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp())
