"""``neurolens show``: one run, and its fingerprint, by id or unique prefix."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

if TYPE_CHECKING:
    from neurolens.storage.ledger.root import Location

from neurolens.cli.common import CommandError, location_of

NAME = "show"
READS_REMOTE = True
SUMMARY = "print one run (and its fingerprint)"
DESCRIPTION = "Print a stored run by id or unique id prefix (any case), with its fingerprint when present."
EPILOG = """\
examples:
  neurolens show 01a219e4-5e0e-70f0-b79d-61c51dae2046
  neurolens show 01a219e4-5e0e          # a unique prefix is enough
  neurolens show 01a219e4-5e0e --json   # the stored document, as stored
"""


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_id", metavar="RUN_ID", help="a run id or a unique prefix of one")
    parser.add_argument("--json", action="store_true", help="print the stored run document exactly as stored")


def _read(root: Location, run_id: str, relative: str) -> bytes:
    from neurolens.errors import StoreError
    from neurolens.storage.ledger.files import check_run_path, read_store_file

    if not isinstance(root, Path):  # a remote table: the document and fingerprint are columns
        column = "fingerprint" if relative.endswith(".fp.json") else "document"
        texts = [r[column] for r in root.with_ids([run_id], [column]) if r[column] is not None]
        if not texts:
            raise CommandError(f"run {run_id} has no {column} in {root}")
        return str(texts[0]).encode("utf-8")
    try:
        return read_store_file(root, check_run_path(relative))
    except (OSError, StoreError) as exc:
        reason = (exc.strerror if isinstance(exc, OSError) else None) or str(exc)
        raise CommandError(f"cannot read {relative!r} in {root}: {reason}") from None


def run(args: argparse.Namespace, out: TextIO) -> int:
    from neurolens.storage.index.query import find_run
    from neurolens.tables import escape

    root = location_of(args)
    entry = find_run(root, args.run_id)
    run_bytes = _read(root, entry["run_id"], entry["run_json"])
    if args.json:
        out.write(run_bytes.decode("utf-8"))
        return 0
    where = root / entry["run_json"] if isinstance(root, Path) else f"{root}, {entry['run_json']}"
    out.write(escape(f"run {entry['run_id']}  ({where})") + "\n")
    # ensure_ascii: stored strings reach the terminal with control characters escaped
    out.write(json.dumps(json.loads(run_bytes), indent=2, sort_keys=True) + "\n")
    if entry["fp_json"]:
        fp = json.loads(_read(root, entry["run_id"], entry["fp_json"]))
        where = root / entry["fp_json"] if isinstance(root, Path) else f"{root}, {entry['fp_json']}"
        out.write(escape(f"\nfingerprint  ({where})") + "\n")
        out.write(json.dumps(fp, indent=2, sort_keys=True) + "\n")
    return 0
