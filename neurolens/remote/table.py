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
from neurolens.storage.index.filters import RunFilter
from neurolens.storage.index.rows import Rows
from neurolens.storage.ledger.manifest import COLUMNS

INSTALL_HINT = "remote tables need the 'remote' extra: pip install 'pytest-neurolens[remote]'"
PAYLOAD_COLUMNS = ("document", "fingerprint", "pushed_at")
COMMIT_ATTEMPTS = 30
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_SCHEMES = ("s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "adl", "azure", "file")
# Statistics only where they prune (a document's min/max is waste)
# Columns later versions added: a table made before them lacks them until the next push adds
# them (reads see null meanwhile).
LATER_COLUMNS = ("cpu_model",)
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


def _deltalake() -> Any:
    try:
        import deltalake
    except ImportError:
        raise MissingExtraError(INSTALL_HINT) from None
    return deltalake


def schema() -> Any:
    import pyarrow as pa

    kinds = {str: pa.string(), int: pa.int64(), float: pa.float64()}
    fields = [pa.field(name, kinds[kind], nullable) for name, (kind, nullable) in COLUMNS.items()]
    fields += [
        pa.field("document", pa.string(), False),
        pa.field("fingerprint", pa.string(), True),
        pa.field("pushed_at", pa.timestamp("us", tz="UTC"), False),
    ]
    return pa.schema(fields)


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

    def _open(self) -> Any:
        deltalake = _deltalake()
        try:
            table = deltalake.DeltaTable(self.url, storage_options=dict(self.storage_options))
        except deltalake.exceptions.TableNotFoundError:
            raise StoreError(f"no remote table at {self.url} (push to it first)") from None
        except (OSError, deltalake.exceptions.DeltaError) as exc:
            raise StoreError(f"cannot open the remote table {self.url}: {_first_line(exc)}") from None
        check_file_paths(self.url, table)
        names = {f.name for f in table.schema().fields}
        missing = [name for name in (*COLUMNS, "document") if name not in names and name not in LATER_COLUMNS]
        if missing:
            raise StoreError(
                f"{self.url} holds a Delta table of another schema (it lacks {', '.join(missing[:4])}"
                f"{', ...' if len(missing) > 4 else ''}): not a table of runs; use another prefix"
            )
        return table

    def create(self) -> None:
        """Create the table unless it exists; runners creating it at once retry."""
        deltalake = _deltalake()
        for attempt in _attempts():
            try:
                deltalake.DeltaTable.create(
                    self.url,
                    schema=schema(),
                    mode="ignore",
                    partition_by=["day"],
                    name="neurolens_runs",
                    configuration={"delta.dataSkippingStatsColumns": _STATS_COLUMNS},
                    storage_options=dict(self.storage_options),
                )
                self._open()  # a table that was there already must be a table of runs
                return
            except deltalake.exceptions.CommitFailedError:
                attempt.failed()
            except (OSError, deltalake.exceptions.DeltaError) as exc:
                raise StoreError(f"cannot create the remote table {self.url}: {_first_line(exc)}") from None

    # --- reading ----------------------------------------------------------------------------

    def query(self, statement: str, table: Any = None) -> Any:
        """A SQL query over the table (as ``runs``, or the version ``table`` opened), as a
        pyarrow Table."""
        import pyarrow as pa

        deltalake = _deltalake()
        table = table or self._open()
        try:
            reader = deltalake.QueryBuilder().register(sql.TABLE, table).execute(statement)
            return pa.table(reader)
        except Exception as exc:  # delta-rs raises plain Exception for object-store errors
            raise StoreError(f"reading the remote table {self.url} failed: {_first_line(exc)}") from None

    def select(self, flt: RunFilter) -> Rows:
        """The index columns of the rows ``flt`` selects, newest first; filters, the session
        and the limit are pushed into the scan."""
        from neurolens.storage.index.rows_arrow import ArrowRows

        table = self._open()
        rows = ArrowRows(
            sound_rows(self.url, _as_index(self.query(sql.select(flt, _column_list(table)), table)))
        )
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
        table = self._open()
        statement = (
            f"SELECT {', '.join(_column_list(table))} FROM {sql.TABLE} "
            f"WHERE starts_with(run_id, {sql.literal(prefix)}) ORDER BY run_id LIMIT 6"
        )
        records: list[dict[str, Any]] = _as_index(self.query(statement, table)).to_pylist()
        return records

    # --- writing ----------------------------------------------------------------------------

    def insert_new(self, rows: Any) -> int:
        """MERGE ``rows`` (a pyarrow Table in ``schema()``) into the table, inserting only
        run ids it lacks; retried on commit conflicts. Returns how many were inserted."""
        deltalake = _deltalake()
        if rows.num_rows == 0:
            return 0
        for attempt in _attempts():
            table = self._open()
            try:
                if _lacking(table):
                    table.alter.add_columns([deltalake.Field(name, "string") for name in _lacking(table)])
                    table = self._open()
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
                raise StoreError(f"writing the remote table {self.url} failed: {_first_line(exc)}") from None
        raise AssertionError("unreachable")  # pragma: no cover

    def optimize(self, retention_hours: int) -> dict[str, Any]:
        """Delta's own maintenance: Z-order by model and backend (compacting small files),
        a checkpoint, then vacuum of files unreferenced for ``retention_hours``."""
        deltalake = _deltalake()
        table = self._open()
        try:
            compacted = table.optimize.z_order(["model", "backend"])
            table.create_checkpoint()
            table.cleanup_metadata()
            removed = table.vacuum(
                retention_hours=retention_hours, dry_run=False, enforce_retention_duration=False
            )
        except (OSError, deltalake.exceptions.DeltaError) as exc:
            raise StoreError(f"optimizing the remote table {self.url} failed: {_first_line(exc)}") from None
        return {
            "files_added": compacted.get("numFilesAdded", 0),
            "files_removed": compacted.get("numFilesRemoved", 0),
            "vacuumed": len(removed),
            "version": table.version(),
        }


def _lacking(table: Any) -> list[str]:
    """The later columns a table made by an earlier version lacks."""
    names = {f.name for f in table.schema().fields}
    return [name for name in LATER_COLUMNS if name not in names]


def _column_list(table: Any) -> list[str]:
    """The index columns as SQL select items: a later column the table lacks reads as null."""
    lacking = _lacking(table)
    return [f"CAST(NULL AS VARCHAR) AS {name}" if name in lacking else name for name in COLUMNS]


def _as_index(table: Any) -> Any:
    """Query results (string views, reordered) as the index's own schema."""
    import pyarrow as pa

    index_schema = pa.schema([f for f in schema() if f.name in COLUMNS])
    return table.select(list(COLUMNS)).cast(index_schema)


def now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


class _Attempt:
    def __init__(self, number: int) -> None:
        self.number = number

    def failed(self) -> None:
        """Back off before the next try: exponential with jitter, capped at 2 s."""
        if self.number + 1 >= COMMIT_ATTEMPTS:
            raise StoreError(
                f"the remote table kept changing: gave up after {COMMIT_ATTEMPTS} commit conflicts"
            )
        time.sleep(min(2.0, 0.02 * 2**self.number) * (0.5 + random.random()))


def _attempts() -> Any:
    return (_Attempt(n) for n in range(COMMIT_ATTEMPTS))


_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_S3_ERROR = re.compile(r"<Code>([^<]*)</Code>\s*<Message>([^<]*)</Message>")


def _first_line(exc: BaseException) -> str:
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
