"""``neurolens export``: the selected runs as typed columns in a file an analyst opens."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, TextIO

from neurolens.cli.common import UsageError, location_of, plural, progress

NAME = "export"
READS_REMOTE = True
SUMMARY = "write runs as typed columns to Parquet, CSV or JSON lines"
DESCRIPTION = (
    "Write the runs the filters select to --out as typed columns (in the store's order, read a "
    "part of the store at a time; newest first with --session): created_at a "
    "UTC timestamp, day a date, tags a map (a JSON object in CSV), every latency statistic, "
    "throughput, GPU utilization, memory and energy, the sample count and the hardware as "
    "columns of their own. The format follows the file's extension: .parquet, .csv, .jsonl. "
    "Runs are read a batch at a time (bounded memory); the file appears whole or not at all."
)
EPILOG = """\
examples:
  neurolens export --out runs.parquet
  neurolens export --out main.csv --tag branch=main --day 2025-10-20
  neurolens export --root s3://bucket/neurolens --out week.jsonl --model gpt2
"""
FORMATS = {".parquet": "parquet", ".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl"}


def register(parser: argparse.ArgumentParser) -> None:
    from neurolens.storage.index.filters import add_filter_arguments

    parser.add_argument(
        "--out", required=True, metavar="FILE", help="the file to write (.parquet, .csv, .jsonl)"
    )
    add_filter_arguments(parser)


def run(args: argparse.Namespace, out: TextIO) -> int:
    from neurolens.output_files import written_whole
    from neurolens.storage.index.filters import filter_from_args
    from neurolens.typed_columns import typed_schema
    from neurolens.typed_runs import typed_batches

    target = Path(args.out)
    kind = FORMATS.get(target.suffix.lower())
    if kind is None:
        raise UsageError(f"--out {args.out}: give the file a .parquet, .csv or .jsonl extension")
    if target.is_dir():
        raise UsageError(f"--out {args.out} is a folder; give a file name")
    source = location_of(args)
    unreadable: list[str] = []
    batches = typed_batches(
        source, filter_from_args(args), tags_as_json=kind == "csv", unreadable=unreadable, streamed=True
    )
    schema = typed_schema(tags_as_json=kind == "csv")
    shown = progress(sys.stderr, "exported")
    written = 0
    try:
        with written_whole(target) as tmp, _writer(kind, tmp, schema) as write:
            for batch in batches:
                write(batch)
                written += batch.num_rows
                shown(written, None)
        shown(written, written)  # the line ends
    finally:
        source.close()
    out.write(f"wrote {plural(written, 'run')} to {target} ({kind})\n")
    if unreadable:
        sys.stderr.write(
            f"neurolens: warning: {plural(len(unreadable), 'run')} without a readable document "
            f"(metrics from the index only), e.g. {unreadable[0]}\n"
        )
    return 0


class _writer:
    """A context whose value writes one typed batch to the file in ``kind``."""

    def __init__(self, kind: str, path: Path, schema: Any) -> None:
        self.kind, self.path, self.schema = kind, path, schema
        self._close: Any = None

    def __enter__(self) -> Any:
        if self.kind == "parquet":
            import pyarrow.parquet as pq

            writer = pq.ParquetWriter(self.path, self.schema, compression="zstd")
            self._close = writer.close
            return writer.write_table
        if self.kind == "csv":
            import pyarrow.csv as pa_csv

            writer = pa_csv.CSVWriter(self.path, self.schema)
            self._close = writer.close
            return writer.write_table
        handle = open(self.path, "w", encoding="utf-8")
        self._close = handle.close

        def write(batch: Any) -> None:
            for row in batch.to_pylist():
                row["created_at"] = row["created_at"].strftime("%Y-%m-%dT%H:%M:%S.%fZ")
                row["day"] = row["day"].isoformat()
                row["tags"] = dict(row["tags"] or [])
                handle.write(json.dumps(row, ensure_ascii=False, allow_nan=False) + "\n")

        return write

    def __exit__(self, *exc: object) -> None:
        self._close()
