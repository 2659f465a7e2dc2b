"""``neurolens pull``: copy a remote table's runs into the local store."""

from __future__ import annotations

import argparse
import json
import sys
from typing import TextIO

from neurolens.cli.common import add_remote_arguments, plural, progress, remote_of, root_of

NAME = "pull"
SUMMARY = "copy (a filtered part of) a remote table into the local store"
DESCRIPTION = (
    "Copy the runs of a remote table that the local store (--root) lacks, restoring each run's "
    "exact file and fingerprint; every run is checked like a merged one (hash, schema, its row) "
    "before it is stored. Idempotent. The ls filters select what to pull; only that part of the "
    "table is read. Needs the 'remote' extra."
)
EPILOG = """\
examples:
  neurolens pull s3://ci-benchmarks/neurolens --tag branch=main --root baseline_runs
  neurolens pull s3://ci-benchmarks/neurolens --day 2026-11-27 --json

exit status: 0 every selected run is in the local store, 1 some were damaged or in conflict, 2 usage error
"""


def register(parser: argparse.ArgumentParser) -> None:
    add_remote_arguments(parser)


def run(args: argparse.Namespace, out: TextIO) -> int:
    from neurolens.remote.sync import pull
    from neurolens.storage.index.filters import filter_from_args

    root = root_of(args)
    shown = progress(sys.stderr, "pulled", quiet=args.json)
    report = pull(remote_of(args, args.url), root, filter_from_args(args), progress=shown)
    if args.json:
        out.write(json.dumps(report.to_dict()) + "\n")
    else:
        out.write(f"pulled {plural(report.added, 'run')} into {root} ({report.skipped} already there)\n")
        for problem in [*report.conflicts, *report.damaged]:
            out.write(f"not pulled: {problem}\n")
    return 0 if report.complete else 1
