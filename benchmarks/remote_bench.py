#!/usr/bin/env python3
"""Remote tables: a push, and `ls` with a tag filter on a large table against the local store.

    python benchmarks/remote_bench.py [--push-runs 10000] [--rows 1000000]

* push: ``neurolens push`` of a store of ``--push-runs`` real run files into a new table,
  on a local path (``file``) and on S3 (moto's server on 127.0.0.1, in its own process),
  then the same push again (nothing to add).
* ls: ``neurolens ls --tag branch=pr-42 --limit 20 --json`` (whole command) on a local store
  of ``--rows`` runs and on a Delta table holding the same rows (partitioned by day, written
  in one go), locally and on moto, beside ``python -c "import pyarrow"`` and ``import
  deltalake`` from the same run. The table's documents are placeholders: ``ls`` never reads
  them.
Needs the ``remote`` extra and moto (the ``dev`` extra).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script: the repository

from benchmarks.merge_verify_bench import build_store
from benchmarks.store_bench import make_store, synthetic_entry
from neurolens.remote.layout import rows_for
from neurolens.remote.table import RemoteTable, now
from neurolens.storage.ledger.manifest import COLUMNS
from tests.s3_server import running_s3_server

CLI = str(Path(sys.executable).with_name("neurolens"))


def timed(argv: list[str], repeat: int = 1) -> tuple[float, str]:
    """The best wall time of ``repeat`` runs of a command; its first output line."""
    best, line = float("inf"), ""
    for _ in range(repeat):
        start = time.perf_counter()
        done = subprocess.run(argv, capture_output=True, text=True)
        best = min(best, time.perf_counter() - start)
        if done.returncode != 0:
            raise SystemExit(f"{' '.join(argv)} failed: {done.stderr.strip()}")
        line = (done.stdout.strip().splitlines() or [""])[0]
    return best, line


def table_of(rows: int) -> Any:
    """``rows`` synthetic runs in the typed layout (what push writes)."""
    pushed_at = now()
    records = [
        {
            **dict.fromkeys(COLUMNS),
            **synthetic_entry(i),
            "document": "{}",
            "fingerprint": None,
            "pushed_at": pushed_at,
        }
        for i in range(rows)
    ]
    return rows_for(records, typed=True)


def fill_table(url: str, data: Any) -> float:
    import deltalake

    remote = RemoteTable(url)
    remote.create()
    start = time.perf_counter()
    deltalake.write_deltalake(
        url, data, mode="append", partition_by=["day"], storage_options=dict(remote.storage_options)
    )
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--push-runs", type=int, default=10_000)
    parser.add_argument("--rows", type=int, default=1_000_000)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="neurolens-remote-bench-"))
    import boto3

    try:
        with running_s3_server() as endpoint:
            os.environ.update(
                AWS_ENDPOINT_URL=endpoint,
                AWS_ALLOW_HTTP="true",
                AWS_ACCESS_KEY_ID="bench",
                AWS_SECRET_ACCESS_KEY="bench",
                AWS_REGION="us-east-1",
            )
            bucket = f"bench-{uuid.uuid4().hex[:10]}"
            boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket=bucket)
            store = build_store(work / "push-store", args.push_runs, "push")
            print(f"push of {args.push_runs:,} runs (whole command):")
            for name, url in (("local table", str(work / "push-table")), ("moto S3", f"s3://{bucket}/push")):
                first, line = timed([CLI, "push", url, "--root", str(store)])
                again, _ = timed([CLI, "push", url, "--root", str(store)])
                print(f"  {name:<12} {first:6.2f} s ({line}); again: {again:5.2f} s")

            print(
                f"ls --tag branch=pr-42 --limit 20 --json at {args.rows:,} runs (whole command, best of 3):"
            )
            base, _ = timed([sys.executable, "-c", "import pyarrow"], repeat=3)
            delta_import, _ = timed([sys.executable, "-c", "import deltalake, pyarrow"], repeat=3)
            local = make_store(work / "ls-store", args.rows)
            data = table_of(args.rows)
            tables = {"local table": str(work / "ls-table"), "moto S3": f"s3://{bucket}/ls"}
            written = {name: fill_table(url, data) for name, url in tables.items()}
            query = ["ls", "--tag", "branch=pr-42", "--limit", "20", "--json"]
            local_s, _ = timed([CLI, *query, "--root", str(local)], repeat=3)
            print(f"  {'import pyarrow':<22} {base:6.3f} s")
            print(f"  {'import deltalake':<22} {delta_import:6.3f} s")
            print(f"  {'local store':<22} {local_s:6.3f} s")
            for name, url in tables.items():
                seconds, _ = timed([CLI, *query, "--root", url], repeat=3)
                print(
                    f"  {name:<22} {seconds:6.3f} s (ratio to the local store {seconds / local_s:.2f}; "
                    f"table written in {written[name]:.1f} s)"
                )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
