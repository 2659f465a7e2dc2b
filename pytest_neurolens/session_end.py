"""What a recording session does at its end, when asked: push its runs, gate them against a
baseline, write the HTML report. Each returns what the summary shows: a line of what was
done, and the failures (summary lines that fail the session, never a traceback)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from neurolens.errors import NeurolensError

if TYPE_CHECKING:
    from neurolens.analysis.verdicts import Comparison
    from neurolens.storage.index.filters import RunFilter
    from pytest_neurolens.settings import Settings

# What a session-end action may raise on purpose (bad input, a store or table that cannot
# be read or written): a summary line and a failed session, never a traceback.
SESSION_END_ERRORS = (NeurolensError, OSError)


def push_runs(settings: Settings, store: Path, session_id: str) -> tuple[str | None, list[str]]:
    """The session's runs to the remote table: what was done, and what failed."""
    from neurolens.remote.sync import push
    from neurolens.remote.table import RemoteTable
    from neurolens.storage.index.filters import RunFilter

    assert settings.push is not None
    remote = RemoteTable(settings.push, settings.storage_options)
    try:
        report = push(store, remote, RunFilter(session_id=session_id))
    except SESSION_END_ERRORS as exc:
        return None, [f"push to {remote.url} failed: {exc}; the runs stay in {store} for `neurolens push`"]
    added = len(report.added)
    done = f"pushed {added} run{'s' if added != 1 else ''} to {remote.url} ({report.already} already there)"
    return done, [f"not pushed: {problem}" for problem in report.damaged]


def gate(settings: Settings, store: Path, session_id: str, candidate: RunFilter | None = None) -> Comparison:
    """The regression gate: this session's runs (or ``candidate``'s) against the stored baseline."""
    from neurolens.analysis.compare import compare
    from neurolens.sources import open_source
    from neurolens.storage.index.filters import RunFilter

    assert settings.compare is not None
    baseline = None
    if settings.baseline_root is not None:
        baseline = open_source(settings.baseline_root, settings.storage_options)
    return compare(
        store,
        settings.compare,
        candidate or RunFilter(session_id=session_id),
        threshold=settings.fail_above,
        baseline_root=baseline,
    )


def write_session_report(settings: Settings, store: Path, session_id: str) -> tuple[str | None, list[str]]:
    """The HTML report of the groups this session recorded (their whole history): where it
    went, and what failed."""
    from neurolens.report.data import build_report
    from neurolens.report.page import write_report
    from neurolens.sources import open_source
    from neurolens.storage.index.filters import RunFilter

    assert settings.report is not None
    try:
        with open_source(store) as source:
            report = build_report(source, RunFilter(), threshold=settings.fail_above, only_session=session_id)
        size = write_report(report, settings.report)
    except SESSION_END_ERRORS as exc:
        return None, [f"report {settings.report} not written: {exc}"]
    return f"report: {settings.report} ({size / 1e6:.1f} MB, {len(report.series)} groups)", []
