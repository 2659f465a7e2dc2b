"""Copying checked runs into a store: the shared end of ``merge`` and ``pull``.

A run from elsewhere (another store's files, a remote table's row) is checked before it is
copied: its bytes must match the entry's hash, parse, satisfy the schema, be canonical,
agree with the entry and sit where its id, day and backend say. Files are copied first
and their manifest lines appended after, in batches under the manifest lock, so an
interrupted import leaves nothing half-stored and a re-run completes it without duplicates.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from neurolens.errors import NeurolensError, RunExistsError
from neurolens.storage.index import reading as _index
from neurolens.storage.ledger.canonical import canonical_bytes
from neurolens.storage.ledger.creating import create_file_atomically
from neurolens.storage.ledger.document import prepare_run, run_relpaths
from neurolens.storage.ledger.files import (
    MAX_RUN_FILE_BYTES,
    Folders,
    append_lines_durably,
    open_in_store,
    writing,
)
from neurolens.storage.ledger.manifest import (
    MANIFEST_NAME,
    Progress,
    encode_entry,
    entry_differences,
    entry_for,
    manifest_path,
)

_BATCH = 2000  # runs copied, then synced, then appended to the manifest in one write


@dataclass
class MergeReport:
    """What a merge or a pull did; ``complete`` when every run it was given is in the store."""

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


def fingerprint_problem(fp_bytes: bytes) -> str | None:
    """What makes a fingerprint file unreadable to every reader (verify, merge, push, pull
    and the report alike), or None: it must be a JSON object."""
    try:
        fingerprint = json.loads(fp_bytes)
    except (ValueError, RecursionError) as exc:
        return f"cannot be read ({'nested too deeply' if isinstance(exc, RecursionError) else exc})"
    return None if isinstance(fingerprint, dict) else "is not a JSON object"


def check_run_bytes(entry: dict[str, Any], run_bytes: bytes, fp_bytes: bytes | None) -> dict[str, Any] | str:
    """The manifest entry a sound run's files give (equal to ``entry`` but for columns
    ``entry`` predates), or what is wrong with the run: the one check of a run and its
    fingerprint that merge, push and pull share (verify checks the same, hash first)."""
    for what, data in (("run file", run_bytes), ("fingerprint", fp_bytes or b"")):
        if len(data) > MAX_RUN_FILE_BYTES:
            size, most = len(data), MAX_RUN_FILE_BYTES
            return f"{what} of {entry['run_id']} is {size:,} bytes; a store holds {most:,} at most"
    if hashlib.sha256(run_bytes).hexdigest() != entry["sha256"]:
        return f"run file {entry['run_json']} does not match its manifest hash"
    try:
        canonical = prepare_run(json.loads(run_bytes), parsed=True)
    except (ValueError, NeurolensError, RecursionError) as exc:
        return f"run file {entry['run_json']} is not a valid run ({exc})"
    if canonical_bytes(canonical) != run_bytes:  # also catches a document prepare_run filled in
        return f"run file {entry['run_json']} is not in canonical form"
    if fp_bytes is not None and (problem := fingerprint_problem(fp_bytes)) is not None:
        return f"fingerprint {entry['fp_json']} {problem}"
    run_rel, fp_rel = run_relpaths(canonical, with_fingerprint=fp_bytes is not None)
    if (run_rel, fp_rel) != (entry["run_json"], entry["fp_json"]):
        return f"manifest entry of {entry['run_id']} names {entry['run_json']}, expected {run_rel}"
    expected = entry_for(canonical, run_rel, fp_rel, entry["sha256"])
    if entry_differences(expected, entry):
        return f"manifest entry of {entry['run_id']} disagrees with its run file"
    return expected


@dataclass(frozen=True)
class Outcome:
    """What importing one run did: ``line`` (its manifest line) when its files were
    copied in, else ``problem`` (damaged, or a ``conflict`` with the destination)."""

    run_id: str
    sha256: str
    line: bytes | None = None
    problem: str | None = None
    conflict: bool = False


def import_run(dest: Folders, entry: dict[str, Any], run_bytes: bytes, fp_bytes: bytes | None) -> Outcome:
    """Check one run and copy its files into the destination (not yet durable); its
    manifest line is the caller's to append, once the files are synced."""
    run_id, sha256 = entry["run_id"], entry["sha256"]
    checked = check_run_bytes(entry, run_bytes, fp_bytes)
    if isinstance(checked, str):
        return Outcome(run_id, sha256, problem=checked)
    try:
        _place(dest, entry["run_json"], run_bytes)
        if fp_bytes is not None and entry["fp_json"]:
            _place(dest, entry["fp_json"], fp_bytes)
    except RunExistsError:
        problem = f"{entry['run_json']} exists in the destination with other content"
        return Outcome(run_id, sha256, problem=problem, conflict=True)
    return Outcome(run_id, sha256, line=encode_entry(checked))


def _place(dest: Folders, relative: str, data: bytes) -> None:
    """Copy one file in; an identical file left by an interrupted import is accepted."""
    folder, _, name = relative.rpartition("/")
    try:
        create_file_atomically(dest.fd(folder), name, data, durable=False)
    except RunExistsError:
        if dest.read(relative) != data:
            raise


class Importer:
    """Copies checked runs into ``dest``: files now, manifest lines in batches. Use it in a
    ``with`` block: it keeps the destination's folders open."""

    def __init__(self, dest: Path, report: MergeReport, progress: Progress | None = None) -> None:
        self.dest = dest
        self.report = report
        self.progress = progress  # (runs done, runs expected)
        self.done = self.expected = 0
        self.known = known_runs(dest)
        self._pending: list[bytes] = []
        self.folders = Folders(dest, create=True)
        # files copied in but not yet in the manifest are a live writer's (verify --fix)
        self._writing = contextlib.ExitStack()
        self._writing.enter_context(writing(dest))
        # a destination is a store even when nothing comes in (an empty source, an archive
        # whose manifest is empty): its index is never alone
        os.close(open_in_store(dest, MANIFEST_NAME, os.O_WRONLY | os.O_APPEND | os.O_CREAT))

    def __enter__(self) -> Importer:
        return self

    def __exit__(self, *exc: object) -> None:
        self._writing.close()
        self.folders.close()

    def add(self, label: str, entry: dict[str, Any], run_bytes: bytes, fp_bytes: bytes | None) -> None:
        """Check one run and copy it in, unless the store has it (skipped) or holds another
        run of that id (a conflict)."""
        if not self.skips(label, entry):
            self.record(label, import_run(self.folders, entry, run_bytes, fp_bytes))

    def record(self, label: str, outcome: Outcome) -> None:
        """Take what importing a run did (here or in a worker process) into the report;
        its manifest line is appended with the batch."""
        self.done += 1
        if self.progress is not None:
            self.progress(self.done, self.expected)
        if outcome.line is None:
            problems = self.report.conflicts if outcome.conflict else self.report.damaged
            problems.append(f"{label}: {outcome.problem}")
            return
        self.known[outcome.run_id] = outcome.sha256
        self._pending.append(outcome.line)
        if len(self._pending) >= _BATCH:
            self.flush()

    def skips(self, label: str, entry: dict[str, Any]) -> bool:
        """Whether the store already has this run id (counted as skipped or as a conflict)."""
        known = self.known.get(entry["run_id"])
        if known is None:
            return False
        if known == entry["sha256"]:
            self.report.skipped += 1
        else:
            self.report.conflicts.append(
                f"{label}: run {entry['run_id']} differs from the destination's run of that id"
            )
        return True

    def flush(self) -> None:
        """Make the batch's files durable, then record them: files first, manifest after."""
        if not self._pending:
            return
        os.sync()
        append_lines_durably(self.dest, MANIFEST_NAME, self._pending)
        self.report.added += len(self._pending)
        self._pending.clear()


def known_runs(root: Path) -> dict[str, str]:
    """run id -> sha256 of the runs a store holds (index plus manifest tail)."""
    if not manifest_path(root).exists():
        return {}
    columns = _index.snapshot(root, warn=False).columns(["run_id", "sha256"])
    return dict(zip(columns["run_id"], columns["sha256"], strict=True))


def reason(exc: Exception) -> str:
    return (exc.strerror if isinstance(exc, OSError) else None) or str(exc)
