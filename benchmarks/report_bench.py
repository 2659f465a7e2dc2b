#!/usr/bin/env python3
"""`neurolens report` over a large store: generation time, page size, time to open.

    python benchmarks/report_bench.py [--runs 10000 1000000] [--groups 1000]

A store of N runs in G groups, one run per group per session (N / G sessions), the driver
changing half way, synthesised as manifest lines (as store_bench does). For each size:
the whole `neurolens report` command, the page's size, and in Debian's chromium (Playwright)
the time from navigation to the first chart drawn, and to every chart drawn.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script: the repository

from benchmarks.store_bench import make_store
from neurolens.storage.ledger.manifest import encode_tags
from tests.browser import BROWSER_ARGS, CHROMIUM

CLI = str(Path(sys.executable).with_name("neurolens"))
BACKENDS = ["onnxrt", "tensorrt", "torch", "openvino"]


def entry(i: int, groups: int, sessions: int) -> dict[str, Any]:
    g, s = i % groups, i // groups
    latency = 5.0 + g % 17 + (i % 13) / 100 + (1.5 if g % 10 == 0 and s > sessions * 0.8 else 0.0)
    run_id = f"{i:012x}-0000-7000-8000-{i:012x}"
    backend = BACKENDS[g % 4]
    day = f"2025-{1 + (s * 12 // max(sessions, 1)) % 12:02d}-{1 + s % 28:02d}"
    return {
        "run_id": run_id,
        "created_at": f"{day}T{s % 24:02d}:00:00.{i % 1000000:06d}Z",
        "day": day,
        "model": f"model-{g // 40}",
        "backend": backend,
        "precision": "fp16",
        "batch_size": 2 ** (g % 10),
        "seq_len": 128,
        "total_latency_ms": latency,
        "gpu_utilization": 50.0 + g % 40,
        "gpu_name": "NVIDIA H100 80GB HBM3",
        "driver_version": "550.54.15" if s < sessions // 2 else "555.42.02",
        "cuda_version": "12.4",
        "run_json": f"{day.replace('-', '/')}/{backend}/{run_id}.json",
        "fp_json": None,
        "tags": encode_tags({"branch": "main"}),
        "sha256": "0" * 64,
        "session_id": f"session-{s:06d}",
        "fingerprint_hash": None,
        "outcome": "passed",
        "repeat": None,
        "latency_p99_ms": latency * 1.3,
    }


def make_report_store(root: Path, runs: int, groups: int) -> Path:
    sessions = max(1, runs // groups)
    return make_store(root, runs, lambda i: entry(i, groups, sessions))


def open_times(page_path: Path) -> tuple[float, float, float]:
    """Seconds to the page loaded (the overview shown), to a chart drawn once scrolled to,
    and to every chart drawn, in headless chromium."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS)
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        start = time.perf_counter()
        page.goto(page_path.as_uri(), timeout=120_000)
        loaded = time.perf_counter() - start
        start = time.perf_counter()
        page.locator(".chart").first.scroll_into_view_if_needed()
        page.wait_for_selector(".chart .main-svg", timeout=120_000)
        chart = time.perf_counter() - start
        start = time.perf_counter()
        page.evaluate("window.neurolensRenderAll()")
        every = time.perf_counter() - start
        browser.close()
    return loaded, chart, every


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, nargs="+", default=[10_000, 1_000_000])
    parser.add_argument("--groups", type=int, default=1000)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="neurolens-report-bench-"))
    try:
        for runs in args.runs:
            groups = min(args.groups, runs)
            root = make_report_store(work / f"store-{runs}", runs, groups)
            out = work / f"report-{runs}.html"
            start = time.perf_counter()
            done = subprocess.run(
                [CLI, "report", "--root", str(root), "--out", str(out)], capture_output=True, text=True
            )
            seconds = time.perf_counter() - start
            if done.returncode != 0:
                raise SystemExit(done.stderr)
            loaded, chart, every = open_times(out)
            print(
                f"{runs:>9,} runs, {groups:,} groups, {runs // groups:,} sessions: "
                f"report {seconds:5.1f} s "
                f"(whole command), page {out.stat().st_size / 1e6:4.1f} MB; "
                f"chromium: loaded {loaded:4.1f} s, "
                f"a chart scrolled to {chart:4.2f} s, every chart {every:5.1f} s"
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
