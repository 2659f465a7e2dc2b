#!/usr/bin/env python3
"""Run a benchmark script and keep what it printed as a page fragment of the documentation.

    python benchmarks/record_figures.py hostile_bench.py [its arguments...]

Writes ``benchmarks/figures/<script>.md``: the command, the machine (CPU model and cores, memory,
Python, the platform), the date, the commit, and the script's output as it printed it. The
performance page includes these fragments, so its figures are what a script printed, never
retyped.
"""

from __future__ import annotations

import datetime as dt
import os
import platform
import subprocess
import sys
from pathlib import Path

from neurolens.hardware.host import cpu_model

REPO = Path(__file__).resolve().parents[1]


def machine() -> str:
    memory = ""
    try:
        pages, size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
        memory = f", {pages * size / 2**30:.0f} GiB"
    except (ValueError, OSError, AttributeError):
        pass
    return (
        f"{cpu_model() or 'unknown CPU'}, {os.cpu_count()} cores{memory}; "
        f"Python {platform.python_version()}, {platform.platform(terse=True)}"
    )


def commit() -> str:
    done = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    )
    dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain"], capture_output=True, text=True)
    return (done.stdout.strip() or "unknown") + (
        " (with uncommitted changes)" if dirty.stdout.strip() else ""
    )


def main() -> int:
    if len(sys.argv) < 2:
        print(__doc__)
        return 2
    script, arguments = sys.argv[1], sys.argv[2:]
    path = REPO / "benchmarks" / script
    started = dt.datetime.now(dt.timezone.utc)
    done = subprocess.run([sys.executable, str(path), *arguments], capture_output=True, text=True)
    sys.stdout.write(done.stdout)
    sys.stderr.write(done.stderr)
    if done.returncode != 0:
        return done.returncode
    minutes = (dt.datetime.now(dt.timezone.utc) - started).total_seconds() / 60
    command = " ".join(["python", f"benchmarks/{script}", *arguments])
    fragment = (
        f"`{command}`, {started:%Y-%m-%d} ({minutes:.1f} min), commit {commit()}  \n"
        f"Machine: {machine()}\n\n```text\n{done.stdout.rstrip()}\n```\n"
    )
    out = REPO / "benchmarks" / "figures" / f"{path.stem}.md"
    out.parent.mkdir(exist_ok=True)
    out.write_text(fragment)
    print(f"wrote {out.relative_to(REPO)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
