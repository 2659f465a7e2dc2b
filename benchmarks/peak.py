"""Wall time and peak memory of one ``neurolens`` command, in a process of its own."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

NEUROLENS = str(Path(sys.executable).with_name("neurolens"))
# The command runs in a child of a fresh process, which reports that child's peak RSS alone.
_MEASURE = (
    "import resource, subprocess, sys, time\n"
    "start = time.perf_counter()\n"
    "done = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)\n"
    "print(time.perf_counter() - start, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,"
    " done.returncode, repr(done.stderr[-300:]))"
)


def measured(*argv: str, expect: tuple[int, ...] = (0,)) -> tuple[float, float]:
    """(wall s, peak RSS MiB) of ``neurolens argv``; a ``SystemExit`` when it exits with a
    status not in ``expect`` (a benchmark of a failing command measures nothing)."""
    out = subprocess.run([sys.executable, "-c", _MEASURE, NEUROLENS, *argv], capture_output=True, text=True)
    wall, peak, status, err = out.stdout.split(maxsplit=3)
    if int(status) not in expect:
        raise SystemExit(f"neurolens {' '.join(argv)} exited {status}: {err}")
    return float(wall), float(peak)
