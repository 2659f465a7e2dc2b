"""Which run ids a manifest's bytes mention, damaged lines included: a run file whose id a
damaged line names is the way to restore that line, never a leftover (``verify --fix``)."""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from pathlib import Path

from neurolens.storage.ledger.files import open_in_store
from neurolens.storage.ledger.manifest import MANIFEST_NAME

_READ_CHUNK = 8 * 1024 * 1024

_RUN_FILE = re.compile(r"(?P<id>[0-9a-fA-F-]{36})(?:\.fp)?\.json")


def run_id_of(relative: str) -> str | None:
    """The run id a run or fingerprint file's name gives."""
    found = _RUN_FILE.fullmatch(relative.rpartition("/")[2])
    return found["id"] if found else None


def mentioned_ids(root: Path, run_ids: Iterable[str]) -> set[str]:
    """Those of ``run_ids`` whose text occurs anywhere in the manifest, damaged lines too
    (read in slices: memory stays bounded)."""
    wanted = sorted(set(run_ids))
    if not wanted:
        return set()
    pattern = re.compile(b"|".join(re.escape(i.encode()) for i in wanted))
    found: set[str] = set()
    overlap = max(len(i) for i in wanted) - 1
    try:
        fd = open_in_store(root, MANIFEST_NAME, os.O_RDONLY)
    except FileNotFoundError:
        return found
    try:
        carry, offset = b"", 0
        while chunk := os.pread(fd, _READ_CHUNK, offset):
            offset += len(chunk)
            window = carry + chunk
            found.update(m.decode() for m in pattern.findall(window))
            carry = window[-overlap:]
    finally:
        os.close(fd)
    return found
