"""Where a store lives: the default root, and a root given as text or a path."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from neurolens.errors import StoreError
from neurolens.storage.ledger.manifest import manifest_size

StrPath = str | os.PathLike[str]

ROOT_ENV = "NEUROLENS_STORE_ROOT"


def default_root() -> Path:
    """``$NEUROLENS_STORE_ROOT`` when set, else ``./runs_store``."""
    return Path(os.environ.get(ROOT_ENV) or "runs_store")


def resolve_root(root: StrPath | None) -> Path:
    """``root`` as a Path; the default root for None."""
    if root is None:
        return default_root()
    if not isinstance(root, (str, os.PathLike)) or not os.fspath(root):
        raise StoreError(f"root must be a non-empty path, not {root!r}")
    return Path(root)


def ensure_root(root: Path) -> None:
    """Create the root (and parents) for a writer; a root that is a file is an error."""
    try:
        if stat.S_ISDIR(os.stat(root).st_mode):  # the common case: one stat per write
            return
    except FileNotFoundError:
        root.mkdir(parents=True, exist_ok=True)
        return
    except OSError:
        pass
    if root.exists() and not root.is_dir():
        raise StoreError(f"store root {root} exists and is not a directory")
    root.mkdir(parents=True, exist_ok=True)


def require_store(root: Path) -> None:
    """For readers and maintenance commands: a folder with a manifest, else StoreError.

    Every command gives the same answer for a root that is not a store, and none of
    them writes anything there.
    """
    if not root.exists():
        raise StoreError(f"no store at {root} (it does not exist)")
    if not root.is_dir():
        raise StoreError(f"no store at {root} (it is not a directory)")
    manifest_size(root)  # a symlinked manifest is refused there
    if not (root / "_manifest.jsonl").is_file():
        raise StoreError(f"no store at {root} (no _manifest.jsonl)")
