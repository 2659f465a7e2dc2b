"""Reading runs back: filters over the index plus manifest tail, newest first."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from neurolens.errors import RunNotFoundError, StoreError
from neurolens.storage.index import Rows, snapshot
from neurolens.storage.manifest import COLUMNS, encode_tags

if TYPE_CHECKING:
    import pandas as pd

    from neurolens.storage.store import StrPath

_EQUALITY_FILTERS = ("model", "backend", "precision", "day", "session_id")


@dataclass(frozen=True)
class RunFilter:
    """Conditions a run must meet, all together (AND). None means "any"."""

    model: str | None = None
    backend: str | None = None
    precision: str | None = None
    day: str | None = None
    session_id: str | None = None
    tags: Mapping[str, str] = field(default_factory=dict)
    limit: int | None = None

    def __post_init__(self) -> None:
        for name in _EQUALITY_FILTERS:
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                raise ValueError(f"{name} must be a string, not {type(value).__name__}")
        if self.day is not None:
            parse_day(self.day)
        if not isinstance(self.tags, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in self.tags.items()
        ):
            raise ValueError("tags must map strings to strings")
        if self.limit is not None and (
            isinstance(self.limit, bool) or not isinstance(self.limit, int) or self.limit < 0
        ):
            raise ValueError(f"limit must be a non-negative integer, not {self.limit!r}")

    def matches(self, record: Mapping[str, Any]) -> bool:
        for name in _EQUALITY_FILTERS:
            wanted = getattr(self, name)
            if wanted is not None and record[name] != wanted:
                return False
        if self.tags:
            tags = json.loads(record["tags"])
            return all(tags.get(k) == v for k, v in self.tags.items())
        return True


def parse_day(text: str) -> str:
    """Check a ``YYYY-MM-DD`` day; return it unchanged."""
    try:
        if len(text) != 10:
            raise ValueError
        dt.date.fromisoformat(text)
    except (TypeError, ValueError):
        raise ValueError(f"day must be a date as YYYY-MM-DD, not {text!r}") from None
    return text


def select(root: Path, flt: RunFilter) -> Rows:
    """Matching rows, newest first (``created_at``, then ``run_id``), at most ``limit``."""
    if not root.exists():
        return Rows(records=[])
    if not root.is_dir():
        raise StoreError(f"store root {root} is not a directory")
    rows = snapshot(root)
    if rows.table is not None:
        return Rows(table=_select_arrow(rows.table, flt))
    chosen = [r for r in rows.records if flt.matches(r)]
    chosen.sort(key=lambda r: (r["created_at"], r["run_id"]), reverse=True)
    return Rows(records=chosen if flt.limit is None else chosen[: flt.limit])


def _select_arrow(table: Any, flt: RunFilter) -> Any:
    import pyarrow.compute as pc

    mask = None

    def both(condition: Any) -> None:
        nonlocal mask
        mask = condition if mask is None else pc.and_(mask, condition)

    for name in _EQUALITY_FILTERS:
        wanted = getattr(flt, name)
        if wanted is not None:
            both(pc.fill_null(pc.equal(table.column(name), wanted), False))
    for key, value in flt.tags.items():
        # '"key":"value"' inside the canonical tags JSON. It can only match falsely where
        # the JSON holds an escaped quote, so rows with a backslash are checked exactly.
        both(pc.match_substring(table.column("tags"), encode_tags({key: value})[1:-1]))
    if mask is not None:
        table = table.filter(mask)
    if flt.tags and table.num_rows:
        escaped = pc.match_substring(table.column("tags"), "\\").to_pylist()
        if any(escaped):
            tags = table.column("tags").to_pylist()
            keep = [
                not maybe or all(json.loads(t).get(k) == v for k, v in flt.tags.items())
                for t, maybe in zip(tags, escaped, strict=False)
            ]
            table = table.filter(keep)
    order = [("created_at", "descending"), ("run_id", "descending")]
    if flt.limit is not None and flt.limit < table.num_rows:
        table = table.take(pc.select_k_unstable(table, k=flt.limit, sort_keys=order))
    return table.take(pc.sort_indices(table, sort_keys=order))


def find_run(root: Path, prefix: str) -> dict[str, Any]:
    """The index row of the one run whose id is ``prefix`` or starts with it."""
    if not prefix:
        raise RunNotFoundError("a run id (or a prefix of one) is required")
    if not root.is_dir():
        raise RunNotFoundError(f"no store at {root}")
    rows = snapshot(root)
    if rows.table is not None:
        import pyarrow.compute as pc

        table = rows.table.filter(pc.starts_with(rows.table.column("run_id"), prefix))
        matches = to_records(Rows(table=table))
    else:
        matches = to_records(Rows(records=[r for r in rows.records if r["run_id"].startswith(prefix)]))
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
    records = rows.table.to_pylist() if rows.table is not None else [dict(r) for r in rows.records]
    for record in records:
        record["tags"] = json.loads(record["tags"])
    return records


def query(root: StrPath | None = None, **filters: Any) -> list[dict[str, Any]]:
    """Matching runs as dicts, newest first. Filters as in :class:`RunFilter`."""
    from neurolens.storage.store import resolve_root

    return to_records(select(resolve_root(root), RunFilter(**filters)))


def load_runs(root: StrPath | None = None, **filters: Any) -> pd.DataFrame:
    """Matching runs as a pandas DataFrame, newest first, without reading run JSON files.

    Filters: ``model``, ``backend``, ``precision``, ``day`` (``YYYY-MM-DD``),
    ``session_id``, ``tags`` (a dict; every pair must match) and ``limit``.
    """
    import pandas as pd

    records = query(root, **filters)
    frame: pd.DataFrame = pd.DataFrame.from_records(records, columns=list(COLUMNS))
    return frame
