"""``neurolens rebuild``: regenerate the index from the manifest alone."""

from __future__ import annotations

import argparse
import sys
from typing import TextIO

from neurolens.cli.common import byte_progress, plural, root_of, warn

NAME = "rebuild"
SUMMARY = "rebuild the index from the manifest"
DESCRIPTION = "Rebuild _index.parquet from _manifest.jsonl alone (deterministic, byte for byte)."
EPILOG = """\
examples:
  neurolens rebuild                      # after deleting or damaging _index.parquet
  NEUROLENS_STORE_ROOT=/data/runs neurolens rebuild
"""


def register(parser: argparse.ArgumentParser) -> None:
    """No options beyond --root."""


def run(args: argparse.Namespace, out: TextIO) -> int:
    from neurolens.storage.store import rebuild_index_report

    report = rebuild_index_report(root_of(args), warn=False, progress=byte_progress(sys.stderr))
    for problem in report.problems:
        warn(f"skipped: {problem}")
    out.write(f"rebuilt {report.path} ({plural(report.rows, 'row')})\n")
    if report.problems:
        warn(f"{plural(len(report.problems), 'manifest line')} skipped")
    return 0
