"""Builders of test data, shared by the test modules and the fixtures in conftest."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

# The ``cli`` fixture: (exit status, stdout) of the ``neurolens`` command run in-process
Cli = Callable[..., tuple[int, str]]

BASE_RUN: dict[str, Any] = {
    "model": "gpt2",
    "backend": "onnxrt",
    "precision": "fp16",
    "batch_size": 8,
    "seq_len": 128,
    "metrics": {"total_latency_ms": 12.5, "gpu_utilization": 73.0, "p99_ms": 14.0},
    "hardware": {"gpu_name": "NVIDIA H100 80GB HBM3", "driver_version": "550.54.15", "cuda_version": "12.4"},
    "tags": {"experiment": "smoke"},
}


def make_run(**overrides: Any) -> dict[str, Any]:
    """A valid run document with top-level fields replaced (``metrics`` etc. replaced whole)."""
    run = copy.deepcopy(BASE_RUN)
    run.update(overrides)
    return run
