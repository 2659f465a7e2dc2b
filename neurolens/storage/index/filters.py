"""Which runs a reader wants: ``RunFilter`` and its command-line form.

The same filters serve ``neurolens ls``, both sides of ``compare``, the pytest
``--neurolens-compare`` option and ``load_runs``; ``parse_filter_spec`` reads them from
one string (``"--tag branch=main --session latest"``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, NoReturn

from neurolens.errors import InvalidArgumentError

EQUALITY_FILTERS = ("model", "backend", "precision", "day", "session_id")
LATEST_SESSION = "latest"
# Outcomes of runs that count: a passing test's, or none (a run written outside pytest).
# A failed, errored, skipped or rerun attempt's numbers stay out unless asked for.
PASSING_OUTCOME = "passed"


@dataclass(frozen=True)
class RunFilter:
    """Conditions a run must meet, all together (AND). None means "any".

    ``session_id`` is a session id, a unique prefix of one, or ``"latest"`` (the newest
    session among the runs the other conditions select). Runs of tests that did not pass
    are left out unless ``include_failed``.
    """

    model: str | None = None
    backend: str | None = None
    precision: str | None = None
    day: str | None = None
    session_id: str | None = None
    tags: Mapping[str, str] = field(default_factory=dict)
    limit: int | None = None
    include_failed: bool = False

    def __post_init__(self) -> None:
        for name in EQUALITY_FILTERS:
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                raise InvalidArgumentError(f"{name} must be a string, not {type(value).__name__}")
        if self.day is not None:
            parse_day(self.day)
        if not isinstance(self.tags, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in self.tags.items()
        ):
            raise InvalidArgumentError("tags must map strings to strings")
        if self.limit is not None and (
            isinstance(self.limit, bool) or not isinstance(self.limit, int) or self.limit < 0
        ):
            raise InvalidArgumentError(f"limit must be a non-negative integer, not {self.limit!r}")
        if not isinstance(self.include_failed, bool):
            raise InvalidArgumentError(f"include_failed must be True or False, not {self.include_failed!r}")

    @classmethod
    def coerce(cls, value: RunFilter | Mapping[str, Any] | None, what: str = "filter") -> RunFilter:
        """A RunFilter from a RunFilter, a mapping of its fields, or None (no condition)."""
        if value is None:
            return cls()
        if isinstance(value, RunFilter):
            return value
        if isinstance(value, Mapping):
            known = {f.name for f in fields(cls)}
            unknown = sorted(str(k) for k in value if k not in known)
            if unknown:
                raise InvalidArgumentError(
                    f"{what}: unknown filter field(s) {', '.join(unknown)}; use {', '.join(known)}"
                )
            return cls(**value)
        raise InvalidArgumentError(
            f"{what} must be a RunFilter or a dict of its fields, not {type(value).__name__}"
        )

    def selects(self) -> bool:
        """Whether any condition is set (a filter that selects less than everything)."""
        return any(getattr(self, name) is not None for name in EQUALITY_FILTERS) or bool(self.tags)

    def excludes(self, other: RunFilter) -> bool:
        """Whether no run can meet both filters: an equality or a tag both set, to
        different values (sessions match by prefix, so they never prove it)."""
        return any(
            getattr(self, name) is not None
            and getattr(other, name) is not None
            and getattr(self, name) != getattr(other, name)
            for name in EQUALITY_FILTERS
            if name != "session_id"
        ) or any(key in other.tags and other.tags[key] != value for key, value in self.tags.items())

    def describe(self) -> str:
        """The filter as its command-line options (``--tag branch=main --day ...``)."""
        parts = [
            f"--{'session' if name == 'session_id' else name} {shlex.quote(getattr(self, name))}"
            for name in EQUALITY_FILTERS
            if getattr(self, name) is not None
        ]
        parts += [f"--tag {shlex.quote(f'{k}={v}')}" for k, v in sorted(self.tags.items())]
        parts += ["--include-failed"] if self.include_failed else []
        return " ".join(parts) or "(no filter)"

    def matches(self, record: Mapping[str, Any]) -> bool:
        """Equality, outcome and tag conditions on one index record (``tags`` as stored JSON)."""
        if not self.include_failed and record.get("outcome") not in (None, PASSING_OUTCOME):
            return False
        for name in EQUALITY_FILTERS:
            wanted = getattr(self, name)
            if wanted is not None and record[name] != wanted:
                return False
        if self.tags:
            tags = json.loads(record["tags"])
            return all(tags.get(k) == v for k, v in self.tags.items())
        return True


def parse_day(text: str) -> str:
    """Check a ``YYYY-MM-DD`` day; return it unchanged."""
    try:
        if len(text) != 10:
            raise ValueError
        dt.date.fromisoformat(text)
    except (TypeError, ValueError):
        raise InvalidArgumentError(f"day must be a date as YYYY-MM-DD, not {text!r}") from None
    return text


def _tag(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, value


def _day(text: str) -> str:
    try:
        return parse_day(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_filter_arguments(
    parser: argparse.ArgumentParser, prefix: str = "", who: str = "", *, outcomes: bool = True
) -> None:
    """The run filters as options (``--model``, ``--tag``, ...), optionally ``--{prefix}-...``;
    ``outcomes=False`` leaves out ``--include-failed`` (for commands that carry every run)."""
    flag = flag_of(prefix)
    dest = f"{prefix}_" if prefix else ""
    runs = f"{who} runs" if who else "runs"
    if not prefix:
        parser.add_argument("--model", help=f"only {runs} of this model")
        parser.add_argument("--backend", help=f"only {runs} on this backend")
        parser.add_argument("--precision", help=f"only {runs} at this precision")
    parser.add_argument(
        f"{flag}day", dest=f"{dest}day", type=_day, metavar="YYYY-MM-DD", help=f"only {runs} of this UTC day"
    )
    parser.add_argument(
        f"{flag}session",
        dest=f"{dest}session_id",
        metavar="ID",
        help=f"only {runs} of this pytest session (an id, a unique prefix, or 'latest')",
    )
    parser.add_argument(
        f"{flag}tag",
        dest=f"{dest}tags",
        type=_tag,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=f"only {runs} with this tag (repeatable; every tag must match)",
    )
    if not prefix and outcomes:
        parser.add_argument(
            "--include-failed",
            action="store_true",
            help="also runs of tests that did not pass (failed, errored, skipped, rerun attempts)",
        )


def filter_from_args(args: argparse.Namespace, prefix: str = "", **extra: Any) -> RunFilter:
    """The RunFilter of options added by ``add_filter_arguments`` (same ``prefix``)."""
    dest = f"{prefix}_" if prefix else ""
    return RunFilter(
        model=getattr(args, "model", None),
        backend=getattr(args, "backend", None),
        precision=getattr(args, "precision", None),
        day=getattr(args, f"{dest}day"),
        session_id=getattr(args, f"{dest}session_id"),
        tags=_tag_conditions(getattr(args, f"{dest}tags"), f"{flag_of(prefix)}tag"),
        include_failed=getattr(args, "include_failed", False),
        **extra,
    )


def flag_of(prefix: str) -> str:
    return f"--{prefix}-" if prefix else "--"


def _tag_conditions(pairs: list[tuple[str, str]], flag: str) -> dict[str, str]:
    """``--tag`` conditions: every one must match, so one key with two values can match no
    run; that is a usage error, not a silent choice of the last."""
    tags: dict[str, str] = {}
    for key, value in pairs:
        if key in tags and tags[key] != value:
            raise InvalidArgumentError(
                f"{flag} {key}={tags[key]} and {flag} {key}={value}: a run has one value per tag "
                "and every --tag must match, so no run could"
            )
        tags[key] = value
    return tags


class _RaisingParser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise InvalidArgumentError(message)


def parse_filter_spec(text: str) -> RunFilter:
    """``"--tag branch=main --day 2025-10-20"`` (the ``ls`` filters) as a RunFilter."""
    parser = _RaisingParser(prog="filter", add_help=False)
    add_filter_arguments(parser)
    try:
        words = shlex.split(text)
    except ValueError as exc:
        raise InvalidArgumentError(f"cannot split {text!r}: {exc}") from None
    return filter_from_args(parser.parse_args(words))
