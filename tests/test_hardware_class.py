"""Like with like: a run without a GPU is compared with baseline runs on its CPU model, a GPU
run with runs on its GPU; a candidate with no baseline on its hardware is never compared
across machines, and the answer says so. Through the real command (in-process)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from neurolens.storage.store import write_run
from tests.factories import Cli, make_run

XEON, EPYC = "Intel(R) Xeon(R) Platinum 8370C CPU @ 2.80GHz", "AMD EPYC 7763 64-Core Processor"
SIDES = ["--baseline-tag", "side=base", "--candidate-tag", "side=cand", "--fail-above", "5%"]


def record(
    root: Path, side: str, sessions: int, latency: float, cpu: str | None, gpu: str | None = None
) -> None:
    """``sessions`` sessions of two runs each at about ``latency`` ms on this hardware."""
    hardware: dict[str, Any] = {"gpu_name": gpu}
    if cpu is not None:
        hardware["cpu_model"] = cpu
    for s in range(sessions):
        for i in range(2):
            value = latency * (1 + 0.002 * ((s * 7 + i) % 5 - 2))
            write_run(
                root,
                make_run(
                    session_id=f"{side}-{cpu}-{gpu}-{s}",
                    tags={"side": side},
                    hardware=hardware,
                    metrics={"total_latency_ms": value},
                ),
            )


def compared(cli: Cli, root: Path, *extra: str) -> tuple[int, dict[str, Any]]:
    code, out = cli("compare", "--root", str(root), *SIDES, *extra, "--json")
    return code, json.loads(out)


def test_a_cpu_run_is_judged_against_its_own_cpu_model_only(tmp_path: Path, cli: Cli) -> None:
    # the baseline ran on two CPU models, one twice as slow; the candidate on the fast one
    record(tmp_path, "base", 5, 10.0, XEON)
    record(tmp_path, "base", 5, 20.0, EPYC)
    record(tmp_path, "cand", 1, 10.0, XEON)
    code, result = compared(cli, tmp_path)
    assert code == 0
    judged = [g for g in result["groups"] if g["verdict"] not in ("missing", "new")]
    assert [(g["group"]["cpu_model"], g["verdict"]) for g in judged] == [(XEON, "unchanged")]
    assert judged[0]["baseline_runs"] == 10  # the Xeon's runs only
    # its label names the fields, the CPU among them
    _, table = cli("compare", "--root", str(tmp_path), *SIDES)
    assert f"gpt2 onnxrt fp16 batch 8 seq 128 CPU {XEON}" in table


def test_no_baseline_on_the_candidates_cpu_is_said_and_fails_the_gate(tmp_path: Path, cli: Cli) -> None:
    record(tmp_path, "base", 5, 10.0, XEON)
    record(tmp_path, "cand", 1, 30.0, EPYC)  # 3x slower, but on another machine
    code, result = compared(cli, tmp_path)
    assert code != 0 and result["failed"] is True
    assert "the baseline ran on other hardware" in result["nothing_compared"]
    new = next(g for g in result["groups"] if g["verdict"] == "new")
    assert f"no baseline runs on this hardware (cpu_model {EPYC}), only on cpu_model {XEON}" in new["note"]
    assert "--group-by -gpu_name,-cpu_model" in new["note"]
    # and the way out it names works: compared across the CPUs, the slowdown fails
    code, result = compared(cli, tmp_path, "--group-by", "-gpu_name,-cpu_model")
    assert code == 1 and [g["verdict"] for g in result["groups"]] == ["regressed"]


def test_a_gpu_run_is_grouped_by_its_gpu_whatever_the_host_cpu(tmp_path: Path, cli: Cli) -> None:
    record(tmp_path, "base", 5, 10.0, XEON, gpu="NVIDIA H100")
    record(tmp_path, "cand", 1, 10.0, EPYC, gpu="NVIDIA H100")
    code, result = compared(cli, tmp_path)
    assert code == 0
    assert [(g["group"]["gpu_name"], g["group"]["cpu_model"], g["verdict"]) for g in result["groups"]] == [
        ("NVIDIA H100", None, "unchanged")
    ]


def test_runs_of_unknown_cpu_join_the_one_cpu_model_their_group_ran_on(tmp_path: Path, cli: Cli) -> None:
    # history recorded before the CPU model was: it joins the candidate's CPU ...
    record(tmp_path, "base", 5, 10.0, None)
    record(tmp_path, "cand", 1, 10.0, XEON)
    code, result = compared(cli, tmp_path)
    assert code == 0
    assert [(g["group"]["cpu_model"], g["verdict"], g["baseline_runs"]) for g in result["groups"]] == [
        (XEON, "unchanged", 10)
    ]
    # ... but where the group ran on two CPU models it cannot tell which: kept apart
    record(tmp_path, "base", 5, 20.0, EPYC)
    code, result = compared(cli, tmp_path)
    verdicts = sorted((str(g["group"]["cpu_model"]), g["verdict"]) for g in result["groups"])
    assert verdicts == [(EPYC, "missing"), (XEON, "new"), ("None", "missing")]
    assert code != 0
