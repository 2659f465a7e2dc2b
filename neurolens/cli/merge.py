"""``neurolens merge``: copy the runs of other stores into one."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TextIO

from neurolens.cli.common import integer_at_least, plural, progress, root_of, warn

NAME = "merge"
SUMMARY = "copy the runs of other stores (folders or .tar.gz) into this one"
DESCRIPTION = (
    "Copy every sound run of each SRC store into --root, keeping the layout; runs already there are "
    "skipped, runs that differ are conflicts, damaged runs are reported and never copied. Exit 0 only "
    "when every source run is now in --root; 1 when anything was refused, damaged or in conflict."
)
EPILOG = """\
examples:
  neurolens merge runner-a/runs_store runner-b/runs_store --root all_runs
  neurolens merge artifacts/*.tar.gz --root all_runs --json
"""


def register(parser: argparse.ArgumentParser) -> None:
    from neurolens.storage.exchange.merge import ArchiveLimits

    defaults = ArchiveLimits()
    parser.add_argument(
        "sources", nargs="+", metavar="SRC", help="a store folder or a .tar.gz archive of one"
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument(
        "--max-archive-bytes",
        type=integer_at_least(1),
        default=defaults.max_bytes,
        metavar="N",
        help=f"refuse an archive that unpacks to more than N bytes (default {defaults.max_bytes:,})",
    )
    parser.add_argument(
        "--max-archive-members",
        type=integer_at_least(1),
        default=defaults.max_members,
        metavar="N",
        help=f"refuse an archive of more than N members (default {defaults.max_members:,})",
    )


def run(args: argparse.Namespace, out: TextIO) -> int:
    from neurolens.storage.exchange.merge import ArchiveLimits, merge_stores

    root = root_of(args)
    limits = ArchiveLimits(max_bytes=args.max_archive_bytes, max_members=args.max_archive_members)
    shown = progress(sys.stderr, "merged", quiet=args.json)
    report = merge_stores(root, [Path(s) for s in args.sources], limits, progress=shown)
    if args.json:
        out.write(json.dumps(report.to_dict(), ensure_ascii=False) + "\n")
    else:
        for kind, lines in (
            ("refused", report.refused),
            ("conflict", report.conflicts),
            ("damaged", report.damaged),
        ):
            for line in lines:
                warn(f"{kind}: {line}")
        out.write(
            f"merged into {root}: {report.added:,} added, {report.skipped:,} already present, "
            f"{len(report.conflicts):,} in conflict, {len(report.damaged):,} damaged, "
            f"{len(report.refused):,} refused\n"
        )
    if not report.complete:
        problems = len(report.conflicts) + len(report.damaged) + len(report.refused)
        warn(f"merge incomplete: {plural(problems, 'problem')} (listed above)")
        return 1
    return 0
