"""``neurolens push``: add the local store's runs to a remote table."""

from __future__ import annotations

import argparse
import json
import sys
from typing import TextIO

from neurolens.cli.common import add_remote_arguments, plural, progress, remote_of, root_of

NAME = "push"
SUMMARY = "add the local store's runs to a remote table (Delta Lake on S3, GCS, Azure or a path)"
DESCRIPTION = (
    "Add the runs of the local store (--root) that the remote table lacks, creating the table on "
    "first use. Idempotent: a run id is in the table at most once, however often or from however "
    "many runners it is pushed at the same moment. The ls filters select what to push (every "
    "outcome: readers leave failed runs out). Needs the 'remote' extra."
)
EPILOG = """\
examples:
  neurolens push s3://ci-benchmarks/neurolens --session latest
  neurolens push gs://bucket/runs --tag branch=main --json
  AWS_ENDPOINT_URL=http://127.0.0.1:9000 AWS_ALLOW_HTTP=true neurolens push s3://bucket/runs

exit status: 0 every selected run is in the table, 1 some could not be read (or an error), 2 usage error
"""


def register(parser: argparse.ArgumentParser) -> None:
    add_remote_arguments(parser)


def run(args: argparse.Namespace, out: TextIO) -> int:
    from neurolens.remote.sync import push
    from neurolens.storage.index.filters import filter_from_args

    shown = progress(sys.stderr, "pushed", quiet=args.json)
    report = push(root_of(args), remote_of(args, args.url), filter_from_args(args), progress=shown)
    if args.json:
        out.write(json.dumps(report.to_dict()) + "\n")
    else:
        out.write(
            f"pushed {plural(len(report.added), 'run')} to {report.remote} ({report.already} already there)\n"
        )
        for run_id in report.added:
            out.write(f"  {run_id}\n")
        for problem in report.damaged:
            out.write(f"not pushed: {problem}\n")
    return 0 if report.complete else 1
