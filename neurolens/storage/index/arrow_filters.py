"""Run filters as Arrow masks, and Arrow values built from buffers.

pyarrow imports pandas (0.3 s) on its first conversion of a Python value; a reader that
only filters needs none, so literals and small arrays here are built from buffers.
"""

from __future__ import annotations

import array
import functools
import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from neurolens.storage.index.arrow_kernels import any_true, call, cast, match_substring, take
from neurolens.storage.index.filters import EQUALITY_FILTERS, PASSING_OUTCOME, RunFilter
from neurolens.storage.ledger.manifest import encode_tags


def int64_array(values: Sequence[int]) -> Any:
    """An int64 array built from a buffer (no pandas import; see ``literal``)."""
    import pyarrow as pa

    return pa.Array.from_buffers(pa.int64(), len(values), [None, pa.py_buffer(array.array("q", values))])


def float64_array(values: Sequence[float]) -> Any:
    """A float64 array built from a buffer (no pandas import; see ``literal``)."""
    import pyarrow as pa

    return pa.Array.from_buffers(pa.float64(), len(values), [None, pa.py_buffer(array.array("d", values))])


def string_array(values: Sequence[str]) -> Any:
    """A string array built from buffers (no pandas import; see ``literal``)."""
    import pyarrow as pa

    encoded = [v.encode("utf-8") for v in values]
    offsets = array.array("i", [0])
    total = 0
    for item in encoded:
        total += len(item)
        offsets.append(total)
    return pa.Array.from_buffers(
        pa.string(), len(values), [None, pa.py_buffer(offsets), pa.py_buffer(b"".join(encoded))]
    )


def literal(text: str) -> Any:
    """A string scalar built from buffers. pyarrow imports pandas (0.3 s) on its first
    conversion of a Python value; a reader that only filters needs none."""
    import struct

    import pyarrow as pa

    data = text.encode("utf-8")
    offsets = pa.py_buffer(struct.pack("<ii", 0, len(data)))
    return pa.Array.from_buffers(pa.string(), 1, [None, offsets, pa.py_buffer(data)])[0]


def filter_mask(table: Any, flt: RunFilter) -> Any:
    """Which rows of ``table`` meet the equality, outcome and tag conditions of ``flt``
    (None: every row). A null in the mask means no. Dictionary-encoded columns are
    tested once per distinct value, not once per row."""
    conditions = []
    if not flt.include_failed:  # no outcome (a run written outside pytest) counts as passed
        passing = literal(PASSING_OUTCOME)
        conditions.append(_per_value(table.column("outcome"), lambda v: call("equal", v, passing), null=True))
    for name in EQUALITY_FILTERS:
        wanted = getattr(flt, name)
        if wanted is not None:
            conditions.append(
                _per_value(table.column(name), functools.partial(call, "equal", literal(wanted)))
            )
    if flt.tags:
        conditions.append(_per_value(table.column("tags"), lambda v: _tags_match(v, flt.tags)))
    mask = None
    for condition in conditions:
        mask = condition if mask is None else call("and_kleene", mask, condition)
    return mask


def _per_value(column: Any, condition: Callable[[Any], Any], *, null: bool = False) -> Any:
    """``condition`` over a column's values; for a dictionary chunk, over its dictionary
    and then spread by the indices. A null value gets ``null``'s answer when given True."""
    import pyarrow as pa

    chunks = []
    for chunk in column.chunks:
        if pa.types.is_dictionary(chunk.type):
            result = take(condition(chunk.dictionary), chunk.indices)
        else:
            result = condition(chunk)
        chunks.append(call("or_kleene", call("is_null", result), result) if null else result)
    return pa.chunked_array(chunks, pa.bool_())


def _tags_match(values: Any, wanted: Mapping[str, str]) -> Any:
    """Which canonical tags JSON texts hold every wanted pair. '"key":"value"' inside the
    text is the test; it can only match falsely where the JSON holds an escaped quote, so
    texts with a backslash are parsed and checked exactly."""
    pairs = [match_substring(values, encode_tags({key: value})[1:-1]) for key, value in wanted.items()]
    mask = functools.reduce(functools.partial(call, "and_kleene"), pairs)
    doubtful = call("and_kleene", mask, match_substring(values, "\\"))
    if not any_true(doubtful):
        return mask
    texts = values.to_pylist()
    exact = [
        bool(maybe) and all(json.loads(text).get(k) == v for k, v in wanted.items()) if doubt else bool(maybe)
        for text, maybe, doubt in zip(texts, mask.to_pylist(), doubtful.to_pylist(), strict=True)
    ]
    return bool_array(exact)


def bool_array(values: Sequence[bool]) -> Any:
    """A boolean array built from a buffer (no pandas import; see ``literal``)."""
    import pyarrow as pa

    data = pa.py_buffer(array.array("b", values))
    return cast(pa.Array.from_buffers(pa.int8(), len(values), [None, data]), pa.bool_())
