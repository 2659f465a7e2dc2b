"""``neurolens remote migrate``: turn a plain table (the layout before 0.2) into the typed one.

One overwrite commit, streamed a batch at a time (bounded memory), so readers see the plain
table or the typed one, never half of each. Safe beside pushes of this version: a push
that commits while the migration reads is found in the version before the migration's and
added again;
pushes of this version wait while the table carries the ``neurolens.migrating`` property
(set first: a push already in flight conflicts with it and waits too), then go on in the
typed layout. Runners on a version before 0.2 do not know the property: upgrade them
first (a push of theirs during the migration could leave files of the old layout).
"""

from __future__ import annotations

from typing import Any

from neurolens.errors import StoreError
from neurolens.remote import sql
from neurolens.remote.layout import (
    MIGRATING,
    PAYLOAD_COLUMNS,
    as_index,
    index_select_list,
    is_typed,
    rows_for,
    schema,
)
from neurolens.remote.table import RemoteTable, attempts, deltalake_module, first_line

_BATCH_ROWS = 5_000


def migrate(remote: RemoteTable) -> dict[str, Any]:
    """Migrate ``remote`` to the typed layout; what was done (``migrated`` runs, ``added``
    again after a concurrent push, the new ``version``)."""
    deltalake = deltalake_module()
    table = remote.open()
    if is_typed(table):
        return {"migrated": 0, "added": 0, "already_typed": True, "version": table.version()}
    _flag(remote, table, True)  # pushes of this version wait; one in flight conflicts and waits
    try:
        return _migrate(remote, deltalake)
    finally:
        _flag(remote, remote.open(), False)


def _flag(remote: RemoteTable, table: Any, on: bool) -> None:
    deltalake = deltalake_module()
    for attempt in attempts():
        try:
            table.alter.set_table_properties(
                {MIGRATING: "true" if on else "false"}, raise_if_not_exists=False
            )
            return
        except deltalake.exceptions.CommitFailedError:
            attempt.failed()
            table = remote.open()


def _migrate(remote: RemoteTable, deltalake: Any) -> dict[str, Any]:
    import pyarrow as pa

    for attempt in attempts():
        table = remote.open()
        if is_typed(table):
            return {"migrated": 0, "added": 0, "already_typed": True, "version": table.version()}
        read_version = table.version()
        columns = [*index_select_list(table), *PAYLOAD_COLUMNS]
        statement = f"SELECT {', '.join(columns)} FROM {sql.TABLE}"
        source = pa.RecordBatchReader.from_stream(
            deltalake.QueryBuilder().register(sql.TABLE, table).execute(statement)
        )
        counted = [0]
        typed = pa.RecordBatchReader.from_batches(schema(typed=True), _typed_batches(source, counted))
        try:
            deltalake.write_deltalake(
                table, typed, mode="overwrite", schema_mode="overwrite", partition_by=["day"],
                storage_options=dict(remote.storage_options),
            )  # fmt: skip
        except deltalake.exceptions.CommitFailedError:
            attempt.failed()
            continue
        except (OSError, deltalake.exceptions.DeltaError) as exc:
            raise StoreError(f"migrating the remote table {remote.url} failed: {first_line(exc)}") from None
        added = _add_missed(remote, read_version)
        return {
            "migrated": counted[0],
            "added": added,
            "already_typed": False,
            "version": remote.open().version(),
        }
    raise AssertionError("unreachable")  # pragma: no cover


def _typed_batches(source: Any, counted: list[int]) -> Any:
    for batch in source:
        for start in range(0, batch.num_rows, _BATCH_ROWS):
            part = batch.slice(start, _BATCH_ROWS)
            records = _records(part)
            counted[0] += len(records)
            yield from rows_for(records, typed=True).to_batches()


def _records(part: Any) -> list[dict[str, Any]]:
    """Rows of a query over a plain table as dicts of index text and payload."""
    import pyarrow as pa

    table = pa.Table.from_batches([part])
    index = as_index(table).to_pylist()
    payload = {name: table.column(name).to_pylist() for name in PAYLOAD_COLUMNS}
    return [{**row, **{n: payload[n][i] for n in PAYLOAD_COLUMNS}} for i, row in enumerate(index)]


def _add_missed(remote: RemoteTable, read_version: int) -> int:
    """Runs a push committed between the migration's read and its commit: in the version
    just before the migration's, not in the migrated table. Added again, typed."""
    import pyarrow as pa

    deltalake = deltalake_module()
    ours = remote.open().version()
    if ours - 1 <= read_version:
        return 0
    before = deltalake.DeltaTable(remote.url, version=ours - 1, storage_options=dict(remote.storage_options))
    now_ids = set(remote.query(f"SELECT run_id FROM {sql.TABLE}").column("run_id").to_pylist())
    statement = f"SELECT {', '.join([*index_select_list(before), *PAYLOAD_COLUMNS])} FROM {sql.TABLE}"
    earlier = pa.table(deltalake.QueryBuilder().register(sql.TABLE, before).execute(statement))
    missed = [r for r in _records_of(earlier) if r["run_id"] not in now_ids]
    return remote.insert_new(missed) if missed else 0


def _records_of(table: Any) -> list[dict[str, Any]]:
    return [record for batch in table.to_batches() for record in _records(batch)]
