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
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from neurolens.errors import NeurolensError, RunExistsError, StoreError
from neurolens.storage import index as _index
from neurolens.storage.document import canonical_bytes, prepare_run, run_relpaths
from neurolens.storage.files import append_lines_durably, create_file_atomically
from neurolens.storage.manifest import encode_entry, entry_for, manifest_path, read_manifest

_BATCH = 2000  # runs copied, then synced, then appended to the manifest in one write


@dataclass
class MergeReport:
    added: int = 0
    skipped: int = 0  # already in the destination with the same content
    conflicts: list[str] = field(default_factory=list)
    damaged: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)  # hostile archive members

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


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


@contextlib.contextmanager
def _opened_source(source: Path, report: MergeReport) -> Iterator[Path]:
    """The store root of a directory, or of a ``.tar.gz`` unpacked (safely) to a temp folder."""
    if source.is_dir():
        yield source
        return
    if not source.is_file():
        raise StoreError(f"source {source} does not exist")
    try:
        archive = tarfile.open(source, mode="r:*")  # noqa: SIM115 - closed below, after checks
    except (tarfile.TarError, OSError) as exc:
        raise StoreError(
            f"source {source} is neither a store folder nor a readable archive ({exc})"
        ) from None
    scratch = Path(tempfile.mkdtemp(prefix="neurolens-merge-"))
    try:
        with archive:
            for member in archive:
                reason = _unsafe_reason(member)
                if reason:
                    report.refused.append(f"{source}: member {member.name!r} refused ({reason})")
                    continue
                target = scratch / member.name
                if member.isdir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                extracted = archive.extractfile(member)
                if extracted is None:
                    continue
                with extracted, open(target, "wb") as out:
                    shutil.copyfileobj(extracted, out)
        yield _store_root_in(scratch, source)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


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
        run_bytes = (src / entry["run_json"]).read_bytes()
    except OSError as exc:
        return f"run file {entry['run_json']} cannot be read ({exc.strerror or exc})"
    if hashlib.sha256(run_bytes).hexdigest() != entry["sha256"]:
        return f"run file {entry['run_json']} does not match its manifest hash"
    try:
        document = json.loads(run_bytes)
        canonical = prepare_run(document)
    except (ValueError, NeurolensError) as exc:
        return f"run file {entry['run_json']} is not a valid run ({exc})"
    if canonical_bytes(canonical) != run_bytes:
        return f"run file {entry['run_json']} is not in canonical form"
    fp_bytes = None
    if entry["fp_json"]:
        try:
            fp_bytes = (src / entry["fp_json"]).read_bytes()
            json.loads(fp_bytes)
        except (OSError, ValueError) as exc:
            return f"fingerprint {entry['fp_json']} cannot be read ({exc})"
    run_rel, fp_rel = run_relpaths(canonical, with_fingerprint=fp_bytes is not None)
    if (run_rel, fp_rel) != (entry["run_json"], entry["fp_json"]):
        return f"manifest entry of {entry['run_id']} names {entry['run_json']}, expected {run_rel}"
    if entry_for(canonical, run_rel, fp_rel, entry["sha256"]) != entry:
        return f"manifest entry of {entry['run_id']} disagrees with its run file"
    return canonical, run_bytes, fp_bytes


def _place(dest: Path, relative: str, data: bytes) -> None:
    """Copy one file in; an identical file left by an interrupted merge is accepted."""
    path = dest / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        create_file_atomically(path, data, durable=False)
    except RunExistsError:
        if path.read_bytes() != data:
            raise


def merge_stores(dest: str | os.PathLike[str], sources: Sequence[str | os.PathLike[str]]) -> MergeReport:
    """Copy every sound run of ``sources`` (store folders or ``.tar.gz`` archives) into ``dest``.

    Runs already in ``dest`` are skipped (identical) or reported as conflicts (different
    content); damaged source runs are reported and never copied. Ends with the index
    compacted. Safe beside concurrent ``write_run`` calls on ``dest``.
    """
    dest_root = Path(dest)
    if dest_root.exists() and not dest_root.is_dir():
        raise StoreError(f"destination {dest_root} is not a directory")
    dest_root.mkdir(parents=True, exist_ok=True)
    report = MergeReport()
    known = _known_runs(dest_root)
    for source in sources:
        with _opened_source(Path(source), report) as src:
            if src.resolve() == dest_root.resolve():
                raise StoreError(f"source {source} is the destination itself")
            _merge_one(dest_root, src, Path(source), known, report)
    _index.compact(dest_root, warn=False)
    return report


def _known_runs(root: Path) -> dict[str, str]:
    """run id -> sha256 of the runs a store holds (index plus manifest tail)."""
    rows = _index.snapshot(root, warn=False) if manifest_path(root).exists() else _index.Rows()
    if rows.table is not None:
        return dict(
            zip(rows.table.column("run_id").to_pylist(), rows.table.column("sha256").to_pylist(), strict=True)
        )
    return {r["run_id"]: r["sha256"] for r in rows.records}


def _merge_one(dest: Path, src: Path, label: Path, known: dict[str, str], report: MergeReport) -> None:
    manifest = read_manifest(src, warn=False)
    report.damaged.extend(f"{label}: {problem}" for problem in manifest.problems)
    pending: list[bytes] = []
    for entry in manifest.entries:
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
    append_lines_durably(manifest_path(dest), pending)
    report.added += len(pending)
    pending.clear()
