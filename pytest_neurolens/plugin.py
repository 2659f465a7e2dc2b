"""pytest-neurolens: record inference measurements of a test session as runs in a store.

Off unless a store is set (``--neurolens-store`` or the ``neurolens_store`` ini setting):
then a Recorder is registered that snapshots the hardware once, writes each test's runs
as the test finishes and counts them at the end. Without a store the
``neurolens`` fixture still measures, so tests behave the same, but nothing is written.
This module imports only pytest and the standard library at load time; each job lives
in its own module (settings, context, fixture, recorder, benchmark bridge, hooks).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Generator

import pytest

from pytest_neurolens.context import MARKER, NeurolensContextError, item_context
from pytest_neurolens.fixture import NeurolensFixture
from pytest_neurolens.settings import Settings, add_options

settings_key = pytest.StashKey[Settings]()
session_id_key = pytest.StashKey[str]()
RECORDER_NAME = "neurolens-recorder"


def pytest_addoption(parser: pytest.Parser) -> None:
    add_options(parser)


def pytest_addhooks(pluginmanager: pytest.PytestPluginManager) -> None:
    from pytest_neurolens import hooks

    pluginmanager.add_hookspecs(hooks)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", MARKER)
    settings = Settings.from_config(config)
    config.stash[settings_key] = settings
    workerinput = getattr(config, "workerinput", None) or {}
    session_id = workerinput.get("neurolens_session_id")
    if session_id is None:
        from neurolens.storage.ledger.run_ids import new_run_id

        session_id = new_run_id()
    config.stash[session_id_key] = session_id
    if settings.confirm:  # the gate may re-run tests: their runs and this session's share a tag
        from pytest_neurolens.confirmation import GATE_TAG

        settings = dataclasses.replace(settings, tags={**settings.tags, GATE_TAG: session_id})
        config.stash[settings_key] = settings
    if settings.store is not None:
        from pytest_neurolens.recorder import Recorder, XdistBridge

        recorder = Recorder(config, settings, session_id)
        config.pluginmanager.register(recorder, RECORDER_NAME)
        if config.pluginmanager.hasplugin("xdist"):
            config.pluginmanager.register(XdistBridge(recorder), "neurolens-xdist")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    # a marker or context error is the user's to fix: its message, not a traceback into the plugin
    if call.excinfo is not None and call.excinfo.errisinstance(NeurolensContextError):
        report.longrepr = f"neurolens: {call.excinfo.value}"
    return report


@pytest.fixture
def neurolens(request: pytest.FixtureRequest) -> NeurolensFixture:
    """Measure inference calls; each measurement becomes a run in the store (if one is set)."""
    config = request.config
    recorder = config.pluginmanager.get_plugin(RECORDER_NAME)
    settings = config.stash[settings_key]
    context = item_context(request.node, settings.tags)
    return NeurolensFixture(
        request.node, context, config.stash[session_id_key], recorder, settings.repeats, settings.budget
    )
