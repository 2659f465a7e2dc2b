"""``neurolens report``: the data it embeds, its verdicts, change points, and the page in a
real browser (Debian's chromium driven by Playwright, every network request blocked)."""

from __future__ import annotations

import json
import random
import re
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

import pandas  # noqa: F401  (loaded before pytester runs: numpy cannot be imported twice)
import pyarrow.compute
import pyarrow.parquet  # noqa: F401
import pytest

from neurolens.analysis.changepoints import change_points
from neurolens.analysis.compare import compare
from neurolens.report.data import build_report
from neurolens.report.page import page_data, render
from neurolens.sources import query
from neurolens.storage.index.filters import RunFilter
from neurolens.storage.store import write_run
from tests.factories import Cli, make_run

H100 = {"gpu_name": "NVIDIA H100 80GB HBM3", "driver_version": "550.54.15", "cuda_version": "12.4"}
NEW_DRIVER = {**H100, "driver_version": "555.42.02"}


def history(root: Path, sessions: int = 12, step_at: int = 9, seed: int = 0, last: float = 1.0) -> None:
    """gpt2 steps up 30% at session ``step_at`` (and its newest session by ``last`` more);
    bert stays flat; the driver changes at 6; session 4 has a second (failed) run that
    readers leave out."""
    rng = random.Random(seed)
    for s in range(sessions):
        step = (1.3 if s >= step_at else 1.0) * (last if s == sessions - 1 else 1.0)
        for model, level in (("gpt2", 10.0 * step), ("bert", 5.0)):
            run = make_run(
                model=model,
                session_id=f"session-{s:03d}",
                created_at=f"2026-10-{1 + s:02d}T12:00:00Z",
                hardware=NEW_DRIVER if s >= 6 else H100,
                metrics={
                    "total_latency_ms": rng.gauss(level, level * 0.01),
                    "latency_p99_ms": level * 1.3,
                    "gpu_utilization": 60.0 + s,
                },
                tags={"side": "cand" if s == sessions - 1 else "base"},
            )
            write_run(root, run)
    failed = make_run(
        session_id="session-004",
        created_at="2026-10-05T12:00:01Z",
        model="gpt2",
        test={"nodeid": "t.py::t", "outcome": "failed"},
        metrics={"total_latency_ms": 999.0},
    )
    write_run(root, failed)


# --- the data ---------------------------------------------------------------------------


def test_the_embedded_data_equals_the_store_s_rows(tmp_path: Path) -> None:
    history(tmp_path)
    report = build_report(tmp_path, RunFilter())
    data = page_data(report)
    rows = query(tmp_path)
    assert report.runs == len(rows) == 24
    for group in data["groups"]:
        model = group["label"].split()[0]
        runs = [r for r in rows if r["model"] == model]
        by_session: dict[str, list[dict[str, Any]]] = {}
        for r in runs:
            by_session.setdefault(r["session_id"], []).append(r)
        expected = [
            statistics.median(r["total_latency_ms"] for r in by_session[s]) for s in sorted(by_session)
        ]
        assert group["y"] == pytest.approx(expected, rel=1e-4)
        assert [data["sessions"][i][0] for i in group["s"]] == sorted(by_session)
        assert set(group["run"]) <= {r["run_id"] for r in runs}
        assert group["p99"] == pytest.approx([statistics.median(r["latency_p99_ms"] for r in by_session[s])
                                              for s in sorted(by_session)], rel=1e-4)  # fmt: skip
        assert 999.0 not in group["y"]  # the failed run is left out, as ls leaves it out
    # filters apply as in ls
    only = build_report(tmp_path, RunFilter(model="bert"))
    assert [s.key["model"] for s in only.series] == ["bert"] and only.runs == 12


def test_the_overview_s_verdicts_are_compare_s(tmp_path: Path) -> None:
    # the newest session steps again: the earlier step is in the baseline's noise
    history(tmp_path, last=1.5)
    report = build_report(tmp_path, RunFilter(), threshold=None)
    gate = compare(tmp_path, {"tags": {"side": "base"}}, {"tags": {"side": "cand"}}, threshold="5%")
    by_model = {g.group["model"]: g for g in gate.groups}
    assert {s.key["model"]: s.verdict.verdict for s in report.series if s.verdict} == {
        model: g.verdict for model, g in by_model.items()
    }
    for series in report.series:
        assert series.verdict is not None
        same = by_model[series.key["model"]]
        assert series.verdict.change_pct == pytest.approx(same.change_pct)
        assert series.verdict.noise_floor == pytest.approx(same.noise_floor)
    worst = report.series[0]
    assert worst.key["model"] == "gpt2" and worst.verdict is not None and worst.verdict.verdict == "regressed"


def test_a_jump_in_the_newest_sessions_is_never_marked_on_a_flat_one_before_it() -> None:
    flat = [2.0, 2.01, 1.99, 2.02, 1.98, 2.005]
    assert change_points([*flat, 1.995, 2.6]) == []  # the newest alone: not a level yet
    assert change_points([*flat, 2.6, 2.61]) == []  # two sessions: shorter than a segment
    assert change_points([*flat[:5], 2.6, 2.61, 2.59]) == [5]  # three: marked where it starts


def test_change_points_at_known_steps_and_none_on_flat_noise() -> None:
    rng = random.Random(4)
    one = [rng.gauss(10, 0.3) for _ in range(40)] + [rng.gauss(13, 0.3) for _ in range(40)]
    assert change_points(one) == [40]
    two = [rng.gauss(10, 0.3) for _ in range(30)] + [rng.gauss(11, 0.3) for _ in range(30)]
    two += [rng.gauss(9, 0.3) for _ in range(30)]
    assert change_points(two) == [30, 60]
    # a step of three noise sigmas, half way, is found (within one session) nearly always
    found = sum(
        any(abs(c - 50) <= 1 for c in change_points([r.gauss(10, 0.5) for _ in range(50)]
                                                    + [r.gauss(11.5, 0.5) for _ in range(50)]))
        for r in (random.Random(seed) for seed in range(100))
    )  # fmt: skip
    assert found >= 95
    flat = sum(
        bool(change_points([r.gauss(10, 0.5) for _ in range(100)])) for r in map(random.Random, range(100))
    )
    assert flat <= 6
    # one odd session is an outlier, not a change; a constant series has none
    assert change_points([10.0] * 20 + [30.0] + [10.0] * 20) == []
    assert change_points([7.0] * 30) == []


def test_long_histories_are_cut_to_the_newest_sessions_and_say_so(tmp_path: Path) -> None:
    history(tmp_path, sessions=30, step_at=25)
    report = build_report(tmp_path, RunFilter(model="gpt2"), max_points=20)
    (series,) = report.series
    assert series.cut == 10 and len(series.medians) == 20 and series.sessions[0] == "session-010"
    assert series.change_points == [15]  # the step at session 25, in the kept points
    assert "the 10 oldest sessions are not drawn (the newest 20 are)" in render(report)


def test_stored_strings_cannot_break_out_of_the_page(tmp_path: Path) -> None:
    evil = "</script><script>alert(1)</script>"
    write_run(tmp_path, make_run(model=evil, session_id=evil))
    page = render(build_report(tmp_path, RunFilter()))
    assert page.count("</script>") == 3  # plotly, the data and the page's script: no other
    assert "&lt;/script&gt;&lt;script&gt;alert(1)" in page


def test_the_command_writes_the_page_and_says_what_is_in_it(tmp_path: Path, cli: Cli) -> None:
    history(tmp_path / "store")
    out = tmp_path / "deep" / "report.html"
    status, text = cli("report", "--root", str(tmp_path / "store"), "--out", str(out), "--fail-above", "50%")
    assert status == 0 and out.is_file()
    assert re.match(r"wrote .*report\.html \(\d+\.\d MB\): 24 runs in 2 groups, 0 regressed\n", text)
    assert out.stat().st_mode & 0o777 == 0o644
    script = (
        "import sys; sys.modules['plotly'] = None; sys.modules['plotly.offline'] = None; "
        "from neurolens.cli import main; sys.exit(main(sys.argv[1:]))"
    )
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            script,
            "report",
            "--root",
            str(tmp_path / "store"),
            "--out",
            str(tmp_path / "x.html"),
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 1
    assert (
        result.stderr
        == "neurolens: error: the report needs the 'report' extra: pip install 'pytest-neurolens[report]'\n"
    )
    assert not (tmp_path / "x.html").exists()
    # a folder as --out, and a filter that selects nothing
    status, _ = cli("report", "--root", str(tmp_path / "store"), "--out", str(tmp_path))
    assert status == 1
    status, text = cli(
        "report", "--root", str(tmp_path / "store"), "--model", "none", "--out", str(tmp_path / "e.html")
    )
    assert status == 0 and "0 runs in 0 groups" in text


# --- the page in a browser ------------------------------------------------------------------


def test_the_page_opens_offline_with_every_chart_and_shows_run_ids_on_hover(
    tmp_path: Path, cli: Cli, browser_page: Any
) -> None:
    history(tmp_path / "store", last=1.5)
    out = tmp_path / "report.html"
    assert cli("report", "--root", str(tmp_path / "store"), "--out", str(out))[0] == 0
    page = browser_page
    requests: list[str] = []
    errors: list[str] = []

    def block(route: Any) -> None:
        if route.request.url.startswith("file://"):
            route.continue_()
        else:
            requests.append(route.request.url)
            route.abort()

    page.route("**/*", block)
    page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(out.as_uri())
    page.evaluate("window.neurolensRenderAll()")
    page.wait_for_function("document.querySelectorAll('.chart .main-svg').length >= 2")
    traces = page.evaluate(
        "Array.from(document.querySelectorAll('.chart')).map(c => c.data.map(t => t.name))"
    )
    # gpt2 (regressed, a change point, GPU) first; bert (flat) second
    assert traces == [
        ["p99", "median (p50)", "GPU utilization %", "change point", "regressed"],
        ["p99", "median (p50)", "GPU utilization %"],
    ]
    assert page.locator("#overview tbody tr").count() == 2
    assert page.locator("#overview tbody tr.regressed").count() == 1
    # the driver change is marked on both charts
    assert page.evaluate(
        "Array.from(document.querySelectorAll('.chart')).map(c => c.layout.shapes.length)"
    ) == [1, 1]
    # hover the newest median point of the first chart: its run id shows
    point = page.locator('.chart[data-group="0"] .scatterlayer .trace').nth(1).locator("path.point").last
    point.scroll_into_view_if_needed()
    box = point.bounding_box()
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    page.wait_for_selector(".hoverlayer .hovertext")
    hover = page.locator(".hoverlayer .hovertext").first.text_content()
    newest = query(tmp_path / "store", model="gpt2", session_id="session-011")[0]["run_id"]
    assert f"run {newest}" in hover and "session session-011" in hover and "driver 555.42.02" in hover
    page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
    assert (tmp_path / "report.png").stat().st_size > 10_000
    assert requests == [] and errors == []


HOSTILE = [
    '<span style="cursor:url(https://evil.example/cursor)">x</span>',
    '<span style="background-image:url(https://evil.example/bg)">x</span>',
    '<span style="mask-image:url(https://evil.example/m);border-image:url(https://ev.il/b) 1">x</span>',
    '<a href="https://evil.example/link">click me</a>',
    '<img src="https://evil.example/img">',
    "&lt;a href=https://evil.example/entity&gt;",
]


def test_hostile_strings_reach_the_charts_as_text_and_the_page_makes_no_request(
    tmp_path: Path, cli: Cli, browser_page: Any
) -> None:
    root = tmp_path / "store"
    for s in range(6):
        evil = HOSTILE[s % len(HOSTILE)]
        # one GPU (a group), the driver changing half way (an annotation)
        hardware = {"gpu_name": HOSTILE[1], "driver_version": HOSTILE[3] if s >= 3 else HOSTILE[0],
                    "cuda_version": HOSTILE[5]}  # fmt: skip
        run = make_run(
            model=HOSTILE[3], backend="b", precision="p", fingerprint_hash="f" * 16,
            session_id=f"{evil} {s}", created_at=f"2026-10-{1 + s:02d}T12:00:00Z", hardware=hardware,
            metrics={"total_latency_ms": 10.0 + s, "latency_p99_ms": 12.0, "gpu_utilization": 50.0},
            tags={evil: evil},
        )  # fmt: skip
        write_run(root, run, fingerprint={"git_commit": HOSTILE[0]})
    out = tmp_path / "report.html"
    assert cli("report", "--root", str(root), "--out", str(out))[0] == 0
    assert 'http-equiv="Content-Security-Policy"' in out.read_text()
    page = browser_page
    requests: list[str] = []
    errors: list[str] = []
    page.on("request", lambda request: requests.append(request.url))
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(out.as_uri())
    page.evaluate("window.neurolensRenderAll()")
    page.wait_for_function("document.querySelectorAll('.chart .main-svg').length >= 1")
    # every point hovered, every annotation and link-like text clicked
    points = page.locator('.chart[data-group="0"] .scatterlayer .trace').nth(1).locator("path.point")
    hovers = []
    for i in range(points.count()):
        box = points.nth(i).bounding_box()
        page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
        page.wait_for_function(  # this point's label, not the last one's
            "t => (document.querySelector('.hoverlayer .hovertext') || {}).textContent?.includes(t)",
            arg=f"p50 {10 + i}.00 ms",
        )
        hovers.append(page.locator(".hoverlayer .hovertext").first.text_content())
        page.mouse.click(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    for note in page.locator(".annotation-text").all():
        note.click(force=True)
    assert len(hovers) == 6
    assert all(f"commit {HOSTILE[0]}" in hover for hover in hovers)  # shown as the text it is
    assert all(HOSTILE[1] in hover for hover in hovers)
    assert any(f"driver {HOSTILE[3]}" in hover for hover in hovers)
    assert all(any(f"session {HOSTILE[s]} {s}" in hover for hover in hovers) for s in range(6))
    annotations = page.locator(".annotation-text").all_text_contents()
    assert (
        annotations and all("\u2192" in a for a in annotations) and any(HOSTILE[3] in a for a in annotations)
    )
    # no element of the charts links anywhere, nor carries a stored style
    assert (
        page.evaluate(
            'document.querySelectorAll(\'.chart a, .chart [*|href^="http"], .chart [style*="evil"]\').length'
        )
        == 0
    )
    assert page.url == out.as_uri()
    assert [u for u in requests if not u.startswith(("file://", "data:"))] == [] and errors == []


def test_the_overview_sorts_by_a_column(tmp_path: Path, cli: Cli, browser_page: Any) -> None:
    history(tmp_path / "store")
    out = tmp_path / "report.html"
    assert cli("report", "--root", str(tmp_path / "store"), "--out", str(out))[0] == 0
    page = browser_page
    page.goto(out.as_uri())
    first = "document.querySelector('#overview tbody tr td').textContent"
    assert page.evaluate(first).startswith("gpt2")  # worst first
    page.click("#overview th:nth-child(2)")  # latest p50, ascending
    assert page.evaluate(first).startswith("bert")
    page.click("#overview th:nth-child(2)")
    assert page.evaluate(first).startswith("gpt2")


# --- from pytest ----------------------------------------------------------------------------


def session_with_report(pytester: pytest.Pytester) -> pytest.RunResult:
    """A session recording one run of group ``m cpu fp32`` into ``runs``, with its report."""
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.neurolens(model="m", backend="cpu", precision="fp32", batch_size=1)
        def test_record(neurolens):
            neurolens.record(total_latency_ms=1.0)
        """
    )
    result = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "--neurolens-store=runs", "--neurolens-report=out/report.html"
    )
    result.assert_outcomes(passed=1)
    return result


def test_the_plugin_writes_a_report_of_the_groups_the_session_touched(pytester: pytest.Pytester) -> None:
    write_run(pytester.path / "runs", make_run(model="other-model"))  # history the session never touches
    result = session_with_report(pytester)
    result.stdout.fnmatch_lines(["report: *out/report.html (* MB, 1 groups)"])
    page = (pytester.path / "out" / "report.html").read_text()
    data = json.loads(page.split('id="report-data">', 1)[1].split("</script>", 1)[0])
    assert [g["label"].split()[0] for g in data["groups"]] == ["m"]


def test_a_fingerprint_nested_too_deeply_leaves_its_commit_unknown(
    pytester: pytest.Pytester, cli: Cli
) -> None:
    root = pytester.path / "runs"
    stored = write_run(
        root, make_run(model="m", backend="cpu", fingerprint_hash="f" * 16), fingerprint={"a": 1}
    )
    Path(stored["fp_json"]).write_text('{"a":' * 100_000 + "1" + "}" * 100_000)
    status, text = cli("report", "--root", str(root), "--out", str(pytester.path / "r.html"))
    assert status == 0 and "1 run in 1 group, 0 regressed" in text
    result = session_with_report(pytester)
    assert result.ret == 0 and "Traceback" not in result.stdout.str() + result.stderr.str()
    result.stdout.fnmatch_lines(["report: *out/report.html (* MB, * groups)"])


def test_a_sparkline_shows_a_step_and_keeps_noise_flat() -> None:
    from neurolens.report.page import _sparkline

    def height(values: list[float]) -> float:
        points = _sparkline(values).split('points="')[1].split('"')[0].split()
        ys = [float(p.split(",")[1]) for p in points]
        return max(ys) - min(ys)

    noise = [10.0 * (1 + 0.01 * ((i * 7) % 3 - 1)) for i in range(20)]  # within 1%
    step = [10.0] * 10 + [13.0] * 10  # +30%
    assert height(noise) < 2.0 and height(step) > 12.0


def test_a_chart_without_a_p99_has_no_p99_in_its_legend(tmp_path: Path, cli: Cli, browser_page: Any) -> None:
    for s in range(4):
        run = make_run(session_id=f"s{s}", created_at=f"2026-10-0{1 + s}T12:00:00Z",
                       metrics={"total_latency_ms": 10.0 + s})  # fmt: skip
        write_run(tmp_path / "store", run)
    out = tmp_path / "report.html"
    assert cli("report", "--root", str(tmp_path / "store"), "--out", str(out))[0] == 0
    browser_page.goto(out.as_uri())
    browser_page.evaluate("window.neurolensRenderAll()")
    browser_page.wait_for_function("document.querySelectorAll('.chart .main-svg').length >= 1")
    names = browser_page.evaluate("document.querySelector('.chart').data.map(t => t.name)")
    assert names == ["median (p50)"]  # no p99, no GPU utilization: neither in the legend
    # the x axis' labels (times and the date line under them) lie inside the chart
    inside = browser_page.evaluate(
        "(() => { const chart = document.querySelector('.chart').getBoundingClientRect();"
        " return Array.from(document.querySelectorAll('.chart .xtick text')).every("
        " t => t.getBoundingClientRect().bottom <= chart.bottom); })()"
    )
    assert inside
