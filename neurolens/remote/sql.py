"""Run filters as SQL over the remote table, so the scan reads only what they select.

Every value reaches the SQL as a quoted literal (``'`` doubled); names are fixed here.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from neurolens.errors import InvalidArgumentError
from neurolens.storage.index.filters import LATEST_SESSION, PASSING_OUTCOME, RunFilter
from neurolens.storage.ledger.manifest import encode_tags

TABLE = "runs"
_UUID_LENGTH = 36


def literal(value: str) -> str:
    """A SQL string literal."""
    if "\x00" in value:
        raise InvalidArgumentError("a filter value cannot hold a NUL character")
    return "'" + value.replace("'", "''") + "'"


def in_list(column: str, values: Iterable[str]) -> str:
    return f"{column} IN ({', '.join(literal(v) for v in values)})"


def conditions(flt: RunFilter, *, typed: bool = True) -> list[str]:
    """The filter's conditions but the session's (pushed down: partitions and file statistics
    prune the scan). In a typed table tags are a map; in a plain one they match as text
    inside the canonical tags JSON, and rows holding an escaped quote are checked exactly
    afterwards (``Rows.filter``)."""
    where = [f"{name} = {literal(value)}" for name in ("model", "backend", "precision", "day")
             if (value := getattr(flt, name)) is not None]  # fmt: skip
    if typed:
        where += [f"tags[{literal(k)}] = {literal(v)}" for k, v in flt.tags.items()]
    else:
        where += [f"strpos(tags, {literal(encode_tags({k: v})[1:-1])}) > 0" for k, v in flt.tags.items()]
    if not flt.include_failed:
        where.append(f"(outcome IS NULL OR outcome = {literal(PASSING_OUTCOME)})")
    return where


def select(flt: RunFilter, columns: Sequence[str], *, typed: bool = True) -> str:
    """The query of the rows ``flt`` selects, newest first (``columns``: select items)."""
    where = conditions(flt, typed=typed)
    wanted = flt.session_id
    if wanted == LATEST_SESSION:
        inner = " AND ".join([*where, "session_id IS NOT NULL"])
        where.append(
            f"session_id = (SELECT session_id FROM {TABLE} WHERE {inner} "
            "ORDER BY created_at DESC, run_id DESC LIMIT 1)"
        )
    elif wanted is not None and len(wanted) == _UUID_LENGTH:
        where.append(f"session_id = {literal(wanted)}")
    elif wanted is not None:  # a prefix: the caller checks it names one session
        where.append(f"starts_with(session_id, {literal(wanted)})")
    sql = f"SELECT {', '.join(columns)} FROM {TABLE}"
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += " ORDER BY created_at DESC, run_id DESC"
    # a prefix's ambiguity is judged on every matching session: no limit then
    if flt.limit is not None and (wanted is None or wanted == LATEST_SESSION or len(wanted) == _UUID_LENGTH):
        sql += f" LIMIT {int(flt.limit)}"
    return sql
