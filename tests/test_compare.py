"""neurolens compare: synthetic stores with known regressions, the CLI, and the pytest gate."""

from __future__ import annotations

import html
import json
import math
import random
import re
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas  # noqa: F401  (loaded before pytester runs: numpy cannot be imported twice)
import pyarrow.compute
import pyarrow.parquet  # noqa: F401
import pytest

import neurolens.storage.index.arrow_backend
import neurolens.storage.index.parquet  # noqa: F401  (the index's Arrow classes, loaded before pytester runs)
from neurolens.analysis.compare import compare, compare_frame
from neurolens.analysis.stats import mann_whitney_u, t_quantile
from neurolens.analysis.verdicts import Threshold
from neurolens.cli import main
from neurolens.sources import query
from neurolens.storage.index.filters import RunFilter, parse_filter_spec
from neurolens.storage.store import write_run
from tests.factories import BASE_RUN, Cli, make_run

MAIN = RunFilter(tags={"branch": "main"})
PR = RunFilter(tags={"branch": "pr"})


def branch_run(model: str, branch: str, latency: float, **fields: Any) -> dict[str, Any]:
    """A run of ``model`` on ``branch`` with a median latency of ``latency``."""
    latencies = fields.pop("latencies_ms", None)
    metrics = {"total_latency_ms": latency, "gpu_utilization": None, **fields.pop("metrics", {})}
    run = make_run(model=model, tags={"branch": branch}, metrics=metrics, **fields)
    if latencies is not None:
        run["latencies_ms"] = latencies
    return run


def add(root: Path, model: str, branch: str, latency: float, **fields: Any) -> None:
    """Store one ``branch_run``."""
    write_run(root, branch_run(model, branch, latency, **fields))


def by_model(result: Any) -> dict[str, Any]:
    return {g.group["model"]: g for g in result.groups}


# --- statistics ------------------------------------------------------------------------


def test_mann_whitney_exact_small_samples() -> None:
    u, p = mann_whitney_u([1, 2, 3], [4, 5, 6])
    assert u == 0.0 and p == pytest.approx(0.1)  # 2 * 1/20
    u, p = mann_whitney_u([1, 2, 3, 4, 5], [6, 7, 8, 9, 10])
    assert u == 0.0 and p == pytest.approx(2 / 252)
    u, p = mann_whitney_u([6, 7, 8, 9, 10], [1, 2, 3, 4, 5])
    assert u == 25.0 and p == pytest.approx(2 / 252)
    assert mann_whitney_u([1, 4], [2, 3])[1] == pytest.approx(1.0)


def test_mann_whitney_normal_approximation_with_ties() -> None:
    same = [1.0, 1.0, 2.0, 2.0] * 10
    assert mann_whitney_u(same, same)[1] == pytest.approx(1.0)
    rng = random.Random(7)
    low = [rng.gauss(10, 0.2) for _ in range(60)]
    high = [rng.gauss(11, 0.2) for _ in range(60)]
    assert mann_whitney_u(low, high)[1] < 1e-10
    noise_a = [rng.gauss(10, 1) for _ in range(60)]
    noise_b = [rng.gauss(10, 1) for _ in range(60)]
    assert mann_whitney_u(noise_a, noise_b)[1] > 0.01
    assert mann_whitney_u([3.0] * 30, [3.0] * 30)[1] == 1.0  # all tied: no evidence


@pytest.mark.parametrize(
    ("text", "value", "relative"),
    [
        ("5%", 0.05, True),
        (" 12.5% ", 0.125, True),
        ("0.5ms", 0.5, False),
        ("2ms", 2.0, False),
        ("0%", 0.0, True),
        ("500us", 0.5, False),
        ("2 s", 2000.0, False),
        ("1e1%", 0.1, True),
    ],
)
def test_threshold_parse(text: str, value: float, relative: bool) -> None:
    parsed = Threshold.parse(text)
    assert parsed.value == pytest.approx(value) and parsed.relative is relative


@pytest.mark.parametrize(
    "text", ["", "fast", "-5%", "nan%", "inf%", "5_0%", "5 percent", "5", "0.05", "2 h", "1e999%"]
)
def test_threshold_parse_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="threshold"):
        Threshold.parse(text)


# --- comparing -------------------------------------------------------------------------


@pytest.fixture
def store(make_store: Callable[..., Path]) -> Path:
    # one session a side: a change must clear the noise floor one baseline session gives
    # (the prior spread: about 24% over three compared groups), so the steps are large
    sides = [("regressed", "main", 10.0), ("regressed", "pr", 15.0), ("improved", "main", 10.0),
             ("improved", "pr", 6.0), ("noise", "main", 10.0), ("noise", "pr", 10.2),
             ("missing", "main", 10.0), ("new", "pr", 10.0)]  # fmt: skip
    return make_store(*(branch_run(model, branch, latency) for model, branch, latency in sides))


def test_verdicts_and_worst_first_order(store: Path) -> None:
    result = compare(store, MAIN, PR, threshold="5%")
    verdicts = {model: g.verdict for model, g in by_model(result).items()}
    assert verdicts == {
        "regressed": "regressed",
        "improved": "improved",
        "noise": "unchanged",
        "missing": "missing",
        "new": "new",
    }
    assert [g.group["model"] for g in result.groups] == ["regressed", "noise", "improved", "new", "missing"]
    regressed = by_model(result)["regressed"]
    assert regressed.change_pct == pytest.approx(50.0) and regressed.change_abs == pytest.approx(5.0)
    assert regressed.fails and result.failed
    assert not by_model(result)["improved"].fails and not by_model(result)["new"].fails


def test_without_threshold_it_reports_but_never_fails(store: Path) -> None:
    result = compare(store, MAIN, PR)
    assert by_model(result)["regressed"].verdict == "regressed"
    assert not result.failed


@pytest.mark.parametrize(
    ("candidate", "threshold", "verdict"),
    [
        (10.5, "5%", "unchanged"),  # exactly at the threshold: within it
        (10.5001, "5%", "regressed"),
        (9.5, "5%", "unchanged"),
        (9.4999, "5%", "improved"),
        (10.5, "0.5ms", "unchanged"),
        (10.5001, "0.5ms", "regressed"),
        (10.0, "0%", "unchanged"),
        (10.0001, "0%", "regressed"),
    ],
)
def test_thresholds_at_their_edges(tmp_path: Path, candidate: float, threshold: str, verdict: str) -> None:
    add(tmp_path, "m", "main", 10.0)
    add(tmp_path, "m", "pr", candidate)
    (group,) = compare(tmp_path, MAIN, PR, threshold=threshold, noise_floor=False).groups
    assert group.verdict == verdict
    assert group.fails is (verdict == "regressed")


def test_several_runs_are_pooled_by_median_and_tested(tmp_path: Path) -> None:
    for latency in (10.0, 10.1, 9.9, 10.2, 9.8):
        add(tmp_path, "m", "main", latency)
    for latency in (11.0, 11.1, 10.9, 11.2, 10.8, 50.0):  # one outlier does not move the median much
        add(tmp_path, "m", "pr", latency)
    (group,) = compare(tmp_path, MAIN, PR, threshold="5%", require_significance=True).groups
    assert group.baseline == pytest.approx(10.0) and group.candidate == pytest.approx(11.05)
    assert (group.baseline_runs, group.candidate_runs) == (5, 6)
    assert group.p_value is not None and group.p_value < 0.05 and group.significant
    assert group.verdict == "regressed" and group.fails


def test_require_significance_ignores_regressions_within_noise(tmp_path: Path) -> None:
    for latency in (8.0, 12.0, 9.0, 11.0, 10.0):
        add(tmp_path, "m", "main", latency)
    for latency in (8.5, 12.5, 9.5, 11.5, 10.6):
        add(tmp_path, "m", "pr", latency)
    options: dict[str, Any] = {"threshold": "5%", "noise_floor": False}
    plain = compare(tmp_path, MAIN, PR, **options).groups[0]
    gated = compare(tmp_path, MAIN, PR, require_significance=True, **options).groups[0]
    assert plain.verdict == gated.verdict == "regressed"
    assert plain.fails and not gated.fails
    assert gated.p_value is not None and gated.p_value > 0.05
    # the same change with the noise floor on: inside the baseline's spread
    floored = compare(tmp_path, MAIN, PR, threshold="5%").groups[0]
    assert floored.verdict == "noise" and not floored.fails
    # five sessions a side: the baseline's variance pooled with the candidate's robust spread
    # (1.4826 x its MAD, 1.1), Student's t with 4 + 4 degrees of freedom
    base_var = statistics.variance([8.0, 12.0, 9.0, 11.0, 10.0])
    spread = math.sqrt((4 * base_var + 4 * (1.4826 * 1.1) ** 2) / 8)
    assert floored.noise_floor == pytest.approx(t_quantile(0.99, 8) * spread * (1 / 5 + 1 / 5) ** 0.5)


def test_one_session_a_side_is_no_verdict_on_significance(tmp_path: Path) -> None:
    # per-call latencies differ with a tiny p, but they carry only the noise inside one
    # session: with one session a side there is no p-value, and no failure on it
    rng = random.Random(3)
    add(tmp_path, "m", "main", 10.0, latencies_ms=[rng.gauss(10, 0.1) for _ in range(40)])
    add(tmp_path, "m", "pr", 15.0, latencies_ms=[rng.gauss(15, 0.1) for _ in range(40)])
    assert mann_whitney_u([10.0] * 3 + [10.1] * 3, [11.0] * 6)[1] < 0.01
    (group,) = compare(tmp_path, MAIN, PR, threshold="5%", require_significance=True).groups
    assert group.p_value is None and group.significant is None
    assert group.significance_note == "cannot tell: one session on each side"
    assert group.verdict == "regressed" and not group.fails
    assert compare(tmp_path, MAIN, PR, threshold="5%").groups[0].fails


def test_other_metrics_and_higher_is_better(tmp_path: Path) -> None:
    tail = {"latency_p99_ms": 20.0, "latency_samples": 459}  # enough calls to bound a p99
    add(tmp_path, "m", "main", 10.0, metrics={**tail, "throughput_per_s": 100.0})
    add(tmp_path, "m", "pr", 10.0, metrics={**tail, "latency_p99_ms": 30.0, "throughput_per_s": 70.0})
    p99 = compare(tmp_path, MAIN, PR, metric="p99", threshold="5%")
    assert p99.metric == "latency_p99_ms" and p99.groups[0].verdict == "regressed"
    throughput = compare(tmp_path, MAIN, PR, metric="throughput", threshold="5%")
    assert throughput.higher_is_better and throughput.groups[0].verdict == "regressed"
    assert throughput.groups[0].change_pct == pytest.approx(-30.0)
    latency = compare(tmp_path, MAIN, PR, threshold="5%")
    assert latency.groups[0].verdict == "unchanged"


def test_groups_split_by_gpu_and_mixed_hardware_warns(tmp_path: Path) -> None:
    a10 = {"gpu_name": "NVIDIA A10G", "driver_version": "550", "cuda_version": "12.4"}
    h100 = {"gpu_name": "NVIDIA H100", "driver_version": "555", "cuda_version": "12.5"}
    add(tmp_path, "m", "main", 10.0, hardware=a10)
    add(tmp_path, "m", "pr", 5.0, hardware=h100)
    by_gpu = compare(tmp_path, MAIN, PR)
    assert sorted(g.verdict for g in by_gpu.groups) == ["missing", "new"]
    assert by_gpu.warnings == []
    pooled = compare(tmp_path, MAIN, PR, group_by=("model", "backend", "precision"))
    assert [g.verdict for g in pooled.groups] == ["improved"]
    assert len(pooled.warnings) == 1 and "different GPUs or drivers" in pooled.warnings[0]
    assert "NVIDIA A10G (driver 550)" in pooled.warnings[0]


def test_latest_session_and_runs_on_both_sides(tmp_path: Path) -> None:
    add(tmp_path, "m", "main", 10.0, session_id="s1", created_at="2025-01-01T00:00:00Z")
    add(tmp_path, "m", "main", 20.0, session_id="s2", created_at="2025-01-02T00:00:00Z")
    latest = compare(tmp_path, {"session_id": "latest"}, {"session_id": "s1"})
    assert latest.groups[0].baseline == 20.0 and latest.groups[0].candidate == 10.0
    # s2's run matches both sides: it counts for the candidate only, and a warning says so
    both = compare(tmp_path, MAIN, RunFilter(session_id="s2"))
    assert both.groups[0].baseline == 10.0 and both.groups[0].candidate == 20.0
    assert any("match both sides" in w for w in both.warnings)


def test_bad_arguments_name_themselves(store: Path) -> None:
    with pytest.raises(ValueError, match="group-by"):
        compare(store, MAIN, PR, group_by=("model", "colour"))
    with pytest.raises(ValueError, match="alpha"):
        compare(store, MAIN, PR, alpha=2)
    with pytest.raises(ValueError, match="threshold"):
        compare(store, MAIN, PR, threshold="lots")


def test_dataframe_from_python(store: Path) -> None:
    frame = compare_frame(store, MAIN, PR, threshold="5%")
    assert list(frame.columns[:6]) == ["model", "backend", "precision", "batch_size", "seq_len", "gpu_name"]
    assert frame.loc[frame["model"] == "regressed", "verdict"].item() == "regressed"
    assert frame.attrs["comparison"]["failed"] is True


# --- output formats and the CLI ---------------------------------------------------------


@pytest.fixture
def compare_cli(cli: Cli) -> Callable[..., tuple[int, str]]:
    def run(store: Path, *extra: str) -> tuple[int, str]:
        """``neurolens compare`` of branch=main (baseline) against branch=pr (candidate)."""
        return cli(
            "compare",
            "--root",
            str(store),
            "--baseline-tag",
            "branch=main",
            "--candidate-tag",
            "branch=pr",
            *extra,
        )

    return run


def test_cli_table_and_exit_status(cli: Cli, store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ("compare", "--root", str(store), "--baseline-tag", "branch=main", "--candidate-tag", "branch=pr")
    status, out = cli(*args)
    assert status == 0
    lines = out.splitlines()
    assert lines[0].split() == ["GROUP", "BASELINE", "CANDIDATE", "CHANGE", "DELTA", "P", "RUNS", "VERDICT"]
    assert lines[1].startswith("regressed ") and lines[1].split()[-1] == "regressed"
    assert lines[-2].startswith("5 groups: 1 regressed, 1 improved, 1 unchanged, 1 new, 1 missing")
    assert lines[-1].startswith("noise: each change tested") and "Holm-corrected over 3 groups" in lines[-1]
    status, out = cli(*args, "--fail-above", "5%")
    assert status == 1 and out.splitlines()[1].split()[-1] == "REGRESSED"
    assert "1 group failed the gate (threshold 5%)" in capsys.readouterr().err
    assert cli(*args, "--fail-above", "60%")[0] == 0


def test_cli_json_parses_back(compare_cli: Callable[..., tuple[int, str]], store: Path) -> None:
    status, out = compare_cli(store, "--fail-above", "0.5ms", "--json")
    data = json.loads(out)
    assert status == 1 and data["failed"] is True and data["threshold"] == "0.5 ms"
    assert data["counts"] == {
        "regressed": 1,
        "improved": 1,
        "noise": 0,
        "unchanged": 1,
        "insufficient": 0,
        "new": 1,
        "missing": 1,
    }
    first = data["groups"][0]
    assert first["group"]["model"] == "regressed" and first["baseline"] == 10.0 and first["candidate"] == 15.0


def test_cli_markdown_parses_back(compare_cli: Callable[..., tuple[int, str]], store: Path) -> None:
    status, out = compare_cli(store, "--format", "markdown", "--fail-above", "5%")
    assert status == 1
    lines = out.splitlines()
    assert lines[0] == "### neurolens compare: regression"
    table = [line for line in lines if line.startswith("|")]
    header = [c.strip() for c in table[0].strip("|").split("|")]
    assert header == ["group", "baseline", "candidate", "change", "delta", "p", "runs", "verdict"]
    rows = [[unescape(c.strip()) for c in re.split(r"(?<!\\)\|", line.strip("|"))] for line in table[2:]]
    assert len(rows) == 5 and rows[0][-1] == "**REGRESSED**" and rows[0][3].startswith("+50.0% [")


def unescape(markdown: str) -> str:
    """A markdown cell's text: backslash escapes and entities undone."""
    return html.unescape(re.sub(r"\\(.)", r"\1", markdown))


HOSTILE = [
    '<img src="https://evil.example/x.png">',
    "![x](https://evil.example/y.png)",
    "[click](https://evil.example/)",
    "</td></tr></table><h1>PASS</h1>",
    "www.evil.example and https://evil.example/z",
    "a|b\\|c `code` *bold* _em_ ~~gone~~",
]


def test_markdown_keeps_hostile_stored_strings_inert_in_a_gfm_renderer(
    tmp_path: Path, cli: Cli, browser_page: Any
) -> None:
    """Rendered as GitHub renders a step summary (tables, autolinks, raw HTML allowed): no
    image, no link, no heading; every row stays in the table, the regression first."""
    from markdown_it import MarkdownIt

    for i, model in enumerate(HOSTILE):
        add(tmp_path, model, "main", 10.0)
        add(tmp_path, model, "pr", 30.0 if i == 0 else 10.0)
    # a second driver in one group: the warning line names it
    hostile_driver = {**BASE_RUN["hardware"], "driver_version": "<b>x</b> ![w](https://evil.example/w.png)"}
    add(tmp_path, HOSTILE[2], "pr", 10.0, hardware=hostile_driver)
    status, out = cli(
        "compare", "--root", str(tmp_path), "--baseline-tag", "branch=main", "--candidate-tag", "branch=pr",
        "--format", "markdown", "--fail-above", "5%",
    )  # fmt: skip
    assert status == 1
    page = MarkdownIt("gfm-like").render(out)
    for tag in ("<a ", "<img", "<h1", "<b>", "<code", "<em", "<strong>PASS", "<s>"):
        assert tag not in page, tag
    assert "evil.example/w.png" in page.split("</table>")[1]  # the warning, as text
    body = page.split("<tbody>")[1].split("</tbody>")[0]
    assert body.count("<tr>") == len(HOSTILE)
    first_row = body.split("</tr>")[0]
    assert "<strong>REGRESSED</strong>" in first_row and "evil.example/x.png" in first_row
    assert "</table>" not in body
    # and shown in a browser: no request, no link, no image, one table
    requests: list[str] = []
    browser_page.on("request", lambda request: requests.append(request.url))
    browser_page.set_content(f"<!doctype html><html><body>{page}</body></html>")
    counts = browser_page.evaluate(
        "['a', 'img', 'h1', 'table', 'tbody tr'].map(s => document.querySelectorAll(s).length)"
    )
    assert counts == [0, 0, 0, 1, len(HOSTILE)] and requests == []


@pytest.mark.parametrize(
    "extra",
    [
        ["--fail-above", "lots"],
        ["--group-by", "colour"],
        ["--baseline-tag", "nokey"],
        ["--json", "--format", "markdown"],
    ],
)
def test_cli_usage_errors(store: Path, extra: list[str]) -> None:
    with pytest.raises(SystemExit) as excinfo:
        main(["compare", "--root", str(store), *extra])
    assert excinfo.value.code == 2


def test_cli_group_by_adds_a_column(cli: Cli, tmp_path: Path) -> None:
    add(tmp_path, "m", "main", 10.0, fingerprint_hash="aaa")
    add(tmp_path, "m", "pr", 15.0, fingerprint_hash="bbb")
    base = (
        "compare",
        "--root",
        str(tmp_path),
        "--baseline-tag",
        "branch=main",
        "--candidate-tag",
        "branch=pr",
    )
    assert [g["verdict"] for g in json.loads(cli(*base, "--json")[1])["groups"]] == ["regressed"]
    split = json.loads(cli(*base, "--json", "--group-by", "+fingerprint_hash")[1])["groups"]
    assert sorted(g["verdict"] for g in split) == ["missing", "new"]


def test_filter_spec_language() -> None:
    side = parse_filter_spec("--tag branch=main --day 2025-10-20 --model gpt2 --session latest")
    assert side.tags == {"branch": "main"} and side.day == "2025-10-20"
    assert side.model == "gpt2" and side.session_id == "latest"
    with pytest.raises(ValueError, match="--day"):
        parse_filter_spec("--day tomorrow")
    with pytest.raises(ValueError, match="unrecognized"):
        parse_filter_spec("--colour red")


# --- the pytest gate ------------------------------------------------------------------------

GATED = """
import os
import pytest

@pytest.mark.neurolens(model="m", backend="cpu", precision="fp32", batch_size=1)
def test_latency(neurolens):
    neurolens.record(total_latency_ms=float(os.environ["LATENCY"]))
"""


def gate(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, latency: float, *args: str) -> Any:
    monkeypatch.setenv("LATENCY", str(latency))
    return pytester.runpytest(
        "-W", "error", "-p", "no:cacheprovider", "-p", "no:benchmark", "--neurolens-store=runs", *args
    )


def test_pytest_gate_fails_the_session_on_a_regression(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytester.makepyfile(GATED)
    gate(pytester, monkeypatch, 10.0, "--neurolens-tag", "branch=main").assert_outcomes(passed=1)
    compare_args = ("--neurolens-compare=--tag branch=main", "--neurolens-fail-above=5%")
    slower = gate(pytester, monkeypatch, 15.0, "--neurolens-tag", "branch=pr", *compare_args)
    slower.assert_outcomes(passed=1)
    assert slower.ret == pytest.ExitCode.TESTS_FAILED
    slower.stdout.fnmatch_lines(
        [
            "*- neurolens compare -*",
            "GROUP*VERDICT",
            "m cpu fp32 batch 1*10.000*15.000*+50.0%*REGRESSED",
            "m cpu fp32 batch 1*: suspected +50.0%, confirmed: failed alone in 3 of 3 re-runs; "
            "judged on 4 sessions*",
            "confirmation: 1 test re-run 3 times in fresh processes, * s",
            "*regression above 5% (confirmed by re-measuring): failing the session*",
        ]
    )
    within = gate(pytester, monkeypatch, 10.3, "--neurolens-tag", "branch=pr", *compare_args)
    assert within.ret == pytest.ExitCode.OK
    within.stdout.fnmatch_lines(["m cpu fp32 batch 1*10.000*10.300*+3.0%*unchanged"])
    report_only = gate(pytester, monkeypatch, 20.0, "--neurolens-compare=--tag branch=main")
    assert report_only.ret == pytest.ExitCode.OK
    report_only.stdout.fnmatch_lines(["*regressed"])


def test_pytest_gate_restores_an_unusable_index_before_comparing(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Writers only check that an index file exists; a session that reads the store
    rebuilds one that cannot be used (damaged, another version) instead of warning."""
    from neurolens.storage.index.reading import opened_index

    pytester.makepyfile(GATED)
    gate(pytester, monkeypatch, 10.0, "--neurolens-tag", "branch=main").assert_outcomes(passed=1)
    index = pytester.path / "runs" / "_index.parquet"
    index.write_bytes(b"PAR1 not an index PAR1")
    result = gate(
        pytester, monkeypatch, 10.2, "--neurolens-tag", "branch=pr", "--neurolens-compare=--tag branch=main"
    )
    assert result.ret == pytest.ExitCode.OK, result.stdout.str()
    result.stdout.fnmatch_lines(["m cpu fp32 batch 1*10.000*10.200*+2.0%*"])
    with opened_index(pytester.path / "runs") as (usable, problem):
        assert usable is not None and usable.count() == 2, problem


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--neurolens-fail-above=5%"], "--neurolens-fail-above needs --neurolens-compare"),
        (
            ["--neurolens-compare=--tag x=y", "--neurolens-fail-above=lots"],
            "--neurolens-fail-above: threshold",
        ),
        (["--neurolens-compare=--day never"], "--neurolens-compare '--day never'"),
    ],
)
def test_pytest_gate_usage_errors(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, args: list[str], message: str
) -> None:
    pytester.makepyfile(GATED)
    result = gate(pytester, monkeypatch, 1.0, *args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"*{message}*"])


def test_pytest_compare_needs_a_store(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(GATED)
    result = pytester.runpytest("--neurolens-compare=--tag branch=main")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--neurolens-compare needs --neurolens-store*"])


def test_pytest_gate_fails_when_nothing_was_compared(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytester.makepyfile(GATED)
    compare_args = ("--neurolens-compare=--tag branch=main", "--neurolens-fail-above=5%")
    first = gate(pytester, monkeypatch, 10.0, "--neurolens-tag", "branch=pr", *compare_args)
    first.assert_outcomes(passed=1)
    assert first.ret == pytest.ExitCode.TESTS_FAILED
    first.stdout.fnmatch_lines(
        ["*nothing was compared: the baseline is empty: no run matches --tag branch=main*"]
    )
    allowed = gate(
        pytester, monkeypatch, 10.0, "--neurolens-tag", "branch=pr", *compare_args, "--neurolens-allow-empty"
    )
    assert allowed.ret == pytest.ExitCode.OK
    assert "Traceback" not in allowed.stdout.str()


def test_pytest_gate_with_no_runs_recorded_fails(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("def test_plain():\n    pass\n")
    result = pytester.runpytest(
        "-p",
        "no:cacheprovider",
        "-p",
        "no:benchmark",
        "--neurolens-store=runs",
        "--neurolens-compare=--tag b=main",
    )
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(["*nothing was compared: this session recorded no runs*"])


# --- confirmation by re-measuring ---------------------------------------------------------

QUEUED = """
import os
import pathlib
import pytest

def next_latency():
    \"\"\"The next value of the queue in LATENCY_FILE (the last one repeats): one per process.\"\"\"
    queue = pathlib.Path(os.environ["LATENCY_FILE"])
    values = queue.read_text().split()
    queue.write_text(" ".join(values[1:] or values))
    return float(values[0])

@pytest.mark.neurolens(model="m", backend="cpu", precision="fp32", batch_size=1)
def test_latency(neurolens):
    neurolens.record(total_latency_ms=next_latency())

@pytest.mark.neurolens(model="other", backend="cpu", precision="fp32", batch_size=1)
def test_unrelated(neurolens):
    neurolens.record(total_latency_ms=5.0)
"""


def queued(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, values: str, *args: str) -> Any:
    queue = pytester.path / "latencies.txt"
    queue.write_text(values)
    monkeypatch.setenv("LATENCY_FILE", str(queue))
    return pytester.runpytest(
        "-W", "error", "-p", "no:cacheprovider", "-p", "no:benchmark", "--neurolens-store=runs", *args
    )


GATE_ARGS = (
    "--neurolens-tag",
    "branch=pr",
    "--neurolens-compare=--tag branch=main",
    "--neurolens-fail-above=5%",
)


def test_a_slow_session_that_re_runs_do_not_confirm_passes(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytester.makepyfile(QUEUED)
    queued(pytester, monkeypatch, "10", "--neurolens-tag", "branch=main").assert_outcomes(passed=2)
    # the session is slow (15), its three re-runs are not (10): a slow process, not the code
    result = queued(pytester, monkeypatch, "15 10 10 10", *GATE_ARGS)
    result.assert_outcomes(passed=2)
    assert result.ret == pytest.ExitCode.OK
    result.stdout.fnmatch_lines(
        [
            "m cpu fp32 batch 1*: suspected +50.0%, not confirmed: failed alone in 0 of 3 re-runs; "
            "judged on 4 sessions*",
            "confirmation: 1 test re-run 3 times in fresh processes, * s",  # only the suspect test
        ]
    )
    # the re-runs are sessions of their own, linked to the gated one, and count from now on
    runs = query(pytester.path / "runs", tags={"branch": "pr", "neurolens.confirm": "2"})
    assert len(runs) == 1 and runs[0]["model"] == "m"
    gated = query(pytester.path / "runs", model="m", tags={"branch": "pr"})
    assert len({r["session_id"] for r in gated}) == 4
    assert len({r["tags"]["neurolens.gate"] for r in gated}) == 1


def test_confirm_zero_fails_on_the_first_verdict_and_under_xdist_the_controller_confirms(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytester.makepyfile(QUEUED)
    queued(pytester, monkeypatch, "10", "--neurolens-tag", "branch=main").assert_outcomes(passed=2)
    unconfirmed = queued(pytester, monkeypatch, "15 10", *GATE_ARGS, "--neurolens-confirm=0")
    assert unconfirmed.ret == pytest.ExitCode.TESTS_FAILED
    assert "re-run" not in unconfirmed.stdout.str()
    unconfirmed.stdout.fnmatch_lines(["*regression above 5%: failing the session*"])
    # two workers: the controller re-runs once per confirmation, the workers never
    confirmed = queued(pytester, monkeypatch, "15", *GATE_ARGS, "-n", "2", "--neurolens-confirm=2")
    assert confirmed.ret == pytest.ExitCode.TESTS_FAILED
    confirmed.stdout.fnmatch_lines(
        [
            "m cpu fp32 batch 1*: suspected +50.0%, confirmed: failed alone in 2 of 2 re-runs; "
            "judged on 3 sessions*",
            "confirmation: 1 test re-run 2 times in fresh processes, * s",
            "*regression above 5% (confirmed by re-measuring): failing the session*",
        ]
    )
    reruns = query(pytester.path / "runs", tags={"neurolens.confirm": "1"})
    assert [r["model"] for r in reruns] == ["m"]  # --neurolens-confirm=0 re-ran nothing


@pytest.mark.parametrize("value", ["-1", "21", "many"])
def test_confirm_needs_a_small_count(pytester: pytest.Pytester, value: str) -> None:
    pytester.makepyfile("def test_nothing():\n    pass\n")
    result = pytester.runpytest(
        "--neurolens-store=runs", "--neurolens-compare=--tag a=b", "--neurolens-fail-above=5%",
        f"--neurolens-confirm={value}",
    )  # fmt: skip
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "--neurolens-confirm" in result.stderr.str()


def test_a_confirmation_re_run_that_hangs_is_stopped_and_the_first_verdict_stands(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    hanging = QUEUED.replace(
        "    return float(values[0])",
        "    if float(values[0]) < 0:  # this process hangs\n        import time; time.sleep(120)\n"
        "    return float(values[0])",
    )
    pytester.makepyfile(hanging)
    queued(pytester, monkeypatch, "10", "--neurolens-tag", "branch=main").assert_outcomes(passed=2)
    started = time.monotonic()
    result = queued(pytester, monkeypatch, "15 -1", *GATE_ARGS, "--neurolens-confirm-timeout=3")
    assert time.monotonic() - started < 60
    result.assert_outcomes(passed=2)
    assert result.ret == pytest.ExitCode.TESTS_FAILED  # never passed by a broken re-run
    result.stdout.fnmatch_lines(
        ["*confirmation re-run 1 stopped after 3 s (--neurolens-confirm-timeout)*", "*failing the session*"]
    )
