"""A comparison as text: a terminal table, GitHub-flavoured Markdown, a summary line."""

from __future__ import annotations

from neurolens.analysis.verdicts import Comparison, GroupResult
from neurolens.tables import escape, milliseconds, number, render

HEADER = ("GROUP", "BASELINE", "CANDIDATE", "CHANGE", "DELTA", "P", "RUNS", "VERDICT")


def summary_line(result: Comparison) -> str:
    counts = ", ".join(f"{n} {v}" for v, n in result.counts().items() if n)
    groups = len(result.groups)
    line = (
        f"{groups} group{'s' if groups != 1 else ''}: {counts or 'none'} "
        f"({result.metric}, {'higher' if result.higher_is_better else 'lower'} is better, "
        f"threshold {result.threshold})"
    )
    tested = sum(g.noise_p is not None for g in result.groups)
    if tested and result.noise_floor:
        line += (
            f"\nnoise: each change tested against the baseline's session-to-session noise, "
            f"Holm-corrected over {tested} group{'s' if tested != 1 else ''} "
            f"(false alarms at most 1% for the suite); intervals are 95%"
        )
    changed = [g for g in result.groups if g.verdict in ("regressed", "noise")]
    untold = sum(g.significance_note is not None for g in changed)
    if untold and result.require_significance:
        line += (
            f"\nsignificance: cannot tell for {untold} changed group{'s' if untold != 1 else ''} "
            "(too few sessions a side); they do not fail under --require-significance. For a "
            "verdict, compare several sessions a side (4 or more), or measure in rounds: "
            "measure(..., repeats=5) or --neurolens-repeats=5"
        )
    unconfirmed = sum(g.fails and g.candidate_samples == 1 for g in result.groups)
    if unconfirmed:
        line += (
            f"\n{unconfirmed} failing group{'s' if unconfirmed != 1 else ''} rest on one candidate "
            "session: a slow process can look like this; confirm by re-measuring (the pytest gate "
            "does, --neurolens-confirm) or by recording more candidate sessions"
        )
    for g in result.groups:
        if g.note is not None:
            line += f"\n{g.label()}: not compared: {g.note}"
    if result.nothing_compared:
        line += f"\nnothing was compared: {result.nothing_compared}"
    return line


def _verdict(g: GroupResult) -> str:
    if g.verdict == "insufficient":
        return "too few samples"
    if g.verdict == "noise" and g.noise_floor is not None and g.baseline:
        return f"noise (floor {g.noise_floor / abs(g.baseline) * 100:.1f}%)"
    return g.verdict.upper() if g.fails else g.verdict


def _cells(g: GroupResult, metric: str) -> list[str]:
    show = milliseconds if metric.endswith("_ms") else number
    change = "-" if g.change_pct is None else f"{g.change_pct:+.1f}%"
    if g.change_low_pct is not None and g.change_high_pct is not None:
        change += f" [{g.change_low_pct:+.1f}, {g.change_high_pct:+.1f}]"
    delta = "-" if g.change_abs is None else ("+" if g.change_abs >= 0 else "") + show(g.change_abs)
    return [
        g.label(),
        show(g.baseline),
        show(g.candidate),
        change,
        delta,
        "-" if g.p_value is None else f"{g.p_value:.3g}",
        f"{g.baseline_runs}/{g.candidate_runs}",
        _verdict(g),
    ]


def to_table(result: Comparison) -> str:
    table = render(HEADER, [_cells(g, result.metric) for g in result.groups], right=range(1, 7))
    return table + "".join(escape(line) + "\n" for line in summary_line(result).splitlines())


# GitHub-flavoured markdown: HTML's special characters as entities, every other ASCII
# punctuation character backslash-escaped (CommonMark allows it for all of them). That
# keeps stored strings from opening tags, links, images, emphasis or a new table row, and
# breaks GFM's autolinks ("www." and "://" no longer appear as typed).
_HTML = {"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;"}
_MARKDOWN = {c: "\\" + c for c in "\\`*_{}[]()#+-.!|~:@/='$%^,;?"}


def markdown_text(text: str) -> str:
    """``text`` (a stored string, or a line holding them) as inert GFM text."""
    return "".join(_HTML.get(c) or _MARKDOWN.get(c) or c for c in escape(text))


def to_markdown(result: Comparison) -> str:
    lines = [
        f"### neurolens compare: {'regression' if result.failed else 'no regression'}",
        "",
        "| " + " | ".join(h.lower() for h in HEADER) + " |",
        "| " + " | ".join(["---"] + ["---:"] * 6 + ["---"]) + " |",
    ]
    for g in result.groups:
        cells = [markdown_text(c) for c in _cells(g, result.metric)]
        cells[7] = f"**{cells[7]}**" if g.fails else cells[7]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [""]
    lines += [markdown_text(line) + "  " for line in summary_line(result).splitlines()]
    lines += [f"> warning: {markdown_text(w)}" for w in result.warnings]
    return "\n".join(lines) + "\n"
