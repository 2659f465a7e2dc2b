"""The sampling rule: per group and side, one sample per session and round (a run without
a session is a sample of its own), the median of its runs' metric. Samples are ordered
oldest first by their newest run, then (on equal times) session-less runs before
sessions, then by id and round. The tests between sides are made on these samples, never
on the per-call latencies of one session.

``samples`` states the rule for rows in Python (a few runs, metrics read from run
documents); ``arrow_samples`` is the same rule over Arrow columns, without a Python step
per run, for the metrics the index holds (a million runs are a few sorts). A property
test holds the two to the same answers.

Grouping is done by sorting on dense integer codes, not with ``Table.group_by``: that
needs ``pyarrow.dataset``, whose import pulls in pandas (0.4 s of a CLI gate's time).
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from neurolens.storage.index.arrow_filters import float64_array, int64_array
from neurolens.storage.index.arrow_kernels import (
    any_true,
    call,
    cast,
    dictionary_encode,
    filter_rows,
    sort_indices,
    take,
)

GroupKey = tuple[Any, ...]

# A run with a GPU is compared by its GPU; one without, by its CPU model: the CPU leaves the
# group key (null) of a run that has a GPU.
GPU_COLUMN, CPU_COLUMN = "gpu_name", "cpu_model"


def cpu_class(data: dict[str, list[Any]]) -> dict[str, list[Any]]:
    """Columns as lists with the CPU model of GPU runs nulled (``hardware class``)."""
    if CPU_COLUMN in data and GPU_COLUMN in data:
        data[CPU_COLUMN] = [
            None if gpu is not None else cpu
            for gpu, cpu in zip(data[GPU_COLUMN], data[CPU_COLUMN], strict=True)
        ]
    return data


def arrow_cpu_class(table: Any) -> Any:
    """:func:`cpu_class` over an Arrow table."""
    import pyarrow as pa

    if CPU_COLUMN not in table.column_names or GPU_COLUMN not in table.column_names:
        return table
    cpu = table.column(CPU_COLUMN).combine_chunks()
    if pa.types.is_dictionary(cpu.type):
        cpu = cast(cpu, cpu.type.value_type)
    has_gpu = call("is_valid", table.column(GPU_COLUMN).combine_chunks())
    masked = call("if_else", has_gpu, pa.nulls(len(cpu), cpu.type), cpu)  # pa.scalar imports pandas
    return table.set_column(table.schema.get_field_index(CPU_COLUMN), CPU_COLUMN, masked)


class SampleRun(NamedTuple):
    """What the rule needs of one run."""

    value: float
    session_id: str | None
    run_id: str
    repeat: int | None
    created_at: str


def samples(runs: Iterable[SampleRun]) -> list[float]:
    """The sample values of these runs (one side of one group), oldest first."""
    by_sample: dict[tuple[bool, str, Any], list[float]] = {}
    newest: dict[tuple[bool, str, Any], str] = {}
    for run in runs:
        session = run.session_id
        key = (True, session, run.repeat) if session is not None else (False, run.run_id, run.repeat)
        by_sample.setdefault(key, []).append(float(run.value))
        newest[key] = max(newest.get(key, ""), run.created_at)
    # ties: session-less runs, then by id and round (None last)
    order = sorted(by_sample, key=lambda k: (newest[k], k[0], k[1], k[2] is None, k[2] or 0))
    return [statistics.median(by_sample[key]) for key in order]


@dataclass
class SideGroup:
    """One side of one group: its sample values (oldest first), how many runs made them,
    and the (GPU, driver) pairs they ran on ("-" for none)."""

    samples: list[float] = field(default_factory=list)
    runs: int = 0
    hardware: set[tuple[str, str]] = field(default_factory=set)
    too_few: list[int] = field(default_factory=list)  # runs left out: their sample counts


def arrow_samples(table: Any, group_by: Sequence[str], metric: str) -> dict[GroupKey, SideGroup]:
    """Per group key (``group_by``'s values, None for null): the side's samples of ``metric``."""
    import pyarrow as pa

    table = table.combine_chunks()

    def col(name: str) -> Any:  # a column as one Array, so masks and takes stay Arrays
        return table.column(name).combine_chunks()

    group = _codes(table, group_by)
    keys, starts, ends, order = _runs(group)
    firsts = take(table.select(list(group_by)), take(order, starts))
    counts = call("subtract", ends, starts).to_pylist()
    out = {key: SideGroup(runs=count) for key, count in zip(_keys(firsts, group_by), counts, strict=True)}
    keyed = dict(zip(keys.to_pylist(), out, strict=True))  # group code -> group key
    _, kind_starts, _, kind_order = _runs(_codes(table, ["gpu_name", "driver_version"], first=group))
    kind_rows = take(kind_order, kind_starts)
    kinds = take(table.select(["gpu_name", "driver_version"]), kind_rows)
    kind_groups = take(group, kind_rows).to_pylist()
    for code, gpu, driver in zip(
        kind_groups, kinds.column(0).to_pylist(), kinds.column(1).to_pylist(), strict=True
    ):
        out[keyed[code]].hardware.add((gpu or "-", driver or "-"))
    valid = call("is_valid", col(metric))
    lone = call("and", valid, call("is_null", col("session_id")))
    pooled = call("and", valid, call("is_valid", col("session_id")))
    values = cast(col(metric), pa.float64())

    # Lone runs: each is a sample of its own.
    lone_ids = filter_rows(col("run_id"), lone)
    parts = [
        pa.table(
            {
                "_group": filter_rows(group, lone),
                "_time": filter_rows(col("created_at"), lone),
                "_session": call("is_null", lone_ids),  # all False
                "_id": lone_ids,
                "_round": filter_rows(col("repeat"), lone),
                "_value": filter_rows(values, lone),
            }
        )
    ]
    # Runs of a session (and round): one sample, their median, at their newest time.
    if any_true(pooled):
        session = filter_rows(table, pooled)
        sample = _codes(session, ["session_id", "repeat"], first=filter_rows(group, pooled))
        pooled_values = filter_rows(values, pooled)
        by_value = sort_indices(
            pa.table({"s": sample, "v": pooled_values}), [("s", "ascending"), ("v", "ascending")]
        )
        _, starts, ends, _ = _runs(take(sample, by_value), ordered=True)
        sorted_values = take(pooled_values, by_value)
        one, two = int64_array([1, 2])
        sizes = call("subtract", ends, starts)
        low = call("add", starts, call("divide", call("subtract", sizes, one), two))
        high = call("add", starts, call("divide", sizes, two))
        middle_sums = call("add", take(sorted_values, low), take(sorted_values, high))
        medians = call("divide", middle_sums, float64_array([2.0])[0])
        times = session.column("created_at").combine_chunks()
        by_time = sort_indices(pa.table({"s": sample, "t": times}), [("s", "ascending"), ("t", "ascending")])
        _, _, time_ends, _ = _runs(take(sample, by_time), ordered=True)
        newest = take(by_time, call("subtract", time_ends, one))
        first = take(by_value, starts)
        ids = take(session.column("session_id").combine_chunks(), first)
        parts.append(
            pa.table(
                {
                    "_group": take(filter_rows(group, pooled), first),
                    "_time": take(times, newest),
                    "_session": call("is_valid", ids),  # all True
                    "_id": ids,
                    "_round": take(session.column("repeat").combine_chunks(), first),
                    "_value": medians,
                }
            )
        )
    samples = pa.concat_tables(parts)
    if not samples.num_rows:
        return out
    order = [("_group", "ascending"), ("_time", "ascending"), ("_session", "ascending"),
             ("_id", "ascending"), ("_round", "ascending")]  # fmt: skip
    ranked = sort_indices(samples, order)  # nulls last
    codes, starts, ends, _ = _runs(take(samples.column("_group"), ranked), ordered=True)
    sample_values = take(samples.column("_value"), ranked).to_pylist()
    for code, start, end in zip(codes.to_pylist(), starts.to_pylist(), ends.to_pylist(), strict=True):
        out[keyed[code]].samples = sample_values[start:end]
    return out


def _codes(table: Any, columns: Sequence[str], first: Any = None) -> Any:
    """One int64 per row, equal where the rows' values in ``columns`` (and ``first``'s
    code) are equal, dense: from 0 to the number of distinct combinations. Nulls are a
    value of their own."""
    import pyarrow as pa

    code = first
    for name in columns:
        column = table.column(name).combine_chunks()  # a dictionary column: one dictionary
        if pa.types.is_dictionary(column.type):  # as read from the index: null is one more code
            values = len(column.dictionary) + 1
            indices = call("coalesce", cast(column.indices, pa.int64()), int64_array([values - 1])[0])
        else:
            encoded = dictionary_encode(column, nulls_too=True)
            values = len(encoded.dictionary)
            indices = cast(encoded.indices, pa.int64())
        if code is None:
            code = indices
        else:  # re-encoded at each step, so codes stay below the row count (no overflow)
            width = int64_array([values])[0]
            combined = call("add", call("multiply", code, width), indices)
            code = cast(dictionary_encode(combined).indices, pa.int64())
    assert code is not None
    return code


def _runs(codes: Any, *, ordered: bool = False) -> tuple[Any, Any, Any, Any]:
    """For the codes (sorted first unless ``ordered``): each distinct code, where its run
    starts and ends in the sorted order, and that order (indices into ``codes``; None
    when they came ordered)."""
    import pyarrow as pa

    order = None if ordered else call("array_sort_indices", codes)
    ranked = codes if order is None else take(codes, order)
    count = len(ranked)
    if count == 0:
        empty = int64_array([])
        return empty, empty, empty, order
    changes = call("indices_nonzero", call("not_equal", ranked.slice(1), ranked.slice(0, count - 1)))
    starts = pa.concat_arrays([int64_array([0]), call("add", cast(changes, pa.int64()), int64_array([1])[0])])
    ends = pa.concat_arrays([starts.slice(1), int64_array([count])])
    return take(ranked, starts), starts, ends, order


def _keys(table: Any, group_by: Sequence[str]) -> list[GroupKey]:
    return list(zip(*(table.column(name).to_pylist() for name in group_by), strict=True))
