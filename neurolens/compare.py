"""Compare two sets of runs group by group and decide whether the candidate regressed.

Runs are paired by a group key (model, backend, precision, batch size, sequence length and
GPU by default). Within a group the runs of each side are pooled: the statistic compared
is the median of the metric over the side's runs. Where each side has enough samples
(several runs, or the per-iteration latencies ``measure`` stores) a two-sided
Mann-Whitney U test says whether the difference is real.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from neurolens.storage.manifest import COLUMNS
from neurolens.storage.query import RunFilter, select

if TYPE_CHECKING:
    import pandas as pd

    from neurolens.storage.store import StrPath

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


def resolve_metric(name: str) -> str:
    return METRIC_ALIASES.get(name, name)


def higher_is_better(metric: str) -> bool:
    return "throughput" in metric or metric.endswith("_per_s")


@dataclass(frozen=True)
class Threshold:
    """``5%`` (relative to the baseline) or ``0.5ms`` / ``0.5`` (absolute, metric units)."""

    value: float
    relative: bool

    @classmethod
    def parse(cls, text: str) -> Threshold:
        raw = text.strip().lower()
        relative = raw.endswith("%")
        number = raw[:-1] if relative else raw.removesuffix("ms")
        try:
            value = float(number)
        except ValueError:
            raise ValueError(f"threshold must look like 5% or 0.5ms, not {text!r}") from None
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"threshold must be a non-negative number, not {text!r}")
        return cls(value / 100 if relative else value, relative)

    def __str__(self) -> str:
        return f"{self.value * 100:g}%" if self.relative else f"{self.value:g}"


# --- Mann-Whitney U --------------------------------------------------------------------


def _ranks(values: Sequence[float]) -> tuple[list[float], list[int]]:
    """Average ranks (1-based) of ``values`` and the sizes of tied groups."""
    order = sorted(range(len(values)), key=values.__getitem__)
    ranks = [0.0] * len(values)
    ties = []
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1
        if j > i:
            ties.append(j - i + 1)
        i = j + 1
    return ranks, ties


@cache
def _u_counts(m: int, n: int) -> tuple[int, ...]:
    """How many arrangements of m x's and n y's give each U = 0..m*n (no ties)."""
    if m == 0 or n == 0:
        return (1,)
    with_x_last = _u_counts(m - 1, n)  # the largest value is an x: it beats all n y's
    with_y_last = _u_counts(m, n - 1)
    counts = [0] * (m * n + 1)
    for u, c in enumerate(with_x_last):
        counts[u + n] += c
    for u, c in enumerate(with_y_last):
        counts[u] += c
    return tuple(counts)


def mann_whitney_u(x: Sequence[float], y: Sequence[float]) -> tuple[float, float]:
    """(U of x, two-sided p). Exact for small samples without ties, else the normal
    approximation with tie and continuity corrections."""
    m, n = len(x), len(y)
    if m == 0 or n == 0:
        raise ValueError("both samples need values")
    ranks, ties = _ranks([*x, *y])
    u = sum(ranks[:m]) - m * (m + 1) / 2
    if not ties and m <= 25 and n <= 25:
        counts = _u_counts(m, n)
        total = sum(counts)
        k = round(u)
        low = sum(counts[: k + 1]) / total
        high = sum(counts[k:]) / total
        return u, min(1.0, 2 * min(low, high))
    size = m + n
    tie_term = sum(t**3 - t for t in ties) / (size * (size - 1))
    sigma = math.sqrt(m * n / 12 * ((size + 1) - tie_term))
    if sigma == 0:
        return u, 1.0
    z = max(abs(u - m * n / 2) - 0.5, 0) / sigma
    return u, min(1.0, math.erfc(z / math.sqrt(2)))


# --- comparing ---------------------------------------------------------------------------


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
    groups: list[GroupResult] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

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
            "counts": self.counts(),
            "groups": [asdict(g) for g in self.groups],
            "warnings": self.warnings,
        }

    def summary_line(self) -> str:
        counts = ", ".join(f"{n} {v}" for v, n in self.counts().items() if n)
        return (
            f"{len(self.groups)} group(s): {counts or 'nothing to compare'} "
            f"({self.metric}, {'higher' if self.higher_is_better else 'lower'} is better, "
            f"threshold {self.threshold})"
        )

    def _cells(self, g: GroupResult) -> list[str]:
        def num(value: float | None, fmt: str) -> str:
            return "-" if value is None else format(value, fmt)

        verdict = g.verdict.upper() if g.fails else g.verdict
        return [
            g.label(),
            num(g.baseline, ".3f"),
            num(g.candidate, ".3f"),
            num(g.change_pct, "+.1f") + ("%" if g.change_pct is not None else ""),
            num(g.change_abs, "+.3f"),
            num(g.p_value, ".3g"),
            f"{g.baseline_runs}/{g.candidate_runs}",
            verdict,
        ]

    _HEADER = ("GROUP", "BASELINE", "CANDIDATE", "CHANGE", "DELTA", "P", "RUNS", "VERDICT")

    def to_table(self) -> str:
        rows = [list(self._HEADER), *(self._cells(g) for g in self.groups)]
        widths = [max(len(r[i]) for r in rows) for i in range(len(self._HEADER))]
        lines = [
            "  ".join(
                c.ljust(w) if i in (0, 7) else c.rjust(w)
                for i, (c, w) in enumerate(zip(r, widths, strict=True))
            )
            for r in rows
        ]
        return "\n".join(line.rstrip() for line in lines) + "\n" + self.summary_line() + "\n"

    def to_markdown(self) -> str:
        def escape(text: str) -> str:
            return text.replace("|", "\\|")

        lines = [
            f"### neurolens compare: {'regression' if self.failed else 'no regression'}",
            "",
            "| " + " | ".join(h.lower() for h in self._HEADER) + " |",
            "| " + " | ".join(["---"] + ["---:"] * 6 + ["---"]) + " |",
        ]
        for g in self.groups:
            cells = self._cells(g)
            cells[7] = f"**{cells[7]}**" if g.fails else cells[7]
            lines.append("| " + " | ".join(escape(c) for c in cells) + " |")
        lines += ["", self.summary_line()]
        lines += [f"> warning: {escape(w)}" for w in self.warnings]
        return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class Side:
    """One side of a comparison: filters plus an optional session (an id, or "latest")."""

    filter: RunFilter = field(default_factory=RunFilter)
    session: str | None = None
    exclude_session: str | None = None

    def columns(self, root: Path, needed: Sequence[str]) -> Columns:
        """The side's runs as the ``needed`` index columns (newest first), no dict per run."""
        wanted_columns = list(dict.fromkeys([*needed, "session_id"]))
        rows = select(root, self.filter)
        if rows.table is not None:
            data: Columns = rows.table.select(wanted_columns).to_pydict()
        else:
            data = {name: [r[name] for r in rows.records] for name in wanted_columns}
        sessions = data["session_id"]
        keep: Sequence[int] = range(len(sessions))
        if self.exclude_session is not None:
            keep = [i for i in keep if sessions[i] != self.exclude_session]
        wanted = self.session
        if wanted == "latest":
            wanted = next((sessions[i] for i in keep if sessions[i]), None)  # newest first
            if wanted is None:
                keep = []
        if wanted is not None:
            keep = [i for i in keep if sessions[i] == wanted]
        if len(keep) == len(sessions):
            return data
        return {name: [values[i] for i in keep] for name, values in data.items()}


Columns = dict[str, list[Any]]


def compare(
    root: StrPath | None,
    baseline: Side,
    candidate: Side,
    *,
    metric: str = DEFAULT_METRIC,
    group_by: Sequence[str] = DEFAULT_GROUP_BY,
    threshold: Threshold | str | None = None,
    require_significance: bool = False,
    alpha: float = 0.05,
    higher_better: bool | None = None,
) -> Comparison:
    """Compare the candidate's runs with the baseline's, group by group.

    ``threshold`` (default 5%) separates regressions and improvements from noise; when it
    is given the comparison is a gate, and ``failed`` says whether any group regressed by
    more (and, with ``require_significance``, with p < ``alpha``).
    """
    from neurolens.storage.store import resolve_root

    root_path = resolve_root(root)
    metric = resolve_metric(metric)
    unknown = [k for k in group_by if k not in COLUMNS]
    if unknown or not group_by:
        raise ValueError(
            f"group-by columns must be among {', '.join(COLUMNS)}; got {', '.join(unknown) or 'none'}"
        )
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be between 0 and 1, not {alpha!r}")
    gate = threshold is not None
    limit = threshold if isinstance(threshold, Threshold) else Threshold.parse(threshold or "5%")
    result = Comparison(
        metric=metric,
        higher_is_better=higher_is_better(metric) if higher_better is None else higher_better,
        threshold=limit,
        gate=gate,
        require_significance=require_significance,
        alpha=alpha,
    )
    needed = [*group_by, "run_id", "run_json", "gpu_name", "driver_version"]
    if metric in COLUMNS:
        needed.append(metric)
    data = [baseline.columns(root_path, needed), candidate.columns(root_path, needed)]
    sides = [_group(data[0], group_by), _group(data[1], group_by)]
    docs = _Documents(root_path)
    for key in sorted(set(sides[0]) | set(sides[1]), key=repr):
        group = dict(zip(group_by, key, strict=True))
        picks = [(data[0], sides[0].get(key, [])), (data[1], sides[1].get(key, []))]
        result.groups.append(_compare_group(docs, result, group, picks[0], picks[1]))
        _warn_mixed_hardware(result, group, picks)
    # compared groups worst first, then new, then missing
    result.groups.sort(key=lambda g: (max(VERDICT_ORDER[g.verdict], 2), -_badness(result, g), g.label()))
    return result


def _group(data: Columns, group_by: Sequence[str]) -> dict[tuple[Any, ...], list[int]]:
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

    def __init__(self, root: Path) -> None:
        self.root = root

    def read(self, run_json: str) -> dict[str, Any] | None:
        try:
            document: dict[str, Any] = json.loads((self.root / run_json).read_bytes())
        except (OSError, ValueError):
            return None
        return document


def _values(
    docs: _Documents, metric: str, side: tuple[Columns, list[int]], warnings: list[str]
) -> tuple[list[float], list[float]]:
    """(per-run metric values, pooled per-iteration latencies where there are any)."""
    data, positions = side
    values: list[float] = []
    iterations: list[float] = []
    indexed = metric in data
    if indexed and len(positions) >= MIN_SAMPLES:  # the common, large case: the index alone
        column = data[metric]
        return [float(column[i]) for i in positions if column[i] is not None], iterations
    for i in positions:
        document = docs.read(data["run_json"][i])
        if document is None:
            warnings.append(f"run {data['run_id'][i]}: its run file cannot be read")
        value = data[metric][i] if indexed else (document or {}).get("metrics", {}).get(metric)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            values.append(float(value))
        if document is not None and (metric == "total_latency_ms" or metric.startswith("latency_")):
            iterations.extend(v for v in document.get("latencies_ms") or [] if isinstance(v, (int, float)))
    return values, iterations


def _compare_group(
    docs: _Documents,
    result: Comparison,
    group: dict[str, Any],
    base_side: tuple[Columns, list[int]],
    cand_side: tuple[Columns, list[int]],
) -> GroupResult:
    base_values, base_iters = _values(docs, result.metric, base_side, result.warnings)
    cand_values, cand_iters = _values(docs, result.metric, cand_side, result.warnings)
    base_rows, cand_rows = base_side[1], cand_side[1]
    out = GroupResult(
        group=group, verdict="unchanged", baseline_runs=len(base_rows), candidate_runs=len(cand_rows)
    )
    if not cand_values:
        out.verdict = "missing"
        out.baseline = statistics.median(base_values) if base_values else None
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
    samples = []
    for values, iterations in ((base_values, base_iters), (cand_values, cand_iters)):
        samples.append(values if len(values) >= MIN_SAMPLES else iterations)
    if all(len(s) >= MIN_SAMPLES for s in samples):
        out.p_value = mann_whitney_u(samples[0], samples[1])[1]
        out.significant = out.p_value < result.alpha
    out.fails = (
        result.gate
        and out.verdict == "regressed"
        and (out.significant is True or not result.require_significance)
    )
    return out


def _warn_mixed_hardware(
    result: Comparison, group: dict[str, Any], sides: list[tuple[Columns, list[int]]]
) -> None:
    kinds = sorted(
        {
            (data["gpu_name"][i] or "-", data["driver_version"][i] or "-")
            for data, positions in sides
            for i in positions
        }
    )
    if len(kinds) > 1:
        shown = ", ".join(f"{gpu} (driver {driver})" for gpu, driver in kinds)
        label = " ".join("-" if v is None else str(v) for v in group.values())
        result.warnings.append(f"group {label}: runs on different GPUs or drivers: {shown}")


def compare_frame(root: StrPath | None, baseline: Side, candidate: Side, **options: Any) -> pd.DataFrame:
    """:func:`compare` as a pandas DataFrame, one row per group (group columns first)."""
    import pandas as pd

    comparison = compare(root, baseline, candidate, **options)
    records = [{**g.group, **{k: v for k, v in asdict(g).items() if k != "group"}} for g in comparison.groups]
    frame: pd.DataFrame = pd.DataFrame.from_records(records)
    frame.attrs["comparison"] = comparison.to_dict()
    return frame
