"""The manifest ledger: ``_manifest.jsonl``, one flat JSON entry per run, append-only.

The manifest is the source of truth of a store; the index is derived from it.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import stat
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from neurolens.errors import StoreError
from neurolens.storage.ledger.files import MAX_LINE_BYTES, locked, open_in_store

MANIFEST_NAME = "_manifest.jsonl"

# Column name -> (python type, nullable). The order is the index's column order.
COLUMNS: dict[str, tuple[type, bool]] = {
    "run_id": (str, False),
    "created_at": (str, False),
    "day": (str, False),
    "model": (str, False),
    "backend": (str, False),
    "precision": (str, False),
    "batch_size": (int, False),
    "seq_len": (int, True),
    "total_latency_ms": (float, False),
    "gpu_utilization": (float, True),
    "gpu_name": (str, True),
    "driver_version": (str, True),
    "cuda_version": (str, True),
    "run_json": (str, False),
    "fp_json": (str, True),
    "tags": (str, False),
    "sha256": (str, False),
    "session_id": (str, True),
    "fingerprint_hash": (str, True),
    "outcome": (str, True),  # the test's outcome; null for runs written outside pytest
    "repeat": (int, True),  # the round of a repeated measurement (a sample of its own)
    "latency_p99_ms": (float, True),  # the tail, for trends without reading run files
    "cpu_model": (str, True),  # the host's CPU: a run without a GPU is compared on its own CPU
}

# Columns later versions added: lines written before them lack the key (read as null), and
# a null there is "not recorded", not a disagreement with the run file.
ADDED_COLUMNS = frozenset({"outcome", "repeat", "latency_p99_ms", "cpu_model"})

# progress(bytes_done, bytes_total) while a long read goes on
Progress = Callable[[int, int], None]

# Manifest files are read in slices of about this size so memory stays bounded.
_READ_CHUNK = 8 * 1024 * 1024


def encode_tags(tags: Mapping[str, str]) -> str:
    """The one serialisation of tags used in the manifest and by tag filters."""
    return json.dumps(dict(tags), sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def entry_for(document: Mapping[str, Any], run_json: str, fp_json: str | None, sha256: str) -> dict[str, Any]:
    """The flat manifest entry of a validated, canonical run document."""
    metrics = document["metrics"]
    hardware = document.get("hardware") or {}
    gpu_util = metrics.get("gpu_utilization")
    test = document.get("test") or {}
    return {
        "run_id": document["run_id"],
        "created_at": document["created_at"],
        "day": document["created_at"][:10],
        "model": document["model"],
        "backend": document["backend"],
        "precision": document["precision"],
        "batch_size": document["batch_size"],
        "seq_len": document.get("seq_len"),
        "total_latency_ms": float(metrics["total_latency_ms"]),
        "gpu_utilization": None if gpu_util is None else float(gpu_util),
        "gpu_name": _str_or_none(hardware.get("gpu_name")),
        "driver_version": _str_or_none(hardware.get("driver_version")),
        "cuda_version": _str_or_none(hardware.get("cuda_version")),
        "run_json": run_json,
        "fp_json": fp_json,
        "tags": encode_tags(document.get("tags") or {}),
        "sha256": sha256,
        "session_id": document.get("session_id"),
        "fingerprint_hash": document.get("fingerprint_hash"),
        "outcome": test.get("outcome"),
        "repeat": test.get("repeat"),
        "latency_p99_ms": _float_or_none(metrics.get("latency_p99_ms")),
        "cpu_model": _str_or_none(hardware.get("cpu_model")),
    }


def entry_differences(expected: Mapping[str, Any], entry: Mapping[str, Any]) -> list[str]:
    """The columns where a manifest entry disagrees with the entry its run file gives."""
    if expected == entry:  # the common case, one comparison in C (verify, merge: every run)
        return []
    return sorted(
        k
        for k, v in expected.items()
        if entry.get(k) != v and not (k in ADDED_COLUMNS and entry.get(k) is None)
    )


def _float_or_none(value: Any) -> float | None:
    """A metric for a float column: numbers only (a run may hold anything under metrics)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def _str_or_none(value: Any) -> str | None:
    return None if value is None else str(value)


def encode_entry(entry: Mapping[str, Any]) -> bytes:
    line = json.dumps(entry, sort_keys=True, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    return (line + "\n").encode("utf-8")


# What the index stores an integer in: anything outside is refused by the schema and
# skipped by readers.
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


def coerce_entry(raw: Any) -> dict[str, Any] | str:
    """A parsed manifest line as a typed entry with every column, or why it is invalid."""
    if not isinstance(raw, dict):
        return "not a JSON object"
    entry: dict[str, Any] = {}
    for name, (kind, nullable) in COLUMNS.items():
        value = raw.get(name)
        if value is None:
            if not nullable:
                return f"'{name}' is missing"
        elif kind is float:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                return f"'{name}' is not a number"
            try:
                value = float(value)
            except OverflowError:
                return f"'{name}' is out of range"
            if not math.isfinite(value):
                return f"'{name}' is not a finite number"
        elif kind is int:
            if isinstance(value, bool) or not isinstance(value, int):
                return f"'{name}' is not an integer"
            if not INT64_MIN <= value <= INT64_MAX:
                return f"'{name}' is outside the 64-bit integer range"
        elif not isinstance(value, str):
            return f"'{name}' is not a string"
        entry[name] = value
    tags = decode_tags(entry["tags"])
    if tags is None:
        return "'tags' is not a JSON object of strings"
    entry["tags"] = encode_tags(tags)  # canonical, so tag filters can match its text
    return entry


def decode_tags(text: str) -> dict[str, str] | None:
    try:
        tags = json.loads(text)
    except (ValueError, RecursionError):
        return None
    if not isinstance(tags, dict) or not all(isinstance(v, str) for v in tags.values()):
        return None
    return tags


@dataclass
class ManifestRead:
    """What reading complete lines in ``[start, end)`` of the manifest found out."""

    end: int = 0  # just past the last complete line read
    last_line_sha256: str | None = None
    problems: list[str] = field(default_factory=list)


def manifest_path(root: Path) -> Path:
    return root / MANIFEST_NAME


def manifest_size(root: Path) -> int:
    """The manifest's size in bytes (0 when there is none); a symlink is a StoreError."""
    try:
        status = os.lstat(manifest_path(root))
    except FileNotFoundError:
        return 0
    if stat.S_ISLNK(status.st_mode):
        raise StoreError(f"{manifest_path(root)} is a symlink: refusing to follow it out of the store")
    return status.st_size


def open_manifest(root: Path) -> BinaryIO:
    """The manifest, opened for reading inside the root without following a link: a
    symlinked manifest is a StoreError, never a file elsewhere read as runs.
    FileNotFoundError when there is none."""
    return os.fdopen(open_in_store(root, MANIFEST_NAME, os.O_RDONLY), "rb")


def read_blocks(
    root: Path,
    read: ManifestRead,
    start: int = 0,
    *,
    progress: Progress | None = None,
    stop: int | None = None,
) -> Iterator[tuple[int, memoryview]]:
    """Blocks of complete manifest lines from byte ``start`` (a line boundary), each with
    its byte offset; ``read`` learns how far they went.

    An unterminated last line is left for the next reader: an append still in progress
    silently, the remains of a killed writer noted in ``read.problems``. Reading
    ends at byte ``stop`` when given (a line boundary). Each block is a view of a fresh
    slice of the file: each byte is read once (a line a slice cuts is read again whole
    with the next slice).
    """
    read.end = start
    try:
        handle = open_manifest(root)
    except FileNotFoundError:
        return
    total = manifest_size(root) if stop is None else stop
    position = start  # the start of the line a slice begins with
    leftover = 0  # bytes of an unterminated last line
    want = _READ_CHUNK
    with handle:
        while True:
            size = want if stop is None else min(want, stop - position)
            data = os.pread(handle.fileno(), size, position) if size > 0 else b""
            if not data:
                break
            cut = data.rfind(b"\n") + 1
            if cut == 0 and len(data) == size and want <= MAX_LINE_BYTES:
                want *= 2  # a line longer than a slice: read more at once
                continue
            if cut == 0:
                end = _line_end(handle.fileno(), position + len(data), stop) if len(data) == size else None
                if end is None:  # the file ends inside this line
                    leftover = (stop if stop is not None else os.fstat(handle.fileno()).st_size) - position
                    break
                # a line longer than a slice, so longer than any a store holds: skipped
                # without ever being held whole
                read.problems.append(
                    f"manifest byte {position}: line of {end - position:,} bytes skipped "
                    f"(a manifest line holds {MAX_LINE_BYTES:,} bytes at most)"
                )
                position = read.end = end
                want = _READ_CHUNK
                continue
            if progress is not None:
                progress(position + cut - start, total - start)
            last_start = data.rfind(b"\n", 0, cut - 1) + 1
            read.last_line_sha256 = hashlib.sha256(memoryview(data)[last_start : cut - 1]).hexdigest()
            read.end = position + cut
            yield position, memoryview(data)[:cut]
            position += cut
            want = _READ_CHUNK
        if leftover and _torn_line_at(handle.fileno(), position):
            read.problems.append(f"manifest byte {position}: incomplete last line ({leftover} bytes) ignored")


def _line_end(fd: int, offset: int, stop: int | None) -> int | None:
    """The offset just past the next newline from ``offset`` (read a slice at a time), or
    None if the file (or ``stop``) ends first."""
    while stop is None or offset < stop:
        data = os.pread(fd, _READ_CHUNK if stop is None else min(_READ_CHUNK, stop - offset), offset)
        if not data:
            return None
        found = data.find(b"\n")
        if found >= 0:
            return offset + found + 1
        offset += len(data)
    return None


def _torn_line_at(fd: int, position: int) -> bool:
    """Whether the unterminated line at byte ``position`` was left by a writer that is
    gone, rather than an append still in progress.

    A writer holds the manifest's lock while it appends, and a reader can see its line
    part-written (at a page boundary); so the line is torn only if, with no writer
    holding the lock, it still has no end.
    """
    with locked(fd, blocking=False, shared=True) as no_writer:
        if not no_writer:
            return False
        chunk = 64 * 1024
        while True:
            data = os.pread(fd, chunk, position)
            if b"\n" in data:
                return False  # finished since: it lies past this read, like any later line
            if len(data) < chunk:
                return True
            position += chunk


def last_line_sha256_before(root: Path, end: int) -> str | None:
    """sha256 of the manifest line that ends at byte ``end`` (None if there is none)."""
    if end <= 0:
        return None
    with open_manifest(root) as handle:
        window = 64 * 1024
        while True:
            begin = max(0, end - window)
            handle.seek(begin)
            data = handle.read(end - begin)
            if len(data) != end - begin or not data.endswith(b"\n"):
                return None
            body = data[:-1]
            newline = body.rfind(b"\n")
            if newline >= 0 or begin == 0:
                return hashlib.sha256(body[newline + 1 :]).hexdigest()
            window *= 4
