"""The ``neurolens`` fixture's object: time calls (``measure``) or take numbers (``record``)."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import pytest

from pytest_neurolens.context import CONTEXT_FIELDS
from pytest_neurolens.measurement import Measurement, latency_metrics
from pytest_neurolens.runs import RunSink, keep, new_run
from pytest_neurolens.timing import DEFAULT_WARMUP, Budget, time_calls

if TYPE_CHECKING:
    from neurolens.storage.ledger.document import PreparedRun


class NeurolensFixture:
    """Measure calls and record the numbers as runs (see ``measure`` and ``record``)."""

    def __init__(
        self,
        item: pytest.Item,
        context: dict[str, Any],
        session_id: str,
        recorder: RunSink | None,
        repeats: int = 1,
        budget: Budget | None = None,
    ) -> None:
        self._item = item
        self._context = context
        self._session_id = session_id
        self._recorder = recorder
        self._repeats = repeats  # --neurolens-repeats: the default of measure(repeats=)
        # --neurolens-min-time, -max-time, -stability: the defaults of measure()'s budget
        self._budget = budget or Budget()

    def measure(
        self,
        fn: Callable[..., Any],
        *args: Any,
        warmup: int = DEFAULT_WARMUP,
        iterations: int | None = None,
        sync: Callable[[], Any] | None = None,
        repeats: int | None = None,
        min_time: float | None = None,
        max_time: float | None = None,
        stability: float | None = None,
        **kwargs: Any,
    ) -> Measurement:
        """Call ``fn(*args, **kwargs)`` to warm up, then time calls until the measurement is
        stable (``pytest_neurolens.timing``'s rule: at least ``min_time`` seconds, at most
        ``max_time``, the last three windows' medians within ``stability``, a fraction;
        defaults from ``--neurolens-min-time``, ``-max-time`` and ``-stability``), or time
        exactly ``iterations`` calls after ``warmup`` calls.

        Context fields (model, backend, precision, batch_size, seq_len, tags) in
        ``kwargs`` override the marker for this run and are not passed to ``fn``.
        ``sync`` (e.g. ``torch.cuda.synchronize``) is called before each clock read.

        ``repeats`` (default ``--neurolens-repeats``, else 1) measures in that many rounds,
        each with its own warmup, each a run of its own (``test.repeat`` is its number):
        ``compare`` tests significance over the rounds, so one session can give a verdict.
        The cost is ``repeats`` times the calls. With rounds, the measurement returned
        pools every round's latencies and lists the rounds in ``rounds``.
        """
        __tracebackhide__ = True  # a refused run shows the test's line and the error
        if not callable(fn):
            raise TypeError(f"measure() needs a callable, got {type(fn).__name__}")
        _check_count("warmup", warmup, 0)
        if iterations is not None:
            _check_count("iterations", iterations, 1)
        budget = _budget(self._budget, warmup, iterations, min_time, max_time, stability)
        repeats = self._repeats if repeats is None else repeats
        _check_count("repeats", repeats, 1)
        overrides = {k: kwargs.pop(k) for k in (*CONTEXT_FIELDS, "tags") if k in kwargs}
        runs = [self._new_run(overrides) for _ in range(repeats)]
        if repeats > 1:
            for number, run in enumerate(runs):
                run["test"].update(repeat=number, repeats=repeats)
        # each run validated once, here, before any call: a bad field fails before measuring
        prepared = list(map(_validate, runs))  # no frame of its own in a traceback
        rounds = [
            self._measure_round(run, checked, fn, args, kwargs, budget, sync)
            for run, checked in zip(runs, prepared, strict=True)
        ]
        if repeats == 1:
            return rounds[0]
        pooled = [ms for measurement in rounds for ms in measurement.run["latencies_ms"]]
        stats, metrics = latency_metrics(pooled, runs[0]["batch_size"], iterations=len(pooled))
        pooled_run = {**runs[0], "run_id": None, "metrics": metrics}
        return Measurement(run=pooled_run, latency=stats, recorded=rounds[0].recorded, rounds=rounds)

    def _measure_round(
        self,
        run: dict[str, Any],
        prepared: PreparedRun,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        budget: Budget,
        sync: Callable[[], Any] | None,
    ) -> Measurement:
        """One round: warm up, time the calls, and queue the run."""
        sampler = self._recorder.sampler() if self._recorder is not None else None
        with sampler if sampler is not None else contextlib.nullcontext():
            timed = time_calls(lambda: fn(*args, **kwargs), budget, sync)
        latencies_ms = [ns / 1e6 for ns in timed.samples_ns]
        stats, metrics = latency_metrics(latencies_ms, run["batch_size"], **timed.metrics(budget.stability))
        metrics.update(sampler.metrics() if sampler is not None else {"gpu_utilization": None})
        if sampler is not None and sampler.error and run["hardware"]:
            run["hardware"]["nvml_error"] = run["hardware"].get("nvml_error") or sampler.error
        run["metrics"] = metrics
        run["latencies_ms"] = latencies_ms
        measured = prepared.with_measurement(metrics, latencies_ms, run["hardware"])
        return keep(self._item, Measurement(run=run, latency=stats, prepared=measured), self._recorder)

    def record(
        self,
        *,
        total_latency_ms: float,
        gpu_utilization: float | None = None,
        higher_is_better: Mapping[str, bool] | None = None,
        **kwargs: Any,
    ) -> Measurement:
        """Record a run from numbers the test measured itself; other keywords are metrics.
        ``higher_is_better`` states which way is better for metrics whose names do not say
        (``{"speedup": True}``); ``compare`` reads it from the runs."""
        __tracebackhide__ = True  # a refused run shows the test's line and the error
        overrides = {k: kwargs.pop(k) for k in (*CONTEXT_FIELDS, "tags") if k in kwargs}
        run = self._new_run(overrides)
        run["metrics"] = {"total_latency_ms": total_latency_ms, "gpu_utilization": gpu_utilization, **kwargs}
        if higher_is_better:
            run["higher_is_better"] = dict(higher_is_better)
        prepared = _validate(run)  # once, with the real metrics
        return keep(self._item, Measurement(run=run, prepared=prepared), self._recorder)

    def _new_run(self, overrides: dict[str, Any]) -> dict[str, Any]:
        return new_run(self._item, self._context, self._session_id, self._recorder, overrides)


def _check_count(name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def _budget(
    default: Budget,
    warmup: int,
    iterations: int | None,
    min_time: float | None,
    max_time: float | None,
    stability: float | None,
) -> Budget:
    """The session's budget with this call's keywords applied; a bad one names itself."""
    for name, value in (("min_time", min_time), ("max_time", max_time), ("stability", stability)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise TypeError(f"{name} must be a number, got {value!r}")
    chosen = {
        "min_time_s": default.min_time_s if min_time is None else float(min_time),
        "max_time_s": default.max_time_s if max_time is None else float(max_time),
        "stability": default.stability if stability is None else float(stability),
    }
    if min_time is not None and max_time is None:  # a longer minimum widens the session's maximum
        chosen["max_time_s"] = max(chosen["max_time_s"], chosen["min_time_s"])
    return dataclasses.replace(default, warmup=warmup, iterations=iterations, **chosen)


def _validate(run: dict[str, Any]) -> PreparedRun:
    from neurolens.errors import RunValidationError
    from neurolens.storage.ledger.document import PreparedRun

    __tracebackhide__ = True  # the test's own input: its line and the error, not our frames
    try:
        return PreparedRun(run)
    except RunValidationError as exc:
        problem = exc
    raise RunValidationError(problem.field, problem.message) from None
