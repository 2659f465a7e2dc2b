"""``push`` (local store -> remote table) and ``pull`` (remote table -> local store).

Both are idempotent: a run id already on the other side is skipped, so pushing or
pulling twice adds nothing. Both carry every run the filter selects, whatever its test's
outcome (readers leave failed runs out; history keeps them).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from neurolens.errors import StoreError
from neurolens.remote.table import RemoteTable, now
from neurolens.storage.exchange.importer import Importer, MergeReport, check_run_bytes, reason
from neurolens.storage.index.filters import RunFilter
from neurolens.storage.index.query import select
from neurolens.storage.ledger.files import Folders
from neurolens.storage.ledger.manifest import COLUMNS, Progress
from neurolens.storage.ledger.root import ensure_root

_BATCH = 2000  # runs read and sent in one MERGE


@dataclass
class PushReport:
    remote: str
    added: list[str] = field(default_factory=list)  # run ids this push inserted
    already: int = 0  # run ids the table had before
    damaged: list[str] = field(default_factory=list)  # local runs not sent: unreadable or changed

    @property
    def complete(self) -> bool:
        return not self.damaged

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "complete": self.complete}


def push(
    root: Path, remote: RemoteTable, flt: RunFilter | None = None, progress: Progress | None = None
) -> PushReport:
    """Add the local runs ``flt`` selects that the remote table lacks (``progress(done, total)``
    after each batch)."""
    flt = replace(flt or RunFilter(), include_failed=True, limit=None)
    records = select(root, flt).records()
    report = PushReport(remote=remote.url)
    if not records:
        return report
    remote.create()
    present = remote.ids_on_days(sorted({r["day"] for r in records})) & {r["run_id"] for r in records}
    report.already = len(present)
    fresh = [r for r in records if r["run_id"] not in present]
    with Folders(root) as folders:  # each day folder opened once, as merge and verify do
        for start in range(0, len(fresh), _BATCH):
            pushed_at = now()
            batch = _payload(folders, fresh[start : start + _BATCH], report, pushed_at)
            _send(remote, batch, pushed_at, report)
            if progress is not None:
                progress(min(start + _BATCH, len(fresh)), len(fresh))
    return report


def _send(remote: RemoteTable, batch: list[dict[str, Any]], pushed_at: Any, report: PushReport) -> None:
    """One MERGE of a batch; what it added is recorded in ``report``."""
    inserted = remote.insert_new(batch)
    sent = [r["run_id"] for r in batch]
    if inserted != len(sent):
        # another runner pushed some of the same runs at the same moment: ours carry our time
        rows = remote.with_ids(sent, ["run_id", "pushed_at"])
        sent = [r["run_id"] for r in rows if r["pushed_at"] == pushed_at]
    report.added.extend(sent)
    report.already += len(batch) - len(sent)


def _payload(
    folders: Folders, records: list[dict[str, Any]], report: PushReport, pushed_at: Any
) -> list[dict[str, Any]]:
    """The runs to send: index columns, the run file's text (checked as pull will check it)
    and the fingerprint's, and when they were pushed."""
    payload = []
    for record in records:
        try:
            run_bytes = folders.read_run_file(record["run_json"])
            fp = record["fp_json"]
            fp_bytes = folders.read_run_file(fp) if fp else None
        except (OSError, ValueError, StoreError) as exc:  # a missing, linked or odd file
            report.damaged.append(f"run {record['run_id']}: a file cannot be read ({reason(exc)})")
            continue
        checked = check_run_bytes(record, run_bytes, fp_bytes)  # what pull will check again
        if isinstance(checked, str):
            report.damaged.append(f"run {record['run_id']}: {checked}")
            continue
        payload.append(
            {
                **{name: record[name] for name in COLUMNS},
                "document": run_bytes.decode("utf-8"),
                "fingerprint": None if fp_bytes is None else fp_bytes.decode("utf-8"),
                "pushed_at": pushed_at,
            }
        )
    return payload


def pull(
    remote: RemoteTable, root: Path, flt: RunFilter | None = None, progress: Progress | None = None
) -> MergeReport:
    """Copy the remote runs ``flt`` selects that the local store lacks, each checked like a
    merged run (hash, schema, canonical bytes, agreement with its row) before it is stored."""
    from neurolens.storage.index.compaction import compact

    flt = replace(flt or RunFilter(), include_failed=True, limit=None)
    rows = remote.select(flt).records()
    report = MergeReport()
    ensure_root(root)
    with Importer(root, report, progress) as importer:
        wanted = [r for r in rows if not importer.skips(remote.url, r)]
        importer.expected = len(wanted)
        by_id = {r["run_id"]: r for r in wanted}
        ids = list(by_id)
        for start in range(0, len(ids), _BATCH):
            for payload in remote.with_ids(
                ids[start : start + _BATCH], ["run_id", "document", "fingerprint"]
            ):
                entry = by_id[payload["run_id"]]
                document, fingerprint = payload["document"], payload["fingerprint"]
                if not isinstance(document, str):
                    report.damaged.append(f"{remote.url}: run {entry['run_id']}: its row has no document")
                    continue
                importer.add(
                    remote.url,
                    entry,
                    document.encode("utf-8"),
                    fingerprint.encode("utf-8") if isinstance(fingerprint, str) else None,
                )
            importer.flush()
    compact(root, warn=False)
    return report
