"""What every ``neurolens`` command shares: the root option, errors, progress, plurals."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    from neurolens.remote.table import RemoteTable
    from neurolens.sources import RunSource

PROG = "neurolens"
ROOT_HELP = "store root (default: $NEUROLENS_STORE_ROOT, else ./runs_store)"
REMOTE_ROOT_HELP = (
    "store root, or a remote table: s3://bucket/prefix, gs://..., az://... or a local Delta table "
    "(default: $NEUROLENS_STORE_ROOT, else ./runs_store)"
)
STORAGE_OPTION_HELP = (
    "a delta-rs storage option for remote tables, e.g. AWS_REGION=eu-west-1 (repeatable; "
    "credentials also come from the standard environment variables)"
)


class CommandError(Exception):
    """A failure to report on stderr with exit status 1."""


class UsageError(Exception):
    """A bad combination of arguments found after parsing: exit status 2."""


def add_command(commands: Any, module: ModuleType) -> argparse.ArgumentParser:
    """The subcommand of ``module`` (its NAME, SUMMARY, DESCRIPTION, EPILOG and run); a
    module with ``READS_REMOTE`` takes a remote table as its ``--root``."""
    parser: argparse.ArgumentParser = commands.add_parser(
        module.NAME,
        help=module.SUMMARY,
        description=module.DESCRIPTION,
        epilog=module.EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,  # --baseline-t is a typo to name, not an option to guess
    )
    remote = getattr(module, "READS_REMOTE", False)
    if getattr(module, "HAS_ROOT", True):
        parser.add_argument(
            "--root",
            metavar="PATH" if not remote else "PATH|URL",
            help=REMOTE_ROOT_HELP if remote else ROOT_HELP,
        )
    if remote:
        add_storage_options(parser)
    parser.set_defaults(handler=module.run)
    return parser


def add_remote_arguments(parser: argparse.ArgumentParser) -> None:
    """What push and pull share: the table's URL, the ls filters, storage options, --json."""
    from neurolens.storage.index.filters import add_filter_arguments

    parser.add_argument(
        "url", metavar="URL", help="the remote table: s3://bucket/prefix, gs://, az://, a path"
    )
    add_filter_arguments(parser, outcomes=False)
    add_storage_options(parser)
    parser.add_argument("--json", action="store_true", help="print the report as JSON")


def add_storage_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--storage-option",
        dest="storage_options",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=STORAGE_OPTION_HELP,
    )


def root_of(args: argparse.Namespace) -> Path:
    """``--root`` beats ``$NEUROLENS_STORE_ROOT``, which beats ``./runs_store``."""
    from neurolens.remote.table import is_remote
    from neurolens.storage.ledger.root import resolve_root

    if args.root and is_remote(args.root):
        raise UsageError(f"{args.command} works on a local store; {args.root} is a remote table")
    return resolve_root(args.root or None)


def remote_of(args: argparse.Namespace, url: str) -> RemoteTable:
    """The remote table at ``url`` with the command's ``--storage-option`` values."""
    from neurolens.remote.table import RemoteTable, parse_storage_options

    try:
        options = parse_storage_options(getattr(args, "storage_options", []))
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    return RemoteTable(url, options)


def location_of(args: argparse.Namespace, value: str | None = None) -> RunSource:
    """``value`` (default ``--root``) as the runs to read: a remote table when it is one
    (with the command's ``--storage-option`` values), else a store root."""
    from neurolens.remote.table import is_remote
    from neurolens.sources import open_source

    text = value if value is not None else args.root
    if text and is_remote(text):
        return open_source(remote_of(args, text))
    return open_source(root_of(args) if value is None else Path(value))


def parse_threshold(text: str) -> Any:
    """An argparse type: a threshold (``5%`` or ``0.5ms``)."""
    from neurolens.analysis.verdicts import Threshold

    try:
        return Threshold.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def parse_group_by(text: str) -> tuple[str, ...]:
    """An argparse type: group-by columns, or ``+col``/``-col`` changes to the default key."""
    from neurolens.analysis.compare import DEFAULT_GROUP_BY
    from neurolens.storage.ledger.manifest import COLUMNS

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


def integer_at_least(minimum: int) -> Callable[[str], int]:
    """An argparse type: an integer >= ``minimum``, with a message that says so."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = minimum - 1
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {text!r}")
        return value

    return parse


def plural(count: int, noun: str) -> str:
    return f"{count:,} {noun}{'' if count == 1 else 's'}"


def warn(message: str) -> None:
    from neurolens.tables import escape

    sys.stderr.write(f"{PROG}: {escape(message)}\n")


_PROGRESS_MIN_BYTES = 64 * 1024 * 1024
_PROGRESS_MIN_RUNS = 10_000
_PROGRESS_MIN_GROUPS = 100


def progress(stream: TextIO, what: str, *, quiet: bool = False, minimum: int | None = None,
             unit: str = "runs") -> Callable[[int, int | None], None]:  # fmt: skip
    """``report(done, total)``: a live line on stderr while a long command works, on a
    terminal only (a CI log, a pipe or ``--json`` get nothing); totals under ``minimum``
    finish too soon to need one."""
    if quiet or not stream.isatty():
        return lambda done, total: None
    scale, label = (2**20, "MiB") if unit == "bytes" else (1, unit)
    least = (
        minimum if minimum is not None else _PROGRESS_MIN_GROUPS if unit == "groups" else _PROGRESS_MIN_RUNS
    )

    def report(done: int, total: int | None) -> None:
        if (total if total is not None else done) < least:
            return
        if total is None:  # not known ahead (a stream): the count so far
            stream.write(f"\r{what}: {done / scale:,.0f} {label}")
        else:
            stream.write(
                f"\r{what}: {done / scale:,.0f} of {total / scale:,.0f} {label} ({done / total:.0%})"
            )
            if done >= total:
                stream.write("\n")
        stream.flush()

    return report


def byte_progress(stream: TextIO, *, quiet: bool = False) -> Callable[[int, int], None]:
    """Progress of reading a large manifest (see ``progress``)."""
    return progress(stream, "reading manifest", quiet=quiet, minimum=_PROGRESS_MIN_BYTES, unit="bytes")


def count_progress(stream: TextIO, *, quiet: bool = False) -> Callable[[int, int], None]:
    """Progress of a long per-run check (see ``progress``)."""
    return progress(stream, "checked", quiet=quiet)
