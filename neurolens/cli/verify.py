"""``neurolens verify``: check a store, and remove what killed writers left."""

from __future__ import annotations

import argparse
import json
import sys
from typing import TextIO

from neurolens.cli.common import count_progress, plural, root_of, warn

NAME = "verify"
SUMMARY = "check a store; exit 1 when anything is wrong"
DESCRIPTION = (
    "Check the manifest, every run file against its entry and hash, stray files and the index. "
    "Files killed writers left (temporary files, run files without a manifest line) are listed "
    "apart as leftovers; they are harmless and --fix removes them."
)
EPILOG = """\
examples:
  neurolens verify --root all_runs
  neurolens verify --fix                 # also remove leftovers of killed writers
  neurolens verify --json | jq '.counts'
"""


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--full", action="store_true", help="validate every run against the schema, not only damaged ones"
    )
    parser.add_argument("--fix", action="store_true", help="remove the leftovers of killed writers")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")


def run(args: argparse.Namespace, out: TextIO) -> int:
    from neurolens.storage.exchange.verify import remove_leftovers, verify_store
    from neurolens.tables import escape

    root = root_of(args)
    report = verify_store(root, full=args.full, progress=count_progress(sys.stderr))
    removed = remove_leftovers(report) if args.fix else []
    if args.json:
        out.write(json.dumps({**report.to_dict(), "removed": removed}, ensure_ascii=False) + "\n")
    else:
        for problem in report.problems:
            out.write(escape(f"{problem.kind:<20} {problem.where}: {problem.message}") + "\n")
        for leftover in report.leftovers:
            done = "removed" if leftover in removed else "safe to delete, or run verify --fix"
            warn(f"leftover: {leftover}: left by an interrupted writer ({done})")
        verdict = "clean" if report.clean else plural(len(report.problems), "problem")
        counts = ", ".join(f"{n} {k}" for k, n in sorted(report.counts().items()))
        out.write(
            escape(f"{root}: {plural(report.runs, 'run')}, {plural(report.files, 'file')}: {verdict}")
            + (f" ({counts})" if counts else "")
            + "\n"
        )
    return 0 if report.clean else 1
