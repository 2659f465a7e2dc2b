"""``neurolens show``: one run, and its fingerprint, by id or unique prefix."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TextIO

from neurolens.cli.common import CommandError, root_of

NAME = "show"
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


def _read(root: Path, relative: str) -> bytes:
    from neurolens.errors import StoreError
    from neurolens.storage.files import check_run_path, read_store_file

    try:
        return read_store_file(root, check_run_path(relative))
    except (OSError, StoreError) as exc:
        reason = (exc.strerror if isinstance(exc, OSError) else None) or str(exc)
        raise CommandError(f"cannot read {relative!r} in {root}: {reason}") from None


def run(args: argparse.Namespace, out: TextIO) -> int:
    from neurolens.storage.query import find_run
    from neurolens.tables import escape

    root = root_of(args)
    entry = find_run(root, args.run_id)
    run_bytes = _read(root, entry["run_json"])
    if args.json:
        out.write(run_bytes.decode("utf-8"))
        return 0
    out.write(escape(f"run {entry['run_id']}  ({root / entry['run_json']})") + "\n")
    # ensure_ascii: stored strings reach the terminal with control characters escaped
    out.write(json.dumps(json.loads(run_bytes), indent=2, sort_keys=True) + "\n")
    if entry["fp_json"]:
        fp = json.loads(_read(root, entry["fp_json"]))
        out.write(escape(f"\nfingerprint  ({root / entry['fp_json']})") + "\n")
        out.write(json.dumps(fp, indent=2, sort_keys=True) + "\n")
    return 0
