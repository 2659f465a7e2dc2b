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
    "apart as leftovers; they are harmless and --fix removes them (never a live writer's: it "
    "waits for none and says so). A run file whose manifest line was damaged is restorable: "
    "--fix appends its line again from the file and never deletes it."
)
EPILOG = """\
examples:
  neurolens verify --root all_runs
  neurolens verify --fix                 # remove leftovers of killed writers, restore damaged lines
  neurolens verify --json | jq '.counts'
"""


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--full", action="store_true", help="validate every run against the schema, not only damaged ones"
    )
    parser.add_argument(
        "--fix",
        action="store_true",
        help="remove the leftovers of killed writers; restore the lines of runs a damaged line names",
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")


def run(args: argparse.Namespace, out: TextIO) -> int:
    from neurolens.storage.exchange.repair import Repair, repair
    from neurolens.storage.exchange.verify import verify_store
    from neurolens.tables import escape

    root = root_of(args)
    report = verify_store(root, full=args.full, progress=count_progress(sys.stderr, quiet=args.json))
    fixed = repair(report) if args.fix else Repair()
    if args.fix and (fixed.restored or any(p.kind == "index" for p in report.problems)):
        from neurolens.storage.store import rebuild_index_from_manifest

        rebuild_index_from_manifest(root)  # derived: always safe to make again
        fixed.notes.append("index rebuilt from the manifest")
    if args.json:
        done = {
            "removed": fixed.removed,
            "restored": fixed.restored,
            "kept": fixed.kept,
            "fixed": fixed.notes,
        }
        out.write(json.dumps({**report.to_dict(), **done}, ensure_ascii=False) + "\n")
    else:
        for problem in report.problems:
            out.write(escape(f"{problem.kind:<20} {problem.where}: {problem.message}") + "\n")
        for leftover in report.leftovers:
            said = "removed" if leftover in fixed.removed else "safe to delete, or run verify --fix"
            warn(f"leftover: {leftover}: left by an interrupted writer ({fixed.kept.get(leftover, said)})")
        for file in report.restorable:
            said = "its line restored" if file in fixed.restored else "verify --fix restores its line"
            warn(f"restorable: {file}: a damaged manifest line names this run ({fixed.kept.get(file, said)})")
        for note in fixed.notes:
            warn(note)
        verdict = "clean" if report.clean else plural(len(report.problems), "problem")
        counts = ", ".join(f"{n} {k}" for k, n in sorted(report.counts().items()))
        out.write(
            escape(f"{root}: {plural(report.runs, 'run')}, {plural(report.files, 'file')}: {verdict}")
            + (f" ({counts})" if counts else "")
            + "\n"
        )
    return 0 if report.clean else 1
