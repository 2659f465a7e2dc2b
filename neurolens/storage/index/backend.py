"""The choice of index backend, made once: Arrow where pyarrow can be imported, else
plain Python (``rows_plain``)."""

from __future__ import annotations

import functools
import importlib
import importlib.util
from typing import Any

from neurolens.storage.index.rows import ARROW_INDEX_NAME, PLAIN_INDEX_NAME, Backend, Rows
from neurolens.storage.index.rows_plain import PlainBackend, RecordRows


def plain_rows(entries: list[dict[str, Any]]) -> Rows:
    """Rows held as the dicts given, whatever the backend: for a few rows, cheaper than
    building a table (pyarrow's first conversion of Python values imports pandas)."""
    return RecordRows(entries)


@functools.cache
def backend() -> Backend:
    """Arrow where pyarrow can be imported, else plain Python: decided here, once."""
    try:
        importlib.import_module("pyarrow")
        importlib.import_module("pyarrow.parquet")
    except ImportError:
        return PlainBackend()
    from neurolens.storage.index.arrow_backend import ArrowBackend

    return ArrowBackend()


def index_name() -> str:
    """The index file ``backend()`` uses, told without importing pyarrow when the backend
    is not decided yet: a writer asks after every run, and most never read the index."""
    if backend.cache_info().currsize:
        return backend().index_name
    return _likely_index_name()


@functools.cache
def _likely_index_name() -> str:
    try:
        found = importlib.util.find_spec("pyarrow") is not None
    except (ImportError, ValueError):  # an import hook that refuses it, a broken install
        found = False
    return ARROW_INDEX_NAME if found else PLAIN_INDEX_NAME
