"""``neurolens show``: one run, and its fingerprint, by id or unique prefix."""

from __future__ import annotations

import argparse
import json
from typing import TextIO

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


def run(args: argparse.Namespace, out: TextIO) -> int:
    from neurolens.tables import escape

    source = location_of(args)
    with source:
        entry = source.find_run(args.run_id)
        run_bytes = source.document(entry)
        if args.json:
            out.write(run_bytes.decode("utf-8"))
            return 0
        out.write(escape(f"run {entry['run_id']}  ({source.where(entry, 'run_json')})") + "\n")
        out.write(_pretty(run_bytes, source.where(entry, "run_json")))
        fp_bytes = source.fingerprint(entry)
        if fp_bytes is not None:
            out.write("\n" + escape(f"fingerprint  ({source.where(entry, 'fp_json')})") + "\n")
            out.write(_pretty(fp_bytes, source.where(entry, "fp_json")))
    return 0


def _pretty(data: bytes, where: str) -> str:
    """Stored JSON indented for a person; ensure_ascii: stored strings reach the terminal
    with control characters escaped."""
    try:
        return json.dumps(json.loads(data), indent=2, sort_keys=True) + "\n"
    except (ValueError, RecursionError) as exc:
        reason = "nested too deeply" if isinstance(exc, RecursionError) else "not valid JSON"
        raise CommandError(f"{where}: {reason}") from None
