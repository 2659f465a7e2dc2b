"""A test's run document before it is measured, and the queue of runs its teardown writes.

The fixture and the pytest-benchmark bridge make runs here; what they need of the recorder
(hardware on each run, a GPU sampler) is the ``RunSink`` protocol, so neither imports it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

import pytest

from pytest_neurolens.context import CONTEXT_FIELDS, merge_context, require_fields
from pytest_neurolens.measurement import Measurement

if TYPE_CHECKING:
    from neurolens.hardware.nvml import UtilizationSampler

pending_key = pytest.StashKey[list[Measurement]]()


class RunSink(Protocol):
    """Where runs go when a store is set (the recorder)."""

    def annotate(self, run: dict[str, Any]) -> None:
        """Add the session's hardware snapshot and fingerprint hash to ``run``."""

    def sampler(self) -> UtilizationSampler:
        """A GPU utilization sampler for one measurement."""


def new_run(
    item: pytest.Item,
    context: dict[str, Any],
    session_id: str,
    sink: RunSink | None,
    overrides: dict[str, Any],
) -> dict[str, Any]:
    """A run document of the test's context (``overrides`` on top), not yet measured nor
    validated. It has the same keys with or without a store; without one, ``hardware`` is
    empty and ``fingerprint_hash`` null (nothing is sampled that would not be kept)."""
    from neurolens.storage.ledger.document import utc_now
    from neurolens.storage.ledger.run_ids import new_run_id

    merged = merge_context(context, overrides, "neurolens fixture")
    require_fields(merged, item.nodeid)
    run: dict[str, Any] = {name: merged.get(name) for name in CONTEXT_FIELDS}
    run.update(
        run_id=new_run_id(),
        created_at=utc_now(),
        tags=merged.get("tags", {}),
        test={"nodeid": item.nodeid, "outcome": None},
        metrics={"total_latency_ms": 0.0},
        session_id=session_id,
        hardware={},
        fingerprint_hash=None,
    )
    if sink is not None:
        sink.annotate(run)
    return run


def keep(item: pytest.Item, measurement: Measurement, sink: RunSink | None) -> Measurement:
    """Queue a measurement to be written when the test's teardown ends."""
    measurement.recorded = sink is not None
    item.stash.setdefault(pending_key, []).append(measurement)
    return measurement
