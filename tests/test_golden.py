"""The bytes a store holds are pinned: run files, manifest lines and the rebuilt index."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pyarrow
import pyarrow.parquet as pq

from neurolens.storage.store import compact_index, rebuild_index_from_manifest, write_run
from tests.golden_inputs import GOLDEN_FINGERPRINT, GOLDEN_RUNS

GOLDEN = Path(__file__).parent / "golden"


def write_golden_store(root: Path) -> None:
    for i, run in enumerate(GOLDEN_RUNS):
        write_run(root, run, fingerprint=GOLDEN_FINGERPRINT if i == 0 else None)


def test_run_files_and_manifest_lines_are_byte_identical(tmp_path: Path) -> None:
    write_golden_store(tmp_path)
    assert (tmp_path / "_manifest.jsonl").read_bytes() == (GOLDEN / "manifest.jsonl").read_bytes()
    stored = {p.name: p.read_bytes() for p in tmp_path.rglob("*.json")}
    expected = {p.name: p.read_bytes() for p in GOLDEN.glob("*.json")}
    assert stored == expected


def test_rebuilt_index_is_byte_identical_and_equals_compaction(tmp_path: Path) -> None:
    write_golden_store(tmp_path)
    compact_index(tmp_path)
    compacted = (tmp_path / "_index.parquet").read_bytes()
    (tmp_path / "_index.parquet").unlink()
    rebuilt = rebuild_index_from_manifest(tmp_path).read_bytes()
    assert rebuilt == compacted
    digest, _, version = (GOLDEN / "index.sha256").read_text().split()
    table = pq.read_table(tmp_path / "_index.parquet")
    assert table.num_rows == len(GOLDEN_RUNS)
    assert table.column("run_id").to_pylist() == [r["run_id"] for r in GOLDEN_RUNS]
    # Parquet bytes carry the writer's version ("created_by"): pinned for the pyarrow
    # that made the golden digest; other versions are held to the content above.
    if pyarrow.__version__ == version:
        assert hashlib.sha256(rebuilt).hexdigest() == digest
