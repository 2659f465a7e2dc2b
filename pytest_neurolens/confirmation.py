"""Confirming a regression by re-measuring, in fresh processes.

Some noise belongs to a process (placement, memory layout, a neighbour for a minute): a
session can be slow as a whole, and no statistic over its own calls can tell. So when the
gate (``--neurolens-compare`` with ``--neurolens-fail-above``) finds groups whose change is
beyond the threshold and the noise, the controller re-runs the tests behind those groups in
``--neurolens-confirm`` (K, default 3) fresh ``pytest`` processes with the session's store,
tags and measurement options. Each re-run is a session of its own, stored like any other
(a sample from then on), linked to the original by the tag ``neurolens.gate`` (the
original's session id; the original's runs carry it too) and numbered by
``neurolens.confirm``. The gate is then judged again with the candidate's 1+K sessions (the
median of their values, the same rules), and a group fails only if that confirms it. Only
suspect tests are re-run; xdist workers never re-run anything.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from neurolens.analysis.verdicts import Comparison, GroupResult
    from pytest_neurolens.settings import Settings

GATE_TAG = "neurolens.gate"  # the gated session's id, on its runs and on its re-runs'
CONFIRM_TAG = "neurolens.confirm"  # which re-run (1..K)
# the options a re-run must not inherit from the ini file: it records, nothing more
_OFF_IN_RERUNS = ("neurolens_compare", "neurolens_fail_above", "neurolens_confirm", "neurolens_report")


@dataclass
class Confirmation:
    """What confirming did: the comparison judged again, and lines for the summary."""

    comparison: Comparison
    lines: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def confirm(
    config: pytest.Config,
    settings: Settings,
    store: Path,
    session_id: str,
    first: Comparison,
    recorded: Sequence[Mapping[str, Any]],
) -> Confirmation:
    """Re-run the tests behind ``first``'s failing groups K times and judge again."""
    from neurolens.storage.index.filters import RunFilter
    from pytest_neurolens.session_end import gate

    suspects = [g for g in first.groups if g.fails]
    out = Confirmation(first)
    if not suspects or not settings.confirm:
        return out
    nodeids = sorted({r["nodeid"] for r in recorded if any(_in_group(r, g.group) for g in suspects)})
    if not nodeids:
        out.errors.append("cannot confirm: no test of this session recorded the suspect groups")
        return out
    started = time.perf_counter()
    for number in range(1, settings.confirm + 1):
        problem = _rerun(config, settings, store, session_id, nodeids, number)
        if problem is not None:
            out.errors.append(problem)
            return out  # judged on what the session measured: never passed by a broken re-run
    spent = time.perf_counter() - started
    out.comparison = gate(settings, store, session_id, RunFilter(tags={GATE_TAG: session_id}))
    rerun_verdicts = [
        gate(settings, store, session_id, RunFilter(tags={GATE_TAG: session_id, CONFIRM_TAG: str(number)}))
        for number in range(1, settings.confirm + 1)
    ]
    for suspect in suspects:
        again = _same_group(out.comparison.groups, suspect)
        alone = sum(
            bool((g := _same_group(c.groups, suspect)) is not None and g.fails) for c in rerun_verdicts
        )
        p = "" if again is None or again.noise_p is None else f", p {again.noise_p:.2g}"
        verdict = "confirmed" if again is not None and again.fails else "not confirmed"
        change = "" if suspect.change_pct is None else f" {suspect.change_pct:+.1f}%"
        out.lines.append(
            f"{suspect.label()}: suspected{change}, {verdict}: failed alone in {alone} of "
            f"{settings.confirm} re-runs; judged on {1 + settings.confirm} sessions{p}"
        )
    out.lines.append(
        f"confirmation: {len(nodeids)} test{'s' if len(nodeids) != 1 else ''} re-run "
        f"{settings.confirm} times in fresh processes, {spent:.1f} s"
    )
    return out


def _in_group(row: Mapping[str, Any], group: Mapping[str, Any]) -> bool:
    return all(row.get(name) == value for name, value in group.items())


def _same_group(groups: Sequence[GroupResult], like: GroupResult) -> GroupResult | None:
    return next((g for g in groups if g.group == like.group), None)


def _rerun(
    config: pytest.Config, settings: Settings, store: Path, session_id: str, nodeids: list[str], number: int
) -> str | None:
    """One re-run in a fresh pytest process; a line on what went wrong, or None."""
    command = [sys.executable, "-m", "pytest", *nodeids, "-q", "-p", "no:cacheprovider"]
    command += ["--rootdir", str(config.rootpath)]
    if config.inipath is not None:
        command += ["-c", str(config.inipath)]
    command += _passed_through(config.invocation_params.args)
    command += [f"--neurolens-store={store}"]
    tags = {**settings.tags, GATE_TAG: session_id, CONFIRM_TAG: str(number)}
    command += [f"--neurolens-tag={key}={value}" for key, value in tags.items()]
    budget = settings.budget
    command += [
        f"--neurolens-min-time={budget.min_time_s!r}",
        f"--neurolens-max-time={budget.max_time_s!r}",
        f"--neurolens-stability={budget.stability * 100!r}",
        f"--neurolens-repeats={settings.repeats}",
        f"--neurolens-sample-interval={settings.sample_interval_s * 1000!r}",
        f"--neurolens-gpu={settings.gpu_index}",
    ]
    if settings.push is not None:  # the re-runs are samples: they go where the session's go
        command += [f"--neurolens-push={settings.push}"]
        command += [f"--neurolens-storage-option={k}={v}" for k, v in settings.storage_options.items()]
    for name in _OFF_IN_RERUNS:
        command += ["-o", f"{name}="]
    try:
        done = subprocess.run(
            command, cwd=config.rootpath, capture_output=True, text=True, check=False,
            timeout=settings.confirm_timeout_s,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        return (
            f"confirmation re-run {number} stopped after {settings.confirm_timeout_s:g} s "
            "(--neurolens-confirm-timeout)"
        )
    if done.returncode not in (pytest.ExitCode.OK, pytest.ExitCode.TESTS_FAILED):
        tail = " ".join((done.stderr or done.stdout).strip().splitlines()[-3:])
        return f"confirmation re-run {number} failed (exit {done.returncode}): {tail}"
    return None


def _passed_through(args: Sequence[str]) -> list[str]:
    """The plugin and warning options of the original command line (``-p X``, ``-W X``):
    they decide what loads and what fails; test selection and other options do not pass."""
    out: list[str] = []
    words = list(args)
    for i, word in enumerate(words):
        if word in ("-p", "-W") and i + 1 < len(words):
            out += [word, words[i + 1]]
        elif (word.startswith("-p") or word.startswith("-W")) and len(word) > 2:
            out.append(word)
    return out
