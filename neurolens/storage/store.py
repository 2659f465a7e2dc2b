"""The documented store API: ``write_run`` and ``rebuild_index_from_manifest``.

Layout under a root::

    YYYY/MM/DD/<backend>/<run_id>.json      canonical run document
    YYYY/MM/DD/<backend>/<run_id>.fp.json   optional environment fingerprint
    _manifest.jsonl                         append-only ledger, the source of truth
    _index.parquet                          derived index (``_index.jsonl`` without pyarrow)
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from neurolens.errors import RunValidationError, StoreError
from neurolens.storage import index as _index
from neurolens.storage.document import (
    canonical_bytes,
    check_json_value,
    default_root,
    prepare_run,
    run_relpaths,
)
from neurolens.storage.files import append_lines_durably, create_file_atomically, fsync_dir
from neurolens.storage.manifest import Progress, encode_entry, entry_for, manifest_path

__all__ = [
    "compact_index",
    "default_root",
    "rebuild_index_from_manifest",
    "resolve_root",
    "write_run",
]

StrPath = str | os.PathLike[str]


def resolve_root(root: StrPath | None) -> Path:
    """``root`` as a Path; the default root (``$NEUROLENS_STORE_ROOT`` or ``./runs_store``) for None."""
    if root is None:
        return default_root()
    if not isinstance(root, (str, os.PathLike)) or not os.fspath(root):
        raise StoreError(f"root must be a non-empty path, not {root!r}")
    return Path(root)


def _ensure_root(root: Path) -> None:
    if root.exists() and not root.is_dir():
        raise StoreError(f"store root {root} exists and is not a directory")
    root.mkdir(parents=True, exist_ok=True)


def write_run(
    root: StrPath | None,
    run: Mapping[str, Any],
    fingerprint: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Validate ``run``, store it and record it in the manifest; return where it went.

    Raises ``RunValidationError`` (a ``ValueError``) naming the field before anything is
    written, and ``RunExistsError`` if the run's file already exists (nothing changes).
    Returns ``run_id``, ``run_json`` and ``fp_json`` (absolute paths; ``fp_json`` None
    without a fingerprint), ``created_at``, ``day`` and the manifest ``entry``.
    """
    document = prepare_run(run)
    fp_bytes = None
    if fingerprint is not None:
        if not isinstance(fingerprint, Mapping):
            raise RunValidationError("fingerprint", f"must be a mapping, not {type(fingerprint).__name__}")
        check_json_value(dict(fingerprint), "fingerprint")
        fp_bytes = canonical_bytes(dict(fingerprint))
    run_bytes = canonical_bytes(document)

    root = resolve_root(root)
    _ensure_root(root)
    run_rel, fp_rel = run_relpaths(document, with_fingerprint=fp_bytes is not None)
    run_path = root / run_rel
    fp_path = root / fp_rel if fp_rel else None
    run_path.parent.mkdir(parents=True, exist_ok=True)

    created: list[Path] = []
    try:
        create_file_atomically(run_path, run_bytes)
        created.append(run_path)
        if fp_path is not None and fp_bytes is not None:
            create_file_atomically(fp_path, fp_bytes)
            created.append(fp_path)
        fsync_dir(run_path.parent)
        entry = entry_for(document, run_rel, fp_rel, hashlib.sha256(run_bytes).hexdigest())
        manifest_bytes = append_lines_durably(manifest_path(root), [encode_entry(entry)])
    except BaseException:
        # Nothing half-stored: a run is in the store only once its manifest line is.
        for path in created:
            with contextlib.suppress(OSError):
                path.unlink()
        raise

    if _index.needs_compaction(root, manifest_bytes):
        _index.compact(root, blocking=False)
    return {
        "run_id": document["run_id"],
        "run_json": str(run_path),
        "fp_json": str(fp_path) if fp_path else None,
        "created_at": document["created_at"],
        "day": entry["day"],
        "entry": entry,
    }


def compact_index(root: StrPath | None = None) -> Path:
    """Fold the uncovered manifest tail into the index (done at the end of a test session)."""
    root = resolve_root(root)
    _ensure_root(root)
    report = _index.compact(root)
    assert report is not None  # a blocking compaction always runs
    return report.path


def rebuild_index_from_manifest(root: StrPath | None = None) -> Path:
    """Rebuild the index from the manifest alone and return its path.

    Deterministic: the same manifest always gives a byte-identical index, equal to the
    one compaction keeps. Works when the index is missing or corrupt; torn lines and
    duplicate run ids are skipped with a ``ManifestWarning``.
    """
    return rebuild_index_report(root).path


def rebuild_index_report(
    root: StrPath | None = None, *, warn: bool = True, progress: Progress | None = None
) -> _index.IndexReport:
    """``rebuild_index_from_manifest`` with the row count and the skipped lines."""
    root = resolve_root(root)
    if not root.is_dir():
        raise StoreError(f"no store at {root}")
    report = _index.compact(root, from_scratch=True, warn=warn, progress=progress)
    assert report is not None  # a blocking compaction always runs
    return report
