"""Compare two sets of runs group by group and decide whether the candidate regressed.

Runs are paired by a group key (model, backend, precision, batch size, sequence length and
GPU by default). Within a group each side's runs form samples: one per pytest session (or
per round, for a measurement repeated in one session; a run without a session is a sample
of its own). The statistic compared is the median of the samples' values.

The rules that decide a group's verdict are in ``verdicts`` (``judge``, then ``settle`` over
all groups at once); the sampling rule in ``samples``.

A gate never passes by mistake: a comparison where nothing was compared (an empty
side, no group on both sides) says why in ``nothing_compared``; a metric no run
carries is an ``UnknownMetricError``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from neurolens.analysis.metrics import (
    DEFAULT_METRIC,
    METRIC_COLUMNS,
    TAIL_MINIMUM,
    UnknownDirectionError,
    UnknownMetricError,
    higher_is_better,
    resolve_metric,
)
from neurolens.analysis.run_values import Documents, side_samples
from neurolens.analysis.samples import (
    CPU_COLUMN,
    GPU_COLUMN,
    SideGroup,
    arrow_cpu_class,
    arrow_samples,
    cpu_class,
)
from neurolens.analysis.verdicts import (
    COMPARED,
    VERDICT_ORDER,
    Comparison,
    GroupResult,
    Threshold,
    group_label,
    judge,
    settle,
)
from neurolens.errors import InvalidArgumentError
from neurolens.sources import RunSource, open_source
from neurolens.storage.index.filters import RunFilter
from neurolens.storage.ledger.manifest import COLUMNS
from neurolens.storage.ledger.root import StrPath

if TYPE_CHECKING:
    import pandas as pd

    from neurolens.remote.table import RemoteTable

Root = RunSource | StrPath | None

# the hardware class: the GPU, or for a run without one the CPU model (``samples.cpu_class``)
DEFAULT_GROUP_BY = ("model", "backend", "precision", "batch_size", "seq_len", "gpu_name", "cpu_model")
_HARDWARE_COLUMNS = (GPU_COLUMN, CPU_COLUMN, "driver_version", "cuda_version", "fingerprint_hash")


def compare(
    root: Root | RemoteTable,
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
    baseline_root: Root | RemoteTable = None,
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
            raise InvalidArgumentError(
                f"{name}: give it a selector (a tag, day, session, model, backend or precision)"
            )
    metric = resolve_metric(metric)
    unknown = [k for k in group_by if k not in COLUMNS]
    if unknown or not group_by:
        raise InvalidArgumentError(
            f"group-by columns must be among {', '.join(COLUMNS)}; got {', '.join(unknown) or 'none'}"
        )
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 < alpha < 1:
        raise InvalidArgumentError(f"alpha must be between 0 and 1, not {alpha!r}")
    limit = threshold if isinstance(threshold, Threshold) else Threshold.parse(threshold or "5%")
    unknown_direction: UnknownDirectionError | None = None
    if higher_better is None:
        try:
            higher_better = higher_is_better(metric)
        except UnknownDirectionError as exc:  # said after "no run carries it", the likelier typo
            unknown_direction, higher_better = exc, False
    result = Comparison(
        metric=metric,
        higher_is_better=higher_better,
        threshold=limit,
        gate=threshold is not None,
        require_significance=require_significance,
        alpha=alpha,
        fail_on_missing=fail_on_missing,
        noise_floor=noise_floor,
    )
    sources = [open_source(baseline_root if baseline_root is not None else root), open_source(root)]
    try:
        _compare_sides(result, sources, sides, group_by, unknown_direction)
    finally:
        for source, given in zip(
            sources, (baseline_root if baseline_root is not None else root, root), strict=True
        ):
            if source is not given:  # opened here: its open folders are ours to close
                source.close()
    return result


def _compare_sides(
    result: Comparison,
    sources: list[RunSource],
    sides: list[RunFilter],
    group_by: Sequence[str],
    unknown_direction: UnknownDirectionError | None,
) -> None:
    metric = result.metric
    per_run = ["run_id", "gpu_name", "driver_version", "session_id", "repeat", "created_at"]
    # the metric from the index, or each run's file (a tail percentile: with its sample count)
    indexed = metric in COLUMNS and metric not in TAIL_MINIMUM
    needed = list(dict.fromkeys([*group_by, *per_run, metric if indexed else "run_json"]))
    # grouped by code, not by text: these may come dictionary-encoded from the index
    encoded = [c for c in (*group_by, "gpu_name", "driver_version") if c not in ("run_id", "session_id")]
    rows = [
        source.select(side, needed, ordered=False, as_dictionary=encoded)
        for source, side in zip(sources, sides, strict=True)
    ]
    if sources[0] == sources[1] and not sides[0].excludes(sides[1]):
        overlap = rows[0].shared_ids(rows[1])
        if overlap:
            result.warnings.append(
                f"{len(overlap)} run(s) match both sides; they count for the candidate only"
            )
            rows[0] = rows[0].without("run_id", overlap)
    for name, side, side_rows in zip(("baseline", "candidate"), sides, rows, strict=True):
        if not len(side_rows) and result.nothing_compared is None:
            result.nothing_compared = f"the {name} is empty: no run matches {side.describe()}"
    docs = Documents(sources)
    tables = [r.arrow() for r in rows]
    if indexed and tables[0] is not None and tables[1] is not None:
        by_side = [arrow_samples(arrow_cpu_class(table), group_by, metric) for table in tables]
    else:
        data = [cpu_class(r.columns(needed)) for r in rows]
        by_side = [side_samples(docs, metric, i, data[i], group_by, result.warnings) for i in (0, 1)]
    if unknown_direction is not None:  # what the runs say (record(higher_is_better=...)), else the error
        result.higher_is_better = _stated_direction(docs, result.metric, unknown_direction)
    _join_unknown_cpu(by_side, group_by)
    for key in sorted(set(by_side[0]) | set(by_side[1]), key=repr):
        group = dict(zip(group_by, key, strict=True))
        base, cand = by_side[0].get(key, SideGroup()), by_side[1].get(key, SideGroup())
        out = judge(result, group, base.samples, cand.samples)
        out.baseline_runs, out.candidate_runs = base.runs, cand.runs
        _too_few(result, out, base, cand)
        result.groups.append(out)
        _warn_mixed_hardware(result, group, base.hardware | cand.hardware)
    elsewhere = _other_hardware(result, group_by)
    settle(result, result.groups)  # the suite's groups decided together (Holm)
    sized = [g for g in result.groups if g.verdict != "insufficient"]
    if sized and all(g.baseline is None and g.candidate is None for g in sized):
        raise UnknownMetricError(metric, sorted(docs.metrics_seen | set(METRIC_COLUMNS)))
    compared = any(g.verdict in COMPARED for g in result.groups)
    if result.nothing_compared is None and not compared:
        result.nothing_compared = (
            f"every group's runs are too small to bound {metric} (see each group)"
            if result.groups
            and all(g.verdict in ("insufficient", "new", "missing") for g in result.groups)
            and any(g.verdict == "insufficient" for g in result.groups)
            else "no group has runs on both sides"
            + ("; the baseline ran on other hardware (see each group)" if elsewhere else "")
        )
    # compared groups worst first, then new, then missing
    compared_rank = VERDICT_ORDER["unchanged"]
    result.groups.sort(
        key=lambda g: (max(VERDICT_ORDER[g.verdict], compared_rank), -_badness(result, g), g.label())
    )


def _too_few(result: Comparison, out: GroupResult, base: SideGroup, cand: SideGroup) -> None:
    """A tail percentile's runs too small to bound it: a side left with none makes the group
    ``insufficient`` (never compared, never passed as unchanged); some left out, a warning."""
    if not (base.too_few or cand.too_few):
        return
    minimum = TAIL_MINIMUM[result.metric]
    fewest = min(base.too_few + cand.too_few)
    if (base.too_few and not base.samples) or (cand.too_few and not cand.samples):
        out.verdict, out.fails = "insufficient", False
        out.p_value = out.noise_p = out.noise_floor = out.significant = None
        out.note = (
            f"{result.metric} needs {minimum} timed calls a run to be bounded at 99%; "
            f"these runs have as few as {fewest}: measure longer (measure() without iterations=) "
            "or compare the median"
        )
        out._evidence = None
        return
    left_out = len(base.too_few) + len(cand.too_few)
    result.warnings.append(
        f"group {group_label(out.group)}: {left_out} run(s) left out, fewer than {minimum} timed calls "
        f"for {result.metric}"
    )


def _badness(result: Comparison, g: GroupResult) -> float:
    if g.change_pct is None:
        return -math.inf
    return -g.change_pct if result.higher_is_better else g.change_pct


def _stated_direction(docs: Documents, metric: str, unknown: UnknownDirectionError) -> bool:
    stated = docs.directions.get(metric, set())
    if len(stated) == 1:
        return next(iter(stated))
    if stated:
        raise InvalidArgumentError(
            f"the runs disagree on which way is better for {metric!r}: "
            "say --higher-is-better or --lower-is-better"
        )
    if not docs.metrics_seen or metric in docs.metrics_seen:
        raise unknown
    raise UnknownMetricError(metric, sorted(docs.metrics_seen | set(METRIC_COLUMNS)))


def _join_unknown_cpu(by_side: list[dict[Any, SideGroup]], group_by: Sequence[str]) -> None:
    """Runs without a GPU whose CPU model is not recorded (written before neurolens recorded
    it, or without hardware) join the group of the one CPU model the group's other runs, on
    either side, ran on; with several they stay apart (never compared across machines).
    Their samples count as the older ones."""
    if GPU_COLUMN not in group_by or CPU_COLUMN not in group_by:
        return
    gpu, cpu = group_by.index(GPU_COLUMN), group_by.index(CPU_COLUMN)

    def rest(key: tuple[Any, ...]) -> tuple[Any, ...]:
        return tuple(v for i, v in enumerate(key) if i != cpu)

    known: dict[tuple[Any, ...], set[Any]] = {}
    for side in by_side:
        for key in side:
            if key[gpu] is None and key[cpu] is not None:
                known.setdefault(rest(key), set()).add(key[cpu])
    for side in by_side:
        for key in [k for k in side if k[gpu] is None and k[cpu] is None]:
            models = known.get(rest(key), set())
            if len(models) != 1:
                continue
            target = tuple(next(iter(models)) if i == cpu else v for i, v in enumerate(key))
            unknown, joined = side.pop(key), side.setdefault(target, SideGroup())
            joined.samples[:0] = unknown.samples
            joined.runs += unknown.runs
            joined.hardware |= unknown.hardware
            joined.too_few += unknown.too_few


def _other_hardware(result: Comparison, group_by: Sequence[str]) -> bool:
    """A candidate group with no baseline on its hardware class but some on another: said
    in the group's note, never compared across machines. Whether there was one."""
    hardware = [k for k in group_by if k in _HARDWARE_COLUMNS]
    if not hardware:
        return False
    found = False
    rest = [k for k in group_by if k not in hardware]
    baseline_only: dict[tuple[Any, ...], list[GroupResult]] = {}
    for g in result.groups:
        if g.verdict == "missing":
            baseline_only.setdefault(tuple(g.group[k] for k in rest), []).append(g)
    for g in result.groups:
        others = baseline_only.get(tuple(g.group[k] for k in rest)) if g.verdict == "new" else None
        if others:
            found = True
            shown = "; ".join(_hardware_text(o.group, hardware) for o in others)
            g.note = (
                f"no baseline runs on this hardware ({_hardware_text(g.group, hardware)}), only on "
                f"{shown}: not compared across machines (record a baseline on this hardware, or "
                f"--group-by {','.join('-' + k for k in hardware)} to compare anyway)"
            )
    return found


def _hardware_text(group: Mapping[str, Any], hardware: Sequence[str]) -> str:
    shown = [f"{k} {group[k]}" for k in hardware if group[k] is not None]
    if group.get(GPU_COLUMN) is None and CPU_COLUMN in hardware and group.get(CPU_COLUMN) is None:
        shown.append("CPU model not recorded")
    return ", ".join(shown) or "unknown"


def _warn_mixed_hardware(result: Comparison, group: dict[str, Any], kinds: set[tuple[str, str]]) -> None:
    if len(kinds) > 1:
        shown = ", ".join(f"{gpu} (driver {driver})" for gpu, driver in sorted(kinds))
        result.warnings.append(f"group {group_label(group)}: runs on different GPUs or drivers: {shown}")


def compare_frame(
    root: Root,
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
