"""The documentation names what the code has: every pytest option and ini setting in the
options table, every command on the command-line page; the README stays a front page whose
links lead somewhere."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from neurolens.cli import COMMANDS

REPO = Path(__file__).resolve().parents[1]


def test_every_pytest_option_and_ini_setting_is_in_the_options_table(pytestconfig: pytest.Config) -> None:
    from pytest_neurolens.settings import add_options

    parser = pytest.Parser(processopt=None, _ispytest=True)
    add_options(parser)
    flags = {name for option in parser.getgroup("neurolens").options for name in option.names()}
    inis = {name for name in parser._inidict if name.startswith("neurolens")}
    usage = (REPO / "docs" / "usage.md").read_text()
    table = [line for line in usage.splitlines() if line.startswith("| `--neurolens-")]
    documented_flags = {re.match(r"\| `(--neurolens-[a-z-]+)", line).group(1) for line in table}  # type: ignore[union-attr]
    documented_inis = {name for line in table for name in re.findall(r"`(neurolens_[a-z_]+)`", line)}
    assert flags and documented_flags == flags
    assert inis and documented_inis == inis


def test_every_command_is_on_the_command_line_page() -> None:
    page = (REPO / "docs" / "cli.md").read_text()
    assert {m.NAME for m in COMMANDS} <= set(re.findall(r"^\| `(\w+)`", page, flags=re.M)) | {
        name
        for row in re.findall(r"^\| `(\w+)`, `(\w+)`(?:, `(\w+)`)?", page, flags=re.M)
        for name in row
        if name
    }


def test_the_readme_is_a_front_page_whose_links_lead_somewhere() -> None:
    readme = (REPO / "README.md").read_text()
    assert len(readme.splitlines()) <= 150
    for target in re.findall(r"\]\((docs/[^)#]+)(?:#[^)]*)?\)", readme):
        assert (REPO / target).is_file(), target
