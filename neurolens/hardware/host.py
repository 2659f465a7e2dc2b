"""Host facts for a run's hardware snapshot (cheap, no third-party imports)."""

from __future__ import annotations

import platform
import socket
from pathlib import Path


def cpu_model() -> str | None:
    """The CPU's marketing name where the OS tells it; ``platform.processor()`` otherwise."""
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def host_facts() -> dict[str, str | None]:
    return {
        "hostname": socket.gethostname(),
        "platform": platform.platform(),
        "cpu_model": cpu_model(),
        "python_version": platform.python_version(),
    }
