"""Shared fixtures: a run factory, a store factory and the CLI run in-process."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from neurolens.cli import main
from neurolens.storage.store import write_run
from tests.factories import Cli
from tests.factories import make_run as _make_run

StoredRun = dict[str, Any] | tuple[dict[str, Any], dict[str, Any] | None]


@pytest.fixture
def make_run() -> Callable[..., dict[str, Any]]:
    """``make_run(**fields)``: a valid run document with those fields replaced."""
    return _make_run


@pytest.fixture
def make_store(tmp_path: Path) -> Callable[..., Path]:
    """``make_store(*runs, name="store", fingerprint=None)``: a store under tmp_path holding
    ``runs``, each with ``fingerprint``; a ``(run, fingerprint)`` pair gives one its own."""

    def build(*runs: StoredRun, name: str = "store", fingerprint: dict[str, Any] | None = None) -> Path:
        root = tmp_path / name
        for item in runs:
            run, own = item if isinstance(item, tuple) else (item, fingerprint)
            write_run(root, run, fingerprint=own)
        return root

    return build


@pytest.fixture
def cli() -> Cli:
    """``cli("ls", "--root", ...)``: the ``neurolens`` command in-process: (exit status, stdout)."""

    def run(*argv: str) -> tuple[int, str]:
        out = io.StringIO()
        return main(list(argv), out=out), out.getvalue()

    return run


@pytest.fixture
def browser_page() -> Any:
    """A page of Debian's chromium driven by Playwright (what a browser shows is tested in one)."""
    from playwright.sync_api import sync_playwright

    from tests.browser import BROWSER_ARGS, CHROMIUM

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS)
        try:
            yield browser.new_page(viewport={"width": 1200, "height": 900})
        finally:
            browser.close()
