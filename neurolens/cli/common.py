"""What every ``neurolens`` command shares: the root option, errors, progress, plurals."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any, TextIO

PROG = "neurolens"
ROOT_HELP = "store root (default: $NEUROLENS_STORE_ROOT, else ./runs_store)"


class CommandError(Exception):
    """A failure to report on stderr with exit status 1."""


class UsageError(Exception):
    """A bad combination of arguments found after parsing: exit status 2."""


def add_command(commands: Any, module: ModuleType) -> argparse.ArgumentParser:
    """The subcommand of ``module`` (its NAME, SUMMARY, DESCRIPTION, EPILOG and run)."""
    parser: argparse.ArgumentParser = commands.add_parser(
        module.NAME,
        help=module.SUMMARY,
        description=module.DESCRIPTION,
        epilog=module.EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--root", metavar="PATH", help=ROOT_HELP)
    parser.set_defaults(handler=module.run)
    return parser


def root_of(args: argparse.Namespace) -> Path:
    """``--root`` beats ``$NEUROLENS_STORE_ROOT``, which beats ``./runs_store``."""
    from neurolens.storage.root import resolve_root

    return resolve_root(args.root or None)


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
_PROGRESS_MIN_RUNS = 100_000


def byte_progress(stream: TextIO) -> Callable[[int, int], None]:
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


def count_progress(stream: TextIO) -> Callable[[int, int], None]:
    """Progress of a long per-run check on stderr (large stores only)."""

    def report(done: int, total: int) -> None:
        if total >= _PROGRESS_MIN_RUNS:
            stream.write(f"checked {done:,} of {total:,} runs\n")
            stream.flush()

    return report
