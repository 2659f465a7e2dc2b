"""``neurolens compare``: the regression gate."""

from __future__ import annotations

import argparse
import json
import sys
from typing import TextIO

from neurolens.cli.common import UsageError, location_of, parse_group_by, parse_threshold, plural, warn

NAME = "compare"
READS_REMOTE = True
SUMMARY = "compare two sets of runs; exit 1 on a regression"
DESCRIPTION = (
    "Pair the baseline's and the candidate's runs by group (model, backend, precision, batch size, "
    "sequence length, GPU) and compare the median of a metric. With --fail-above, exit 1 when a "
    "group got worse by more than the threshold. Each side needs a selector (--baseline-tag, "
    "--baseline-day, --baseline-session and the --candidate-* forms). When nothing was compared "
    "(a side is empty, no group is on both sides) the exit status is 3, unless --allow-empty."
)
EPILOG = """\
examples:
  neurolens compare --baseline-tag branch=main --candidate-tag branch=pr-42 --fail-above 5%
  neurolens compare --baseline-day 2025-10-20 --candidate-session latest --fail-above 0.5ms
  neurolens compare --baseline-tag branch=main --candidate-tag branch=pr-42 --metric p99 \\
      --require-significance --format markdown >> "$GITHUB_STEP_SUMMARY"

exit status: 0 no regression, 1 regression (or error), 2 usage error, 3 nothing was compared
"""
NOTHING_COMPARED = 3


def _alpha(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"alpha must be a number between 0 and 1 (exclusive), not {text!r}")
    return value


def register(parser: argparse.ArgumentParser) -> None:
    from neurolens.storage.index.filters import add_filter_arguments

    parser.add_argument("--model", help="only runs of this model (both sides)")
    parser.add_argument("--backend", help="only runs on this backend (both sides)")
    parser.add_argument("--precision", help="only runs at this precision (both sides)")
    for side in ("baseline", "candidate"):
        add_filter_arguments(parser, prefix=side, who=side)
    parser.add_argument(
        "--baseline-root",
        metavar="PATH|URL",
        help="read the baseline from this store or remote table, e.g. s3://bucket/runs (default --root)",
    )
    parser.add_argument(
        "--metric",
        default="total_latency_ms",
        help="metric to compare: total_latency_ms (default), p50, p90, "
        "p95, p99, mean, throughput (higher is better) or any metric name in the runs",
    )
    direction = parser.add_mutually_exclusive_group()
    direction.add_argument(
        "--higher-is-better",
        dest="higher_better",
        action="store_true",
        default=None,
        help="the metric is better when higher (rates); needed where its name does not say",
    )
    direction.add_argument(
        "--lower-is-better",
        dest="higher_better",
        action="store_false",
        help="the metric is better when lower (durations, sizes, error rates)",
    )
    parser.add_argument(
        "--group-by",
        type=parse_group_by,
        metavar="COLS",
        help="comma-separated group key; +col adds to, -col removes from the default "
        "(model,backend,precision,batch_size,seq_len,gpu_name), e.g. +fingerprint_hash or -gpu_name",
    )
    parser.add_argument(
        "--fail-above",
        type=parse_threshold,
        metavar="THRESHOLD",
        help="exit 1 when a group is worse by more than this: a share of the baseline (5%%) "
        "or an absolute change (0.5ms); a unit is required",
    )
    parser.add_argument(
        "--require-significance",
        action="store_true",
        help="fail only on regressions significant across sessions at --alpha (Mann-Whitney U, or "
        "the prediction test for one candidate session; Holm-corrected over the groups; with one "
        "baseline session there is no verdict, and no failure)",
    )
    parser.add_argument(
        "--alpha", type=_alpha, default=0.05, help="significance level in (0, 1) (default 0.05)"
    )
    parser.add_argument(
        "--no-noise-floor",
        dest="noise_floor",
        action="store_false",
        help="do not call a change inside the baseline's session-to-session spread noise",
    )
    parser.add_argument(
        "--include-failed",
        action="store_true",
        help="also compare runs of tests that did not pass (left out by default)",
    )
    parser.add_argument(
        "--fail-on-missing",
        action="store_true",
        help="with --fail-above: a group the candidate lacks fails too",
    )
    parser.add_argument("--allow-empty", action="store_true", help="exit 0 (not 3) when nothing was compared")
    output = parser.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true", help="print the comparison as JSON")
    output.add_argument(
        "--format", choices=("table", "markdown", "json"), default="table", help="output format"
    )


def run(args: argparse.Namespace, out: TextIO) -> int:
    from neurolens.analysis.compare import DEFAULT_GROUP_BY, compare
    from neurolens.analysis.metrics import UnknownDirectionError, UnknownMetricError
    from neurolens.analysis.text import to_markdown, to_table
    from neurolens.storage.index.filters import filter_from_args

    sides = [filter_from_args(args, prefix=side) for side in ("baseline", "candidate")]
    for name, side in zip(("baseline", "candidate"), sides, strict=True):
        if not (side.day or side.session_id or side.tags):
            raise UsageError(f"the {name} needs a selector: --{name}-tag, --{name}-day or --{name}-session")
    try:
        result = compare(
            location_of(args),
            sides[0],
            sides[1],
            metric=args.metric,
            group_by=args.group_by or DEFAULT_GROUP_BY,
            threshold=args.fail_above,
            require_significance=args.require_significance,
            alpha=args.alpha,
            fail_on_missing=args.fail_on_missing,
            baseline_root=None if args.baseline_root is None else location_of(args, args.baseline_root),
            noise_floor=args.noise_floor,
            higher_better=args.higher_better,
        )
    except (UnknownMetricError, UnknownDirectionError) as exc:
        raise UsageError(str(exc)) from None
    for message in result.warnings:
        warn(f"warning: {message}")
    empty = bool(result.nothing_compared) and not args.allow_empty
    status = 1 if result.failed else NOTHING_COMPARED if empty else 0
    fmt = "json" if args.json else args.format
    if fmt == "json":
        # "failed" is what the exit status says: an empty comparison fails too
        data = result.to_dict() | {"failed": status != 0, "exit_status": status}
        out.write(json.dumps(data, ensure_ascii=False) + "\n")
    elif fmt == "markdown":
        out.write(to_markdown(result))
    else:
        out.write(to_table(result))
    if result.failed:
        failing = sum(g.fails for g in result.groups)
        warn(f"{plural(failing, 'group')} failed the gate (threshold {result.threshold})")
    elif empty:  # the reason is in the output already
        sys.stderr.write(
            f"neurolens: exit status {status}: an empty comparison fails (--allow-empty accepts it)\n"
        )
    return status
