"""The plugin's options: each defined once, its ``--neurolens-*`` flag and ini setting
sharing one help text; ``Settings`` is what they resolve to (command line beats ini)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from pytest_neurolens.timing import DEFAULT_MAX_TIME_S, DEFAULT_MIN_TIME_S, DEFAULT_STABILITY, Budget

if TYPE_CHECKING:
    from neurolens.analysis.verdicts import Threshold
    from neurolens.storage.index.filters import RunFilter

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
REPEATS_HELP = (
    "measure in N rounds by default (measure(repeats=) overrides): each round a run of its own, "
    "so compare can test significance within one session; costs N times the calls (default: 1)"
)
MIN_TIME_HELP = (
    "measure() without iterations= times calls for at least SECONDS, until stable "
    f"(default: {DEFAULT_MIN_TIME_S:g})"
)
MAX_TIME_HELP = (
    "measure() without iterations= stops after SECONDS even when not stable, and records it "
    f"as unstable (default: {DEFAULT_MAX_TIME_S:g})"
)
STABILITY_HELP = (
    "measure() without iterations= is stable when the medians of its last three windows of "
    f"calls are within PCT percent of each other (default: {DEFAULT_STABILITY * 100:g})"
)
CONFIRM_HELP = (
    "with --neurolens-fail-above: re-run the tests behind groups that fail the gate in K fresh "
    "pytest processes, and fail only if the candidate's 1+K sessions confirm the regression "
    "(default: 3; 0 turns it off)"
)
DEFAULT_CONFIRM = 3
CONFIRM_TIMEOUT_HELP = (
    "with --neurolens-confirm: stop a confirmation re-run after SECONDS; the first verdict then "
    "stands (default: 600; 0: no limit)"
)
DEFAULT_CONFIRM_TIMEOUT_S = 600.0
REPORT_HELP = (
    "at session end, write an HTML report of the store's history for the groups this session "
    "recorded to PATH (needs the 'report' extra)"
)
PUSH_HELP = (
    "at session end, push the session's runs to the remote table at URL (s3://bucket/prefix, gs://, "
    "az://, a path; needs the 'remote' extra); a failed push fails the session, the runs stay local"
)
BASELINE_ROOT_HELP = "with --neurolens-compare: read the baseline from this store or remote table (URL)"
STORAGE_OPTION_HELP = "a delta-rs storage option for the remote table, KEY=VALUE (repeatable)"
ALLOW_EMPTY_HELP = "with --neurolens-compare: do not fail the session when nothing was compared"


def add_options(parser: pytest.Parser) -> None:
    group = parser.getgroup("neurolens", "NeuroLens run recording")

    def option(flag: str, ini: str, metavar: str | None, help: str, **kwargs: Any) -> None:
        """``--neurolens-FLAG`` and its ini setting, with one help text."""
        # argparse %-formats option help; ini help is printed as is
        if metavar is not None:
            kwargs["metavar"] = metavar
        group.addoption(f"--neurolens-{flag}", dest=ini, help=help.replace("%", "%%"), **kwargs)
        kind = {"append": "linelist", "store_true": "bool"}.get(kwargs.get("action", ""), "string")
        parser.addini(ini, help, type=kind)  # type: ignore[arg-type]

    option("store", "neurolens_store", "PATH", STORE_HELP)
    option("tag", "neurolens_tags", "KEY=VALUE", TAGS_HELP, action="append", default=[])
    option("sample-interval", "neurolens_sample_interval", "MS", INTERVAL_HELP)
    option("gpu", "neurolens_gpu", "N", GPU_HELP)
    option("repeats", "neurolens_repeats", "N", REPEATS_HELP)
    option("min-time", "neurolens_min_time", "SECONDS", MIN_TIME_HELP)
    option("max-time", "neurolens_max_time", "SECONDS", MAX_TIME_HELP)
    option("stability", "neurolens_stability", "PCT", STABILITY_HELP)
    option("compare", "neurolens_compare", "FILTER", COMPARE_HELP)
    option("fail-above", "neurolens_fail_above", "THRESHOLD", FAIL_ABOVE_HELP)
    option("confirm", "neurolens_confirm", "K", CONFIRM_HELP)
    option("confirm-timeout", "neurolens_confirm_timeout", "SECONDS", CONFIRM_TIMEOUT_HELP)
    option("report", "neurolens_report", "PATH", REPORT_HELP)
    option("push", "neurolens_push", "URL", PUSH_HELP)
    option("baseline-root", "neurolens_baseline_root", "URL", BASELINE_ROOT_HELP)
    option(
        "storage-option",
        "neurolens_storage_options",
        "KEY=VALUE",
        STORAGE_OPTION_HELP,
        action="append",
        default=[],
    )
    option("allow-empty", "neurolens_allow_empty", None, ALLOW_EMPTY_HELP, action="store_true", default=False)


@dataclass(frozen=True)
class Settings:
    store: Path | None
    tags: dict[str, str]
    sample_interval_s: float
    gpu_index: int
    compare: RunFilter | None = None
    fail_above: Threshold | None = None
    allow_empty: bool = False
    confirm: int = 0  # re-runs of suspect tests at session end (0 without a gate)
    confirm_timeout_s: float | None = DEFAULT_CONFIRM_TIMEOUT_S  # per re-run; None: no limit
    repeats: int = 1
    budget: Budget = field(default_factory=Budget)
    push: str | None = None
    report: Path | None = None
    baseline_root: str | None = None
    storage_options: dict[str, str] = field(default_factory=dict)

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
        interval_text = _value(config, "neurolens_sample_interval")
        interval = _parse_number("--neurolens-sample-interval", interval_text or "50", float)
        if not interval > 0 or interval > 60_000:
            raise pytest.UsageError(
                f"--neurolens-sample-interval must be in (0, 60000] ms, got {interval_text!r}"
            )
        gpu_text = _value(config, "neurolens_gpu") or "0"
        gpu = _parse_number("--neurolens-gpu", gpu_text, int)
        if gpu < 0:
            raise pytest.UsageError(f"--neurolens-gpu must be >= 0, got {gpu_text!r}")
        repeats_text = _value(config, "neurolens_repeats") or "1"
        repeats = _parse_number("--neurolens-repeats", repeats_text, int)
        if not 1 <= repeats <= 1000:
            raise pytest.UsageError(f"--neurolens-repeats must be in 1..1000, got {repeats_text!r}")
        budget = _budget_settings(config)
        compare, fail_above = _compare_settings(config, store_path)
        confirm_text = _value(config, "neurolens_confirm")
        confirm = _parse_number("--neurolens-confirm", confirm_text, int) if confirm_text else DEFAULT_CONFIRM
        if not 0 <= confirm <= 20:
            raise pytest.UsageError(f"--neurolens-confirm must be in 0..20, got {confirm_text!r}")
        timeout_text = _value(config, "neurolens_confirm_timeout")
        timeout = (
            _parse_number("--neurolens-confirm-timeout", timeout_text, float)
            if timeout_text
            else DEFAULT_CONFIRM_TIMEOUT_S
        )
        if not 0 <= timeout <= 86_400:
            raise pytest.UsageError(
                f"--neurolens-confirm-timeout must be in 0..86400 s, got {timeout_text!r}"
            )
        push, baseline_root, storage_options = _remote_settings(config, store_path, compare)
        report_text = _value(config, "neurolens_report") or None
        if report_text and store_path is None:
            raise pytest.UsageError("--neurolens-report needs --neurolens-store (the runs to report on)")
        report = None if not report_text else config.invocation_params.dir / report_text
        return cls(
            store=store_path,
            tags=tags,
            sample_interval_s=interval / 1000,
            gpu_index=gpu,
            compare=compare,
            fail_above=fail_above,
            confirm=confirm if fail_above is not None else 0,
            confirm_timeout_s=timeout or None,
            repeats=repeats,
            budget=budget,
            push=push,
            report=report,
            baseline_root=baseline_root,
            storage_options=storage_options,
            allow_empty=bool(_value(config, "neurolens_allow_empty")),
        )


def _remote_settings(
    config: pytest.Config, store: Path | None, compare: RunFilter | None
) -> tuple[str | None, str | None, dict[str, str]]:
    """--neurolens-push, --neurolens-baseline-root and the storage options they use."""
    push = _value(config, "neurolens_push") or None
    if push and store is None:
        raise pytest.UsageError("--neurolens-push needs --neurolens-store (the runs to push)")
    if push:
        from neurolens.errors import StoreError
        from neurolens.remote.table import RemoteTable

        try:
            RemoteTable(push)  # the URL's form, checked before any test runs
        except StoreError as exc:
            raise pytest.UsageError(f"--neurolens-push: {exc}") from None
    baseline_root = _value(config, "neurolens_baseline_root") or None
    if baseline_root and compare is None:
        raise pytest.UsageError("--neurolens-baseline-root needs --neurolens-compare (which baseline runs)")
    pairs = [*config.getini("neurolens_storage_options"), *config.getoption("neurolens_storage_options")]
    if not pairs:
        return push, baseline_root, {}
    from neurolens.remote.table import parse_storage_options

    try:
        return push, baseline_root, parse_storage_options(pairs, "--neurolens-storage-option")
    except ValueError as exc:
        raise pytest.UsageError(str(exc)) from None


def _compare_settings(config: pytest.Config, store: Path | None) -> tuple[RunFilter | None, Threshold | None]:
    spec = _value(config, "neurolens_compare") or None
    limit = _value(config, "neurolens_fail_above") or None
    if limit and spec is None:
        raise pytest.UsageError("--neurolens-fail-above needs --neurolens-compare (what to compare against)")
    if spec is None:
        return None, None
    if store is None:
        raise pytest.UsageError("--neurolens-compare needs --neurolens-store (where the runs are)")
    from neurolens.analysis.verdicts import Threshold
    from neurolens.storage.index.filters import parse_filter_spec

    try:
        baseline = parse_filter_spec(spec)
    except ValueError as exc:
        raise pytest.UsageError(f"--neurolens-compare {spec!r}: {exc}") from None
    if not baseline.selects():
        raise pytest.UsageError(
            f"--neurolens-compare {spec!r} selects every run; "
            "give the baseline a filter such as '--tag branch=main'"
        )
    try:
        threshold = Threshold.parse(limit) if limit else None
    except ValueError as exc:
        raise pytest.UsageError(f"--neurolens-fail-above: {exc}") from None
    return baseline, threshold


def _value(config: pytest.Config, name: str) -> Any:
    """An option's value: the command line's when given, else the ini setting's."""
    return config.getoption(name) or config.getini(name)


def _budget_settings(config: pytest.Config) -> Budget:
    """--neurolens-min-time, --neurolens-max-time and --neurolens-stability: measure()'s
    default budget."""
    found = {}
    for name, flag, default, low, high in (
        ("min_time", "--neurolens-min-time", DEFAULT_MIN_TIME_S, 0.0, 3600.0),
        ("max_time", "--neurolens-max-time", DEFAULT_MAX_TIME_S, 0.0, 3600.0),
        ("stability", "--neurolens-stability", DEFAULT_STABILITY * 100, 0.0, 100.0),
    ):
        text = _value(config, f"neurolens_{name}")
        value = default if not text else _parse_number(flag, text.removesuffix("%"), float)
        if not low < value <= high:
            raise pytest.UsageError(f"{flag} must be in ({low:g}, {high:g}], got {text!r}")
        found[name] = value
    if found["min_time"] > found["max_time"]:
        raise pytest.UsageError(
            f"--neurolens-min-time ({found['min_time']:g}) is above "
            f"--neurolens-max-time ({found['max_time']:g})"
        )
    return Budget(
        min_time_s=found["min_time"], max_time_s=found["max_time"], stability=found["stability"] / 100
    )


def _parse_number(option: str, text: str, kind: Callable[[str], Any]) -> Any:
    try:
        return kind(str(text).strip())
    except ValueError:
        raise pytest.UsageError(f"{option} expects a number, got {text!r}") from None
