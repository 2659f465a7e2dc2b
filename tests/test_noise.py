"""The gate and noise: significance across sessions, rounds, the noise floor, outcomes.

Synthetic histories where sessions differ far more than calls inside a session do (the
ONNX Runtime case: 6-19% between sessions at p50), then the plugin end to end.
"""

from __future__ import annotations

import json
import random
import textwrap
from pathlib import Path
from typing import Any

import pandas  # noqa: F401  (loaded before pytester runs: numpy cannot be imported twice)
import pyarrow.compute
import pyarrow.parquet  # noqa: F401
import pytest

from neurolens.analysis.compare import compare
from neurolens.sources import query
from neurolens.storage.index.filters import RunFilter
from neurolens.storage.store import write_run
from tests.factories import Cli, make_run

BASE = RunFilter(tags={"side": "base"})
CAND = RunFilter(tags={"side": "cand"})


def session(root: Path, side: str, number: int, level: float, rng: random.Random, **test: Any) -> None:
    """One session's run: 200 calls tight around ``level`` (0.5% inside the session)."""
    calls = [rng.gauss(level, level * 0.005) for _ in range(200)]
    run = make_run(
        session_id=f"{side}-{number:03d}",
        created_at=f"2026-11-{1 + number % 28:02d}T00:00:{number % 60:02d}Z",
        tags={"side": side},
        metrics={"total_latency_ms": sorted(calls)[100], "gpu_utilization": None},
        test={"nodeid": "t.py::t", "outcome": "passed", **test},
    )
    run["latencies_ms"] = calls
    write_run(root, run)


def history(root: Path, rng: random.Random, base: int, cand: int, step: float = 1.0) -> None:
    """Sessions whose level moves 8% (1 sigma) from session to session; the candidate's
    levels are ``step`` times the baseline's."""
    for i in range(base):
        session(root, "base", i, rng.gauss(1.0, 0.08), rng)
    for i in range(cand):
        session(root, "cand", 100 + i, rng.gauss(1.0, 0.08) * step, rng)


def test_one_session_a_side_never_fails_under_require_significance(tmp_path: Path) -> None:
    # per-call samples say p << 0.05 for nearly every pair; across sessions nothing is known
    failures = {"threshold only": 0, "floor": 0, "significance": 0}
    for seed in range(12):
        root = tmp_path / str(seed)
        history(root, random.Random(seed), 1, 1)
        plain = compare(root, BASE, CAND, threshold="5%", noise_floor=False)
        floored = compare(root, BASE, CAND, threshold="5%")
        strict = compare(root, BASE, CAND, threshold="5%", require_significance=True)
        failures["threshold only"] += plain.failed
        failures["floor"] += floored.failed
        failures["significance"] += strict.failed
        (group,) = strict.groups
        assert group.p_value is None and group.significance_note == "cannot tell: one session on each side"
    assert failures["threshold only"] >= 4  # the wolf cries: single sessions 8% apart cross 5% often
    # the prior's floor (one baseline session: about 16%) quiets it; 8% sessions differ by
    # more than that about one time in thirteen
    assert failures["floor"] <= 2
    assert failures["significance"] == 0


def test_several_sessions_a_side_no_false_alarm_and_a_30_percent_step_fails(tmp_path: Path) -> None:
    false_alarms = detected = 0
    for seed in range(20):
        same, slower = tmp_path / f"same{seed}", tmp_path / f"slow{seed}"
        history(same, random.Random(seed), 5, 5)
        history(slower, random.Random(seed), 5, 5, step=1.3)
        options: dict[str, Any] = {"threshold": "5%", "require_significance": True}
        false_alarms += compare(same, BASE, CAND, **options).failed
        result = compare(slower, BASE, CAND, **options)
        detected += result.failed
        (group,) = result.groups
        assert group.baseline_samples == group.candidate_samples == 5
    assert false_alarms <= 1  # alpha is 5%, and the change must also pass 5% and the floor
    assert detected >= 16  # 30% is under 4 sigmas of the session noise: power about 85%


def test_the_noise_floor_holds_a_change_inside_the_baseline_s_spread(tmp_path: Path, cli: Cli) -> None:
    rng = random.Random(7)
    levels = [1.0, 1.12, 0.9, 1.05, 0.95, 1.1, 0.92, 1.0, 1.08, 0.97]  # about 8% apart
    for i, level in enumerate(levels):
        session(tmp_path, "base", i, level, rng)
    session(tmp_path, "cand", 100, 1.15, rng)  # +15%: above a 5% threshold, inside the floor
    result = compare(tmp_path, BASE, CAND, threshold="5%")
    (group,) = result.groups
    assert group.verdict == "noise" and not result.failed
    assert group.noise_floor is not None and group.baseline is not None
    assert 0.15 < group.noise_floor / group.baseline < 0.5
    off = compare(tmp_path, BASE, CAND, threshold="5%", noise_floor=False)
    assert off.groups[0].verdict == "regressed" and off.failed
    # the command shows the floor beside the verdict, and exits 0
    status, out = cli(
        "compare", "--root", str(tmp_path), "--baseline-tag", "side=base", "--candidate-tag", "side=cand",
        "--fail-above", "5%",
    )  # fmt: skip
    assert status == 0 and "noise (floor " in out
    status, _ = cli(
        "compare", "--root", str(tmp_path), "--baseline-tag", "side=base", "--candidate-tag", "side=cand",
        "--fail-above", "5%", "--no-noise-floor",
    )  # fmt: skip
    assert status == 1
    # a real step far outside the floor still fails
    session(tmp_path, "cand", 101, 2.0, rng)
    session(tmp_path, "cand", 102, 2.1, rng)
    assert compare(tmp_path, BASE, CAND, threshold="5%").failed


def test_the_floor_is_learned_from_the_newest_sessions_only(tmp_path: Path) -> None:
    rng = random.Random(1)
    for i in range(20):  # ten wild old sessions, then ten steady ones
        session(tmp_path, "base", i, (0.5 if i % 2 else 1.5) if i < 10 else 1.0 + 0.001 * i, rng)
    session(tmp_path, "cand", 100, 1.2, rng)
    (group,) = compare(tmp_path, BASE, CAND, threshold="5%").groups
    assert group.noise_floor is not None and group.noise_floor < 0.05
    assert group.verdict == "regressed"


def test_rounds_of_one_session_are_samples_of_their_own(tmp_path: Path) -> None:
    rng = random.Random(5)
    for side, level in (("base", 1.0), ("cand", 1.3)):
        for round_number in range(5):
            number = 0 if side == "base" else 100
            session(tmp_path, side, number, level * rng.gauss(1.0, 0.01), rng, repeat=round_number, repeats=5)
    (group,) = compare(tmp_path, BASE, CAND, threshold="5%", require_significance=True).groups
    assert (group.baseline_samples, group.candidate_samples) == (5, 5)
    assert group.p_value is not None and group.p_value < 0.05 and group.fails


def test_the_summary_says_how_to_get_a_verdict(tmp_path: Path, cli: Cli) -> None:
    history(tmp_path, random.Random(2), 1, 1, step=1.5)
    status, out = cli(
        "compare", "--root", str(tmp_path), "--baseline-tag", "side=base", "--candidate-tag", "side=cand",
        "--fail-above", "5%", "--require-significance",
    )  # fmt: skip
    assert status == 0
    assert "significance: cannot tell for 1 changed group" in out and "repeats=5" in out


# --- outcomes ---------------------------------------------------------------------------


def test_runs_of_tests_that_did_not_pass_are_left_out_unless_asked(tmp_path: Path, cli: Cli) -> None:
    for outcome, latency in (("passed", 10.0), ("failed", 99.0), (None, 11.0), ("xfailed", 98.0)):
        test = {"nodeid": "t.py::t", "outcome": outcome}
        write_run(tmp_path, make_run(tags={"side": "cand"}, test=test, metrics={"total_latency_ms": latency}))
    write_run(tmp_path, make_run(tags={"side": "base"}, metrics={"total_latency_ms": 10.0}))
    assert sorted(r["total_latency_ms"] for r in query(tmp_path, tags={"side": "cand"})) == [10.0, 11.0]
    everything = query(tmp_path, tags={"side": "cand"}, include_failed=True)
    assert sorted(r["outcome"] or "-" for r in everything) == ["-", "failed", "passed", "xfailed"]
    status, out = cli("ls", "--root", str(tmp_path), "--json")
    assert status == 0 and len(json.loads(out)) == 3
    status, out = cli("ls", "--root", str(tmp_path), "--json", "--include-failed")
    assert status == 0 and len(json.loads(out)) == 5
    (group,) = compare(tmp_path, BASE, CAND, threshold="5%").groups
    assert group.candidate_runs == 2 and group.verdict == "unchanged"
    args = ("compare", "--root", str(tmp_path), "--baseline-tag", "side=base", "--candidate-tag", "side=cand")
    assert cli(*args, "--fail-above", "5%")[0] == 0
    status, out = cli(*args, "--fail-above", "5%", "--include-failed", "--json")
    (asked,) = json.loads(out)["groups"]
    assert asked["candidate_runs"] == 4 and asked["candidate"] == pytest.approx(54.5)
    # the plain-Python reader (no pyarrow) leaves out the same runs
    from neurolens.storage.index.filters import RunFilter as Filter

    record = {"outcome": "failed", "model": "gpt2"}
    assert not Filter().matches(record) and Filter(include_failed=True).matches(record)


# --- the plugin: rounds and rerun attempts, through real pytest runs ---------------------

MEASURED = """
import os, time
import pytest

pytestmark = pytest.mark.neurolens(model="sleeper", backend="cpu", precision="fp32", batch_size=1)

def test_sleep(neurolens):
    delay = float(os.environ["SLEEP_S"])
    repeats = os.environ.get("REPEATS")
    kwargs = {"repeats": int(repeats)} if repeats else {}
    result = neurolens.measure(time.sleep, delay, warmup=1, iterations=8, **kwargs)
    assert result.count == 8 * (int(repeats) if repeats else int(os.environ.get("EXPECT_ROUNDS", "1")))
    assert len(result.rounds) == (int(repeats) if repeats else int(os.environ.get("EXPECT_ROUNDS", "0")))
"""


def test_rounds_from_measure_or_the_option_let_one_session_a_side_decide(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("NEUROLENS_STORE_ROOT", raising=False)
    pytester.makepyfile(test_sleep=MEASURED)
    base_args = ("-W", "error", "-p", "no:cacheprovider", "-p", "no:benchmark", "--neurolens-store=runs")
    monkeypatch.setenv("SLEEP_S", "0.001")
    monkeypatch.setenv("REPEATS", "5")
    pytester.runpytest(*base_args).assert_outcomes(passed=1)
    (baseline_session,) = {r["session_id"] for r in query(pytester.path / "runs")}
    # the candidate: ten times slower, rounds from the option, the gate in the same session
    monkeypatch.setenv("SLEEP_S", "0.01")
    monkeypatch.delenv("REPEATS")
    monkeypatch.setenv("EXPECT_ROUNDS", "5")
    result = pytester.runpytest(
        *base_args,
        "--neurolens-repeats=5",
        f"--neurolens-compare=--session {baseline_session}",
        "--neurolens-fail-above=10%",
        "--neurolens-confirm=0",  # rounds decide here, without re-running
    )
    result.assert_outcomes(passed=1)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(["recorded 5 runs in *", "*REGRESSED*"])
    rows = query(pytester.path / "runs")
    assert len(rows) == 10
    documents = [json.loads((pytester.path / "runs" / r["run_json"]).read_text()) for r in rows]
    assert sorted((d["session_id"] == baseline_session, d["test"]["repeat"]) for d in documents) == sorted(
        (side, i) for side in (True, False) for i in range(5)
    )
    assert {d["test"]["repeats"] for d in documents} == {5}
    (group,) = compare(
        pytester.path / "runs",
        RunFilter(session_id=baseline_session),
        RunFilter(session_id="latest"),
        threshold="10%",
        require_significance=True,
    ).groups
    assert (group.baseline_samples, group.candidate_samples) == (5, 5)
    assert group.p_value is not None and group.p_value < 0.05 and group.fails


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--neurolens-repeats=0"], "--neurolens-repeats must be in 1..1000"),
        (["--neurolens-repeats=x"], "expects a number"),
    ],
)
def test_a_bad_repeats_option_is_a_usage_error(
    pytester: pytest.Pytester, args: list[str], message: str
) -> None:
    result = pytester.runpytest("-p", "no:cacheprovider", *args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"*{message}*"])


def test_measure_rejects_bad_repeats_and_rounds_work_without_a_store(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        textwrap.dedent(
            """
            import pytest

            pytestmark = pytest.mark.neurolens(model="m", backend="cpu", precision="fp32", batch_size=1)

            def test_bad(neurolens):
                with pytest.raises(ValueError, match="repeats must be an integer >= 1"):
                    neurolens.measure(sum, [1], repeats=0)

            def test_rounds(neurolens):
                result = neurolens.measure(sum, [1], iterations=3, repeats=4)
                assert result.count == 12 and len(result.rounds) == 4 and result.run_id is None
                assert not result.recorded and all(r.count == 3 for r in result.rounds)
            """
        )
    )
    pytester.runpytest("-W", "error", "-p", "no:cacheprovider").assert_outcomes(passed=2)


def test_rerun_attempts_carry_their_outcome_and_stay_out_of_ls(pytester: pytest.Pytester, cli: Cli) -> None:
    pytest.importorskip("pytest_rerunfailures")
    pytester.makepyfile(
        textwrap.dedent(
            """
            import pathlib
            import pytest

            @pytest.mark.neurolens(model="m", backend="cpu", precision="fp32", batch_size=1)
            def test_flaky(neurolens):
                marker = pathlib.Path("attempted")
                first = not marker.exists()
                marker.touch()
                neurolens.record(total_latency_ms=50.0 if first else 5.0)
                assert not first
            """
        )
    )
    result = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "--reruns", "1", "--neurolens-store=runs"
    )
    assert result.parseoutcomes() == {"passed": 1, "rerun": 1}
    everything = query(pytester.path / "runs", include_failed=True)
    documents = [json.loads((pytester.path / "runs" / r["run_json"]).read_text()) for r in everything]
    attempts = sorted(
        (d["test"]["attempt"], d["test"]["outcome"], d["metrics"]["total_latency_ms"]) for d in documents
    )
    assert attempts == [(1, "failed", 50.0), (2, "passed", 5.0)]
    status, out = cli("ls", "--root", str(pytester.path / "runs"), "--json")
    assert status == 0 and [r["total_latency_ms"] for r in json.loads(out)] == [5.0]
    result.stdout.fnmatch_lines(["recorded 2 runs in *"])


def test_sub_microsecond_latencies_show_their_unit(tmp_path: Path, cli: Cli) -> None:
    for side, latency in (("base", 0.00042), ("cand", 0.00051)):
        write_run(tmp_path, make_run(tags={"side": side}, metrics={"total_latency_ms": latency}))
    status, out = cli("ls", "--root", str(tmp_path))
    assert status == 0 and "0.42 µs" in out and "0.51 µs" in out and "0.000" not in out
    status, out = cli(
        "compare", "--root", str(tmp_path), "--baseline-tag", "side=base", "--candidate-tag", "side=cand"
    )
    assert status == 0 and "0.42 µs" in out and "+0.09 µs" in out


def test_a_store_written_before_outcomes_were_indexed_verifies_and_merges(tmp_path: Path, cli: Cli) -> None:
    root = tmp_path / "old"
    test = {"nodeid": "t.py::t", "outcome": "failed"}
    write_run(root, make_run(test=test, metrics={"total_latency_ms": 9.0}))
    write_run(root, make_run(metrics={"total_latency_ms": 1.0}))
    # the lines as the previous version wrote them: without the outcome and repeat columns
    lines = (root / "_manifest.jsonl").read_text().splitlines()
    old = [
        json.dumps({k: v for k, v in json.loads(line).items() if k not in ("outcome", "repeat")})
        for line in lines
    ]
    (root / "_manifest.jsonl").write_text("".join(line + "\n" for line in old))
    assert cli("rebuild", "--root", str(root))[0] == 0
    assert cli("verify", "--root", str(root))[0] == 0
    # not recorded is not "failed": both runs count until the store is merged anew
    assert len(json.loads(cli("ls", "--root", str(root), "--json")[1])) == 2
    status, _ = cli("merge", str(root), "--root", str(tmp_path / "new"))
    assert status == 0
    rows = query(tmp_path / "new", include_failed=True)
    assert sorted((r["total_latency_ms"], r["outcome"]) for r in rows) == [(1.0, None), (9.0, "failed")]
    assert [r["total_latency_ms"] for r in query(tmp_path / "new")] == [1.0]
