"""Merge run stores (directories or ``.tar.gz`` archives of them) into one.

Every run is checked before it is copied, and copied the way ``importer`` copies:
files first, manifest lines after, so an interrupted merge leaves nothing half-stored and
a re-run completes it without duplicates. Archives are unpacked with caps on size and
member count, refusing absolute paths, ``..``, links and duplicate names.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tarfile
import tempfile
import zlib
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from neurolens.errors import StoreError
from neurolens.storage.exchange.importer import Importer, MergeReport, Outcome, import_run, reason
from neurolens.storage.exchange.workers import entries_of, parts_of, process_pool, worker_count
from neurolens.storage.index.compaction import compact
from neurolens.storage.index.reading import read_tail
from neurolens.storage.index.rows import Rows
from neurolens.storage.ledger.files import MAX_RUN_FILE_BYTES, Folders
from neurolens.storage.ledger.manifest import Progress, manifest_path
from neurolens.storage.ledger.root import ensure_root, require_store

# --- archives ----------------------------------------------------------------------------


def _unsafe_reason(member: tarfile.TarInfo) -> str | None:
    path = PurePosixPath(member.name)
    if path.is_absolute() or member.name.startswith(("/", "\\")):
        return "absolute path"
    if ".." in path.parts:
        return "path with '..'"
    if member.issym():
        return "link"
    if member.islnk():  # tar's copy of a file the archive already holds: read as that file
        linked = PurePosixPath(member.linkname)
        if linked.is_absolute() or member.linkname.startswith(("/", "\\")) or ".." in linked.parts:
            return "link outside the archive"
        return None
    if not (member.isfile() or member.isdir()):
        return "not a regular file or folder"
    return None


@dataclass(frozen=True)
class ArchiveLimits:
    """Caps on what one archive may unpack to: a small archive can expand without bound."""

    max_bytes: int = 4 * 2**30
    max_members: int = 2_000_000


@contextlib.contextmanager
def _opened_source(source: Path, report: MergeReport, limits: ArchiveLimits) -> Iterator[Path]:
    """The store root of a directory, or of a ``.tar.gz`` unpacked (safely) to a temp folder."""
    if source.is_dir():
        require_store(source)
        yield source
        return
    if not source.is_file():
        raise StoreError(f"source {source} does not exist")
    scratch = Path(tempfile.mkdtemp(prefix="neurolens-merge-"))
    try:
        try:
            _unpack(source, scratch, report, limits)
        except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
            raise StoreError(
                f"source {source} is neither a store folder nor a readable archive ({exc})"
            ) from None
        yield _store_root_in(scratch, source)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _unpack(source: Path, scratch: Path, report: MergeReport, limits: ArchiveLimits) -> None:
    """Regular files and folders of the archive into ``scratch``; a hard link member (tar's
    record of a second name for a file, as a store's fingerprint files are) becomes a
    copy of the earlier file member it names. Anything else is refused."""
    total = members = 0
    seen: set[str] = set()
    files: dict[str, int] = {}  # file members unpacked so far, with their sizes
    with tarfile.open(source, mode="r:*") as archive:
        for member in archive:
            members += 1
            if members > limits.max_members:
                raise StoreError(
                    f"source {source} has more than {limits.max_members:,} members (raise the cap)"
                )
            reason = _unsafe_reason(member)
            name = PurePosixPath(member.name).as_posix()
            if reason is None and name in seen:
                reason = "duplicate member name"
            linked = PurePosixPath(member.linkname).as_posix() if member.islnk() else None
            if reason is None and linked is not None and linked not in files:
                reason = "hard link to no earlier file of the archive"
            if reason:
                report.refused.append(f"{source}: member {member.name!r} refused ({reason})")
                continue
            seen.add(name)
            target = scratch / name
            if member.isdir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            size = member.size if linked is None else files[linked]  # a link unpacks to a copy
            if name.endswith(".json") and size > MAX_RUN_FILE_BYTES:  # never unpacked, never read
                report.refused.append(
                    f"{source}: member {member.name!r} refused ({size:,} bytes; a run file holds "
                    f"{MAX_RUN_FILE_BYTES:,} at most)"
                )
                continue
            total += size
            if total > limits.max_bytes:
                raise StoreError(
                    f"source {source} unpacks to more than {limits.max_bytes:,} bytes (raise the cap)"
                )
            target.parent.mkdir(parents=True, exist_ok=True)
            files[name] = size
            if linked is not None:
                with open(scratch / linked, "rb") as earlier, open(target, "xb") as out:
                    shutil.copyfileobj(earlier, out)
                continue
            extracted = archive.extractfile(member)
            if extracted is None:
                continue
            with extracted, open(target, "xb") as out:
                shutil.copyfileobj(extracted, out)


def _store_root_in(folder: Path, source: Path) -> Path:
    """The archive's top level, or its single top-level folder, holding a manifest."""
    if manifest_path(folder).is_file():
        return folder
    entries = list(folder.iterdir())
    if len(entries) == 1 and entries[0].is_dir() and manifest_path(entries[0]).is_file():
        return entries[0]
    raise StoreError(f"{source} holds no run store (no _manifest.jsonl at its top or in its single folder)")


def merge_stores(
    dest: str | os.PathLike[str],
    sources: Sequence[str | os.PathLike[str]],
    limits: ArchiveLimits | None = None,
    workers: int | None = None,
    progress: Progress | None = None,
) -> MergeReport:
    """Copy every sound run of ``sources`` (store folders or ``.tar.gz`` archives) into ``dest``.

    Runs already in ``dest`` are skipped (identical) or reported as conflicts (different
    content); damaged source runs are reported and never copied. Every source is opened
    and checked to be a store before ``dest`` is created. Ends with the index compacted.
    Safe beside concurrent ``write_run`` calls on ``dest``. A large source is checked
    and copied by ``workers`` processes (default: one per CPU); the result is the same.
    """
    dest_root = Path(dest)
    if dest_root.exists() and not dest_root.is_dir():
        raise StoreError(f"destination {dest_root} is not a directory")
    report = MergeReport()
    with contextlib.ExitStack() as stack:
        opened = [
            (stack.enter_context(_opened_source(Path(s), report, limits or ArchiveLimits())), Path(s))
            for s in sources
        ]
        ensure_root(dest_root)
        importer = stack.enter_context(Importer(dest_root, report, progress))
        count = worker_count(workers)
        pool: list[ProcessPoolExecutor] = []  # started for the first large source, then shared

        def workers_pool() -> ProcessPoolExecutor | None:
            if count > 1 and not pool:
                pool.append(stack.enter_context(process_pool(count)))
            return pool[0] if pool else None

        for src, label in opened:
            if src.resolve() == dest_root.resolve():
                raise StoreError(f"source {label} is the destination itself")
            _merge_one(src, label, importer, workers_pool)
    compact(dest_root, warn=False)
    return report


def _merge_one(
    src: Path, label: Path, importer: Importer, workers_pool: Callable[[], ProcessPoolExecutor | None]
) -> None:
    rows, manifest = read_tail(src)
    importer.report.damaged.extend(f"{label}: {problem}" for problem in manifest.problems)
    fresh, again = _first_sightings(rows, str(label), importer)
    importer.expected += len(fresh) + len(again)
    pool = workers_pool() if len(fresh) >= 2 * _RUNS_PER_MERGE_PART else None
    here = again  # a run id the source holds twice: its later entries, once the first is settled
    if pool is None:
        here = [*fresh.records(), *again]
    else:
        futures = [
            pool.submit(_import_part, src, importer.dest, part)
            for part in parts_of(fresh, _RUNS_PER_MERGE_PART)
        ]
        try:
            for future in futures:  # in source order: the manifest lines keep it
                for outcome in future.result():
                    importer.record(str(label), outcome)
        finally:
            for future in futures:
                future.cancel()
    with Folders(src) as folders:
        for entry in here:  # a first sighting is never skipped; a later one may be
            if not importer.skips(str(label), entry):
                importer.record(str(label), _import_entry(folders, importer.folders, entry))
    importer.flush()


# Runs per part sent to a worker process; a source with fewer than two parts is merged here.
_RUNS_PER_MERGE_PART = 5_000


def _first_sightings(rows: Rows, label: str, importer: Importer) -> tuple[Rows, list[dict[str, Any]]]:
    """The source's entries the destination does not have (those it has are counted as
    skipped or conflicts), less the later entries of a run id seen twice, returned apart."""
    columns = rows.columns(["run_id", "sha256"])
    fresh: list[bool] = []
    again: list[bool] = []
    seen: set[str] = set()
    for run_id, sha256 in zip(columns["run_id"], columns["sha256"], strict=True):
        repeated = run_id in seen
        again.append(repeated)
        fresh.append(not repeated and not importer.skips(label, {"run_id": run_id, "sha256": sha256}))
        seen.add(run_id)
    return rows.keep(fresh), rows.keep(again).records() if any(again) else []


def _import_part(src: Path, dest: Path, part: Any) -> list[Outcome]:
    """A worker's share: each entry's files read, checked and copied into ``dest``."""
    with Folders(src) as source, Folders(dest, create=True) as target:
        return [_import_entry(source, target, entry) for entry in entries_of(part)]


def _import_entry(source: Folders, dest: Folders, entry: dict[str, Any]) -> Outcome:
    files: list[bytes | None] = []
    for kind, relative in (("run file", entry["run_json"]), ("fingerprint", entry["fp_json"])):
        try:
            files.append(source.read_run_file(relative) if relative else None)
        except (OSError, StoreError) as exc:
            problem = f"{kind} {relative} cannot be read ({reason(exc)})"
            return Outcome(entry["run_id"], entry["sha256"], problem=problem)
    run_bytes, fp_bytes = files
    assert run_bytes is not None
    return import_run(dest, entry, run_bytes, fp_bytes)
