"""A comparison's samples, computed over Arrow columns: per group and side, one sample
per session (or round, or session-less run), the median of its runs' metric.

This is ``compare``'s sampling rule (see ``compare._samples``) done without a Python step
per run, for metrics the index holds; a million runs are a few column operations.
Samples are ordered oldest first by their newest run, then (on equal times) session-less
runs before sessions, then by id and round.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from neurolens.storage.arrow_filters import float64_array

GroupKey = tuple[Any, ...]


@dataclass
class SideGroup:
    """One side of one group: its sample values (oldest first) and how many runs made them."""

    samples: list[float] = field(default_factory=list)
    runs: int = 0


def arrow_samples(table: Any, group_by: Sequence[str], metric: str) -> dict[GroupKey, SideGroup]:
    """Per group key (``group_by``'s values, None for null): the side's samples of ``metric``."""
    import pyarrow as pa
    import pyarrow.compute as pc

    runs = table.group_by(list(group_by), use_threads=False).aggregate([("run_id", "count")])
    out = {
        key: SideGroup(runs=count)
        for key, count in zip(_keys(runs, group_by), runs.column("run_id_count").to_pylist(), strict=True)
    }
    valid = table.filter(pc.is_valid(table.column(metric)))
    if not valid.num_rows:
        return out
    # A run without a session is a sample of its own: only runs with one are aggregated.
    alone = valid.filter(pc.is_null(valid.column("session_id")))
    grouped = valid.filter(pc.is_valid(valid.column("session_id")))
    per_sample = grouped.group_by([*group_by, "session_id", "repeat"], use_threads=False).aggregate(
        [(metric, "list"), (metric, "count"), ("created_at", "max")]
    )
    values = per_sample.column(f"{metric}_list")
    medians = pc.list_element(values, 0).cast(pa.float64()).to_pylist()
    several = pc.indices_nonzero(pc.greater(per_sample.column(f"{metric}_count"), 1)).to_pylist()
    if several:
        for position, members in zip(several, values.take(several).to_pylist(), strict=True):
            medians[position] = statistics.median(members)
    columns = [*group_by, "_time", "_session", "_id", "_round", "_value"]
    lone = _samples_table(
        alone, group_by, alone.column("created_at"), False, alone.column("run_id"), alone.column("repeat"),
        alone.column(metric).cast(pa.float64()),
    )  # fmt: skip
    sessions = _samples_table(
        per_sample, group_by, per_sample.column("created_at_max"), True, per_sample.column("session_id"),
        per_sample.column("repeat"), pa.chunked_array([float64_array(medians)], pa.float64()),
    )  # fmt: skip
    both = pa.concat_tables([lone.select(columns), sessions.select(columns)])
    # A stable sort by time (then kind, id, round; nulls last): each group's list below
    # keeps this order, oldest first.
    order = [("_time", "ascending"), ("_session", "ascending"), ("_id", "ascending"), ("_round", "ascending")]
    per_sample = both.select([*group_by, "_value"]).take(pc.sort_indices(both, sort_keys=order))
    per_group = per_sample.group_by(list(group_by), use_threads=False).aggregate([("_value", "list")])
    for key, samples in zip(
        _keys(per_group, group_by), per_group.column("_value_list").to_pylist(), strict=True
    ):
        out[key].samples = samples
    return out


def arrow_hardware(tables: Sequence[Any], group_by: Sequence[str]) -> dict[GroupKey, set[tuple[str, str]]]:
    """Per group key: the (GPU, driver) pairs its runs on either side ran on ("-" for none)."""
    kinds: dict[GroupKey, set[tuple[str, str]]] = {}
    for table in tables:
        names = list(dict.fromkeys([*group_by, "gpu_name", "driver_version"]))
        pairs = table.select(names).group_by(names, use_threads=False).aggregate([])
        gpus = pairs.column("gpu_name").to_pylist()
        drivers = pairs.column("driver_version").to_pylist()
        for key, gpu, driver in zip(_keys(pairs, group_by), gpus, drivers, strict=True):
            kinds.setdefault(key, set()).add((gpu or "-", driver or "-"))
    return kinds


def _samples_table(
    source: Any, group_by: Sequence[str], time: Any, session: bool, ids: Any, rounds: Any, values: Any
) -> Any:
    """Samples as rows: group keys, newest time, kind (session or lone run), id, round, value."""
    import pyarrow as pa
    import pyarrow.compute as pc

    return pa.table(
        {
            **{name: source.column(name) for name in group_by},
            "_time": time,
            # ids are never null: all True for sessions, all False for lone runs
            "_session": pc.is_valid(ids) if session else pc.is_null(ids),
            "_id": ids,
            "_round": rounds,
            "_value": values,
        }
    )


def _keys(table: Any, group_by: Sequence[str]) -> list[GroupKey]:
    return list(zip(*(table.column(name).to_pylist() for name in group_by), strict=True))
