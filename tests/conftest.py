"""Shared fixtures: a run factory, a store factory and the CLI run in-process."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from neurolens.cli import main
from neurolens.storage.store import write_run
from tests.factories import make_run as _make_run

CliResult = tuple[int, str]


@pytest.fixture
def make_run() -> Callable[..., dict[str, Any]]:
    """``make_run(**fields)``: a valid run document with those fields replaced."""
    return _make_run


@pytest.fixture
def make_store(tmp_path: Path) -> Callable[..., Path]:
    """``make_store(*runs, name="store", fingerprint=None)``: a store under tmp_path holding ``runs``."""

    def build(*runs: dict[str, Any], name: str = "store", fingerprint: dict[str, Any] | None = None) -> Path:
        root = tmp_path / name
        for run in runs:
            write_run(root, run, fingerprint=fingerprint)
        return root

    return build


@pytest.fixture
def cli() -> Callable[..., CliResult]:
    """``cli("ls", "--root", ...)``: the ``neurolens`` command in-process: (exit status, stdout)."""

    def run(*argv: str) -> CliResult:
        out = io.StringIO()
        return main(list(argv), out=out), out.getvalue()

    return run
