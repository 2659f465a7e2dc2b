"""Inputs of the golden store (tests/golden): the bytes they give are pinned."""

from __future__ import annotations

from typing import Any

GOLDEN_FINGERPRINT: dict[str, Any] = {
    "python": "3.11.7",
    "git_commit": "0" * 40,
    "fingerprint_hash": "f" * 16,
}

GOLDEN_RUNS: list[dict[str, Any]] = [
    {
        "run_id": "01900000-0000-7000-8000-000000000001",
        "created_at": "2025-10-20T08:30:00Z",
        "model": "gpt2",
        "backend": "onnxrt",
        "precision": "fp16",
        "batch_size": 8,
        "seq_len": 128,
        "session_id": "01900000-0000-7000-8000-00000000000a",
        "fingerprint_hash": "f" * 16,
        "metrics": {"total_latency_ms": 12.5, "gpu_utilization": 73.0, "latency_p99_ms": 14.0},
        "latencies_ms": [12.0, 12.5, 14.0],
        "hardware": {
            "gpu_name": "NVIDIA H100 80GB HBM3",
            "driver_version": "550.54.15",
            "cuda_version": "12.4",
        },
        "tags": {"branch": "main", "résumé": "ünïcode"},
        "test": {"nodeid": "tests/test_a.py::test_x", "outcome": "passed"},
    },
    {
        "run_id": "01900000-0000-7000-8000-000000000002",
        "created_at": "2025-10-21T23:59:59.999999+02:00",
        "model": "bert",
        "backend": "torch",
        "precision": "fp32",
        "batch_size": 1,
        "seq_len": None,
        "metrics": {"total_latency_ms": 3, "gpu_utilization": None},
        "hardware": {"gpu_name": None, "cpu_model": "AMD EPYC 7B13 64-Core Processor"},
        "tags": {},
    },
]
