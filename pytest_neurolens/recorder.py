"""The recorder, registered only when a store is set: hardware, a write per run as each
test ends, the session-end actions (``session_end``) and the summary."""

from __future__ import annotations

import os
from collections.abc import Generator
from typing import TYPE_CHECKING, Any

import pytest

from pytest_neurolens.benchmark import benchmark_measurement
from pytest_neurolens.runs import pending_key
from pytest_neurolens.settings import Settings

if TYPE_CHECKING:
    from neurolens.analysis.verdicts import Comparison
    from neurolens.hardware.nvml import Nvml, UtilizationSampler

outcome_key = pytest.StashKey[str]()


class Recorder:
    """Hardware and fingerprint (once, on first use), a write per run as each test ends,
    the regression gate and the terminal summary at the end."""

    def __init__(self, config: pytest.Config, settings: Settings, session_id: str) -> None:
        assert settings.store is not None
        self.config = config
        self.settings = settings
        self.store = settings.store
        self.session_id = session_id
        self.summary: list[dict[str, Any]] = []
        self.comparison: Comparison | None = None
        self.errors: list[str] = []  # failures at session end, for the summary
        self.stored_runs: int | None = None  # what the store holds for the session, at the end
        self.pushed: str | None = None  # what the push at the end did, for the summary
        self.confirmation: list[str] = []  # what confirming a suspected regression found
        self.reported: str | None = None  # where the report went
        self._nvml: Nvml | None = None
        self._hardware: dict[str, Any] | None = None
        self._gpu_index: int | None = None
        self._fingerprint: dict[str, Any] | None = None
        self._fingerprint_bytes: bytes | None = None  # its file's bytes, made once
        # where this session's manifest lines begin: the end counts them from here
        self._manifest_start = _check_writable(self.store)

    @property
    def is_worker(self) -> bool:
        return hasattr(self.config, "workerinput")

    def _ensure_hardware(self) -> None:
        if self._hardware is not None:
            return
        from neurolens.hardware.fingerprint import build_fingerprint
        from neurolens.hardware.host import host_facts
        from neurolens.hardware.nvml import Nvml, run_hardware, select_gpu

        self._nvml = Nvml()
        snapshot = self._nvml.snapshot()
        snapshot["host"] = host_facts()
        base_keys = set(snapshot)
        self.config.hook.pytest_neurolens_hardware(snapshot=snapshot)
        gpu, reason = select_gpu(snapshot, self.settings.gpu_index)
        hardware = run_hardware(snapshot, gpu, reason)
        for key, value in snapshot.items():  # scalar additions from pytest_neurolens_hardware
            if key not in base_keys and (value is None or isinstance(value, (str, int, float))):
                hardware[key] = value
        self._hardware = hardware
        self._gpu_index = None if gpu is None else gpu["index"]
        self._fingerprint = build_fingerprint(self.config.rootpath, snapshot)

    def annotate(self, run: dict[str, Any]) -> None:
        self._ensure_hardware()
        assert self._hardware is not None and self._fingerprint is not None
        run["hardware"] = dict(self._hardware)
        run["fingerprint_hash"] = self._fingerprint["fingerprint_hash"]

    def sampler(self) -> UtilizationSampler:
        from neurolens.hardware.nvml import UtilizationSampler

        self._ensure_hardware()
        assert self._nvml is not None
        return UtilizationSampler(self._nvml, self._gpu_index, self.settings.sample_interval_s)

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(
        self, item: pytest.Item, call: pytest.CallInfo[None]
    ) -> Generator[None, pytest.TestReport, pytest.TestReport]:
        report = yield
        if report.when == "call" or (report.when == "setup" and not report.passed):
            outcome: str = report.outcome
            if hasattr(report, "wasxfail"):
                outcome = "xfailed" if report.skipped else "xpassed"
            item.stash[outcome_key] = outcome
        return report

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_teardown(
        self, item: pytest.Item, nextitem: pytest.Item | None
    ) -> Generator[None, None, None]:
        try:
            return (yield)
        finally:
            self._write_pending(item)

    def _write_pending(self, item: pytest.Item) -> None:
        from neurolens.storage.store import fingerprint_bytes, write_prepared_run, write_run

        pending = item.stash.get(pending_key, [])
        item.stash[pending_key] = []
        benchmark = benchmark_measurement(item, self.settings.tags, self.session_id, self)
        if benchmark is not None:
            pending.append(benchmark)
        outcome = item.stash.get(outcome_key, "unknown")
        attempt = getattr(item, "execution_count", None)  # pytest-rerunfailures counts attempts
        if not (isinstance(attempt, int) and attempt >= 1):
            attempt = None
        hooked = bool(item.ihook.pytest_neurolens_run.get_hookimpls())
        if self._fingerprint_bytes is None and self._fingerprint is not None:
            self._fingerprint_bytes = fingerprint_bytes(self._fingerprint)
        for measurement in pending:
            run = measurement.run
            prepared = measurement.prepared
            if prepared is not None and (hooked or not prepared.matches(run)):
                prepared = None  # changed since it was validated, or a hook may change it
            run["test"]["outcome"] = outcome
            if attempt is not None:
                run["test"]["attempt"] = attempt
            item.ihook.pytest_neurolens_run(run=run, item=item)
            if prepared is None:
                write_run(self.store, run, fingerprint=self._fingerprint)
            else:  # validated as the test recorded it: not validated twice
                write_prepared_run(
                    self.store, prepared.with_test_result(outcome, attempt), self._fingerprint_bytes
                )
            hardware = run.get("hardware") or {}
            self.summary.append(
                {
                    "nodeid": item.nodeid,
                    "model": run["model"],
                    "backend": run["backend"],
                    "precision": run["precision"],
                    "batch_size": run["batch_size"],
                    "seq_len": run.get("seq_len"),
                    "gpu_name": hardware.get("gpu_name"),
                    # the group's CPU: only a run without a GPU is grouped by it
                    "cpu_model": None if hardware.get("gpu_name") is not None else hardware.get("cpu_model"),
                    "p50_ms": run["metrics"]["total_latency_ms"],
                    "gpu_utilization": run["metrics"].get("gpu_utilization"),
                    "stable": run["metrics"].get("stable"),
                    "stability_pct": run["metrics"].get("stability_pct"),
                    "limit_pct": run["metrics"].get("stability_limit_pct"),
                }
            )

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        from pytest_neurolens.session_end import SESSION_END_ERRORS

        if self._nvml is not None:
            self._nvml.close()
        if self.is_worker:
            self.config.workeroutput["neurolens_runs"] = self.summary  # type: ignore[attr-defined]
            return
        try:
            self._finish()
        except SESSION_END_ERRORS as exc:  # a summary line, never a traceback
            self.errors.append(f"{type(exc).__name__}: {exc}")
        if self.errors and session.exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def _finish(self) -> None:
        from neurolens.storage.index.reading import session_run_ids
        from pytest_neurolens import session_end

        settings = self.settings
        if not (self.store / "_manifest.jsonl").exists():
            self.stored_runs = 0
            if settings.compare is not None and not settings.allow_empty:
                self.errors.append("nothing was compared: this session recorded no runs")
            return
        # Counted from the manifest, so runs of a killed xdist worker count as stored. The
        # index is left to the writers' compaction points: folding every session's runs in
        # would rewrite the whole index (seconds at 1M runs) and import pyarrow each time.
        self.stored_runs = len(session_run_ids(self.store, self.session_id, self._manifest_start))
        if any(s is not None for s in (settings.push, settings.compare, settings.report)):
            from neurolens.storage.store import ensure_usable_index

            ensure_usable_index(self.store)  # these read the store: no warning, no whole-manifest read
        if settings.push is not None:
            self.pushed, problems = session_end.push_runs(settings, self.store, self.session_id)
            self.errors.extend(problems)
        if settings.compare is not None:
            self._gate()
        if settings.report is not None:
            self.reported, problems = session_end.write_session_report(settings, self.store, self.session_id)
            self.errors.extend(problems)

    def _gate(self) -> None:
        from pytest_neurolens.confirmation import confirm
        from pytest_neurolens.session_end import gate

        self.comparison = gate(self.settings, self.store, self.session_id)
        if self.comparison.failed and self.settings.confirm:
            done = confirm(
                self.config, self.settings, self.store, self.session_id, self.comparison, self.summary
            )
            self.comparison, self.confirmation = done.comparison, done.lines
            self.errors.extend(done.errors)
        if self.comparison.failed:
            confirmed = " (confirmed by re-measuring)" if self.confirmation else ""
            self.errors.append(
                f"regression above {self.comparison.threshold}{confirmed}: failing the session"
            )
        elif self.comparison.nothing_compared and not self.settings.allow_empty:
            self.errors.append(
                f"nothing was compared: {self.comparison.nothing_compared} "
                "(--neurolens-allow-empty accepts this)"
            )

    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        from neurolens.tables import escape, milliseconds, number, render

        if self.is_worker:
            return
        tr = terminalreporter
        tr.write_sep("-", "neurolens")
        count = len(self.summary) if self.stored_runs is None else self.stored_runs
        tr.write_line(
            f"recorded {count} run{'s' if count != 1 else ''} in {self.store} (session {self.session_id})"
        )
        for done in (self.pushed, self.reported):
            if done is not None:
                tr.write_line(escape(done))
        if self.summary:
            header = ("TEST", "MODEL", "BACKEND", "PRECISION", "BATCH", "P50 MS", "GPU %")
            rows = [
                (
                    r["nodeid"],
                    r["model"],
                    r["backend"],
                    r["precision"],
                    str(r["batch_size"]),
                    milliseconds(r["p50_ms"]),
                    number(r["gpu_utilization"], 1),
                )
                for r in self.summary
            ]
            for line in render(header, rows, right=(4, 5, 6)).splitlines():
                tr.write_line(line)
            for line in unstable_lines(self.summary):
                tr.write_line(escape(line), yellow=True)
        if self.comparison is not None:
            from neurolens.analysis.text import to_table

            tr.write_sep("-", "neurolens compare")
            for line in to_table(self.comparison).splitlines():
                tr.write_line(line)
            for warning in self.comparison.warnings:
                tr.write_line(escape(f"warning: {warning}"))
            for line in self.confirmation:
                tr.write_line(escape(line))
        for error in self.errors:
            tr.write_line(escape(f"neurolens: {error}"), red=True)


def unstable_lines(summary: list[dict[str, Any]]) -> list[str]:
    """A line per measurement that did not meet its stability rule (``timing``), and a hint."""
    lines = []
    for r in summary:
        if r.get("stable") is False:
            spread = r.get("stability_pct")
            figure = "windows not comparable" if spread is None else f"windows {spread:.1f}% apart"
            lines.append(f"unstable: {r['nodeid']} ({figure}; the rule asks {r.get('limit_pct') or 0:g}%)")
    if lines:
        lines.append(
            "unstable measurements are noisy evidence: give them more time "
            "(--neurolens-max-time, measure(max_time=)) or a quieter machine"
        )
    return lines


def _check_writable(store: os.PathLike[str]) -> int:
    """At startup, one clear error for a store that cannot be written (not one per test);
    returns the manifest's size."""
    from pathlib import Path

    from neurolens.errors import StoreError
    from neurolens.storage.ledger.manifest import manifest_size
    from neurolens.storage.ledger.root import ensure_root

    root = Path(store)
    try:
        ensure_root(root)
        probe = root / f".neurolens-probe.{os.getpid()}.tmp"
        probe.write_bytes(b"")
        probe.unlink()
        return manifest_size(root)  # a symlinked manifest is refused here too
    except (OSError, StoreError) as exc:
        reason = (exc.strerror if isinstance(exc, OSError) else None) or str(exc)
        raise pytest.UsageError(f"--neurolens-store {root}: cannot write there ({reason})") from None


class XdistBridge:
    """Registered only with pytest-xdist: one session id for every worker, runs summarised."""

    def __init__(self, recorder: Recorder) -> None:
        self.recorder = recorder

    def pytest_configure_node(self, node: Any) -> None:
        node.workerinput["neurolens_session_id"] = self.recorder.session_id

    def pytest_testnodedown(self, node: Any, error: Any) -> None:
        self.recorder.summary.extend(getattr(node, "workeroutput", {}).get("neurolens_runs", []))
