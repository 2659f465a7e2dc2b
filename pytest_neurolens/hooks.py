"""Hook specifications of pytest-neurolens (added through ``pytest_addhooks``)."""

from __future__ import annotations

from typing import Any

import pytest


@pytest.hookspec
def pytest_neurolens_run(run: dict[str, Any], item: pytest.Item) -> None:
    """Add or change fields of ``run`` (in place) just before it is validated and written.

    Called once per run, on the process that writes it (an xdist worker under xdist).
    """


@pytest.hookspec
def pytest_neurolens_hardware(snapshot: dict[str, Any]) -> None:
    """Extend the session's hardware snapshot (in place), once, when it is first taken.

    Scalar top-level keys you add are copied into every run's ``hardware``.
    """
