"""Merge run stores (directories or ``.tar.gz`` archives of them) into one.

Every run is checked before it is copied: its file must match the hash in its manifest
entry, parse, satisfy the schema, agree with the entry and sit where its id, day and
backend say. Files are copied first and their manifest lines appended after, in batches
under the manifest lock, so an interrupted merge leaves nothing half-stored and a re-run
completes it without duplicates.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tarfile
import tempfile
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from neurolens.errors import NeurolensError, RunExistsError, StoreError
from neurolens.storage import index as _index
from neurolens.storage.document import canonical_bytes, prepare_run, run_relpaths
from neurolens.storage.files import (
    append_lines_durably,
    check_run_path,
    create_file_atomically,
    open_dir,
    read_store_file,
)
from neurolens.storage.manifest import (
    MANIFEST_NAME,
    encode_entry,
    entry_differences,
    entry_for,
    manifest_path,
)
from neurolens.storage.root import ensure_root, require_store

_BATCH = 2000  # runs copied, then synced, then appended to the manifest in one write


@dataclass
class MergeReport:
    added: int = 0
    skipped: int = 0  # already in the destination with the same content
    conflicts: list[str] = field(default_factory=list)
    damaged: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)  # hostile archive members

    @property
    def complete(self) -> bool:
        """Every source run is now in the destination: nothing refused, damaged or in conflict."""
        return not (self.conflicts or self.damaged or self.refused)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "complete": self.complete}


# --- archives ----------------------------------------------------------------------------


def _unsafe_reason(member: tarfile.TarInfo) -> str | None:
    path = PurePosixPath(member.name)
    if path.is_absolute() or member.name.startswith(("/", "\\")):
        return "absolute path"
    if ".." in path.parts:
        return "path with '..'"
    if member.issym() or member.islnk():
        return "link"
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
    total = members = 0
    seen: set[str] = set()
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
            if reason:
                report.refused.append(f"{source}: member {member.name!r} refused ({reason})")
                continue
            seen.add(name)
            target = scratch / name
            if member.isdir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            total += member.size
            if total > limits.max_bytes:
                raise StoreError(
                    f"source {source} unpacks to more than {limits.max_bytes:,} bytes (raise the cap)"
                )
            target.parent.mkdir(parents=True, exist_ok=True)
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


# --- checking and copying -----------------------------------------------------------------


def _check_run(src: Path, entry: dict[str, Any]) -> tuple[dict[str, Any], bytes, bytes | None] | str:
    """(document, run bytes, fingerprint bytes) of a sound source run, or what is wrong."""
    try:
        run_bytes = read_store_file(src, check_run_path(entry["run_json"]))
    except (OSError, StoreError) as exc:
        return f"run file {entry['run_json']} cannot be read ({_reason(exc)})"
    if hashlib.sha256(run_bytes).hexdigest() != entry["sha256"]:
        return f"run file {entry['run_json']} does not match its manifest hash"
    try:
        document = json.loads(run_bytes)
        canonical = prepare_run(document)
    except (ValueError, NeurolensError, RecursionError) as exc:
        return f"run file {entry['run_json']} is not a valid run ({exc})"
    if canonical_bytes(canonical) != run_bytes:
        return f"run file {entry['run_json']} is not in canonical form"
    fp_bytes = None
    if entry["fp_json"]:
        try:
            fp_bytes = read_store_file(src, check_run_path(entry["fp_json"]))
            json.loads(fp_bytes)
        except (OSError, ValueError, StoreError, RecursionError) as exc:
            return f"fingerprint {entry['fp_json']} cannot be read ({_reason(exc)})"
    run_rel, fp_rel = run_relpaths(canonical, with_fingerprint=fp_bytes is not None)
    if (run_rel, fp_rel) != (entry["run_json"], entry["fp_json"]):
        return f"manifest entry of {entry['run_id']} names {entry['run_json']}, expected {run_rel}"
    if entry_differences(entry_for(canonical, run_rel, fp_rel, entry["sha256"]), entry):
        return f"manifest entry of {entry['run_id']} disagrees with its run file"
    return canonical, run_bytes, fp_bytes


def _reason(exc: Exception) -> str:
    return (exc.strerror if isinstance(exc, OSError) else None) or str(exc)


def _place(dest: Path, relative: str, data: bytes) -> None:
    """Copy one file in; an identical file left by an interrupted merge is accepted."""
    folder, _, name = relative.rpartition("/")
    dir_fd = open_dir(dest, folder, create=True)
    try:
        create_file_atomically(dir_fd, name, data, durable=False)
    except RunExistsError:
        if read_store_file(dest, relative) != data:
            raise
    finally:
        os.close(dir_fd)


def merge_stores(
    dest: str | os.PathLike[str],
    sources: Sequence[str | os.PathLike[str]],
    limits: ArchiveLimits | None = None,
) -> MergeReport:
    """Copy every sound run of ``sources`` (store folders or ``.tar.gz`` archives) into ``dest``.

    Runs already in ``dest`` are skipped (identical) or reported as conflicts (different
    content); damaged source runs are reported and never copied. Every source is opened
    and checked to be a store before ``dest`` is created. Ends with the index compacted.
    Safe beside concurrent ``write_run`` calls on ``dest``.
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
        known = _known_runs(dest_root)
        for src, label in opened:
            if src.resolve() == dest_root.resolve():
                raise StoreError(f"source {label} is the destination itself")
            _merge_one(dest_root, src, label, known, report)
    _index.compact(dest_root, warn=False)
    return report


def _known_runs(root: Path) -> dict[str, str]:
    """run id -> sha256 of the runs a store holds (index plus manifest tail)."""
    if not manifest_path(root).exists():
        return {}
    columns = _index.snapshot(root, warn=False).columns(["run_id", "sha256"])
    return dict(zip(columns["run_id"], columns["sha256"], strict=True))


def _merge_one(dest: Path, src: Path, label: Path, known: dict[str, str], report: MergeReport) -> None:
    rows, manifest = _index.read_tail(src)
    report.damaged.extend(f"{label}: {problem}" for problem in manifest.problems)
    pending: list[bytes] = []
    for entry in rows.records():
        run_id = entry["run_id"]
        if run_id in known:
            if known[run_id] == entry["sha256"]:
                report.skipped += 1
            else:
                report.conflicts.append(
                    f"{label}: run {run_id} differs from the destination's run of that id"
                )
            continue
        checked = _check_run(src, entry)
        if isinstance(checked, str):
            report.damaged.append(f"{label}: {checked}")
            continue
        document, run_bytes, fp_bytes = checked
        try:
            _place(dest, entry["run_json"], run_bytes)
            if fp_bytes is not None and entry["fp_json"]:
                _place(dest, entry["fp_json"], fp_bytes)
        except RunExistsError:
            report.conflicts.append(
                f"{label}: {entry['run_json']} exists in the destination with other content"
            )
            continue
        known[run_id] = entry["sha256"]
        pending.append(
            encode_entry(entry_for(document, entry["run_json"], entry["fp_json"], entry["sha256"]))
        )
        if len(pending) >= _BATCH:
            _commit(dest, pending, report)
    _commit(dest, pending, report)


def _commit(dest: Path, pending: list[bytes], report: MergeReport) -> None:
    """Make the batch's files durable, then record them: files first, manifest after."""
    if not pending:
        return
    os.sync()
    append_lines_durably(dest, MANIFEST_NAME, pending)
    report.added += len(pending)
    pending.clear()
