"""Reading a local store's runs back: filters over the index plus manifest tail, newest first.

``neurolens.sources`` puts this and a remote table behind one interface.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from neurolens.errors import RunNotFoundError, StoreError
from neurolens.storage.index.filters import LATEST_SESSION, RunFilter
from neurolens.storage.index.reading import select_rows, snapshot
from neurolens.storage.index.rows import Rows
from neurolens.storage.ledger.root import require_store


def select(
    root: Path,
    flt: RunFilter,
    columns: Sequence[str] | None = None,
    *,
    ordered: bool = True,
    as_dictionary: Sequence[str] = (),
) -> Rows:
    """The local store's matching rows, newest first (``created_at``, then ``run_id``), at
    most ``limit``; with at least ``columns`` (None: every column) when the store can read
    fewer. A caller that orders them itself passes ``ordered=False`` (a sort saved). Text
    columns in ``as_dictionary`` may come dictionary-encoded, as the index holds them (a
    caller that groups by them is spared a million strings).

    A root that is not a store is a ``StoreError`` (see ``require_store``).
    """
    wanted = flt.session_id
    require_store(root)

    def narrowing(rows: Rows) -> Rows:
        return rows if wanted is None else session_rows(rows, wanted)

    return select_rows(root, flt, narrowing, columns, ordered=ordered, as_dictionary=as_dictionary)


def session_rows(rows: Rows, wanted: str) -> Rows:
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


def find_run(root: Path, prefix: str) -> dict[str, Any]:
    """The local store's index row of the one run whose id is ``prefix`` or starts with it."""
    require_store(root)
    rows = snapshot(root)
    return unique_run(lambda text: to_records(rows.with_prefix("run_id", text)), prefix, str(root))


def unique_run(starting: Callable[[str], list[dict[str, Any]]], prefix: str, where: str) -> dict[str, Any]:
    """The one row ``starting(prefix)`` finds whose id is ``prefix`` or starts with it (any
    case: generated ids are lowercase hex); none or several is a ``RunNotFoundError``."""
    if not prefix:
        raise RunNotFoundError("a run id (or a prefix of one) is required")
    matches = starting(prefix)
    if not matches and prefix != prefix.lower():
        matches = starting(prefix.lower())
        prefix = prefix.lower()
    exact = [m for m in matches if m["run_id"] == prefix]
    if exact or len(matches) == 1:
        return (exact or matches)[0]
    if not matches:
        raise RunNotFoundError(f"no run id starts with {prefix!r} in {where}")
    listed = ", ".join(sorted(m["run_id"] for m in matches)[:5])
    more = f" and {len(matches) - 5} more" if len(matches) > 5 else ""
    raise RunNotFoundError(f"{prefix!r} is ambiguous: {len(matches)} runs match ({listed}{more})")


def to_records(rows: Rows) -> list[dict[str, Any]]:
    """Rows as plain dicts, with ``tags`` decoded to a dict."""
    records = rows.records()
    for record in records:
        record["tags"] = json.loads(record["tags"])
    return records
