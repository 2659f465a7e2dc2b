"""The ``neurolens`` command: query, compare, merge and check run stores.

Commands (each in its own module here, its options beside its handler):
  ls       list runs, newest first, with filters
  show     print one run (and its fingerprint) by id or unique prefix
  export   write runs as typed columns to Parquet, CSV or JSON lines
  rebuild  regenerate the index from the manifest, byte for byte
  compare  compare two sets of runs; the CI regression gate
  report   write a self-contained HTML page of trends and regressions
  merge    copy the runs of other stores (folders or .tar.gz) into one
  verify   check a store; --fix removes what killed writers left
  push     add the store's runs to a remote table (Delta Lake)
  pull     copy a remote table's runs into the store
  remote   maintain a remote table (optimize)

Library errors become one-line messages here, at the edge, and nowhere else. Heavy
modules (pyarrow, the store) are imported inside the commands so ``--help`` is instant.
Exit codes: 0 ok, 1 runtime error (or a regression, an incomplete merge, a damaged
store), 2 usage error, 3 nothing was compared.
"""

from __future__ import annotations

import argparse
import difflib
import os
import sys
import warnings
from collections.abc import Sequence
from typing import TextIO

from neurolens import __version__
from neurolens.cli import compare, export, ls, merge, pull, push, rebuild, remote, report, show, verify
from neurolens.cli.common import PROG, CommandError, UsageError, add_command

MAIN_EPILOG = """\
examples:
  neurolens ls --backend onnxrt --model gpt2 --limit 10
  neurolens ls --tag branch=main --json | jq '.[0]'
  neurolens show 01a2
  neurolens compare --baseline-tag branch=main --candidate-session latest --fail-above 5%
  neurolens merge runner-a/runs_store runner-b.tar.gz --root all_runs
  neurolens verify --root all_runs
  neurolens push s3://bucket/neurolens --session latest
  neurolens ls --root s3://bucket/neurolens --tag branch=main

exit codes: 0 ok, 1 runtime error, regression, incomplete merge or damaged store,
2 usage error, 3 nothing was compared (compare without --allow-empty)
"""

COMMANDS = (ls, show, export, rebuild, compare, report, merge, verify, push, pull, remote)


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The whole command line; with ``only``, just that command's options are added (the
    others keep their name and summary): registering a command can import what it runs."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Query, compare, merge and check the NeuroLens run stores `pytest --neurolens-store` "
        "records into.",
        epilog=MAIN_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in COMMANDS:
        parser_of_command = add_command(commands, module)
        if only is None or only == module.NAME:
            module.register(parser_of_command)
    return parser


def _parse(parser: argparse.ArgumentParser, words: list[str]) -> argparse.Namespace:
    """``parse_args``, except that an unknown option is reported by its command's parser
    (its usage, not the top level's) with the closest option it has."""
    args, unknown = parser.parse_known_args(words)
    if not unknown:
        return args
    command = _subparsers(parser).get(getattr(args, "command", None) or "", parser)
    known = [o for action in command._actions for o in action.option_strings]
    guess = difflib.get_close_matches(unknown[0].split("=", 1)[0], known, n=1)
    hint = f" (did you mean {guess[0]}?)" if guess else ""
    command.error(f"unrecognized arguments: {' '.join(unknown)}{hint}")


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _command_in(argv: Sequence[str]) -> str | None:
    """The command ``argv`` runs, if it names one (the first word not an option)."""
    word = next((w for w in argv if not w.startswith("-")), None)
    return word if word in {module.NAME for module in COMMANDS} else None


# Options whose values may start with '-' (``--group-by -gpu_name``, ``--fail-above -5%``):
# argparse would read such a value as an option, so it is joined to its option first.
DASH_VALUE_OPTIONS = ("--group-by", "--fail-above")


def _join_dash_values(argv: list[str]) -> list[str]:
    joined: list[str] = []
    position = 0
    while position < len(argv):
        word = argv[position]
        if word == "--":
            joined += argv[position:]
            break
        following = argv[position + 1] if position + 1 < len(argv) else None
        if word in DASH_VALUE_OPTIONS and following is not None and following.startswith("-"):
            joined.append(f"{word}={following}")
            position += 2
            continue
        joined.append(word)
        position += 1
    return joined


def main(argv: Sequence[str] | None = None, out: TextIO | None = None) -> int:
    """Run the command line; return the exit status (0 ok, 1 runtime error, 2 usage, 3 nothing compared)."""
    words = _join_dash_values(list(sys.argv[1:] if argv is None else argv))
    args = _parse(build_parser(only=_command_in(words)), words)
    stream = out if out is not None else sys.stdout
    from neurolens.errors import IndexWarning, InvalidArgumentError, ManifestWarning, NeurolensError

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", IndexWarning)
        warnings.simplefilter("always", ManifestWarning)
        try:
            status: int = args.handler(args, stream)
            stream.flush()
        except BrokenPipeError:  # `neurolens ls | head`: the reader left, nothing to say
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 0
        except (UsageError, InvalidArgumentError) as exc:  # a value given that cannot be used
            _flush_warnings(caught)
            sys.stderr.write(f"{PROG} {args.command}: error: {exc}\n")
            return 2
        except (NeurolensError, CommandError, OSError) as exc:
            _flush_warnings(caught)
            message = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            where = f" ({exc.filename})" if isinstance(exc, OSError) and exc.filename else ""
            sys.stderr.write(f"{PROG}: error: {message}{where}\n")
            return 1
        except KeyboardInterrupt:
            sys.stderr.write(f"{PROG}: interrupted\n")
            return 130
    _flush_warnings(caught)
    return status


def _flush_warnings(caught: list[warnings.WarningMessage]) -> None:
    from neurolens.tables import escape

    for warning in caught:
        sys.stderr.write(f"{PROG}: warning: {escape(str(warning.message))}\n")
