"""pytest-neurolens: record inference measurements of a test session as runs in a store.

Off unless a store is set (``--neurolens-store`` or the ``neurolens_store`` ini setting):
then a Recorder is registered that snapshots the hardware once, writes each test's runs
as the test finishes and compacts the index at the end. Without a store the
``neurolens`` fixture still measures, so tests behave the same, but nothing is written.
This module imports only pytest and the standard library at load time.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Generator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from pytest_neurolens.measurement import LatencyStats, Measurement

if TYPE_CHECKING:
    from neurolens.compare import Comparison, Side, Threshold
    from neurolens.hardware.nvml import Nvml

STORE_HELP = "record runs into the run store at PATH (off when unset)"
TAGS_HELP = "tag every run of the session with KEY=VALUE, e.g. a CI job id or branch (repeatable)"
INTERVAL_HELP = "GPU utilization sampling interval in milliseconds while measuring (default: 50)"
GPU_HELP = "which visible GPU the runs use, as an index into CUDA_VISIBLE_DEVICES (default: 0)"
COMPARE_HELP = (
    "at session end, compare this session's runs with the stored runs matching FILTER "
    "(neurolens ls filters, e.g. '--tag branch=main') and print the comparison"
)
FAIL_ABOVE_HELP = (
    "with --neurolens-compare: fail the session when a group is worse by more than THRESHOLD (5% or 0.5ms)"
)

MARKER = (
    "neurolens(model=None, backend=None, precision=None, batch_size=None, seq_len=None, tags=None): "
    "context of the runs the neurolens fixture records in this test, class or module; "
    "the closest marker wins field by field and tags merge key by key."
)

CONTEXT_FIELDS = ("model", "backend", "precision", "batch_size", "seq_len")
REQUIRED_FIELDS = ("model", "backend", "precision", "batch_size")
DEFAULT_WARMUP = 3
DEFAULT_ITERATIONS = 20

pending_key = pytest.StashKey[list[Measurement]]()
outcome_key = pytest.StashKey[str]()
settings_key = pytest.StashKey["Settings"]()


class NeurolensContextError(ValueError):
    """A marker or a call gives a wrong or missing context field; names the field."""


# --- options and settings ------------------------------------------------------------


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("neurolens", "NeuroLens run recording")

    def option(flag: str, ini: str, metavar: str, help: str, **kwargs: Any) -> None:
        """``--neurolens-FLAG`` and its ini setting, with one help text."""
        # argparse %-formats option help; ini help is printed as is
        group.addoption(
            f"--neurolens-{flag}", dest=ini, metavar=metavar, help=help.replace("%", "%%"), **kwargs
        )
        if kwargs.get("action") == "append":
            parser.addini(ini, help, type="linelist")
        else:
            parser.addini(ini, help)

    option("store", "neurolens_store", "PATH", STORE_HELP)
    option("tag", "neurolens_tags", "KEY=VALUE", TAGS_HELP, action="append", default=[])
    option("sample-interval", "neurolens_sample_interval", "MS", INTERVAL_HELP)
    option("gpu", "neurolens_gpu", "N", GPU_HELP)
    option("compare", "neurolens_compare", "FILTER", COMPARE_HELP)
    option("fail-above", "neurolens_fail_above", "THRESHOLD", FAIL_ABOVE_HELP)


def pytest_addhooks(pluginmanager: pytest.PytestPluginManager) -> None:
    from pytest_neurolens import hooks

    pluginmanager.add_hookspecs(hooks)


@dataclass(frozen=True)
class Settings:
    store: Path | None
    tags: dict[str, str]
    sample_interval_s: float
    gpu_index: int
    compare: Side | None = None
    fail_above: Threshold | None = None

    @classmethod
    def from_config(cls, config: pytest.Config) -> Settings:
        """Options win over ini settings; a malformed value is a ``pytest.UsageError``."""
        store = config.getoption("neurolens_store")
        if store:
            store_path: Path | None = config.invocation_params.dir / store
        else:
            ini_store = config.getini("neurolens_store")
            base = config.inipath.parent if config.inipath else config.rootpath
            store_path = base / ini_store if ini_store else None
        if store_path is not None and store_path.exists() and not store_path.is_dir():
            raise pytest.UsageError(f"--neurolens-store: {store_path} exists and is not a directory")
        tags: dict[str, str] = {}
        for source, values in (
            ("neurolens_tags", config.getini("neurolens_tags")),
            ("--neurolens-tag", config.getoption("neurolens_tags")),
        ):
            for text in values:
                key, sep, value = text.partition("=")
                if not sep or not key.strip():
                    raise pytest.UsageError(f"{source} expects KEY=VALUE, got {text!r}")
                tags[key.strip()] = value.strip()
        interval_text = config.getoption("neurolens_sample_interval") or config.getini(
            "neurolens_sample_interval"
        )
        interval = _parse_number("--neurolens-sample-interval", interval_text or "50", float)
        if not interval > 0 or interval > 60_000:
            raise pytest.UsageError(
                f"--neurolens-sample-interval must be in (0, 60000] ms, got {interval_text!r}"
            )
        gpu_text = config.getoption("neurolens_gpu") or config.getini("neurolens_gpu") or "0"
        gpu = _parse_number("--neurolens-gpu", gpu_text, int)
        if gpu < 0:
            raise pytest.UsageError(f"--neurolens-gpu must be >= 0, got {gpu_text!r}")
        compare, fail_above = _compare_settings(config, store_path)
        return cls(
            store=store_path,
            tags=tags,
            sample_interval_s=interval / 1000,
            gpu_index=gpu,
            compare=compare,
            fail_above=fail_above,
        )


def _compare_settings(config: pytest.Config, store: Path | None) -> tuple[Side | None, Threshold | None]:
    spec = config.getoption("neurolens_compare") or config.getini("neurolens_compare") or None
    limit = config.getoption("neurolens_fail_above") or config.getini("neurolens_fail_above") or None
    if limit and spec is None:
        raise pytest.UsageError("--neurolens-fail-above needs --neurolens-compare (what to compare against)")
    if spec is None:
        return None, None
    if store is None:
        raise pytest.UsageError("--neurolens-compare needs --neurolens-store (where the runs are)")
    from neurolens.cli import parse_filter_spec
    from neurolens.compare import Threshold

    try:
        side = parse_filter_spec(spec)
    except ValueError as exc:
        raise pytest.UsageError(f"--neurolens-compare {spec!r}: {exc}") from None
    try:
        threshold = Threshold.parse(limit) if limit else None
    except ValueError as exc:
        raise pytest.UsageError(f"--neurolens-fail-above: {exc}") from None
    return side, threshold


def _parse_number(option: str, text: str, kind: Callable[[str], Any]) -> Any:
    try:
        return kind(str(text).strip())
    except ValueError:
        raise pytest.UsageError(f"{option} expects a number, got {text!r}") from None


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", MARKER)
    settings = Settings.from_config(config)
    config.stash[settings_key] = settings
    if settings.store is not None:
        recorder = Recorder(config, settings)
        config.pluginmanager.register(recorder, "neurolens-recorder")
        if config.pluginmanager.hasplugin("xdist"):
            config.pluginmanager.register(XdistBridge(recorder), "neurolens-xdist")


# --- marking context -----------------------------------------------------------------


def _check_field(name: str, value: Any, where: str) -> None:
    if name in ("model", "backend", "precision"):
        if not isinstance(value, str) or not value:
            raise NeurolensContextError(f"{where}: {name} must be a non-empty string, got {value!r}")
    elif name == "batch_size":
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise NeurolensContextError(f"{where}: batch_size must be an integer >= 1, got {value!r}")
    elif name == "seq_len" and (
        value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0)
    ):
        raise NeurolensContextError(f"{where}: seq_len must be an integer >= 0 or None, got {value!r}")


def _check_tags(tags: Any, where: str) -> dict[str, str]:
    if not isinstance(tags, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in tags.items()
    ):
        raise NeurolensContextError(f"{where}: tags must map strings to strings, got {tags!r}")
    return dict(tags)


def merge_context(base: Mapping[str, Any], layer: Mapping[str, Any], where: str) -> dict[str, Any]:
    """``layer`` over ``base``: fields replace, tags merge key by key. Checks every field."""
    unknown = sorted(set(layer) - {*CONTEXT_FIELDS, "tags"})
    if unknown:
        raise NeurolensContextError(f"{where}: unknown field(s) {', '.join(unknown)}")
    merged = dict(base)
    for name in CONTEXT_FIELDS:
        if name in layer and (layer[name] is not None or name == "seq_len"):
            _check_field(name, layer[name], where)
            merged[name] = layer[name]
    if layer.get("tags") is not None:
        merged["tags"] = {**merged.get("tags", {}), **_check_tags(layer["tags"], where)}
    return merged


def item_context(item: pytest.Item, session_tags: Mapping[str, str]) -> dict[str, Any]:
    """Session tags, then module, class and function markers: the closest wins."""
    context: dict[str, Any] = {"tags": dict(session_tags)}
    for marker in reversed(list(item.iter_markers("neurolens"))):
        if marker.args:
            raise NeurolensContextError("@pytest.mark.neurolens takes keyword arguments only")
        context = merge_context(context, marker.kwargs, "@pytest.mark.neurolens")
    return context


# --- the fixture -----------------------------------------------------------------------


class NeurolensFixture:
    """Measure calls and record the numbers as runs (see ``measure`` and ``record``)."""

    def __init__(self, item: pytest.Item, context: dict[str, Any], recorder: Recorder | None) -> None:
        self._item = item
        self._context = context
        self._recorder = recorder

    def measure(
        self,
        fn: Callable[..., Any],
        *args: Any,
        warmup: int = DEFAULT_WARMUP,
        iterations: int = DEFAULT_ITERATIONS,
        sync: Callable[[], Any] | None = None,
        **kwargs: Any,
    ) -> Measurement:
        """Call ``fn(*args, **kwargs)`` ``warmup`` times, then time ``iterations`` calls.

        Context fields (model, backend, precision, batch_size, seq_len, tags) in
        ``kwargs`` override the marker for this run and are not passed to ``fn``.
        ``sync`` (e.g. ``torch.cuda.synchronize``) is called before each clock read.
        """
        if not callable(fn):
            raise TypeError(f"measure() needs a callable, got {type(fn).__name__}")
        _check_count("warmup", warmup, 0)
        _check_count("iterations", iterations, 1)
        overrides = {k: kwargs.pop(k) for k in (*CONTEXT_FIELDS, "tags") if k in kwargs}
        run = self._new_run(overrides)  # fails on a missing field before any call is made
        for _ in range(warmup):
            fn(*args, **kwargs)
        samples_ns = []
        clock = time.perf_counter_ns
        with self._sampler() as sampler:
            for _ in range(iterations):
                if sync is not None:
                    sync()
                start = clock()
                fn(*args, **kwargs)
                if sync is not None:
                    sync()
                samples_ns.append(clock() - start)
        latencies_ms = [ns / 1e6 for ns in samples_ns]
        stats = LatencyStats.from_ms(latencies_ms)
        metrics: dict[str, Any] = {
            "total_latency_ms": stats.p50_ms,
            **stats.as_metrics(),
            "throughput_per_s": run["batch_size"] * 1000 / stats.mean_ms if stats.mean_ms > 0 else None,
            "iterations": iterations,
            "warmup": warmup,
        }
        metrics.update(sampler.metrics() if sampler is not None else {"gpu_utilization": None})
        if sampler is not None and sampler.error and run.get("hardware") is not None:
            run["hardware"]["nvml_error"] = run["hardware"].get("nvml_error") or sampler.error
        run["metrics"] = metrics
        run["latencies_ms"] = latencies_ms
        return self._keep(Measurement(run=run, latency=stats))

    def record(
        self, *, total_latency_ms: float, gpu_utilization: float | None = None, **kwargs: Any
    ) -> Measurement:
        """Record a run from numbers the test measured itself; other keywords are metrics."""
        overrides = {k: kwargs.pop(k) for k in (*CONTEXT_FIELDS, "tags") if k in kwargs}
        run = self._new_run(overrides, validate=False)
        run["metrics"] = {"total_latency_ms": total_latency_ms, "gpu_utilization": gpu_utilization, **kwargs}
        _validate(run)  # once, with the real metrics
        return self._keep(Measurement(run=run))

    def _new_run(self, overrides: dict[str, Any], *, validate: bool = True) -> dict[str, Any]:
        from neurolens.storage.document import new_run_id, utc_now

        context = merge_context(self._context, overrides, "neurolens fixture")
        for name in REQUIRED_FIELDS:
            if context.get(name) is None:
                raise NeurolensContextError(
                    f"{name} is not set for {self._item.nodeid}: give it in "
                    f"@pytest.mark.neurolens({name}=...) or as a keyword of this call"
                )
        run: dict[str, Any] = {name: context.get(name) for name in CONTEXT_FIELDS}
        run.update(
            run_id=new_run_id(),
            created_at=utc_now(),
            tags=context.get("tags", {}),
            test={"nodeid": self._item.nodeid, "outcome": None},
            metrics={"total_latency_ms": 0.0},
        )
        if self._recorder is not None:
            self._recorder.annotate(run)
        if validate:  # a bad backend name, say, fails here, before anything is measured
            _validate(run)
        return run

    def _sampler(self) -> Any:
        if self._recorder is None:
            return _NullContext()
        return self._recorder.sampler()

    def _keep(self, measurement: Measurement) -> Measurement:
        measurement.recorded = self._recorder is not None
        self._item.stash.setdefault(pending_key, []).append(measurement)
        return measurement


class _NullContext:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def _check_count(name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def _validate(run: dict[str, Any]) -> None:
    from neurolens.storage.document import prepare_run

    prepare_run(run)


@pytest.fixture
def neurolens(request: pytest.FixtureRequest) -> NeurolensFixture:
    """Measure inference calls; each measurement becomes a run in the store (if one is set)."""
    config = request.config
    settings = config.stash[settings_key]
    recorder = config.pluginmanager.get_plugin("neurolens-recorder")
    context = item_context(request.node, settings.tags)
    return NeurolensFixture(request.node, context, recorder)


# --- recording -------------------------------------------------------------------------


@dataclass
class Recorder:
    """Registered only when a store is set: hardware, fingerprint, writes and the summary."""

    config: pytest.Config
    settings: Settings
    session_id: str = ""
    summary: list[dict[str, Any]] = field(default_factory=list)
    _nvml: Nvml | None = None
    _snapshot: dict[str, Any] | None = None
    _hardware: dict[str, Any] | None = None
    _gpu_index: int | None = None
    _fingerprint: dict[str, Any] | None = None
    comparison: Comparison | None = None

    def __post_init__(self) -> None:
        from neurolens.storage.document import new_run_id

        workerinput = getattr(self.config, "workerinput", None)
        self.session_id = (workerinput or {}).get("neurolens_session_id") or new_run_id()

    @property
    def is_worker(self) -> bool:
        return hasattr(self.config, "workerinput")

    # hardware, taken once, on first use
    def _ensure_hardware(self) -> None:
        if self._snapshot is not None:
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
        self._snapshot, self._hardware = snapshot, hardware
        self._gpu_index = None if gpu is None else gpu["index"]
        self._fingerprint = build_fingerprint(self.config.rootpath, snapshot)

    def annotate(self, run: dict[str, Any]) -> None:
        self._ensure_hardware()
        assert self._hardware is not None and self._fingerprint is not None
        run["hardware"] = dict(self._hardware)
        run["session_id"] = self.session_id
        run["fingerprint_hash"] = self._fingerprint["fingerprint_hash"]

    def sampler(self) -> Any:
        from neurolens.hardware.nvml import UtilizationSampler

        self._ensure_hardware()
        assert self._nvml is not None
        return UtilizationSampler(self._nvml, self._gpu_index, self.settings.sample_interval_s)

    # writing, as each test finishes
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
        from neurolens.storage.store import write_run

        pending = item.stash.get(pending_key, [])
        benchmark = _benchmark_measurement(item, self)
        if benchmark is not None:
            pending.append(benchmark)
        item.stash[pending_key] = []
        if not pending:
            return
        outcome = item.stash.get(outcome_key, "unknown")
        assert self.settings.store is not None and self._fingerprint is not None  # set by annotate()
        for measurement in pending:
            run = measurement.run
            run["test"]["outcome"] = outcome
            item.ihook.pytest_neurolens_run(run=run, item=item)
            write_run(self.settings.store, run, fingerprint=self._fingerprint)
            self.summary.append(
                {
                    "nodeid": item.nodeid,
                    "model": run["model"],
                    "backend": run["backend"],
                    "precision": run["precision"],
                    "batch_size": run["batch_size"],
                    "p50_ms": run["metrics"]["total_latency_ms"],
                    "gpu_utilization": run["metrics"].get("gpu_utilization"),
                }
            )

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        if self._nvml is not None:
            self._nvml.close()
        if self.is_worker:
            self.config.workeroutput["neurolens_runs"] = self.summary  # type: ignore[attr-defined]
            return
        if self.settings.store is not None and self.settings.store.is_dir():
            from neurolens.storage.store import compact_index

            compact_index(self.settings.store)
        if self.settings.compare is not None:
            self._compare(session, self.settings.compare)

    def _compare(self, session: pytest.Session, baseline_filter: Side) -> None:
        """The regression gate: this session's runs against the stored baseline."""
        from dataclasses import replace

        from neurolens.compare import Side, compare

        baseline = replace(baseline_filter, exclude_session=self.session_id)
        self.comparison = compare(
            self.settings.store,
            baseline,
            Side(session=self.session_id),
            threshold=self.settings.fail_above,
        )
        if self.comparison.failed and session.exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if self.is_worker:
            return
        tr = terminalreporter
        tr.write_sep("-", "neurolens")
        self._summarise_runs(tr)
        if self.comparison is not None:
            tr.write_sep("-", "neurolens compare")
            for line in self.comparison.to_table().splitlines():
                tr.write_line(line)
            for warning in self.comparison.warnings:
                tr.write_line(f"warning: {warning}")
            if self.comparison.failed:
                tr.write_line(
                    f"neurolens: regression above {self.comparison.threshold}: failing the session", red=True
                )

    def _summarise_runs(self, tr: Any) -> None:
        count = len(self.summary)
        runs = f"{count} run{'s' if count != 1 else ''}"
        tr.write_line(f"recorded {runs} in {self.settings.store} (session {self.session_id})")
        if not self.summary:
            return
        header = ("TEST", "MODEL", "BACKEND", "PRECISION", "BATCH", "P50 MS", "GPU %")
        rows = [
            (
                r["nodeid"],
                r["model"],
                r["backend"],
                r["precision"],
                str(r["batch_size"]),
                f"{r['p50_ms']:.3f}",
                "-" if r["gpu_utilization"] is None else f"{r['gpu_utilization']:.1f}",
            )
            for r in self.summary
        ]
        widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]
        for row in (header, *rows):
            cells = [
                c.rjust(w) if i >= 4 else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))
            ]
            tr.write_line("  ".join(cells).rstrip())


class XdistBridge:
    """Registered only with pytest-xdist: one session id for every worker, runs summarised."""

    def __init__(self, recorder: Recorder) -> None:
        self.recorder = recorder

    def pytest_configure_node(self, node: Any) -> None:
        node.workerinput["neurolens_session_id"] = self.recorder.session_id

    def pytest_testnodedown(self, node: Any, error: Any) -> None:
        self.recorder.summary.extend(getattr(node, "workeroutput", {}).get("neurolens_runs", []))


# --- pytest-benchmark ----------------------------------------------------------------


def _benchmark_measurement(item: pytest.Item, recorder: Recorder) -> Measurement | None:
    """pytest-benchmark's statistics as a run, for a test that also has the neurolens marker."""
    funcargs = getattr(item, "funcargs", None) or {}
    bench = funcargs.get("benchmark")
    stats = getattr(getattr(bench, "stats", None), "stats", None)
    if stats is None or not getattr(stats, "data", None) or item.get_closest_marker("neurolens") is None:
        return None
    context = item_context(item, recorder.settings.tags)
    fixture = NeurolensFixture(item, context, recorder)
    latencies_ms = [seconds * 1000 for seconds in stats.data]
    latency = LatencyStats.from_ms(latencies_ms)
    run = fixture._new_run({})
    run["metrics"] = {
        "total_latency_ms": latency.p50_ms,
        **latency.as_metrics(),
        "throughput_per_s": run["batch_size"] * 1000 / latency.mean_ms if latency.mean_ms > 0 else None,
        "iterations": len(latencies_ms),
        "gpu_utilization": None,
        "source": "pytest-benchmark",
    }
    run["latencies_ms"] = latencies_ms
    return Measurement(run=run, latency=latency, recorded=True)
