#!/usr/bin/env python3
"""What hostile stores cost the readers: peak memory and time against an honest store.

    python benchmarks/hostile_bench.py [--runs 100000] [--line-mb 200] [--document-mb 500]

Each command runs in a fresh process (its own peak RSS), on a store of ``--runs`` synthetic
manifest lines, then on the same store with one hand-made line of ``--line-mb`` MB; merge of
an archive holding one run document of ``--document-mb`` MB (compressed to a few hundred
KB) against an archive of the honest run; ``ls --limit 3`` under an index of 60,000
one-row row groups against the honest index; rebuild of a manifest whose lines and tags
are spaced out (json.dumps' defaults) against the canonical one. Prints one figure per
line, with the ratio to the honest case measured in this run.
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script: the repository

from benchmarks.peak import NEUROLENS, measured
from benchmarks.store_bench import make_store, synthetic_entry
from neurolens.storage.ledger.manifest import COLUMNS
from neurolens.storage.store import write_run


def entry(i: int) -> dict[str, object]:
    return {**dict.fromkeys(COLUMNS), **synthetic_entry(i)}


def report(name: str, honest: tuple[float, float], hostile: tuple[float, float]) -> None:
    print(
        f"{name}: {hostile[0]:.2f} s, {hostile[1]:.0f} MiB peak "
        f"(honest: {honest[0]:.2f} s, {honest[1]:.0f} MiB; ratio {hostile[1] / honest[1]:.2f}x memory)"
    )


def long_line(work: Path, runs: int, line_mb: int) -> None:
    honest = make_store(work / "honest", runs, entry)
    hostile = work / "long_line"
    shutil.copytree(honest, hostile)
    with open(hostile / "_manifest.jsonl", "ab") as manifest:
        manifest.write(b'{"tags":"' + b"x" * (line_mb * 1024 * 1024) + b'"}\n')
    # the synthetic store has no run files: verify reports them missing (exit 1), as it should
    for argv, expect in ((["ls", "--limit", "3"], (0,)), (["verify"], (1,)), (["rebuild"], (0,))):
        report(
            f"{' '.join(argv)} with a {line_mb} MB manifest line ({runs:,} runs)",
            measured(*argv, "--root", str(honest), expect=expect),
            measured(*argv, "--root", str(hostile), expect=expect),
        )


def big_document(work: Path, document_mb: int) -> None:
    src = work / "one_run"
    stored = write_run(src, {"model": "m", "backend": "b", "precision": "p", "batch_size": 1,
                             "metrics": {"total_latency_ms": 1.0}})  # fmt: skip
    relative = str(Path(stored["run_json"]).relative_to(src))
    archives = {}
    for name, body in (
        ("honest", Path(stored["run_json"]).read_bytes()),
        ("big", b" " * (document_mb << 20)),
    ):
        archives[name] = work / f"{name}.tar.gz"
        with tarfile.open(archives[name], "w:gz") as tar:
            for member, data in (
                ("_manifest.jsonl", (src / "_manifest.jsonl").read_bytes()),
                (relative, body),
            ):
                info = tarfile.TarInfo(member)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    size = archives["big"].stat().st_size / 1024
    report(
        f"merge of a {size:.0f} KB archive holding a {document_mb} MB run document (refused by name)",
        measured("merge", str(archives["honest"]), "--root", str(work / "dest_honest")),
        measured("merge", str(archives["big"]), "--root", str(work / "dest_big"), expect=(1,)),  # refused
    )


def index_shape(work: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    honest = make_store(work / "six", 6, entry)
    hostile = work / "six_shaped"
    shutil.copytree(honest, hostile)
    index = hostile / "_index.parquet"
    rows, claims = pq.read_table(index), pq.ParquetFile(index).metadata.metadata
    with pq.ParquetWriter(index, rows.schema) as writer:
        writer.write_table(pa.concat_tables([rows] * 10_000), row_group_size=1)
        writer.add_key_value_metadata({k.decode(): v.decode() for k, v in claims.items()})
    report(
        "ls --limit 3 under an index of 60,000 one-row row groups (6 runs)",
        measured("ls", "--limit", "3", "--root", str(honest)),
        measured("ls", "--limit", "3", "--root", str(hostile)),
    )


def spaced_manifest(work: Path, runs: int) -> None:
    canonical = make_store(work / "canonical", runs, entry)
    spaced = work / "spaced"
    spaced.mkdir()
    with open(canonical / "_manifest.jsonl") as lines, open(spaced / "_manifest.jsonl", "w") as out:
        for line in lines:
            parsed = json.loads(line)
            parsed["tags"] = json.dumps(json.loads(parsed["tags"]))
            out.write(json.dumps(parsed) + "\n")
    times: dict[str, float] = {}
    for root in (canonical, spaced, canonical, spaced):  # twice each, the best kept
        start = time.perf_counter()
        subprocess.run([NEUROLENS, "rebuild", "--root", str(root)], capture_output=True, check=True)
        times[root.name] = min(times.get(root.name, float("inf")), time.perf_counter() - start)
    print(
        f"rebuild of {runs:,} spaced-out lines: {times['spaced']:.2f} s against {times['canonical']:.2f} s "
        f"canonical ({times['spaced'] / times['canonical']:.2f}x)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=100_000)
    parser.add_argument("--line-mb", type=int, default=200)
    parser.add_argument("--document-mb", type=int, default=500)
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="hostile_bench_", dir=args.workdir))
    try:
        long_line(work, args.runs, args.line_mb)
        big_document(work, args.document_mb)
        index_shape(work)
        spaced_manifest(work, args.runs)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
