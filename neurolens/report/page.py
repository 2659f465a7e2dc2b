"""The report as one self-contained HTML file: plotly.js inlined once, the data embedded,
no request to any network address.

plotly (the ``report`` extra) is the charting library: interactive charts from Python
whose JavaScript bundle can be inlined, with hover labels, a secondary axis for GPU
utilization and shapes for hardware changes, all offline. The page draws each chart when it
scrolls into view, so a page of 1,000 groups opens at once.
"""

from __future__ import annotations

import datetime as dt
import html
import json
from importlib import resources
from pathlib import Path
from typing import Any

from neurolens.errors import MissingExtraError, StoreError
from neurolens.report.data import Report, Series, timestamp
from neurolens.tables import milliseconds

INSTALL_HINT = "the report needs the 'report' extra: pip install 'pytest-neurolens[report]'"


# The page makes no request: scripts and styles inline only, images as data: URLs at most.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
    "img-src data:; font-src data:; connect-src 'none'; form-action 'none'; base-uri 'none'"
)


def _plotly_js() -> str:
    try:
        from plotly.offline import get_plotlyjs
    except ImportError:
        raise MissingExtraError(INSTALL_HINT) from None
    return str(get_plotlyjs())


def _asset(name: str) -> str:
    return resources.files("neurolens.report").joinpath(name).read_text(encoding="utf-8")


def _script_json(value: Any) -> str:
    """JSON safe inside <script>: no "</script>", no HTML comment, no line separators."""
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    return text.replace("<", "\\u003c").replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")


def _round(value: float | None) -> float | None:
    return None if value is None else float(f"{value:.5g}")


def page_data(report: Report) -> dict[str, Any]:
    """What the page's script reads: sessions and hardware listed once, points by index."""
    sessions: dict[str, int] = {}
    hardware: dict[tuple[Any, ...], int] = {}
    groups = []
    for series in report.series:
        verdict = series.verdict
        groups.append(
            {
                "label": series.label,
                "verdict": verdict.verdict if verdict else "new",
                "change": "-"
                if verdict is None or verdict.change_pct is None
                else f"{verdict.change_pct:+.1f}%",
                "t": [timestamp(t) for t in series.times],
                "y": [_round(v) for v in series.medians],
                "p99": [_round(v) for v in series.p99],
                "gpu": [_round(v) for v in series.gpu],
                "run": series.run_ids,
                "s": [sessions.setdefault(s, len(sessions)) for s in series.sessions],
                "hw": [hardware.setdefault(h, len(hardware)) for h in series.hardware],
                "cp": series.change_points,
                "hwchange": series.hardware_changes,
                "cut": series.cut,
            }
        )
    return {
        "threshold": str(report.threshold),
        "sessions": [[s, report.commits.get(s)] for s in sessions],
        "hardware": [list(h) for h in hardware],
        "groups": groups,
    }


def _sparkline(values: list[float]) -> str:
    recent = values[-30:]
    if len(recent) < 2:
        return ""
    # scaled to at least 20% of the level, so 1% noise stays a flat line, not a cliff
    low, high = min(recent), max(recent)
    middle = (low + high) / 2
    span = max(high - low, 0.2 * abs(middle)) or 1.0
    low = middle - span / 2
    points = " ".join(
        f"{i * 80 / (len(recent) - 1):.1f},{18 - (v - low) / span * 16:.1f}" for i, v in enumerate(recent)
    )
    return (
        '<svg class="spark" width="80" height="20" viewBox="0 0 80 20" aria-hidden="true">'
        f'<polyline fill="none" stroke="#0969da" stroke-width="1.5" points="{points}"/></svg>'
    )


def _overview_row(index: int, series: Series) -> str:
    verdict = series.verdict
    name = verdict.verdict if verdict else "new"
    latest = series.medians[-1] if series.medians else None
    change = verdict.change_pct if verdict is not None else None
    flag = {"regressed": "REGRESSED", "improved": "improved", "noise": "noise"}.get(name, name)
    sessions = len(series.medians) + series.cut
    e = html.escape
    return (
        f'<tr class="{e(name)}" data-group="{index}">'
        f'<td><a href="#g{index}">{e(series.label)}</a></td>'
        f'<td class="num" data-value="{latest if latest is not None else ""}">{e(milliseconds(latest))}</td>'
        f'<td class="num" data-value="{change if change is not None else 0}">'
        f"{'-' if change is None else f'{change:+.1f}%'}</td>"
        f"<td>{_sparkline(series.medians)}</td>"
        f'<td class="num" data-value="{sessions}">{sessions}</td>'
        f'<td class="flag">{e(flag)}</td></tr>'
    )


def _group_section(index: int, series: Series) -> str:
    e = html.escape
    verdict = series.verdict
    lines = []
    if verdict is not None and verdict.change_pct is not None:
        floor = (
            f", noise floor {verdict.noise_floor / abs(verdict.baseline) * 100:.1f}%"
            if verdict.noise_floor is not None and verdict.baseline
            else ""
        )
        lines.append(
            f"newest session {milliseconds(verdict.candidate)} ms against "
            f"{milliseconds(verdict.baseline)} ms ({verdict.change_pct:+.1f}%{floor}): {verdict.verdict}"
        )
    if series.cut:
        lines.append(f"the {series.cut} oldest sessions are not drawn (the newest {len(series.medians)} are)")
    if series.change_points:
        lines.append(f"{len(series.change_points)} change point(s) in the history")
    notes = "".join(f'<p class="note">{e(line)}</p>' for line in lines)
    return (
        f'<section class="group" id="g{index}"><h2>{e(series.label)}</h2>{notes}'
        f'<div class="chart" data-group="{index}"></div></section>'
    )


def render(report: Report) -> str:
    e = html.escape
    regressed = len(report.regressed())
    cut = sum(1 for s in report.series if s.cut)
    generated = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    summary = (
        f"{report.runs:,} runs in {len(report.series):,} groups from {report.root}"
        f", filter {report.filter}; generated {generated}. Each group's newest session is compared with its "
        f"earlier ones by compare's rules, threshold {report.threshold}: {regressed} regressed."
    )
    if cut:
        summary += f" {cut} chart(s) show only their newest sessions (see each chart's note)."
    rows = "".join(_overview_row(i, s) for i, s in enumerate(report.series))
    sections = "".join(_group_section(i, s) for i, s in enumerate(report.series))
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{CONTENT_SECURITY_POLICY}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>neurolens report</title><style>{_asset('page.css')}</style>"
        f"<script>{_plotly_js()}</script></head><body>"
        f'<h1>neurolens report</h1><p class="meta">{e(summary)}</p>'
        '<table id="overview"><thead><tr><th>group</th><th>latest p50 (ms)</th><th>change</th>'
        "<th>trend</th><th>sessions</th><th>verdict</th></tr></thead>"
        f"<tbody>{rows}</tbody></table>{sections}"
        f'<script type="application/json" id="report-data">{_script_json(page_data(report))}</script>'
        f"<script>{_asset('page.js')}</script></body></html>\n"
    )


def write_report(report: Report, out: Path) -> int:
    """Write the page to ``out`` (a reader never sees half a page); its size."""
    from neurolens.output_files import written_whole

    if out.is_dir():
        raise StoreError(f"{out} is a folder; give the report a file name, e.g. {out / 'report.html'}")
    text = render(report).encode("utf-8")
    with written_whole(out) as tmp:
        tmp.write_bytes(text)
    return len(text)
