"""The ``neurolens`` command: ``ls``, ``show`` and ``rebuild`` over a run store.

Library errors become one-line messages here, at the edge, and nowhere else. Heavy
modules (pyarrow, the store) are imported inside the commands so ``--help`` is instant.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TextIO

from neurolens import __version__

if TYPE_CHECKING:
    from neurolens.compare import Side

PROG = "neurolens"

ROOT_HELP = "store root (default: $NEUROLENS_STORE_ROOT, else ./runs_store)"

MAIN_EPILOG = """\
examples:
  neurolens ls --backend onnxrt --model gpt2 --limit 10
  neurolens ls --tag branch=main --json | jq '.[0]'
  neurolens show 01a2
  neurolens rebuild --root /data/runs_store
"""

LS_EPILOG = """\
examples:
  neurolens ls                                  # every run, newest first
  neurolens ls --model gpt2 --precision fp16 --day 2025-10-20
  neurolens ls --tag experiment=smoke --tag branch=main --limit 20
  neurolens ls --json | jq '.[] | .total_latency_ms'
"""

SHOW_EPILOG = """\
examples:
  neurolens show 01a219e4-5e0e-70f0-b79d-61c51dae2046
  neurolens show 01a219e4-5e0e          # a unique prefix is enough
  neurolens show 01a219e4-5e0e --json   # the stored document, as stored
"""

COMPARE_EPILOG = """\
examples:
  neurolens compare --baseline-tag branch=main --candidate-tag branch=pr-42 --fail-above 5%
  neurolens compare --baseline-day 2025-10-20 --candidate-session latest --fail-above 0.5ms
  neurolens compare --baseline-tag branch=main --candidate-tag branch=pr-42 --metric p99 \\
      --require-significance --format markdown >> "$GITHUB_STEP_SUMMARY"
"""

MERGE_EPILOG = """\
examples:
  neurolens merge runner-a/runs_store runner-b/runs_store --root all_runs
  neurolens merge artifacts/*.tar.gz --root all_runs --json
"""

VERIFY_EPILOG = """\
examples:
  neurolens verify --root all_runs
  neurolens verify --json | jq '.counts'
"""

REBUILD_EPILOG = """\
examples:
  neurolens rebuild                      # after deleting or damaging _index.parquet
  NEUROLENS_STORE_ROOT=/data/runs neurolens rebuild
"""


class CommandError(Exception):
    """A failure to report on stderr with exit status 1."""


def _tag(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, value


def _day(text: str) -> str:
    from neurolens.storage.query import parse_day

    try:
        return parse_day(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _limit(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Query the NeuroLens run store that `pytest --neurolens-store` records into.",
        epilog=MAIN_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--root", metavar="PATH", help=ROOT_HELP)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(name: str, summary: str, description: str, epilog: str) -> argparse.ArgumentParser:
        return commands.add_parser(
            name,
            parents=[common],
            help=summary,
            description=description,
            epilog=epilog,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )

    ls = command(
        "ls",
        "list runs, newest first",
        "List runs, newest first. Filters combine (all must match).",
        LS_EPILOG,
    )
    add_filter_arguments(ls)
    ls.add_argument("--limit", type=_limit, metavar="N", help="at most N runs (the N newest)")
    ls.add_argument("--json", action="store_true", help="print a JSON array of rows instead of a table")
    ls.set_defaults(handler=cmd_ls)

    show = command(
        "show",
        "print one run (and its fingerprint)",
        "Print a stored run by id or unique id prefix, with its fingerprint when present.",
        SHOW_EPILOG,
    )
    show.add_argument("run_id", metavar="RUN_ID", help="a run id or a unique prefix of one")
    show.add_argument("--json", action="store_true", help="print the stored run document exactly as stored")
    show.set_defaults(handler=cmd_show)

    rebuild = command(
        "rebuild",
        "rebuild the index from the manifest",
        "Rebuild _index.parquet from _manifest.jsonl alone (deterministic, byte for byte).",
        REBUILD_EPILOG,
    )
    rebuild.set_defaults(handler=cmd_rebuild)

    compare = command(
        "compare",
        "compare two sets of runs; exit 1 on a regression",
        "Pair the baseline's and the candidate's runs by group (model, backend, precision, batch size, "
        "sequence length, GPU) and compare the median of a metric. With --fail-above, exit 1 when a "
        "group got worse by more than the threshold.",
        COMPARE_EPILOG,
    )
    compare.add_argument("--model", help="only runs of this model (both sides)")
    compare.add_argument("--backend", help="only runs on this backend (both sides)")
    compare.add_argument("--precision", help="only runs at this precision (both sides)")
    for side in ("baseline", "candidate"):
        compare.add_argument(
            f"--{side}-tag",
            type=_tag,
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help=f"{side} runs carry this tag (repeatable)",
        )
        compare.add_argument(
            f"--{side}-day", type=_day, metavar="YYYY-MM-DD", help=f"{side} runs of this UTC day"
        )
        compare.add_argument(
            f"--{side}-session",
            metavar="ID",
            help=f"{side} runs of this pytest session ('latest' for the newest)",
        )
    compare.add_argument(
        "--metric",
        default="total_latency_ms",
        help="metric to compare: total_latency_ms (default), p50, p90, "
        "p95, p99, mean, throughput (higher is better) or any metric name in the runs",
    )
    compare.add_argument(
        "--group-by",
        type=_group_by,
        metavar="COLS",
        help="comma-separated group key; +col adds to, -col removes from the default "
        "(model,backend,precision,batch_size,seq_len,gpu_name), e.g. +fingerprint_hash",
    )
    compare.add_argument(
        "--fail-above",
        type=_threshold,
        metavar="THRESHOLD",
        help="exit 1 when a group is worse by more than this (5%% or 0.5ms)",
    )
    compare.add_argument(
        "--require-significance",
        action="store_true",
        help="fail only on regressions whose Mann-Whitney p-value is below --alpha",
    )
    compare.add_argument("--alpha", type=float, default=0.05, help="significance level (default 0.05)")
    output = compare.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true", help="print the comparison as JSON")
    output.add_argument(
        "--format", choices=("table", "markdown", "json"), default="table", help="output format"
    )
    compare.set_defaults(handler=cmd_compare)

    merge = command(
        "merge",
        "copy the runs of other stores (folders or .tar.gz) into this one",
        "Copy every sound run of each SRC store into --root, keeping the layout; runs already there are "
        "skipped, runs that differ are conflicts, damaged runs are reported and never copied.",
        MERGE_EPILOG,
    )
    merge.add_argument("sources", nargs="+", metavar="SRC", help="a store folder or a .tar.gz archive of one")
    merge.add_argument("--json", action="store_true", help="print the report as JSON")
    merge.set_defaults(handler=cmd_merge)

    verify = command(
        "verify",
        "check a store; exit 1 when anything is wrong",
        "Check the manifest, every run file against its entry and hash, stray files and the index.",
        VERIFY_EPILOG,
    )
    verify.add_argument(
        "--full", action="store_true", help="validate every run against the schema, not only damaged ones"
    )
    verify.add_argument("--json", action="store_true", help="print the report as JSON")
    verify.set_defaults(handler=cmd_verify)
    return parser


def add_filter_arguments(parser: argparse.ArgumentParser) -> None:
    """The run filters of ``ls`` (also the language of ``--neurolens-compare``)."""
    parser.add_argument("--model", help="only runs of this model")
    parser.add_argument("--backend", help="only runs on this backend")
    parser.add_argument("--precision", help="only runs at this precision")
    parser.add_argument("--day", type=_day, metavar="YYYY-MM-DD", help="only runs of this UTC day")
    parser.add_argument("--session", dest="session_id", metavar="ID", help="only runs of this pytest session")
    parser.add_argument(
        "--tag",
        dest="tags",
        type=_tag,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="only runs with this tag (repeatable; every tag must match)",
    )


class _RaisingParser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise ValueError(message)


def parse_filter_spec(text: str) -> Side:
    """``"--tag branch=main --day 2025-10-20"`` (the ``ls`` filters) as a comparison side.

    ``--session latest`` means the newest session among the matching runs.
    """
    from neurolens.compare import Side
    from neurolens.storage.query import RunFilter

    parser = _RaisingParser(prog="filter", add_help=False)
    add_filter_arguments(parser)
    args = parser.parse_args(shlex.split(text))
    session = args.session_id
    flt = RunFilter(
        model=args.model,
        backend=args.backend,
        precision=args.precision,
        day=args.day,
        tags=dict(args.tags),
    )
    return Side(filter=flt, session=session)


def _threshold(text: str) -> Any:
    from neurolens.compare import Threshold

    try:
        return Threshold.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _group_by(text: str) -> tuple[str, ...]:
    from neurolens.compare import DEFAULT_GROUP_BY
    from neurolens.storage.manifest import COLUMNS

    items = [item.strip() for item in text.split(",") if item.strip()]
    if items and all(item[0] in "+-" for item in items):
        columns = list(DEFAULT_GROUP_BY)
        for item in items:
            name = item[1:]
            if item[0] == "+" and name not in columns:
                columns.append(name)
            elif item[0] == "-" and name in columns:
                columns.remove(name)
    else:
        columns = items
    unknown = [c for c in columns if c not in COLUMNS]
    if unknown or not columns:
        raise argparse.ArgumentTypeError(
            f"unknown column(s) {', '.join(unknown) or '(none given)'}; choose from {', '.join(COLUMNS)}"
        )
    return tuple(columns)


def resolve_cli_root(args: argparse.Namespace) -> Path:
    """``--root`` beats ``$NEUROLENS_STORE_ROOT``, which beats ``./runs_store``."""
    from neurolens.storage.store import resolve_root

    return resolve_root(args.root or None)


# --- ls --------------------------------------------------------------------------------


def cmd_ls(args: argparse.Namespace, out: TextIO) -> int:
    from neurolens.storage.query import RunFilter, select, to_records

    root = resolve_cli_root(args)
    flt = RunFilter(
        model=args.model,
        backend=args.backend,
        precision=args.precision,
        day=args.day,
        session_id=args.session_id,
        tags=dict(args.tags),
        limit=args.limit,
    )
    records = to_records(select(root, flt))
    if args.json:
        out.write(json.dumps(records, ensure_ascii=False) + "\n")
        return 0
    if not records:
        out.write(f"no runs in {root}" + (" match" if _any_filter(flt) else "") + "\n")
        return 0
    # Clip wide columns only for a person at a terminal; pipes get every character.
    width = shutil.get_terminal_size().columns if out.isatty() else None
    out.write(render_table(records, width))
    shown = len(records)
    out.write(
        f"{shown} run{'s' if shown != 1 else ''}" + (" (limit reached)" if shown == args.limit else "") + "\n"
    )
    return 0


def _any_filter(flt: Any) -> bool:
    return any(
        getattr(flt, name) is not None for name in ("model", "backend", "precision", "day", "session_id")
    ) or bool(flt.tags)


def _number(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


# (header, cell, right-aligned, shrinkable)
_TABLE: list[tuple[str, Callable[[dict[str, Any]], str], bool, bool]] = [
    ("RUN ID", lambda r: r["run_id"], False, False),
    ("CREATED (UTC)", lambda r: r["created_at"][:19].replace("T", " "), False, False),
    ("MODEL", lambda r: r["model"], False, True),
    ("BACKEND", lambda r: r["backend"], False, True),
    ("PRECISION", lambda r: r["precision"], False, True),
    ("BATCH", lambda r: str(r["batch_size"]), True, False),
    ("SEQ", lambda r: "-" if r["seq_len"] is None else str(r["seq_len"]), True, False),
    ("LATENCY MS", lambda r: _number(r["total_latency_ms"], 3), True, False),
    ("GPU %", lambda r: _number(r["gpu_utilization"], 1), True, False),
    ("GPU", lambda r: r["gpu_name"] or "-", False, True),
    ("TAGS", lambda r: ",".join(f"{k}={v}" for k, v in sorted(r["tags"].items())) or "-", False, True),
]
_MIN_SHRUNK = 6


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: max(width - 1, 0)] + "…"


def render_table(records: list[dict[str, Any]], width: int | None) -> str:
    """An aligned table; wide text columns are clipped (last first) to fit ``width``."""
    cells = [[cell(r).replace("\n", " ") for _, cell, _, _ in _TABLE] for r in records]
    widths = [max(len(h), *(len(row[i]) for row in cells)) for i, (h, _, _, _) in enumerate(_TABLE)]
    excess = 0 if width is None else sum(widths) + 2 * (len(widths) - 1) - width
    for i in reversed(range(len(_TABLE))):
        if excess <= 0:
            break
        if _TABLE[i][3]:
            floor = max(_MIN_SHRUNK, len(_TABLE[i][0]))
            cut = min(excess, widths[i] - floor)
            if cut > 0:
                widths[i] -= cut
                excess -= cut
    lines = []
    for row in [[h for h, _, _, _ in _TABLE], *cells]:
        parts = []
        for i, text in enumerate(row):
            text = _clip(text, widths[i])
            parts.append(text.rjust(widths[i]) if _TABLE[i][2] else text.ljust(widths[i]))
        lines.append("  ".join(parts).rstrip())
    return "\n".join(lines) + "\n"


# --- show ------------------------------------------------------------------------------


def cmd_show(args: argparse.Namespace, out: TextIO) -> int:
    from neurolens.storage.query import find_run

    root = resolve_cli_root(args)
    entry = find_run(root, args.run_id)
    run_bytes = _read_store_file(root, entry["run_json"])
    if args.json:
        out.write(run_bytes.decode("utf-8"))
        return 0
    out.write(f"run {entry['run_id']}  ({root / entry['run_json']})\n")
    out.write(json.dumps(json.loads(run_bytes), indent=2, sort_keys=True, ensure_ascii=False) + "\n")
    if entry["fp_json"]:
        fp = json.loads(_read_store_file(root, entry["fp_json"]))
        out.write(f"\nfingerprint  ({root / entry['fp_json']})\n")
        out.write(json.dumps(fp, indent=2, sort_keys=True, ensure_ascii=False) + "\n")
    return 0


def _read_store_file(root: Path, relative: str) -> bytes:
    try:
        return (root / relative).read_bytes()
    except OSError as exc:
        raise CommandError(f"cannot read {root / relative}: {exc.strerror or exc}") from None


# --- rebuild ---------------------------------------------------------------------------


def cmd_rebuild(args: argparse.Namespace, out: TextIO) -> int:
    from neurolens.storage.store import rebuild_index_report

    root = resolve_cli_root(args)
    report = rebuild_index_report(root, warn=False, progress=_progress_printer(sys.stderr))
    for problem in report.problems:
        sys.stderr.write(f"{PROG}: skipped: {problem}\n")
    out.write(f"rebuilt {report.path} ({report.rows} row{'s' if report.rows != 1 else ''})\n")
    if report.problems:
        sys.stderr.write(f"{PROG}: {len(report.problems)} manifest line(s) skipped\n")
    return 0


_PROGRESS_MIN_BYTES = 64 * 1024 * 1024


def _progress_printer(stream: TextIO) -> Callable[[int, int], None]:
    """Progress on stderr for large manifests: a live line on a terminal, else every ~10%."""
    state = {"last": -1.0, "started": time.monotonic()}

    def report(done: int, total: int) -> None:
        if total < _PROGRESS_MIN_BYTES:
            return
        share = done / total
        if stream.isatty():
            stream.write(f"\rreading manifest: {share:6.1%} of {total / 2**20:,.0f} MiB")
            if done >= total:
                stream.write("\n")
        elif share - state["last"] >= 0.1 or done >= total:
            elapsed = time.monotonic() - state["started"]
            stream.write(f"reading manifest: {share:.0%} of {total / 2**20:,.0f} MiB ({elapsed:.1f}s)\n")
            state["last"] = share
        stream.flush()

    return report


# --- compare ---------------------------------------------------------------------------


def cmd_compare(args: argparse.Namespace, out: TextIO) -> int:
    from neurolens.compare import DEFAULT_GROUP_BY, Side, compare
    from neurolens.storage.query import RunFilter

    root = resolve_cli_root(args)
    sides = []
    for side in ("baseline", "candidate"):
        flt = RunFilter(
            model=args.model,
            backend=args.backend,
            precision=args.precision,
            day=getattr(args, f"{side}_day"),
            tags=dict(getattr(args, f"{side}_tag")),
        )
        sides.append(Side(filter=flt, session=getattr(args, f"{side}_session")))
    result = compare(
        root,
        sides[0],
        sides[1],
        metric=args.metric,
        group_by=args.group_by or DEFAULT_GROUP_BY,
        threshold=args.fail_above,
        require_significance=args.require_significance,
        alpha=args.alpha,
    )
    for warning in result.warnings:
        sys.stderr.write(f"{PROG}: warning: {warning}\n")
    fmt = "json" if args.json else args.format
    if fmt == "json":
        out.write(json.dumps(result.to_dict(), ensure_ascii=False) + "\n")
    elif fmt == "markdown":
        out.write(result.to_markdown())
    else:
        out.write(result.to_table())
    if result.failed:
        failing = sum(g.fails for g in result.groups)
        sys.stderr.write(f"{PROG}: {failing} group(s) regressed by more than {result.threshold}\n")
        return 1
    return 0


# --- merge and verify ------------------------------------------------------------------


def cmd_merge(args: argparse.Namespace, out: TextIO) -> int:
    from neurolens.storage.merge import merge_stores

    root = resolve_cli_root(args)
    report = merge_stores(root, [Path(s) for s in args.sources])
    if args.json:
        out.write(json.dumps(report.to_dict(), ensure_ascii=False) + "\n")
    else:
        for kind, lines in (
            ("refused", report.refused),
            ("conflict", report.conflicts),
            ("damaged", report.damaged),
        ):
            for line in lines:
                sys.stderr.write(f"{PROG}: {kind}: {line}\n")
        out.write(
            f"merged into {root}: {report.added} added, {report.skipped} already present, "
            f"{len(report.conflicts)} in conflict, {len(report.damaged)} damaged, "
            f"{len(report.refused)} refused\n"
        )
    return 0


def cmd_verify(args: argparse.Namespace, out: TextIO) -> int:
    from neurolens.storage.verify import verify_store

    root = resolve_cli_root(args)
    report = verify_store(root, full=args.full, progress=_count_printer(sys.stderr))
    if args.json:
        out.write(json.dumps(report.to_dict(), ensure_ascii=False) + "\n")
    else:
        for problem in report.problems:
            out.write(f"{problem.kind:<20} {problem.where}: {problem.message}\n")
        for leftover in report.leftovers:
            sys.stderr.write(
                f"{PROG}: note: {leftover}: temporary file of an interrupted writer (safe to delete)\n"
            )
        verdict = "clean" if report.clean else f"{len(report.problems)} problem(s)"
        counts = ", ".join(f"{n} {k}" for k, n in sorted(report.counts().items()))
        out.write(
            f"{root}: {report.runs} runs, {report.files} files: {verdict}"
            + (f" ({counts})" if counts else "")
            + "\n"
        )
    return 0 if report.clean else 1


_PROGRESS_MIN_RUNS = 100_000


def _count_printer(stream: TextIO) -> Callable[[int, int], None]:
    """Progress of a long per-run check on stderr (large stores only)."""

    def report(done: int, total: int) -> None:
        if total >= _PROGRESS_MIN_RUNS:
            stream.write(f"checked {done:,} of {total:,} runs\n")
            stream.flush()

    return report


# --- entry point -----------------------------------------------------------------------


def main(argv: Sequence[str] | None = None, out: TextIO | None = None) -> int:
    """Run the command line; return the exit status (0 ok, 1 runtime error, 2 usage)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    stream = out if out is not None else sys.stdout
    from neurolens.errors import IndexWarning, ManifestWarning, NeurolensError

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", IndexWarning)
        warnings.simplefilter("always", ManifestWarning)
        try:
            status: int = args.handler(args, stream)
        except (NeurolensError, CommandError, ValueError, OSError) as exc:
            _flush_warnings(caught)
            message = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            where = f" ({exc.filename})" if isinstance(exc, OSError) and exc.filename else ""
            sys.stderr.write(f"{PROG}: error: {message}{where}\n")
            return 1
        except BrokenPipeError:  # `neurolens ls | head`: the reader left, nothing to say
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 1
        except KeyboardInterrupt:
            sys.stderr.write(f"{PROG}: interrupted\n")
            return 130
    _flush_warnings(caught)
    return status


def _flush_warnings(caught: list[warnings.WarningMessage]) -> None:
    for warning in caught:
        sys.stderr.write(f"{PROG}: warning: {warning.message}\n")
