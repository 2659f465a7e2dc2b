"""A comparison's samples, computed over Arrow columns: per group and side, one sample
per session (or round, or session-less run), the median of its runs' metric.

This is ``compare``'s sampling rule (see ``compare._samples``) done without a Python step
per run, for metrics the index holds; a million runs are a few sorts. Samples are ordered
oldest first by their newest run, then (on equal times) session-less runs before
sessions, then by id and round.

Grouping is done by sorting on dense integer codes, not with ``Table.group_by``: that
needs ``pyarrow.dataset``, whose import pulls in pandas (0.4 s of a CLI gate's time).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from neurolens.storage.arrow_filters import float64_array, int64_array

GroupKey = tuple[Any, ...]


@dataclass
class SideGroup:
    """One side of one group: its sample values (oldest first), how many runs made them,
    and the (GPU, driver) pairs they ran on ("-" for none)."""

    samples: list[float] = field(default_factory=list)
    runs: int = 0
    hardware: set[tuple[str, str]] = field(default_factory=set)


def arrow_samples(table: Any, group_by: Sequence[str], metric: str) -> dict[GroupKey, SideGroup]:
    """Per group key (``group_by``'s values, None for null): the side's samples of ``metric``."""
    import pyarrow as pa
    import pyarrow.compute as pc

    table = table.combine_chunks()

    def col(name: str) -> Any:  # a column as one Array, so masks and takes stay Arrays
        return table.column(name).combine_chunks()

    group = _codes(table, group_by)
    keys, starts, ends, order = _runs(group)
    firsts = table.select(list(group_by)).take(order.take(starts))
    out = {
        key: SideGroup(runs=count)
        for key, count in zip(_keys(firsts, group_by), pc.subtract(ends, starts).to_pylist(), strict=True)
    }
    keyed = dict(zip(keys.to_pylist(), out, strict=True))  # group code -> group key
    _, kind_starts, _, kind_order = _runs(_codes(table, ["gpu_name", "driver_version"], first=group))
    kinds = table.select(["gpu_name", "driver_version"]).take(kind_order.take(kind_starts))
    kind_groups = group.take(kind_order.take(kind_starts)).to_pylist()
    for code, gpu, driver in zip(
        kind_groups, kinds.column(0).to_pylist(), kinds.column(1).to_pylist(), strict=True
    ):
        out[keyed[code]].hardware.add((gpu or "-", driver or "-"))
    valid = pc.is_valid(col(metric))
    lone = pc.and_(valid, pc.is_null(col("session_id")))
    pooled = pc.and_(valid, pc.is_valid(col("session_id")))
    values = col(metric).cast(pa.float64())

    # Lone runs: each is a sample of its own.
    parts = [
        pa.table(
            {
                "_group": group.filter(lone),
                "_time": col("created_at").filter(lone),
                "_session": pc.is_null(col("run_id").filter(lone)),  # all False
                "_id": col("run_id").filter(lone),
                "_round": col("repeat").filter(lone),
                "_value": values.filter(lone),
            }
        )
    ]
    # Runs of a session (and round): one sample, their median, at their newest time.
    if pc.any(pooled).as_py():
        session = table.filter(pooled)
        sample = _codes(session, ["session_id", "repeat"], first=group.filter(pooled))
        by_value = pc.sort_indices(
            pa.table({"s": sample, "v": values.filter(pooled)}), [("s", "ascending"), ("v", "ascending")]
        )
        _, starts, ends, _ = _runs(sample.take(by_value), ordered=True)
        sorted_values = values.filter(pooled).take(by_value)
        one, two = int64_array([1, 2])
        low = pc.add(starts, pc.divide(pc.subtract(pc.subtract(ends, starts), one), two))
        high = pc.add(starts, pc.divide(pc.subtract(ends, starts), two))
        medians = pc.divide(
            pc.add(sorted_values.take(low), sorted_values.take(high)), float64_array([2.0])[0]
        )
        times = session.column("created_at").combine_chunks()
        by_time = pc.sort_indices(
            pa.table({"s": sample, "t": times}), [("s", "ascending"), ("t", "ascending")]
        )
        _, _, time_ends, _ = _runs(sample.take(by_time), ordered=True)
        newest = by_time.take(pc.subtract(time_ends, one))
        first = by_value.take(starts)
        ids = session.column("session_id").combine_chunks()
        parts.append(
            pa.table(
                {
                    "_group": group.filter(pooled).take(first),
                    "_time": times.take(newest),
                    "_session": pc.is_valid(ids.take(first)),  # all True
                    "_id": ids.take(first),
                    "_round": session.column("repeat").combine_chunks().take(first),
                    "_value": medians,
                }
            )
        )
    samples = pa.concat_tables(parts)
    if not samples.num_rows:
        return out
    order = [("_group", "ascending"), ("_time", "ascending"), ("_session", "ascending"),
             ("_id", "ascending"), ("_round", "ascending")]  # fmt: skip
    ranked = pc.sort_indices(samples, sort_keys=order)  # nulls last
    codes, starts, ends, _ = _runs(samples.column("_group").take(ranked), ordered=True)
    sample_values = samples.column("_value").take(ranked).to_pylist()
    for code, start, end in zip(codes.to_pylist(), starts.to_pylist(), ends.to_pylist(), strict=True):
        out[keyed[code]].samples = sample_values[start:end]
    return out


def _codes(table: Any, columns: Sequence[str], first: Any = None) -> Any:
    """One int64 per row, equal where the rows' values in ``columns`` (and ``first``'s
    code) are equal, dense: from 0 to the number of distinct combinations. Nulls are a
    value of their own."""
    import pyarrow as pa
    import pyarrow.compute as pc

    code = first
    for name in columns:
        column = table.column(name).combine_chunks()  # a dictionary column: one dictionary
        if pa.types.is_dictionary(column.type):  # as read from the index: null is one more code
            values = len(column.dictionary) + 1
            indices = pc.fill_null(column.indices.cast(pa.int64()), int64_array([values - 1])[0])
        else:
            encoded = pc.dictionary_encode(column, null_encoding="encode")
            values = len(encoded.dictionary)
            indices = encoded.indices.cast(pa.int64())
        if code is None:
            code = indices
        else:  # re-encoded at each step, so codes stay below the row count (no overflow)
            width = int64_array([values])[0]
            code = pc.dictionary_encode(pc.add(pc.multiply(code, width), indices)).indices.cast(pa.int64())
    assert code is not None
    return code


def _runs(codes: Any, *, ordered: bool = False) -> tuple[Any, Any, Any, Any]:
    """For the codes (sorted first unless ``ordered``): each distinct code, where its run
    starts and ends in the sorted order, and that order (indices into ``codes``; None
    when they came ordered)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    order = None if ordered else pc.array_sort_indices(codes)
    ranked = codes if order is None else codes.take(order)
    count = len(ranked)
    if count == 0:
        empty = int64_array([])
        return empty, empty, empty, order
    changes = pc.indices_nonzero(pc.not_equal(ranked.slice(1), ranked.slice(0, count - 1)))
    starts = pa.concat_arrays([int64_array([0]), pc.add(changes.cast(pa.int64()), int64_array([1])[0])])
    ends = pa.concat_arrays([starts.slice(1), int64_array([count])])
    return ranked.take(starts), starts, ends, order


def _keys(table: Any, group_by: Sequence[str]) -> list[GroupKey]:
    return list(zip(*(table.column(name).to_pylist() for name in group_by), strict=True))
