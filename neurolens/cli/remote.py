"""``neurolens remote optimize`` (Delta's own maintenance) and ``remote migrate`` (a table of
the plain layout before 0.2 made typed)."""

from __future__ import annotations

import argparse
import json
from typing import TextIO

from neurolens.cli.common import add_storage_options, integer_at_least, remote_of

NAME = "remote"
HAS_ROOT = False  # it works on the URL it is given, not on a local store
SUMMARY = "maintain a remote table: compaction, checkpoint, vacuum; migrate to typed columns"
DESCRIPTION = (
    "optimize: compact the many small files that pushes leave (Z-ordered by model and backend, so "
    "filters skip files), write a checkpoint, and vacuum files no version newer than "
    "--retention-hours needs. Run it from one place (a nightly job), not from every runner. "
    "migrate: turn a table made before 0.2 (text columns) into the typed layout outside tools "
    "read without parsing JSON, in one commit, safe beside pushes; a typed table is left as it is."
)
EPILOG = """\
examples:
  neurolens remote optimize s3://ci-benchmarks/neurolens
  neurolens remote optimize s3://ci-benchmarks/neurolens --retention-hours 24 --json
  neurolens remote migrate s3://ci-benchmarks/neurolens
"""


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=("optimize", "migrate"), help="what to do")
    parser.add_argument("url", metavar="URL", help="the remote table")
    parser.add_argument(
        "--retention-hours",
        type=integer_at_least(0),
        default=168,
        metavar="H",
        help="keep files older versions need for this long (default 168: a week of time travel)",
    )
    parser.add_argument(
        "--orphan-grace",
        type=_seconds,
        default=60.0,
        metavar="S",
        help="when optimize fails, remove the files it wrote that no version references after S seconds (60)",
    )
    add_storage_options(parser)
    parser.add_argument("--json", action="store_true", help="print the outcome as JSON")


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value <= 3600:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds from 0 to 3600")
    return value


def run(args: argparse.Namespace, out: TextIO) -> int:
    if args.action == "migrate":
        from neurolens.remote.migrate import migrate

        done = migrate(remote_of(args, args.url))
        if args.json:
            out.write(json.dumps(done) + "\n")
        elif done["already_typed"]:
            out.write(f"{args.url} has the typed layout already (version {done['version']})\n")
        else:
            again = f", {done['added']} pushed meanwhile added again" if done["added"] else ""
            out.write(
                f"migrated {args.url}: {done['migrated']} runs, typed{again}; "
                f"now at version {done['version']}\n"
            )
        return 0
    outcome = remote_of(args, args.url).optimize(args.retention_hours, args.orphan_grace)
    if args.json:
        out.write(json.dumps(outcome) + "\n")
    else:
        out.write(
            f"optimized {args.url}: {outcome['files_removed']} files compacted into "
            f"{outcome['files_added']}, "
            f"{outcome['vacuumed']} vacuumed; now at version {outcome['version']}\n"
        )
    return 0
