"""What a remote table must be before its rows are read: a table is untrusted input (written
by another tool, or tampered with), read with the same care as a local store's files."""

from __future__ import annotations

from typing import Any

from neurolens.errors import StoreError


def check_file_paths(url: str, table: Any) -> None:
    """Refuse a table whose log names a data file outside the table's root (``../x``, an
    absolute path or another URL): delta-rs would read it (another prefix of the bucket,
    a file anywhere on disk)."""
    from pathlib import PurePosixPath
    from urllib.parse import unquote

    for path in table.get_add_actions(flatten=False).column("path").to_pylist():
        decoded = unquote(str(path))
        if (
            "://" in decoded
            or decoded.startswith(("/", "\\"))
            or ".." in PurePosixPath(decoded.replace("\\", "/")).parts
        ):
            raise StoreError(
                f"{url}: the table's log names a data file outside the table ({str(path)[:200]!r}); "
                "it is not read (a table written by another tool, or tampered with)"
            )


def sound_rows(url: str, table: Any) -> Any:
    """The rows whose tags are a JSON object of strings, as ``write_run`` writes them; the
    others (a table written by another tool, or by hand) skipped with a warning, as local
    readers skip such manifest lines."""
    import warnings

    from neurolens.errors import ManifestWarning
    from neurolens.storage.index.arrow_backend import TAGS_PATTERN
    from neurolens.storage.index.arrow_kernels import filter_rows, match_substring

    sound = match_substring(table.column("tags"), TAGS_PATTERN, regex=True)  # null: dropped too
    kept = filter_rows(table, sound)
    if kept.num_rows < table.num_rows:
        warnings.warn(
            f"{url}: {table.num_rows - kept.num_rows} row(s) skipped: "
            "their tags are not a JSON object of strings",
            ManifestWarning,
            stacklevel=2,
        )
    return kept
