"""The remote table: one Delta Lake table of runs, partitioned by day.

Its rows carry the manifest's columns (so the same filters apply), the canonical run
document and fingerprint (so a pull restores the exact files, verified by ``sha256``), and
when each row was pushed. Partitioned by ``day`` only: a table that gets many small appends
must not scatter them over model x backend folders; model and backend are pruned by file
statistics, which ``remote optimize`` (Z-order) makes sharp.

Reads go through ``deltalake.QueryBuilder`` (SQL, projected and filtered in the scan):
the ``to_pyarrow_*`` readers abort the process at exit now and then (delta-rs 1.6). Writes
are MERGEs on the run id, retried on a commit conflict, so a run id is in the table once
even when runners push the same runs at the same moment.
"""

from __future__ import annotations

import datetime as dt
import os
import random
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from neurolens.errors import InvalidArgumentError, MissingExtraError, StoreError
from neurolens.remote import sql
from neurolens.remote.checks import check_file_paths, sound_rows
from neurolens.remote.layout import (
    LATER_COLUMNS,
    PAYLOAD_COLUMNS,
    STORE_COLUMNS,
    as_index,
    index_select_list,
    is_migrating,
    is_typed,
    lacking,
    rows_for,
    schema,
)
from neurolens.storage.index.filters import RunFilter
from neurolens.storage.index.rows import Rows
from neurolens.storage.ledger.manifest import COLUMNS

INSTALL_HINT = "remote tables need the 'remote' extra: pip install 'pytest-neurolens[remote]'"
COMMIT_ATTEMPTS = 30
MIGRATION_WAIT = 90  # tries of a push while a migration runs (about 2.5 minutes)
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_SCHEMES = ("s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "adl", "azure", "file")
# Statistics only where they prune (a document's min/max is waste)
_STATS_COLUMNS = "day,created_at,run_id,model,backend,precision,session_id,outcome"


def is_remote(location: object) -> bool:
    """A URL (``s3://``, ``gs://``, ``az://``, ``abfss://``, ``file://``...) or a local folder
    holding a Delta table (``_delta_log``)."""
    if isinstance(location, RemoteTable):
        return True
    if not isinstance(location, (str, Path)):
        return False
    text = str(location)
    return bool(_URL.match(text)) or (Path(text) / "_delta_log").is_dir()


def parse_storage_options(pairs: Sequence[str], option: str = "--storage-option") -> dict[str, str]:
    """``KEY=VALUE`` texts as delta-rs storage options."""
    options: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise InvalidArgumentError(f"{option} expects KEY=VALUE, got {pair!r}")
        options[key.strip()] = value
    return options


def deltalake_module() -> Any:
    # delta-rs logs through Rust's env_logger: quiet but for errors unless RUST_LOG asks
    # (its WARN lines, 700 characters each, would bury the one line that says what failed)
    os.environ.setdefault("RUST_LOG", "error")
    try:
        import deltalake
    except ImportError:
        raise MissingExtraError(INSTALL_HINT) from None
    return deltalake


@dataclass
class RemoteTable:
    """A Delta table of runs at ``url``; ``storage_options`` go to delta-rs as they are
    (credentials and endpoints come from the standard environment variables too)."""

    url: str
    storage_options: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.url = str(self.url)
        if not _URL.match(self.url):  # a local Delta table
            self.url = str(Path(self.url).absolute())
        scheme, _, rest = self.url.partition("://")
        if _URL.match(self.url) and scheme.lower() not in _SCHEMES:
            raise StoreError(
                f"{self.url}: unknown scheme {scheme!r}; a remote table is s3://, gs://, az:// "
                "(abfss://, file://) or a path"
            )
        if _URL.match(self.url) and scheme.lower() != "file" and not rest.split("/")[0]:
            raise StoreError(f"{self.url}: no bucket or container in the URL (s3://bucket/prefix)")
        options = dict(self.storage_options)
        if self.url.startswith(("s3://", "s3a://")):
            # safe concurrent commits on S3 without a lock table: conditional puts
            options.setdefault("conditional_put", "etag")
        self.storage_options = options

    def __str__(self) -> str:
        return self.url

    # --- opening ----------------------------------------------------------------------------

    def open(self) -> Any:
        deltalake = deltalake_module()
        try:
            table = deltalake.DeltaTable(self.url, storage_options=dict(self.storage_options))
        except deltalake.exceptions.TableNotFoundError:
            raise StoreError(f"no remote table at {self.url} (push to it first)") from None
        except (OSError, deltalake.exceptions.DeltaError) as exc:
            raise StoreError(
                f"cannot open the remote table {self.url}: {first_line(exc)}{credentials_hint(self.url, exc)}"
            ) from None
        check_file_paths(self.url, table)
        names = {f.name for f in table.schema().fields}
        needed = (*COLUMNS, *STORE_COLUMNS, *PAYLOAD_COLUMNS) if is_typed(table) else (*COLUMNS, "document")
        missing = [name for name in needed if name not in names and name not in LATER_COLUMNS]
        if missing:
            raise StoreError(
                f"{self.url} holds a Delta table of another schema (it lacks {', '.join(missing[:4])}"
                f"{', ...' if len(missing) > 4 else ''}): not a table of runs; use another prefix"
            )
        return table

    def create(self) -> None:
        """Create the table unless it exists; runners creating it at once retry."""
        deltalake = deltalake_module()
        for attempt in attempts():
            try:
                deltalake.DeltaTable.create(
                    self.url,
                    schema=schema(typed=True),
                    mode="ignore",
                    partition_by=["day"],
                    name="neurolens_runs",
                    configuration={"delta.dataSkippingStatsColumns": _STATS_COLUMNS},
                    storage_options=dict(self.storage_options),
                )
                self.open()  # a table that was there already must be a table of runs
                return
            except deltalake.exceptions.CommitFailedError:
                attempt.failed()
            except (OSError, deltalake.exceptions.DeltaError) as exc:
                raise StoreError(f"cannot create the remote table {self.url}: {first_line(exc)}") from None

    # --- reading ----------------------------------------------------------------------------

    def query(self, statement: str, table: Any = None) -> Any:
        """A SQL query over the table (as ``runs``, or the version ``table`` opened), as a
        pyarrow Table."""
        import pyarrow as pa

        deltalake = deltalake_module()
        table = table or self.open()
        try:
            reader = deltalake.QueryBuilder().register(sql.TABLE, table).execute(statement)
            return pa.table(reader)
        except Exception as exc:  # delta-rs raises plain Exception for object-store errors
            raise StoreError(f"reading the remote table {self.url} failed: {first_line(exc)}") from None

    def select(self, flt: RunFilter) -> Rows:
        """The index columns of the rows ``flt`` selects, newest first; filters, the session
        and the limit are pushed into the scan."""
        from neurolens.storage.index.rows_arrow import ArrowRows

        table = self.open()
        statement = sql.select(flt, index_select_list(table), typed=is_typed(table))
        rows = ArrowRows(sound_rows(self.url, as_index(self.query(statement, table))))
        # exact tag matching (escaped quotes) and the same outcome rule as local reads
        return rows.filter(replace(flt, session_id=None, limit=None))

    def with_ids(self, run_ids: Sequence[str], columns: Sequence[str]) -> list[dict[str, Any]]:
        """The rows of these run ids, as dicts (in batches, so the SQL stays small)."""
        found: list[dict[str, Any]] = []
        for start in range(0, len(run_ids), 500):
            chunk = run_ids[start : start + 500]
            statement = f"SELECT {', '.join(columns)} FROM {sql.TABLE} WHERE {sql.in_list('run_id', chunk)}"
            found.extend(self.query(statement).to_pylist())
        return found

    def ids_on_days(self, days: Sequence[str]) -> set[str]:
        """The run ids of these days' partitions (one scan of one column, the rest pruned)."""
        found: set[str] = set()
        for start in range(0, len(days), 500):
            where = sql.in_list("day", days[start : start + 500])
            found.update(
                self.query(f"SELECT run_id FROM {sql.TABLE} WHERE {where}").column("run_id").to_pylist()
            )
        return found

    def find_run(self, prefix: str) -> list[dict[str, Any]]:
        """Index rows whose run id starts with ``prefix`` (at most 6: enough to say ambiguous)."""
        table = self.open()
        statement = (
            f"SELECT {', '.join(index_select_list(table))} FROM {sql.TABLE} "
            f"WHERE starts_with(run_id, {sql.literal(prefix)}) ORDER BY run_id LIMIT 6"
        )
        records: list[dict[str, Any]] = as_index(self.query(statement, table)).to_pylist()
        return records

    # --- writing ----------------------------------------------------------------------------

    def insert_new(self, records: Sequence[dict[str, Any]]) -> int:
        """MERGE runs (dicts of the index's columns and the payload) into the table in its
        layout, inserting only run ids it lacks; retried on commit conflicts (a migration
        meanwhile included). Returns how many were inserted."""
        deltalake = deltalake_module()
        if not records:
            return 0
        for attempt in attempts(MIGRATION_WAIT):
            table = self.open()
            if is_migrating(table):  # wait for the typed layout rather than race the migration
                attempt.failed(
                    f"the remote table {self.url} is being migrated (remote migrate); push again later"
                )
                continue
            try:
                if not is_typed(table) and lacking(table):
                    table.alter.add_columns([deltalake.Field(name, "string") for name in lacking(table)])
                    table = self.open()
                typed = is_typed(table)
                rows = rows_for(records, typed=typed)
                metrics = (
                    table.merge(
                        rows,
                        predicate="t.day = s.day AND t.run_id = s.run_id",
                        source_alias="s",
                        target_alias="t",
                    )
                    .when_not_matched_insert_all()
                    .execute()
                )
                return int(metrics["num_target_rows_inserted"])
            except deltalake.exceptions.CommitFailedError:
                attempt.failed()
            except (OSError, deltalake.exceptions.DeltaError) as exc:
                if is_typed(self.open()) != typed:  # migrated meanwhile: again, in its new layout
                    attempt.failed()
                    continue
                raise StoreError(f"writing the remote table {self.url} failed: {first_line(exc)}") from None
        raise AssertionError("unreachable")  # pragma: no cover

    def optimize(self, retention_hours: int, orphan_grace_s: float = 60.0) -> dict[str, Any]:
        """Delta's own maintenance: Z-order by model and backend (compacting small files),
        a checkpoint, then vacuum of files unreferenced for ``retention_hours``. When it
        fails, the files it wrote are removed (``orphans``; after ``orphan_grace_s``)."""
        from neurolens.remote.orphans import never_referenced, remove_orphans

        deltalake = deltalake_module()
        table = self.open()
        started, before = now(), never_referenced(table)
        try:
            compacted = table.optimize.z_order(["model", "backend"])
            table.create_checkpoint()
            table.cleanup_metadata()
            removed = table.vacuum(
                retention_hours=retention_hours, dry_run=False, enforce_retention_duration=False
            )
        except (OSError, deltalake.exceptions.DeltaError) as exc:
            left = remove_orphans(self.url, self.storage_options, before, started, orphan_grace_s)
            cleaned = f"; the {len(left)} file(s) it had written were removed" if left else ""
            raise StoreError(
                f"optimizing the remote table {self.url} failed: {first_line(exc)}{cleaned}"
            ) from None
        return {
            "files_added": compacted.get("numFilesAdded", 0),
            "files_removed": compacted.get("numFilesRemoved", 0),
            "vacuumed": len(removed),
            "version": table.version(),
        }


def now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


class _Attempt:
    def __init__(self, number: int, limit: int) -> None:
        self.number, self.limit = number, limit

    def failed(self, why: str | None = None) -> None:
        """Back off before the next try: exponential with jitter, capped at 2 s."""
        if self.number + 1 >= self.limit:
            raise StoreError(why or f"the remote table kept changing: gave up after {self.limit} tries")
        time.sleep(min(2.0, 0.02 * 2**self.number) * (0.5 + random.random()))


def attempts(limit: int = COMMIT_ATTEMPTS) -> Any:
    return (_Attempt(n, limit) for n in range(limit))


_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_S3_ERROR = re.compile(r"<Code>([^<]*)</Code>\s*<Message>([^<]*)</Message>")


_CREDENTIALS = re.compile(
    r"IMDS|credential|InvalidAccessKeyId|SignatureDoesNotMatch|ExpiredToken|AccessDenied|metadata server",
    re.I,
)
_VARIABLES = {
    "s3": "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (and AWS_REGION; AWS_ENDPOINT_URL for S3-compatible "
    "stores)",
    "gs": "GOOGLE_APPLICATION_CREDENTIALS (a service account file) or GOOGLE_SERVICE_ACCOUNT_KEY",
    "az": "AZURE_STORAGE_ACCOUNT_NAME and AZURE_STORAGE_ACCOUNT_KEY (or AZURE_STORAGE_SAS_TOKEN)",
}


def credentials_hint(url: str, exc: BaseException) -> str:
    """What to set when the failure is about credentials, for the URL's store."""
    if not _CREDENTIALS.search(str(exc)):
        return ""
    scheme = url.partition("://")[0].lower()
    kind = "s3" if scheme.startswith("s3") else "gs" if scheme in ("gs", "gcs") else "az"
    if "://" not in url or scheme == "file":
        return ""
    return f" (no usable credentials: set {_VARIABLES[kind]}, or pass them as --storage-option KEY=VALUE)"


def first_line(exc: BaseException) -> str:
    """delta-rs's chained error in one line: its kind and its innermost cause (the S3 error
    code and message, or the OS error), without terminal colours."""
    text = _ANSI.sub("", str(exc)).strip()
    if not text:
        return type(exc).__name__
    parts = [" ".join(part.split()) for part in text.split("↳") if part.strip()]
    s3 = _S3_ERROR.search(text)
    cause = f"{s3.group(1)}: {s3.group(2)}" if s3 else parts[-1]
    head = parts[0].split(" -> ")[-1]
    return head if cause == parts[0] else f"{head}: {cause}"
