"""``neurolens ls``: list runs, newest first."""

from __future__ import annotations

import argparse
import json
import shutil
from typing import Any, TextIO

from neurolens.cli.common import integer_at_least, location_of, plural

NAME = "ls"
READS_REMOTE = True
SUMMARY = "list runs, newest first"
DESCRIPTION = "List runs, newest first. Filters combine (all must match)."
EPILOG = """\
examples:
  neurolens ls                                  # every run, newest first
  neurolens ls --model gpt2 --precision fp16 --day 2025-10-20
  neurolens ls --tag experiment=smoke --tag branch=main --limit 20
  neurolens ls --session latest                 # the runs of the newest pytest session
  neurolens ls --json | jq '.[] | .total_latency_ms'
"""


def register(parser: argparse.ArgumentParser) -> None:
    from neurolens.storage.index.filters import add_filter_arguments

    add_filter_arguments(parser)
    parser.add_argument("--limit", type=integer_at_least(0), metavar="N", help="at most N runs, the newest")
    parser.add_argument("--json", action="store_true", help="print a JSON array of rows instead of a table")


# (header, cell, right-aligned, shrinkable)
def _columns() -> list[tuple[str, Any, bool, bool]]:
    from neurolens.tables import milliseconds, number

    return [
        ("RUN ID", lambda r: r["run_id"], False, False),
        ("CREATED (UTC)", lambda r: r["created_at"][:19].replace("T", " "), False, False),
        ("MODEL", lambda r: r["model"], False, True),
        ("BACKEND", lambda r: r["backend"], False, True),
        ("PRECISION", lambda r: r["precision"], False, True),
        ("BATCH", lambda r: str(r["batch_size"]), True, False),
        ("SEQ", lambda r: "-" if r["seq_len"] is None else str(r["seq_len"]), True, False),
        ("LATENCY MS", lambda r: milliseconds(r["total_latency_ms"]), True, False),
        ("GPU %", lambda r: number(r["gpu_utilization"], 1), True, False),
        ("GPU", lambda r: r["gpu_name"] or "-", False, True),
        ("TAGS", lambda r: ",".join(f"{k}={v}" for k, v in sorted(r["tags"].items())) or "-", False, True),
    ]


def run(args: argparse.Namespace, out: TextIO) -> int:
    from neurolens.storage.index.filters import filter_from_args
    from neurolens.storage.index.query import to_records
    from neurolens.tables import render

    root = location_of(args)
    flt = filter_from_args(args, limit=args.limit)
    records = to_records(root.select(flt))
    if args.json:
        out.write(json.dumps(records, ensure_ascii=False) + "\n")
        return 0
    if args.limit == 0:
        out.write("no runs shown (--limit 0)\n")
        return 0
    if not records:
        out.write(f"no runs in {root}" + (f" match {flt.describe()}" if flt.selects() else "") + "\n")
        return 0
    columns = _columns()
    # Clip wide columns only for a person at a terminal; pipes get every character.
    width = shutil.get_terminal_size().columns if out.isatty() else None
    out.write(
        render(
            [c[0] for c in columns],
            [[cell(r) for _, cell, _, _ in columns] for r in records],
            right=[i for i, c in enumerate(columns) if c[2]],
            shrink=[i for i, c in enumerate(columns) if c[3]],
            width=width,
        )
    )
    limited = args.limit is not None and len(records) == args.limit
    out.write(
        plural(len(records), "run")
        + (f" (the newest {args.limit}: --limit reached)" if limited else "")
        + "\n"
    )
    return 0
