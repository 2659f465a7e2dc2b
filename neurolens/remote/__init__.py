"""Run history shared by many machines: a Delta Lake table on object storage (delta-rs).

The local store stays the embedded default; a remote table is what a fleet of CI runners
pushes to and reads back from. Delta Lake is the same design as the local store (an
append-only commit log that is the truth, checkpoints derived from it) with optimistic
concurrency on object stores, readable by Spark, Polars, DuckDB and Trino.

``deltalake`` is an optional extra (``pip install 'pytest-neurolens[remote]'``), imported
only when a remote is used.
"""
