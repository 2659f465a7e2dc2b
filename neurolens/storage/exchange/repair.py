"""``neurolens verify --fix``: remove what killed writers left, and give runs whose manifest
line was damaged their line back from their own files.

A run file without a sound manifest line is one of three things: a live writer's (its
files are linked, its line not yet appended), a killed writer's, or a run whose line was
damaged. Writers hold the store's writers lock (shared) from their first file to their
line, so the fix runs alone (exclusive, never waiting: it says so while a writer works)
and looks again under it. A file whose run id any manifest line mentions, damaged lines
included, is never deleted: it is the only way to restore that line.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from neurolens.errors import NeurolensError
from neurolens.storage.exchange.importer import known_runs
from neurolens.storage.exchange.verify import VerifyReport
from neurolens.storage.ledger.canonical import canonical_bytes
from neurolens.storage.ledger.document import prepare_run, run_relpaths
from neurolens.storage.ledger.files import (
    append_lines_durably,
    open_dir,
    read_run_file,
    writing,
)
from neurolens.storage.ledger.manifest import MANIFEST_NAME, encode_entry, entry_for
from neurolens.storage.ledger.mentions import mentioned_ids, run_id_of


@dataclass
class Repair:
    removed: list[str] = field(default_factory=list)  # killed writers' files, deleted
    restored: list[str] = field(default_factory=list)  # run files whose line was appended again
    kept: dict[str, str] = field(default_factory=dict)  # left in place, and why
    notes: list[str] = field(default_factory=list)  # what else the fix did


def repair(report: VerifyReport) -> Repair:
    """Act on ``verify_store``'s leftovers: delete the killed writers', restore the lines of
    runs a damaged line names, keep the rest (each with its reason)."""
    root, out = report.root, Repair()
    candidates = [*report.leftovers, *report.restorable]
    if not candidates:
        return out
    with writing(root, alone=True) as alone:
        if not alone:
            reason = "a writer is at work in the store: run verify --fix again once it has finished"
            out.kept = dict.fromkeys(candidates, reason)
            return out
        ids = {i for i in map(run_id_of, candidates) if i is not None}
        sound = known_runs(root)  # lines appended since verify read the manifest count too
        damaged = mentioned_ids(root, ids - set(sound))
        lines = []
        for relative in candidates:
            run_id = run_id_of(relative)
            if run_id in sound:
                continue  # its writer finished after verify looked: not a leftover
            if run_id not in damaged:
                if _unlink(root, relative):
                    out.removed.append(relative)
                continue
            line = None if relative.endswith(".fp.json") else _line_from_file(root, relative)
            if line is not None:
                lines.append(line)
                out.restored.append(relative)
            elif not relative.endswith(".fp.json"):
                out.kept[relative] = "a damaged manifest line names this run, but this file cannot restore it"
        if lines:
            append_lines_durably(root, MANIFEST_NAME, lines)
    return out


def _line_from_file(root: Path, relative: str) -> bytes | None:
    """The manifest line ``write_run`` gave this run file (and its fingerprint, if sound),
    or None unless the file is a canonical run at the path its own fields give."""
    try:
        data = read_run_file(root, relative)
        document = prepare_run(json.loads(data), parsed=True)
        if canonical_bytes(document) != data:
            return None
        run_rel, fp_rel = run_relpaths(document, with_fingerprint=True)
        if run_rel != relative:
            return None
        try:
            fingerprint = json.loads(read_run_file(root, fp_rel or ""))
            if not isinstance(fingerprint, dict):
                fp_rel = None
        except (OSError, ValueError, RecursionError, NeurolensError):
            fp_rel = None
    except (OSError, ValueError, RecursionError, NeurolensError):
        return None
    return encode_entry(entry_for(document, run_rel, fp_rel, hashlib.sha256(data).hexdigest()))


def _unlink(root: Path, relative: str) -> bool:
    folder, _, name = relative.rpartition("/")
    dir_fd = open_dir(root, folder)
    try:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name, dir_fd=dir_fd)
            return True
        return False
    finally:
        os.close(dir_fd)
