"""Per-run work spread over processes: verify and merge check runs in parts of entries.

Checking a run (hash, parse, schema, canonical form) is Python work that holds the GIL,
so it scales with processes, not threads. A part travels to its worker as Arrow IPC
bytes (or a list of dicts without pyarrow) and comes back as a list, in order.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from typing import Any

from neurolens.storage.index.rows import Rows
from neurolens.storage.ledger.manifest import COLUMNS


def worker_count(requested: int | None) -> int:
    return requested or os.cpu_count() or 1


def parts_of(rows: Rows, size: int) -> list[Any]:
    """``rows`` cut into parts of ``size`` entries, each ready to send to a worker."""
    table = rows.arrow()
    if table is None:
        records = rows.records()
        return [records[start : start + size] for start in range(0, len(records), size)]
    table = table.select(list(COLUMNS))
    return [_ipc_bytes(table.slice(start, size)) for start in range(0, len(rows), size)]


def entries_of(part: Any) -> list[dict[str, Any]]:
    """A part's entries, in a worker."""
    if isinstance(part, list):
        return part
    import pyarrow as pa

    entries: list[dict[str, Any]] = pa.ipc.open_stream(part).read_all().to_pylist()
    return entries


def _ipc_bytes(part: Any) -> Any:
    """A Table slice as Arrow IPC bytes holding just its rows: a pickled slice carries its
    whole parent table (every part of a 1M-run store would ship all 1M rows)."""
    import pyarrow as pa

    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, part.schema) as writer:
        writer.write_table(part)
    return sink.getvalue()


@contextlib.contextmanager
def process_pool(workers: int) -> Iterator[ProcessPoolExecutor]:
    # forkserver: a clean process to fork workers from (this one may run pyarrow threads)
    methods = multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")
    with ProcessPoolExecutor(workers, mp_context=context) as pool:
        yield pool
