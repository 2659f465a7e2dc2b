"""Arrow compute kernels called by name, for the store's readers.

``import pyarrow.compute`` wraps each of Arrow's ~290 kernels in a generated Python
function: 50-100 ms, a fifth of ``neurolens ls`` on a large store. The kernels themselves
are in ``pyarrow._compute``, loaded with pyarrow in under 10 ms; ``pc.call_function`` is
that module's ``call_function``. Table and array methods (``filter``, ``take``, ``cast``)
import the wrappers on first use, so the store's modules call these functions instead.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Sequence
from typing import Any

_KERNELS_MODULE = "pyarrow._compute"


@functools.cache
def _kernels() -> Any:
    try:
        return importlib.import_module(_KERNELS_MODULE)
    except ImportError:  # a pyarrow that moved it: the public module has the same names
        return importlib.import_module("pyarrow.compute")


def call(name: str, *args: Any, options: Any = None) -> Any:
    """The kernel ``name`` over ``args`` (arrays, chunked arrays, tables or scalars)."""
    return _kernels().call_function(name, list(args), options)


def filter_rows(data: Any, mask: Any) -> Any:
    """The rows of ``data`` where ``mask`` is true (a null there drops the row)."""
    return call("filter", data, mask, options=_kernels().FilterOptions("drop"))


def take(data: Any, indices: Any) -> Any:
    return call("take", data, indices)


def cast(data: Any, target_type: Any) -> Any:
    """A safe cast (an overflow or a lossy conversion raises)."""
    return call("cast", data, options=_kernels().CastOptions.safe(target_type))


def cast_table(table: Any, schema: Any) -> Any:
    """``table`` with its columns cast to ``schema``'s fields, in the same order."""
    import pyarrow as pa

    columns = [cast(table.column(i), field.type) for i, field in enumerate(schema)]
    return pa.Table.from_arrays(columns, schema=schema)


def select_k(table: Any, k: int, sort_keys: Sequence[tuple[str, str]]) -> Any:
    """Indices of the first ``k`` rows in ``sort_keys`` order (ties in no order)."""
    return call("select_k_unstable", table, options=_kernels().SelectKOptions(k, list(sort_keys)))


def sort_indices(data: Any, sort_keys: Sequence[tuple[str, str]]) -> Any:
    return call("sort_indices", data, options=_kernels().SortOptions(list(sort_keys)))


def match_substring(data: Any, pattern: str, *, regex: bool = False) -> Any:
    name = "match_substring_regex" if regex else "match_substring"
    return call(name, data, options=_kernels().MatchSubstringOptions(pattern))


def replace_regex(data: Any, pattern: str, replacement: str) -> Any:
    return call(
        "replace_substring_regex", data, options=_kernels().ReplaceSubstringOptions(pattern, replacement)
    )


def starts_with(data: Any, prefix: str) -> Any:
    return call("starts_with", data, options=_kernels().MatchSubstringOptions(prefix))


def set_lookup(name: str, data: Any, value_set: Any) -> Any:
    """``is_in`` or ``index_in`` of ``data`` in ``value_set``."""
    return call(name, data, options=_kernels().SetLookupOptions(value_set))


def dictionary_encode(data: Any, *, nulls_too: bool = False) -> Any:
    """``data`` as a dictionary array; with ``nulls_too`` a null is a dictionary value."""
    options = _kernels().DictionaryEncodeOptions("encode" if nulls_too else "mask")
    return call("dictionary_encode", data, options=options)


def any_true(data: Any) -> bool:
    """Whether some value is true (nulls skipped)."""
    return bool(call("any", data).as_py())
