"""Text tables for people: one renderer for ``ls``, ``compare`` and the pytest summary.

Stored strings are untrusted (a model name may hold ``ESC[31m`` or ``\\r``), so every
cell is escaped before it reaches a terminal.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Sequence

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_MIN_SHRUNK = 6


def escape(text: str) -> str:
    """``text`` with control characters shown as escapes (``\\x1b``, ``\\r``), never sent raw."""
    return _CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: max(width - 1, 0)] + "…"


def render(
    header: Sequence[str],
    rows: Sequence[Sequence[str]],
    *,
    right: Collection[int] = (),
    shrink: Collection[int] = (),
    width: int | None = None,
) -> str:
    """An aligned table; columns in ``right`` are right-aligned, and columns in ``shrink``
    are clipped (last first) until the table fits ``width`` (None: never clipped)."""
    cells = [[escape(str(c)) for c in row] for row in rows]
    widths = [max(len(h), *(len(row[i]) for row in cells)) for i, h in enumerate(header)]
    excess = 0 if width is None else sum(widths) + 2 * (len(widths) - 1) - width
    for i in sorted(shrink, reverse=True):
        if excess <= 0:
            break
        cut = min(excess, widths[i] - max(_MIN_SHRUNK, len(header[i])))
        if cut > 0:
            widths[i] -= cut
            excess -= cut
    lines = []
    for row in [list(header), *cells]:
        parts = []
        for i, text in enumerate(row):
            text = _clip(text, widths[i])
            parts.append(text.rjust(widths[i]) if i in right else text.ljust(widths[i]))
        lines.append("  ".join(parts).rstrip())
    return "\n".join(lines) + "\n"


def number(value: float | None, digits: int = 3) -> str:
    """A number for a table; values too small for ``digits`` decimals keep 3 significant digits."""
    if value is None:
        return "-"
    if value != 0 and abs(value) < 10 ** (-digits):
        return f"{value:.3g}"
    return f"{value:.{digits}f}"


def milliseconds(value: float | None) -> str:
    """A duration for a column in milliseconds; below 0.001 ms it is shown in microseconds
    with its unit (``0.42 µs``), never as 0.000."""
    if value is None:
        return "-"
    if value != 0 and abs(value) < 0.001:
        return f"{value * 1000:.3g} µs"
    return f"{value:.3f}"
