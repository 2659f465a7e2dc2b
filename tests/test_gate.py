"""A regression gate that never passes by mistake, and commands that answer alike."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from neurolens.analysis.compare import compare_frame
from neurolens.storage.index.filters import RunFilter
from neurolens.storage.store import write_run
from tests.factories import Cli

SCRIPT = str(Path(sys.executable).with_name("neurolens"))


@pytest.fixture
def gate_store(make_store: Callable[..., Path], make_run: Callable[..., dict[str, Any]]) -> Path:
    """main at 10 ms, pr at 200 ms (+1900%), one session each."""
    return make_store(
        *(
            make_run(
                tags={"branch": branch},
                session_id=session,
                metrics={"total_latency_ms": latency, "gpu_utilization": None},
            )
            for branch, latency, session in (("main", 10.0, "s-main"), ("pr", 200.0, "s-pr"))
        )
    )


def gate(cli: Cli, root: Path, *extra: str) -> tuple[int, str]:
    return cli(
        "compare",
        "--root",
        str(root),
        "--baseline-tag",
        "branch=main",
        "--candidate-tag",
        "branch=pr",
        *extra,
    )


@pytest.mark.parametrize("threshold", ["5", "0.05", "5 h"])
def test_a_threshold_without_a_unit_is_a_usage_error(
    cli: Cli, gate_store: Path, threshold: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as excinfo:
        gate(cli, gate_store, "--fail-above", threshold)
    assert excinfo.value.code == 2
    err = capsys.readouterr().err
    assert "5%" in err and "0.5ms" in err


def test_the_threshold_keeps_its_unit_and_a_big_regression_fails(cli: Cli, gate_store: Path) -> None:
    status, out = gate(cli, gate_store, "--fail-above", "0.5ms")
    assert status == 1 and "threshold 0.5 ms" in out and "REGRESSED" in out


def test_a_missing_root_fails(cli: Cli, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert gate(cli, tmp_path / "nowhere", "--fail-above", "5%")[0] == 1
    assert "no store at" in capsys.readouterr().err
    assert not (tmp_path / "nowhere").exists()


def test_an_empty_side_is_never_a_pass(
    cli: Cli, gate_store: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = (
        "compare",
        "--root",
        str(gate_store),
        "--baseline-tag",
        "branch=nothing",
        "--candidate-tag",
        "branch=pr",
    )
    status, out = cli(*args, "--fail-above", "5%")
    err = capsys.readouterr().err
    assert status == 3 and "the baseline is empty: no run matches --tag branch=nothing" in out
    assert out.count("nothing was compared") == 1 and "nothing was compared" not in err
    assert "exit status 3: an empty comparison fails (--allow-empty accepts it)" in err
    assert cli(*args, "--fail-above", "5%", "--allow-empty")[0] == 0
    # the JSON says what the exit status says
    status, out = cli(*args, "--fail-above", "5%", "--json")
    data = json.loads(out)
    assert status == 3 and data["failed"] is True and data["exit_status"] == 3
    status, out = cli(*args, "--fail-above", "5%", "--json", "--allow-empty")
    assert status == 0 and json.loads(out)["failed"] is False


def test_one_tag_with_two_values_is_a_usage_error(
    cli: Cli, gate_store: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status, _ = cli(
        "compare", "--root", str(gate_store), "--baseline-tag", "branch=main", "--baseline-tag", "branch=pr",
        "--candidate-tag", "branch=pr",
    )  # fmt: skip
    assert status == 2
    assert "--baseline-tag branch=main and --baseline-tag branch=pr" in capsys.readouterr().err
    status, _ = cli("ls", "--root", str(gate_store), "--tag", "a=1", "--tag", "a=2")
    assert status == 2 and "--tag a=1 and --tag a=2" in capsys.readouterr().err
    assert cli("ls", "--root", str(gate_store), "--tag", "branch=pr", "--tag", "branch=pr")[0] == 0


def test_absolute_thresholds_take_us_ms_and_s(cli: Cli, gate_store: Path) -> None:
    args = (
        "compare",
        "--root",
        str(gate_store),
        "--baseline-tag",
        "branch=main",
        "--candidate-tag",
        "branch=pr",
    )
    for unit in ("500us", "0.5ms", "0.0005s"):
        _, out = cli(*args, "--fail-above", unit, "--json")
        assert json.loads(out)["threshold"] == "0.5 ms", unit


def test_no_group_on_both_sides_is_nothing_compared_and_missing_can_fail(
    cli: Cli, gate_store: Path, make_run: Callable[..., dict[str, Any]], capsys: pytest.CaptureFixture[str]
) -> None:
    write_run(gate_store, make_run(model="bert", tags={"branch": "other"}))
    args = (
        "compare",
        "--root",
        str(gate_store),
        "--baseline-tag",
        "branch=other",
        "--candidate-tag",
        "branch=pr",
    )
    status, out = cli(*args, "--fail-above", "5%")
    assert status == 3 and "nothing was compared: no group has runs on both sides" in out
    assert "exit status 3" in capsys.readouterr().err
    assert "missing" in out and "new" in out  # still listed
    both = (
        "compare",
        "--root",
        str(gate_store),
        "--baseline-session",
        "s-main",
        "--candidate-tag",
        "branch=pr",
    )
    assert cli(*both, "--fail-above", "5000%", "--model", "gpt2")[0] == 0
    write_run(gate_store, make_run(model="t5", tags={"branch": "main"}))
    assert gate(cli, gate_store, "--fail-above", "5000%")[0] == 0
    assert gate(cli, gate_store, "--fail-above", "5000%", "--fail-on-missing")[0] == 1


def test_each_side_needs_a_selector(cli: Cli, gate_store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, _ = cli("compare", "--root", str(gate_store), "--baseline-tag", "branch=main", "--model", "gpt2")
    assert status == 2 and "the candidate needs a selector" in capsys.readouterr().err


def test_a_run_on_both_sides_counts_for_the_candidate_only(
    cli: Cli, tmp_path: Path, make_run: Callable[..., dict[str, Any]], capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "store"
    write_run(
        root,
        make_run(session_id="old", created_at="2025-10-20T01:00:00Z", metrics={"total_latency_ms": 10.0}),
    )
    write_run(
        root,
        make_run(session_id="new", created_at="2025-10-20T02:00:00Z", metrics={"total_latency_ms": 30.0}),
    )
    status, out = cli(
        "compare",
        "--root",
        str(root),
        "--baseline-day",
        "2025-10-20",
        "--candidate-session",
        "latest",
        "--fail-above",
        "5%",
        "--json",
    )
    (group,) = json.loads(out)["groups"]
    assert status == 1 and group["baseline"] == 10.0 and group["candidate"] == 30.0
    assert group["baseline_runs"] == 1 and "match both sides" in capsys.readouterr().err


def test_an_unknown_metric_is_a_usage_error_listing_the_metrics(
    cli: Cli, gate_store: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert gate(cli, gate_store, "--metric", "nonsense")[0] == 2
    err = capsys.readouterr().err
    assert "no run carries the metric 'nonsense'; the runs carry: gpu_utilization, total_latency_ms" in err
    assert gate(cli, gate_store, "--metric", "throughput")[0] == 2


@pytest.mark.parametrize("alpha", ["0", "1", "2", "-0.1", "x"])
def test_alpha_outside_the_unit_interval_is_a_usage_error(cli: Cli, gate_store: Path, alpha: str) -> None:
    with pytest.raises(SystemExit) as excinfo:
        gate(cli, gate_store, f"--alpha={alpha}")
    assert excinfo.value.code == 2


def test_values_starting_with_a_dash_work_without_equals(
    cli: Cli, gate_store: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status, out = gate(cli, gate_store, "--group-by", "-gpu_name", "--json")
    assert status == 0 and "gpu_name" not in json.loads(out)["groups"][0]["group"]
    with pytest.raises(SystemExit) as excinfo:
        gate(cli, gate_store, "--fail-above", "-5%")
    assert (
        excinfo.value.code == 2 and "threshold '-5%' is not a number with a unit" in capsys.readouterr().err
    )


def test_compare_frame_takes_dicts_and_run_filters(gate_store: Path) -> None:
    frame = compare_frame(
        gate_store, {"tags": {"branch": "main"}}, RunFilter(tags={"branch": "pr"}), threshold="5%"
    )
    assert frame["verdict"].tolist() == ["regressed"]
    with pytest.raises(TypeError, match="baseline must be a RunFilter or a dict"):
        compare_frame(gate_store, "branch=main", {"tags": {"branch": "pr"}})  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="unknown filter field"):
        compare_frame(gate_store, {"branch": "main"}, {"tags": {"branch": "pr"}})


# --- commands that answer alike ----------------------------------------------------------


def test_merge_exits_1_unless_every_source_run_arrived(
    cli: Cli, tmp_path: Path, make_run: Callable[..., dict[str, Any]], capsys: pytest.CaptureFixture[str]
) -> None:
    src, dest = tmp_path / "src", tmp_path / "dest"
    write_run(src, make_run(run_id="r1"))
    write_run(dest, make_run(run_id="r1", model="other"))  # same id, other content
    assert cli("merge", str(src), "--root", str(dest))[0] == 1
    assert "conflict" in capsys.readouterr().err
    clean = tmp_path / "clean"
    assert cli("merge", str(src), "--root", str(clean))[0] == 0
    (tmp_path / "plain").mkdir()
    status, _ = cli("merge", str(tmp_path / "plain"), "--root", str(tmp_path / "new"))
    assert status == 1 and "no store at" in capsys.readouterr().err and not (tmp_path / "new").exists()


def test_ls_session_latest_prefix_limits_and_plurals(
    cli: Cli, tmp_path: Path, make_run: Callable[..., dict[str, Any]]
) -> None:
    root = tmp_path / "store"
    write_run(root, make_run(session_id="aaaa-1", created_at="2025-01-01T00:00:00Z"))
    write_run(root, make_run(session_id="bbbb-1", created_at="2025-01-02T00:00:00Z"))
    write_run(root, make_run(session_id="bbbb-2", created_at="2025-01-03T00:00:00Z"))

    def sessions(*args: str) -> list[str]:
        status, out = cli("ls", "--root", str(root), "--json", *args)
        assert status == 0
        return [r["session_id"] for r in json.loads(out)]

    assert sessions("--session", "latest") == ["bbbb-2"]
    assert sessions("--session", "aaaa") == ["aaaa-1"]
    assert cli("ls", "--root", str(root), "--session", "bbbb")[0] == 1  # ambiguous prefix
    assert cli("ls", "--root", str(root), "--limit", "0") == (0, "no runs shown (--limit 0)\n")
    assert cli("ls", "--root", str(root), "--limit", "3")[1].endswith(
        "3 runs (the newest 3: --limit reached)\n"
    )
    assert cli("ls", "--root", str(root), "--limit", "5")[1].endswith("\n3 runs\n")
    assert cli("ls", "--root", str(root), "--session", "aaaa")[1].endswith("\n1 run\n")


def test_show_takes_a_prefix_in_any_case(
    cli: Cli, tmp_path: Path, make_run: Callable[..., dict[str, Any]]
) -> None:
    root = tmp_path / "store"
    run_id = write_run(root, make_run())["run_id"]
    status, out = cli("show", run_id[:13].upper(), "--root", str(root), "--json")
    assert status == 0 and json.loads(out)["run_id"] == run_id


def test_ls_into_a_closed_pipe_exits_quietly(tmp_path: Path, make_run: Callable[..., dict[str, Any]]) -> None:
    root = tmp_path / "store"
    for i in range(5):
        write_run(root, make_run(seq_len=i))
    # many rows so the reader is gone before the writer ends
    with open(root / "_manifest.jsonl", "rb") as handle:
        line = handle.readline()
    entry = json.loads(line)
    with open(root / "_manifest.jsonl", "ab") as handle:
        for i in range(20000):
            handle.write((json.dumps({**entry, "run_id": f"x{i:06d}"}) + "\n").encode())
    done = subprocess.run(
        f"{SCRIPT} ls --root {root} | head -1", shell=True, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0 and done.stdout.startswith("RUN ID") and done.stderr == ""


@pytest.mark.parametrize("metric", ["tokens_per_second", "qps", "images_per_sec", "fps"])
def test_rates_are_higher_is_better_by_name(tmp_path: Path, cli: Cli, metric: str) -> None:
    from tests.factories import make_run

    for branch, value in (("main", 100.0), ("pr", 50.0)):  # halved: worse for a rate
        run = make_run(tags={"branch": branch}, metrics={"total_latency_ms": 1.0, metric: value})
        write_run(tmp_path, run)
    args = ("compare", "--root", str(tmp_path), "--baseline-tag", "branch=main",
            "--candidate-tag", "branch=pr", "--metric", metric, "--fail-above", "5%", "--json")  # fmt: skip
    status, out = cli(*args)
    data = json.loads(out)
    assert status == 1 and data["higher_is_better"] is True
    assert data["groups"][0]["verdict"] == "regressed"


def test_a_metric_of_unknown_direction_is_a_usage_error_until_stated(
    tmp_path: Path, cli: Cli, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.factories import make_run

    for branch, value in (("main", 0.01), ("pr", 0.5)):  # an error rate fifty times higher
        run = make_run(tags={"branch": branch}, metrics={"total_latency_ms": 1.0, "error_rate": value})
        write_run(tmp_path, run)
    args = ("compare", "--root", str(tmp_path), "--baseline-tag", "branch=main",
            "--candidate-tag", "branch=pr", "--metric", "error_rate", "--fail-above", "5%")  # fmt: skip
    assert cli(*args)[0] == 2
    err = capsys.readouterr().err
    assert "which way is better for 'error_rate'" in err and "--lower-is-better" in err
    assert cli(*args, "--lower-is-better")[0] == 1
    assert cli(*args, "--higher-is-better")[0] == 0  # stated, and it is an improvement then
    with pytest.raises(SystemExit) as excinfo:
        cli(*args, "--lower-is-better", "--higher-is-better")
    assert excinfo.value.code == 2


def test_a_direction_recorded_with_the_metric_is_what_compare_uses(
    pytester: pytest.Pytester, cli: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytester.makepyfile(
        """
        import os
        import pytest

        @pytest.mark.neurolens(model="m", backend="cpu", precision="fp32", batch_size=1)
        def test_speedup(neurolens):
            speedup = float(os.environ["SPEEDUP"])
            neurolens.record(total_latency_ms=1.0, speedup=speedup, higher_is_better={"speedup": True})
        """
    )
    for branch, speedup in (("main", "2.0"), ("pr", "1.0")):  # the speedup halved: worse
        for _ in range(2):
            monkeypatch.setenv("SPEEDUP", speedup)
            result = pytester.runpytest_subprocess(
                "-p", "no:cacheprovider", "--neurolens-store=runs", f"--neurolens-tag=branch={branch}"
            )
            result.assert_outcomes(passed=1)
    sides = ("--baseline-tag", "branch=main", "--candidate-tag", "branch=pr")
    root = str(pytester.path / "runs")
    args = ("compare", "--root", root, *sides, "--metric", "speedup", "--fail-above", "5%", "--json")
    status, out = cli(*args)
    data = json.loads(out)
    assert status == 1 and data["higher_is_better"] is True and data["groups"][0]["verdict"] == "regressed"
    assert cli(*args, "--lower-is-better")[0] == 0  # said on the command line, it wins
