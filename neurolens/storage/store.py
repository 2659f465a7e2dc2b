"""The documented store API: ``write_run`` and ``rebuild_index_from_manifest`` (with
``compact_index`` and ``ensure_usable_index``). Reading runs back goes through ``neurolens.sources``.

Layout under a root::

    YYYY/MM/DD/<backend>/<run_id>.json      canonical run document
    YYYY/MM/DD/<backend>/<run_id>.fp.json   optional environment fingerprint
    _manifest.jsonl                         append-only ledger, the source of truth
    _index.parquet                          derived index (``_index.jsonl`` without pyarrow)
    _index.lock                             taken while the index is rewritten
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from neurolens.errors import IndexWarning, RunExistsError, RunValidationError, StoreError
from neurolens.storage.index.compaction import IndexReport, compact, needs_compaction
from neurolens.storage.index.reading import has_run, opened_index
from neurolens.storage.ledger.canonical import canonical_bytes, check_json_value
from neurolens.storage.ledger.creating import create_file_atomically
from neurolens.storage.ledger.document import PreparedRun, prepare_run, run_relpaths
from neurolens.storage.ledger.files import (
    MAX_LINE_BYTES,
    MAX_RUN_FILE_BYTES,
    append_lines_durably,
    fsync_dir,
    open_dir,
    writing,
)
from neurolens.storage.ledger.manifest import MANIFEST_NAME, Progress, encode_entry, entry_for, manifest_size
from neurolens.storage.ledger.root import StrPath, default_root, ensure_root, require_store, resolve_root
from neurolens.storage.ledger.run_ids import take_minted

__all__ = [
    "compact_index",
    "default_root",
    "ensure_usable_index",
    "rebuild_index_from_manifest",
    "resolve_root",
    "write_run",
]


def write_run(
    root: StrPath | None,
    run: Mapping[str, Any],
    fingerprint: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Validate ``run``, store it and record it in the manifest; return where it went.

    Raises ``RunValidationError`` (a ``ValueError``) naming the field before anything is
    written, ``RunExistsError`` if a run of that id is already in the store (nothing
    changes), and ``StoreError`` for a store it must not write into (a symlink inside it,
    a root that is a file). Returns ``run_id``, ``run_json`` and ``fp_json`` (``root``
    joined with the file's path inside the store, so relative for a relative root;
    ``fp_json`` None without a fingerprint), ``created_at``, ``day`` and the manifest
    ``entry``. Once the manifest line is written the run is stored: a failure to update
    the derived index afterwards is an ``IndexWarning``, never an exception.
    """
    document = prepare_run(run)
    fp_bytes = fingerprint_bytes(fingerprint) if fingerprint is not None else None
    # an id generated here or minted by this process is new: only a given one is looked up
    look_up = run.get("run_id") is not None and not take_minted(document["run_id"])
    return _store(root, document, canonical_bytes(document), fp_bytes, look_up=look_up)


def write_prepared_run(
    root: StrPath | None, prepared: PreparedRun, fp_bytes: bytes | None = None
) -> dict[str, Any]:
    """``write_run`` of a run validated already (the pytest plugin validates each run as
    the test records it); ``fp_bytes`` is ``fingerprint_bytes`` of its fingerprint."""
    look_up = not take_minted(prepared.run_id)
    return _store(root, prepared.document, prepared.canonical_bytes(), fp_bytes, look_up=look_up)


def fingerprint_bytes(fingerprint: Mapping[str, Any]) -> bytes:
    """The fingerprint file's bytes; ``RunValidationError`` for one JSON cannot hold."""
    if not isinstance(fingerprint, Mapping):
        raise RunValidationError("fingerprint", f"must be a mapping, not {type(fingerprint).__name__}")
    check_json_value(dict(fingerprint), "fingerprint")
    return canonical_bytes(dict(fingerprint))


def _store(
    root: StrPath | None,
    document: Mapping[str, Any],
    run_bytes: bytes,
    fp_bytes: bytes | None,
    *,
    look_up: bool,
) -> dict[str, Any]:
    root = resolve_root(root)
    ensure_root(root)
    manifest_size(root)  # a symlinked manifest is refused before anything is written
    run_rel, fp_rel = run_relpaths(document, with_fingerprint=fp_bytes is not None)
    folder, _, run_name = run_rel.rpartition("/")
    entry = entry_for(document, run_rel, fp_rel, hashlib.sha256(run_bytes).hexdigest())
    line = encode_entry(entry)
    _check_sizes(run_bytes, fp_bytes, line)
    if look_up and has_run(root, document["run_id"]):
        raise RunExistsError(f"run {document['run_id']} is already in the store; runs are never overwritten")

    with writing(root):  # verify --fix never takes these files for a killed writer's
        manifest_bytes = _store_files(root, folder, run_name, run_bytes, fp_rel, fp_bytes, line)
    try:
        if needs_compaction(root, manifest_bytes - len(line), manifest_bytes):
            compact(root, blocking=False)
    except (OSError, StoreError) as exc:  # the run is stored; readers fall back to the manifest
        warnings.warn(f"run stored, but the index was not updated: {exc}", IndexWarning, stacklevel=3)
    return {
        "run_id": document["run_id"],
        "run_json": str(root / run_rel),
        "fp_json": str(root / fp_rel) if fp_rel else None,
        "created_at": document["created_at"],
        "day": entry["day"],
        "entry": entry,
    }


def _check_sizes(run_bytes: bytes, fp_bytes: bytes | None, line: bytes) -> None:
    """What every reader can hold (``MAX_RUN_FILE_BYTES``, ``MAX_LINE_BYTES``)."""
    for field, data in (("", run_bytes), ("fingerprint", fp_bytes or b"")):
        if len(data) > MAX_RUN_FILE_BYTES:
            what = "the fingerprint" if field else "the run document"
            raise RunValidationError(
                field, f"{what} is {len(data):,} bytes; a store holds {MAX_RUN_FILE_BYTES:,} at most"
            )
    if len(line) > MAX_LINE_BYTES:
        raise RunValidationError(
            "tags",
            f"the run's manifest line would be {len(line):,} bytes (its tags hold most); "
            f"at most {MAX_LINE_BYTES:,}",
        )


def _store_files(
    root: Path,
    folder: str,
    run_name: str,
    run_bytes: bytes,
    fp_rel: str | None,
    fp_bytes: bytes | None,
    line: bytes,
) -> int:
    """The run's files, then its manifest line; the manifest's new size."""
    dir_fd = open_dir(root, folder, create=True)
    created: list[str] = []
    try:
        create_file_atomically(dir_fd, run_name, run_bytes)
        created.append(run_name)
        if fp_rel is not None and fp_bytes is not None:
            create_file_atomically(dir_fd, fp_rel.rpartition("/")[2], fp_bytes)
            created.append(fp_rel.rpartition("/")[2])
        fsync_dir(dir_fd)
        manifest_bytes = append_lines_durably(root, MANIFEST_NAME, [line])
    except BaseException:
        # Nothing half-stored: a run is in the store only once its manifest line is.
        for name in created:
            with contextlib.suppress(OSError):
                os.unlink(name, dir_fd=dir_fd)
        raise
    finally:
        os.close(dir_fd)
    return manifest_bytes


def compact_index(root: StrPath | None = None) -> Path:
    """Fold the uncovered manifest tail into the index now (writers do it on their own at
    compaction points; this is for a store about to be archived or benchmarked)."""
    root = resolve_root(root)
    require_store(root)
    report = compact(root)
    assert report is not None  # a blocking compaction always runs
    return report.path


def ensure_usable_index(root: StrPath | None = None) -> bool:
    """Compact if the index is missing or unusable (damaged, from another version, not
    matching the manifest), so that readers neither warn nor read the whole manifest;
    return whether it compacted. Writers only check that an index exists."""
    root = resolve_root(root)
    require_store(root)
    with opened_index(root) as (index, _):
        if index is not None:
            return False
    compact(root)
    return True


def rebuild_index_from_manifest(root: StrPath | None = None) -> Path:
    """Rebuild the index from the manifest alone and return its path.

    Deterministic: the same manifest always gives a byte-identical index, equal to the
    one compaction keeps. Works when the index is missing or corrupt; torn lines and
    duplicate run ids are skipped with a ``ManifestWarning``.
    """
    return rebuild_index_report(root).path


def rebuild_index_report(
    root: StrPath | None = None, *, warn: bool = True, progress: Progress | None = None
) -> IndexReport:
    """``rebuild_index_from_manifest`` with the row count and the skipped lines."""
    root = resolve_root(root)
    require_store(root)
    report = compact(root, from_scratch=True, warn=warn, progress=progress)
    assert report is not None  # a blocking compaction always runs
    return report
