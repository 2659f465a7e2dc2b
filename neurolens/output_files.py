"""Files the commands write for people to open (a report page, an export): whole or absent."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from neurolens.errors import StoreError


@contextlib.contextmanager
def written_whole(out: Path) -> Iterator[Path]:
    """A temporary path beside ``out`` to write; renamed to ``out`` (readable by all: a file
    to share, where mkstemp makes it private) when the block ends, removed if it raises. A
    reader of ``out`` never sees half a file."""
    if out.is_dir():
        raise StoreError(f"{out} is a folder; give a file name")
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
