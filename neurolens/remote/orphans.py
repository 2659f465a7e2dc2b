"""Files a failed ``remote optimize`` wrote and no version will ever reference.

An optimize writes its compacted files first and commits after; when the commit fails (a
concurrent delete or merge changed the files it read) those files stay behind, read by no
one, until a vacuum long after. They are told from what must stay by three facts: no
version references them (a file a push wrote and has not committed yet is unreferenced too,
so the check is made again after a grace period: a push commits within seconds of writing,
an optimize never will), they appeared after the optimize began, and they were already
there when it failed. Tombstoned files (removed by a later version) are vacuum's, never
touched here: a reader of an older version may still need them.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Mapping
from typing import Any


def never_referenced(table: Any) -> set[str]:
    """Data files under the table no version of its log has added."""
    every = table.vacuum(retention_hours=0, dry_run=True, enforce_retention_duration=False, full=True)
    tombstoned = table.vacuum(retention_hours=0, dry_run=True, enforce_retention_duration=False)
    return set(every) - set(tombstoned)


def remove_orphans(
    table_uri: str,
    options: Mapping[str, str],
    before: set[str],
    started: dt.datetime,
    grace_s: float,
) -> list[str]:
    """Remove the files a failed optimize left (see the module); the ones removed."""
    import deltalake
    from deltalake.fs import DeltaStorageHandler

    # object stores keep modification times to the second
    started = started.replace(microsecond=0)
    failed = dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=1)
    suspects = never_referenced(deltalake.DeltaTable(table_uri, storage_options=dict(options))) - before
    if not suspects:
        return []
    time.sleep(grace_s)
    still = never_referenced(deltalake.DeltaTable(table_uri, storage_options=dict(options)))
    handler = DeltaStorageHandler(table_uri, dict(options))
    removed = []
    for path, info in zip(sorted(suspects), handler.get_file_info(sorted(suspects)), strict=True):
        written = info.mtime
        if path in still and written is not None and started <= written <= failed:
            handler.delete_file(path)
            removed.append(path)
    return removed
