"""Reading runs back: filters over the index plus manifest tail, newest first."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from neurolens.errors import RunNotFoundError, StoreError
from neurolens.storage.index.filters import LATEST_SESSION, RunFilter
from neurolens.storage.index.reading import select_rows, snapshot
from neurolens.storage.index.rows import Rows
from neurolens.storage.ledger.manifest import COLUMNS
from neurolens.storage.ledger.root import Location, StrPath, require_store, resolve_location

if TYPE_CHECKING:
    import pandas as pd


def select(
    root: Location,
    flt: RunFilter,
    columns: Sequence[str] | None = None,
    *,
    ordered: bool = True,
    as_dictionary: Sequence[str] = (),
) -> Rows:
    """Matching rows, newest first (``created_at``, then ``run_id``), at most ``limit``;
    with at least ``columns`` (None: every column) when the store can read fewer. A
    caller that orders them itself passes ``ordered=False`` (a sort saved). Text columns
    in ``as_dictionary`` may come dictionary-encoded, as the index holds them (a caller
    that groups by them is spared a million strings).

    A root that is not a store is a ``StoreError`` (see ``require_store``). A remote table
    takes the filters, the session and the limit into its scan.
    """
    wanted = flt.session_id

    def narrowing(rows: Rows) -> Rows:
        return rows if wanted is None else _session_rows(rows, wanted)

    if not isinstance(root, Path):
        return narrowing(root.select(flt)).newest(flt.limit)
    require_store(root)
    return select_rows(root, flt, narrowing, columns, ordered=ordered, as_dictionary=as_dictionary)


def _session_rows(rows: Rows, wanted: str) -> Rows:
    """The rows of one session: an exact id, a unique id prefix, or the latest session."""
    if wanted == LATEST_SESSION:
        newest = rows.with_prefix("session_id", "").newest(1).columns(["session_id"])["session_id"]
        if not newest:
            return rows.keep([False] * len(rows))
        wanted = newest[0]
    matching = rows.with_prefix("session_id", wanted)
    sessions = set(matching.columns(["session_id"])["session_id"])
    if len(sessions) > 1 and wanted not in sessions:
        shown = ", ".join(sorted(sessions)[:5])
        raise StoreError(f"session {wanted!r} is ambiguous: {len(sessions)} sessions start with it ({shown})")
    if wanted in sessions and len(sessions) > 1:
        return matching.filter(RunFilter(session_id=wanted, include_failed=True))
    return matching


def find_run(root: Location, prefix: str) -> dict[str, Any]:
    """The index row of the one run whose id is ``prefix`` or starts with it (any case)."""
    if not prefix:
        raise RunNotFoundError("a run id (or a prefix of one) is required")
    if isinstance(root, Path):
        require_store(root)
        rows = snapshot(root)

        def starting(text: str) -> list[dict[str, Any]]:
            return to_records(rows.with_prefix("run_id", text))
    else:

        def starting(text: str) -> list[dict[str, Any]]:
            found = root.find_run(text)
            for record in found:
                record["tags"] = json.loads(record["tags"])
            return found

    matches = starting(prefix)
    if not matches and prefix != prefix.lower():  # generated ids are lowercase hex
        matches = starting(prefix.lower())
        prefix = prefix.lower()
    exact = [m for m in matches if m["run_id"] == prefix]
    if exact or len(matches) == 1:
        return (exact or matches)[0]
    if not matches:
        raise RunNotFoundError(f"no run id starts with {prefix!r} in {root}")
    listed = ", ".join(sorted(m["run_id"] for m in matches)[:5])
    more = f" and {len(matches) - 5} more" if len(matches) > 5 else ""
    raise RunNotFoundError(f"{prefix!r} is ambiguous: {len(matches)} runs match ({listed}{more})")


def to_records(rows: Rows) -> list[dict[str, Any]]:
    """Rows as plain dicts, with ``tags`` decoded to a dict."""
    records = rows.records()
    for record in records:
        record["tags"] = json.loads(record["tags"])
    return records


def query(root: StrPath | None = None, **filters: Any) -> list[dict[str, Any]]:
    """Matching runs as dicts, newest first. Filters as in :class:`RunFilter`."""
    return to_records(select(resolve_location(root), RunFilter(**filters)))


def load_runs(root: StrPath | None = None, **filters: Any) -> pd.DataFrame:
    """Matching runs as a pandas DataFrame, newest first, without reading run JSON files.

    Filters: ``model``, ``backend``, ``precision``, ``day`` (``YYYY-MM-DD``),
    ``session_id`` (an id, a unique prefix or ``"latest"``), ``tags`` (a dict; every
    pair must match) and ``limit``.
    """
    import pandas as pd

    records = query(root, **filters)
    frame: pd.DataFrame = pd.DataFrame.from_records(records, columns=list(COLUMNS))
    return frame
