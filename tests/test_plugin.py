"""The pytest plugin, through real pytest runs (pytester)."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

# pytester's in-process runs drop modules first imported inside them; numpy-based ones
# cannot be imported twice, so everything the plugin loads lazily is loaded up front.
import jsonschema  # noqa: F401
import pandas  # noqa: F401
import pyarrow.compute
import pyarrow.parquet  # noqa: F401
import pytest

# the index's Arrow classes too: a backend made inside a run must match them after it
import neurolens.storage.index.arrow_backend
import neurolens.storage.index.parquet  # noqa: F401
from neurolens import load_runs
from neurolens.sources import query
from tests.fake_nvml import install, make_fake_lib, two_gpus

BASIC = """
import time
import pytest

pytestmark = pytest.mark.neurolens(model="tiny", backend="cpu", precision="fp32", batch_size=2)

def test_measured(neurolens):
    result = neurolens.measure(time.sleep, 0.0005, warmup=1, iterations=5)
    assert result.p50_ms >= 0.5 and result.count == 5
"""

RECORDED_TOO = """

def test_recorded(neurolens):
    neurolens.record(total_latency_ms=1.5)
"""


@pytest.fixture
def tester(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    """A pytester whose runs see no real GPU and no outer store setting."""
    monkeypatch.delenv("NEUROLENS_STORE_ROOT", raising=False)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    return pytester


def run(tester: pytest.Pytester, *args: str) -> pytest.RunResult:
    # pytest-benchmark writes its own .benchmarks folder; it is on only where a test needs it.
    plugins = ("-p", "no:hypothesispytest", "-p", "no:benchmark")
    return tester.runpytest("-W", "error", "-p", "no:cacheprovider", *plugins, *args)


def stored(tester: pytest.Pytester, store: str = "runs") -> list[dict[str, Any]]:
    """The runs in the store; none where nothing was ever written (no manifest)."""
    if not (tester.path / store / "_manifest.jsonl").exists():
        return []
    return query(tester.path / store, include_failed=True)


def documents(tester: pytest.Pytester, store: str = "runs") -> list[dict[str, Any]]:
    root = tester.path / store
    return [json.loads((root / r["run_json"]).read_text()) for r in query(root, include_failed=True)]


def test_without_a_store_nothing_is_written_but_tests_still_measure(tester: pytest.Pytester) -> None:
    tester.makepyfile(BASIC)

    def written() -> list[str]:
        # pytest's own bytecode cache is not ours (it appears wherever bytecode is written)
        return sorted(p.name for p in tester.path.iterdir() if p.name != "__pycache__")

    before = written()
    run(tester).assert_outcomes(passed=1)
    assert written() == before


def test_store_option_records_a_run_per_measurement(tester: pytest.Pytester) -> None:
    tester.makepyfile(
        BASIC
        + """
def test_two(neurolens):
    neurolens.measure(lambda: None, iterations=3)
    neurolens.record(total_latency_ms=7.5, gpu_utilization=None, tokens_per_s=120.0)
"""
    )
    result = run(tester, "--neurolens-store=runs")
    result.assert_outcomes(passed=2)
    docs = documents(tester)
    assert len(docs) == 3
    assert {d["test"]["nodeid"] for d in docs} == {
        "test_store_option_records_a_run_per_measurement.py::test_measured",
        "test_store_option_records_a_run_per_measurement.py::test_two",
    }
    assert all(d["test"]["outcome"] == "passed" for d in docs)
    assert len({d["session_id"] for d in docs}) == 1
    measured = next(d for d in docs if d["test"]["nodeid"].endswith("test_measured"))
    metrics = measured["metrics"]
    assert len(measured["latencies_ms"]) == 5 and min(measured["latencies_ms"]) >= 0.5
    assert metrics["total_latency_ms"] == metrics["latency_p50_ms"]
    assert metrics["iterations"] == 5 and metrics["warmup"] == 1
    assert metrics["throughput_per_s"] == pytest.approx(2 * 1000 / metrics["latency_mean_ms"])
    assert metrics["gpu_utilization"] is None  # no GPU here
    assert measured["hardware"]["nvml_error"]
    assert measured["hardware"]["python_version"] and measured["hardware"]["hostname"]
    recorded = next(d for d in docs if d["metrics"]["total_latency_ms"] == 7.5)
    assert recorded["metrics"]["tokens_per_s"] == 120.0
    # fingerprint written beside each run, its hash on the run and in the manifest
    row = stored(tester)[0]
    fingerprint = json.loads((tester.path / "runs" / row["fp_json"]).read_text())
    assert row["fingerprint_hash"] == fingerprint["fingerprint_hash"] == docs[0]["fingerprint_hash"]
    assert "python" in fingerprint and "packages" in fingerprint and "git_commit" in fingerprint
    # the first write into the new store built its index; the later runs wait in the
    # manifest's tail for a compaction point, and readers add them
    assert (tester.path / "runs" / "_index.parquet").is_file() and len(stored(tester)) == 3
    result.stdout.fnmatch_lines(
        ["*- neurolens -*", "recorded 3 runs in *runs (session *)", "TEST*MODEL*P50 MS*"]
    )


def test_ini_store_and_tags_with_command_line_precedence(tester: pytest.Pytester) -> None:
    tester.makeini(
        """
        [pytest]
        neurolens_store = ini_runs
        neurolens_tags =
            branch=main
            job=7
        """
    )
    tester.makepyfile(BASIC)
    run(tester).assert_outcomes(passed=1)
    assert [r["tags"] for r in stored(tester, "ini_runs")] == [{"branch": "main", "job": "7"}]
    run(tester, "--neurolens-store=cli_runs", "--neurolens-tag", "branch=pr-3").assert_outcomes(passed=1)
    assert [r["tags"] for r in stored(tester, "cli_runs")] == [{"branch": "pr-3", "job": "7"}]
    assert len(stored(tester, "ini_runs")) == 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--neurolens-tag", "novalue"], "--neurolens-tag expects KEY=VALUE, got 'novalue'"),
        (["--neurolens-tag", "=x"], "--neurolens-tag expects KEY=VALUE"),
        (["--neurolens-sample-interval", "fast"], "--neurolens-sample-interval expects a number"),
        (["--neurolens-sample-interval", "0"], "--neurolens-sample-interval must be in"),
        (["--neurolens-gpu", "-1"], "--neurolens-gpu must be >= 0"),
    ],
)
def test_malformed_options_are_usage_errors(tester: pytest.Pytester, args: list[str], message: str) -> None:
    tester.makepyfile(BASIC)
    result = run(tester, "--neurolens-store=runs", *args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"*{message}*"])
    assert not (tester.path / "runs").exists()


def test_store_path_that_is_a_file_is_a_usage_error(tester: pytest.Pytester) -> None:
    tester.makepyfile(BASIC)
    (tester.path / "runs").write_text("not a folder")
    result = run(tester, "--neurolens-store=runs")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        ["*--neurolens-store *runs: cannot write there*runs exists and is not a directory*"]
    )
    assert (tester.path / "runs").read_text() == "not a folder"


def test_a_symlinked_manifest_is_a_usage_error_and_its_target_untouched(tester: pytest.Pytester) -> None:
    tester.makepyfile(BASIC)
    outside = tester.path / "elsewhere.jsonl"
    outside.write_text("")
    (tester.path / "runs").mkdir()
    (tester.path / "runs" / "_manifest.jsonl").symlink_to(outside)
    result = run(tester, "--neurolens-store=runs")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        ["*--neurolens-store *runs: cannot write there*_manifest.jsonl is a symlink*"]
    )
    assert outside.read_text() == ""


def test_malformed_ini_tag_is_a_usage_error(tester: pytest.Pytester) -> None:
    tester.makeini("[pytest]\nneurolens_tags = oops\n")
    tester.makepyfile(BASIC)
    result = run(tester)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*neurolens_tags expects KEY=VALUE, got 'oops'*"])


def test_markers_merge_closest_wins_and_tags_merge_by_key(tester: pytest.Pytester) -> None:
    tester.makepyfile(
        """
        import pytest

        pytestmark = pytest.mark.neurolens(model="m-module", backend="cpu", precision="fp32",
                                           batch_size=1, tags={"level": "module", "a": "1"})

        @pytest.mark.neurolens(precision="fp16", tags={"level": "class", "b": "2"})
        class TestGroup:
            @pytest.mark.neurolens(batch_size=8, seq_len=64, tags={"level": "function"})
            def test_fn(self, neurolens):
                neurolens.record(total_latency_ms=1.0)

            def test_class_only(self, neurolens):
                neurolens.record(total_latency_ms=2.0)

        def test_module_only(neurolens):
            neurolens.record(total_latency_ms=3.0, batch_size=16, tags={"a": "override"})
        """
    )
    run(tester, "--neurolens-store=runs", "--neurolens-tag", "level=session", "--neurolens-tag", "ci=yes")
    rows = {r["total_latency_ms"]: r for r in stored(tester)}
    fn, cls, mod = rows[1.0], rows[2.0], rows[3.0]
    assert (fn["model"], fn["precision"], fn["batch_size"], fn["seq_len"]) == ("m-module", "fp16", 8, 64)
    assert fn["tags"] == {"ci": "yes", "level": "function", "a": "1", "b": "2"}
    assert (cls["precision"], cls["batch_size"], cls["seq_len"]) == ("fp16", 1, None)
    assert cls["tags"] == {"ci": "yes", "level": "class", "a": "1", "b": "2"}
    assert (mod["precision"], mod["batch_size"]) == ("fp32", 16)
    assert mod["tags"] == {"ci": "yes", "level": "module", "a": "override"}


def test_measure_overrides_do_not_reach_the_function(tester: pytest.Pytester) -> None:
    tester.makepyfile(
        """
        import pytest

        @pytest.mark.neurolens(model="m", backend="cpu", precision="fp32", batch_size=1)
        def test_sweep(neurolens):
            seen = []
            for bs in (1, 4):
                neurolens.measure(lambda x, scale=1: seen.append((x, scale)), bs, scale=3,
                                  batch_size=bs, tags={"bs": str(bs)}, warmup=0, iterations=2)
            assert seen == [(1, 3), (1, 3), (4, 3), (4, 3)]
        """
    )
    run(tester, "--neurolens-store=runs").assert_outcomes(passed=1)
    assert sorted((r["batch_size"], r["tags"]["bs"]) for r in stored(tester)) == [(1, "1"), (4, "4")]


def test_sync_is_called_around_every_timed_call(tester: pytest.Pytester) -> None:
    tester.makepyfile(
        """
        import pytest

        @pytest.mark.neurolens(model="m", backend="cpu", precision="fp32", batch_size=1)
        def test_sync(neurolens):
            events = []
            neurolens.measure(lambda: events.append("call"), sync=lambda: events.append("sync"),
                              warmup=1, iterations=2)
            assert events == ["call", "sync", "call", "sync", "sync", "call", "sync"]
        """
    )
    run(tester).assert_outcomes(passed=1)


def test_missing_field_is_a_clear_error_before_measuring(tester: pytest.Pytester) -> None:
    tester.makepyfile(
        """
        import pytest

        calls = []

        @pytest.mark.neurolens(model="m", backend="cpu", batch_size=1)
        def test_no_precision(neurolens):
            try:
                neurolens.measure(lambda: calls.append(1))
            finally:
                assert calls == []

        def test_after():
            pass
        """
    )
    result = run(tester, "--neurolens-store=runs")
    result.assert_outcomes(failed=1, passed=1)
    result.stdout.fnmatch_lines(["*precision is not set for *test_no_precision*"])
    assert stored(tester) == []


@pytest.mark.parametrize(
    ("marker", "message"),
    [
        ('batch_size="eight"', "batch_size must be an integer >= 1, got 'eight'"),
        ("model=3", "model must be a non-empty string, got 3"),
        ('tags={"k": 1}', "tags must map strings to strings"),
        ("seq_len=-1", "seq_len must be an integer >= 0"),
        ('modle="typo"', "unknown field(s) modle"),
        ('"positional"', "keyword arguments only"),
    ],
)
def test_wrong_marker_type_errors_that_test_only(tester: pytest.Pytester, marker: str, message: str) -> None:
    tester.makepyfile(
        f"""
        import pytest

        @pytest.mark.neurolens({marker})
        def test_bad(neurolens):
            pass

        def test_good():
            pass
        """
    )
    result = run(tester, "--neurolens-store=runs")
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines([f"*{message}*"])


def test_bad_backend_name_is_rejected_with_the_field(tester: pytest.Pytester) -> None:
    tester.makepyfile(
        """
        import pytest

        @pytest.mark.neurolens(model="m", backend="../etc", precision="fp32", batch_size=1)
        def test_bad(neurolens):
            neurolens.record(total_latency_ms=1.0)
        """
    )
    result = run(tester, "--neurolens-store=runs")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*backend: '../etc' is not a safe directory name*"])


def test_runs_of_failing_tests_are_written_with_their_outcome(tester: pytest.Pytester) -> None:
    tester.makepyfile(
        """
        import pytest

        pytestmark = pytest.mark.neurolens(model="m", backend="cpu", precision="fp32", batch_size=1)

        def test_fails(neurolens):
            neurolens.record(total_latency_ms=1.0)
            assert False

        @pytest.mark.xfail(strict=True)
        def test_xfails(neurolens):
            neurolens.record(total_latency_ms=2.0)
            raise RuntimeError

        def test_passes(neurolens):
            neurolens.record(total_latency_ms=3.0)
        """
    )
    result = run(tester, "--neurolens-store=runs")
    result.assert_outcomes(failed=1, passed=1, xfailed=1)
    outcomes = {d["metrics"]["total_latency_ms"]: d["test"]["outcome"] for d in documents(tester)}
    assert outcomes == {1.0: "failed", 2.0: "xfailed", 3.0: "passed"}


def test_disabling_the_plugin(tester: pytest.Pytester) -> None:
    tester.makepyfile("def test_plain():\n    pass\n")
    run(tester, "-p", "no:neurolens").assert_outcomes(passed=1)
    result = run(tester, "-p", "no:neurolens", "--neurolens-store=runs")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*unrecognized arguments: --neurolens-store=runs*"])


def test_marker_is_registered_with_its_signature(tester: pytest.Pytester) -> None:
    tester.makepyfile(BASIC)
    run(tester, "--strict-markers").assert_outcomes(passed=1)
    result = run(tester, "--markers")
    result.stdout.fnmatch_lines(
        [
            "@pytest.mark.neurolens(model=None, backend=None, precision=None, batch_size=None, "
            "seq_len=None, tags=None)*"
        ]
    )
    help_text = run(tester, "--help").stdout.str()
    assert "--neurolens-store=PATH" in help_text and "neurolens_store" in help_text
    assert "--neurolens-sample-interval" in help_text and "neurolens_tags" in help_text


def test_hooks_change_runs_and_extend_the_hardware_snapshot(tester: pytest.Pytester) -> None:
    tester.makeconftest(
        """
        def pytest_neurolens_run(run, item):
            run["tags"]["from_hook"] = item.name
            run["metrics"]["extra_metric"] = 42

        def pytest_neurolens_hardware(snapshot):
            snapshot["rack"] = "r12"
        """
    )
    tester.makepyfile(BASIC + RECORDED_TOO)
    run(tester, "--neurolens-store=runs").assert_outcomes(passed=2)
    docs = sorted(documents(tester), key=lambda d: d["tags"]["from_hook"])
    assert [d["tags"]["from_hook"] for d in docs] == ["test_measured", "test_recorded"]
    assert all(d["metrics"]["extra_metric"] == 42 and d["hardware"]["rack"] == "r12" for d in docs)


def test_invalid_change_by_a_hook_fails_the_test_and_stores_nothing(tester: pytest.Pytester) -> None:
    tester.makeconftest(
        """
        def pytest_neurolens_run(run, item):
            run["batch_size"] = 0
        """
    )
    tester.makepyfile(BASIC + RECORDED_TOO)
    result = run(tester, "--neurolens-store=runs")
    result.assert_outcomes(passed=2, errors=2)
    result.stdout.fnmatch_lines(["*batch_size: 0 is less than the minimum of 1*"] * 2)
    assert stored(tester) == []


VALIDATIONS_COUNTED = """
import pytest
from neurolens.storage.ledger import document

calls = []
real = document.schema_problems

def counted(run):
    calls.append(run.get("metrics", {}).get("total_latency_ms"))
    return real(run)

def pytest_configure(config):
    document.schema_problems = counted

def pytest_unconfigure(config):
    document.schema_problems = real
    with open("validations.txt", "w") as out:
        out.write(str(len(calls)))
"""

EDITED_AFTER_RECORD = """
import pytest

pytestmark = pytest.mark.neurolens(model="m", backend="cpu", precision="fp32", batch_size=1)

def test_unchanged(neurolens):
    neurolens.record(total_latency_ms=1.0)

def test_changed(neurolens):
    measurement = neurolens.record(total_latency_ms=2.0)
    measurement.run["tags"]["edited"] = "after record"

def test_broken(neurolens):
    measurement = neurolens.record(total_latency_ms=3.0)
    measurement.run["batch_size"] = "big"
"""


def test_a_recorded_run_is_validated_once_unless_changed_after_record(tester: pytest.Pytester) -> None:
    """record() validates (the error points at the test); the write stores that validated
    document, and validates again only a run changed since (by the test or a hook)."""
    tester.makeconftest(VALIDATIONS_COUNTED)
    tester.makepyfile(EDITED_AFTER_RECORD)
    result = tester.runpytest_subprocess("-W", "error", "-p", "no:cacheprovider", "--neurolens-store=runs")
    result.assert_outcomes(passed=3, errors=1)
    result.stdout.fnmatch_lines(
        ["*ERROR at teardown of test_broken*", "*batch_size*'big' is not of type 'integer'*"]
    )
    # one check per record(), and a second for each of the two runs changed after it
    assert (tester.path / "validations.txt").read_text() == "5"
    docs = {d["metrics"]["total_latency_ms"]: d for d in documents(tester)}
    assert sorted(docs) == [1.0, 2.0]  # the broken change stored nothing
    assert docs[2.0]["tags"]["edited"] == "after record"
    assert "edited" not in docs[1.0]["tags"] and docs[1.0]["test"]["outcome"] == "passed"
    assert docs[1.0]["schema_version"] == 1 and docs[1.0]["fingerprint_hash"]
    fingerprint = tester.path / "runs" / stored(tester)[0]["fp_json"]
    assert json.loads(fingerprint.read_text())["fingerprint_hash"] == docs[1.0]["fingerprint_hash"]


def test_gpu_utilization_and_hardware_through_fake_nvml(
    tester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    install(monkeypatch, make_fake_lib(two_gpus()))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    tester.makepyfile(BASIC)
    run(tester, "--neurolens-store=runs", "--neurolens-sample-interval=1").assert_outcomes(passed=1)
    (doc,) = documents(tester)
    assert doc["hardware"]["gpu_name"] == "NVIDIA A10G"
    assert doc["hardware"]["driver_version"] == "550.54.15" and doc["hardware"]["cuda_version"] == "12.4"
    assert doc["hardware"]["gpu_power_limit_w"] is None
    assert doc["hardware"]["nvml_error"] == "gpu1.power_limit_w: Not Supported"
    assert doc["metrics"]["gpu_utilization"] == 50.0 and doc["metrics"]["gpu_samples"] >= 2
    assert doc["metrics"]["gpu_memory_peak_mb"] == 2048.0
    (row,) = stored(tester)
    assert row["gpu_name"] == "NVIDIA A10G" and row["gpu_utilization"] == 50.0
    fingerprint = json.loads((tester.path / "runs" / row["fp_json"]).read_text())
    assert fingerprint["gpu_uuids"] == [
        "GPU-aaaaaaaa-1111-2222-3333-444444444444",
        "GPU-bbbbbbbb-1111-2222-3333-444444444444",
    ]


def test_pytest_benchmark_statistics_become_a_run(
    tester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("pytest_benchmark")
    # pytest-benchmark turns itself off inside an xdist worker: run the inner session as a
    # process of its own that is not one (so the suite passes under `pytest -n auto`)
    monkeypatch.delenv("PYTEST_XDIST_WORKER", raising=False)
    tester.makepyfile(
        """
        import pytest

        @pytest.mark.neurolens(model="m", backend="cpu", precision="fp32", batch_size=4)
        def test_bench(benchmark):
            benchmark.pedantic(sum, args=([1, 2, 3],), rounds=7, iterations=1)

        def test_bench_unmarked(benchmark):
            benchmark(sum, [1])
        """
    )
    result = tester.runpytest_subprocess("-W", "error", "-p", "no:cacheprovider", "--neurolens-store=runs")
    result.assert_outcomes(passed=2)
    (doc,) = documents(tester)
    assert doc["metrics"]["source"] == "pytest-benchmark"
    assert len(doc["latencies_ms"]) == 7 and doc["batch_size"] == 4
    # both of pytest-benchmark's counts: rounds, and calls per round
    assert doc["metrics"]["rounds"] == 7 and doc["metrics"]["iterations"] == 1


@pytest.mark.slow
def test_xdist_workers_write_each_run_once_with_one_session_id(tester: pytest.Pytester) -> None:
    pytest.importorskip("xdist")
    tester.makepyfile(
        textwrap.dedent(
            """
            import pytest

            @pytest.mark.neurolens(model="m", backend="cpu", precision="fp32", batch_size=1)
            @pytest.mark.parametrize("i", range(12))
            def test_many(neurolens, i):
                neurolens.record(total_latency_ms=float(i))
            """
        )
    )
    result = tester.runpytest_subprocess("-W", "error", "-n", "3", "--neurolens-store=runs")
    result.assert_outcomes(passed=12)
    rows = stored(tester)
    assert sorted(r["total_latency_ms"] for r in rows) == [float(i) for i in range(12)]
    assert len({r["session_id"] for r in rows}) == 1
    result.stdout.fnmatch_lines(["recorded 12 runs in *"])
    frame = load_runs(tester.path / "runs", session_id=rows[0]["session_id"])
    assert len(frame) == 12
    # the session's runs are counted from the manifest: none is lost between the processes
    result.stdout.fnmatch_lines(["recorded 12 runs in *"])


RECORDS_THREE = """
import pytest

@pytest.mark.neurolens(model="m", backend="cpu", precision="fp32", batch_size=1)
@pytest.mark.parametrize("i", range(3))
def test_recorded(neurolens, i):
    neurolens.record(total_latency_ms=float(i))
"""

IMPORTS_AT_EXIT = """
import sys

def pytest_unconfigure(config):
    heavy = sorted(name for name in ("pyarrow", "pandas") if name in sys.modules)
    with open("imported_at_exit.txt", "w") as out:
        out.write(" ".join(heavy))
"""


@pytest.mark.slow
def test_recording_into_an_indexed_store_neither_rewrites_the_index_nor_imports_pyarrow(
    tester: pytest.Pytester,
) -> None:
    """The session's runs join the manifest's tail; the index is rewritten only at a
    writers' compaction point, so a session's cost does not grow with the store."""
    root = tester.path / "runs"
    from neurolens.storage.store import write_run
    from tests.factories import make_run

    write_run(root, make_run())  # the first write into a new store builds the index
    index = root / "_index.parquet"
    before = (index.read_bytes(), index.stat().st_mtime_ns)
    tester.makeconftest(IMPORTS_AT_EXIT)
    tester.makepyfile(RECORDS_THREE)
    result = tester.runpytest_subprocess(
        "-W",
        "error",
        "-p",
        "no:cacheprovider",
        "-p",
        "no:benchmark",
        "-p",
        "no:hypothesispytest",
        "--neurolens-store=runs",
    )
    result.assert_outcomes(passed=3)
    result.stdout.fnmatch_lines(["recorded 3 runs in *"])
    assert (tester.path / "imported_at_exit.txt").read_text() == ""
    assert (index.read_bytes(), index.stat().st_mtime_ns) == before
    rows = stored(tester)
    assert len(rows) == 4 and sorted(r["total_latency_ms"] for r in rows)[:3] == [0.0, 1.0, 2.0]


@pytest.mark.slow
def test_plugin_load_is_cheap_and_silent_when_unused(tester: pytest.Pytester) -> None:
    tester.makepyfile(
        """
        import sys

        def test_imports():
            heavy = {"pandas", "pyarrow", "jsonschema", "pynvml", "neurolens.storage.store"}
            assert not heavy & set(sys.modules), heavy & set(sys.modules)
        """
    )
    result = tester.runpytest_subprocess("-W", "error", "-p", "no:benchmark", "-p", "no:hypothesispytest")
    result.assert_outcomes(passed=1)
    assert "warning" not in result.stdout.str().lower()


def test_summary_lists_the_sessions_runs(tester: pytest.Pytester) -> None:
    tester.makepyfile(BASIC)
    result = run(tester, "--neurolens-store=runs")
    result.stdout.fnmatch_lines(
        [
            "*- neurolens -*",
            "recorded 1 run in *runs (session *)",
            "TEST*MODEL*BACKEND*PRECISION*BATCH*P50 MS*GPU %",
            "test_summary_lists_the_sessions_runs.py::test_measured*tiny*cpu*fp32*2*-",
        ]
    )


def test_measure_argument_errors(tester: pytest.Pytester) -> None:
    tester.makepyfile(
        """
        import pytest

        pytestmark = pytest.mark.neurolens(model="m", backend="cpu", precision="fp32", batch_size=1)

        def test_args(neurolens):
            with pytest.raises(ValueError, match="iterations must be an integer >= 1"):
                neurolens.measure(lambda: None, iterations=0)
            with pytest.raises(ValueError, match="warmup must be an integer >= 0"):
                neurolens.measure(lambda: None, warmup=-1)
            with pytest.raises(TypeError, match="needs a callable"):
                neurolens.measure(3)
            with pytest.raises(ValueError, match="metrics.bad"):
                neurolens.record(total_latency_ms=1.0, bad=float("nan"))
        """
    )
    run(tester, "--neurolens-store=runs").assert_outcomes(passed=1)
    assert stored(tester) == []


def test_store_path_is_relative_to_the_invocation_directory(tester: pytest.Pytester) -> None:
    tester.makepyfile(BASIC)
    sub = tester.mkdir("sub")
    tester.chdir()
    result = tester.runpytest("-W", "error", f"--neurolens-store={Path('sub') / 'runs'}")
    result.assert_outcomes(passed=1)
    assert len(query(sub / "runs")) == 1


def test_a_marker_error_shows_its_message_not_a_traceback(tester: pytest.Pytester) -> None:
    tester.makepyfile(
        """
        import pytest

        @pytest.mark.neurolens(model="m", backend="cpu", precision="fp32", batch_size="eight")
        def test_bad(neurolens):
            neurolens.record(total_latency_ms=1.0)
        """
    )
    result = run(tester)
    result.assert_outcomes(errors=1)  # raised while the fixture is set up
    result.stdout.fnmatch_lines(
        ["neurolens: @pytest.mark.neurolens: batch_size must be an integer >= 1, got 'eight'"]
    )
    assert "pytest_neurolens" not in result.stdout.str()


def test_a_run_has_the_same_keys_with_or_without_a_store(tester: pytest.Pytester) -> None:
    tester.makepyfile(
        """
        import json, pathlib, pytest

        @pytest.mark.neurolens(model="m", backend="cpu", precision="fp32", batch_size=1)
        def test_keys(neurolens, request):
            run = neurolens.measure(sum, [1, 2], iterations=3).run
            store = request.config.getoption("neurolens_store")
            out = pathlib.Path(request.config.rootpath, f"keys-{store}")
            out.write_text(json.dumps(sorted(run)))
        """
    )
    run(tester).assert_outcomes(passed=1)
    run(tester, "--neurolens-store=runs").assert_outcomes(passed=1)
    without = json.loads((tester.path / "keys-None").read_text())
    with_store = json.loads((tester.path / "keys-runs").read_text())
    assert without == with_store and {"hardware", "session_id", "fingerprint_hash"} <= set(without)


def test_a_store_under_a_file_is_one_usage_error(tester: pytest.Pytester) -> None:
    tester.makepyfile(BASIC)
    (tester.path / "afile").write_text("x")
    result = run(tester, "--neurolens-store=afile/runs")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert result.stderr.str().count("cannot write there") == 1


def test_measured_runs_are_checked_against_the_schema_once_each(tester: pytest.Pytester) -> None:
    """measure() takes record()'s path: each run validated once, before any call, and written
    without a second check."""
    tester.makeconftest(
        """
import pytest
import neurolens.storage.ledger.document as document

CHECKED = []
_real = document.schema_problems

def counting(doc):
    CHECKED.append(doc.get("test", {}).get("repeat"))
    return _real(doc)

document.schema_problems = counting

def pytest_terminal_summary(terminalreporter):
    terminalreporter.write_line(f"schema checks: {len(CHECKED)}")
"""
    )
    tester.makepyfile(
        """
import pytest

pytestmark = pytest.mark.neurolens(model="tiny", backend="cpu", precision="fp32", batch_size=1)

def test_rounds(neurolens):
    neurolens.measure(lambda: None, warmup=0, iterations=2, repeats=3)
"""
    )
    result = run(tester, "--neurolens-store=runs")
    result.assert_outcomes(passed=1)
    assert len(stored(tester)) == 3
    result.stdout.fnmatch_lines(["schema checks: 3"])
