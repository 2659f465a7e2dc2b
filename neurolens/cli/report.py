"""``neurolens report``: one HTML file of trends, regressions and hardware changes."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TextIO

from neurolens.cli.common import location_of, plural, progress, warn

NAME = "report"
READS_REMOTE = True
SUMMARY = "write a self-contained HTML page of latency trends, regressions and hardware changes"
DESCRIPTION = (
    "Write one HTML file that opens offline (plotly inlined, the data embedded): an overview of "
    "every group (latest value, change, trend, verdict; sortable, worst first) and a chart per group "
    "with one point per session (median, p99, GPU utilization), hover details, markers where the "
    "driver changed, change points over the whole history, and the newest session judged against "
    "the earlier ones by compare's rules. Needs the 'report' extra."
)
EPILOG = """\
examples:
  neurolens report --out report.html
  neurolens report --tag branch=main --fail-above 10% --out main.html
  neurolens report --root s3://ci-benchmarks/neurolens --day 2026-11-27 --out today.html
"""


def register(parser: argparse.ArgumentParser) -> None:
    from neurolens.cli.common import integer_at_least, parse_group_by, parse_threshold
    from neurolens.storage.index.filters import add_filter_arguments

    add_filter_arguments(parser)
    parser.add_argument("--out", required=True, metavar="PATH", help="the HTML file to write")
    parser.add_argument(
        "--group-by", type=parse_group_by, metavar="COLS", help="the group key, as for compare"
    )
    parser.add_argument(
        "--fail-above",
        type=parse_threshold,
        metavar="THRESHOLD",
        help="the verdicts' threshold, as for compare (5%%)",
    )
    parser.add_argument(
        "--max-points",
        type=integer_at_least(2),
        default=200,
        metavar="N",
        help="sessions drawn per chart (200)",
    )


def run(args: argparse.Namespace, out: TextIO) -> int:
    from neurolens.analysis.compare import DEFAULT_GROUP_BY
    from neurolens.report.data import build_report
    from neurolens.report.page import write_report
    from neurolens.storage.index.filters import filter_from_args

    report = build_report(
        location_of(args),
        filter_from_args(args),
        group_by=args.group_by or DEFAULT_GROUP_BY,
        threshold=args.fail_above,
        max_points=args.max_points,
        progress=progress(sys.stderr, "charted", unit="groups"),
    )
    size = write_report(report, Path(args.out))
    if not report.series:
        warn(f"warning: no runs in {report.root} match {report.filter}: the report is empty")
    out.write(
        f"wrote {args.out} ({size / 1e6:.1f} MB): {plural(report.runs, 'run')} in "
        f"{plural(len(report.series), 'group')}, {len(report.regressed())} regressed\n"
    )
    return 0
