"""Property-based round trips: what is written is what is read back, in any store."""

from __future__ import annotations

import datetime as dt
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from neurolens import load_runs
from neurolens.errors import RunValidationError
from neurolens.sources import query
from neurolens.storage.store import compact_index, rebuild_index_from_manifest, write_run

names = st.text(st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=12)
segments = names.filter(lambda s: "/" not in s and "\\" not in s and s not in {".", ".."})
tag_maps = st.dictionaries(names, st.text(max_size=8), max_size=3)
moments = st.datetimes(
    min_value=dt.datetime(2000, 1, 1), max_value=dt.datetime(2100, 1, 1), timezones=st.just(dt.timezone.utc)
)

runs = st.fixed_dictionaries(
    {
        "model": st.sampled_from(["gpt2", "bert", "résumé"]),
        "backend": segments,
        "precision": st.sampled_from(["fp32", "fp16"]),
        "batch_size": st.integers(1, 1024),
        "seq_len": st.none() | st.integers(0, 4096),
        "metrics": st.fixed_dictionaries(
            {
                "total_latency_ms": st.floats(0, 1e6, allow_nan=False),
                "gpu_utilization": st.none() | st.floats(0, 100),
            }
        ),
        "tags": tag_maps,
        "created_at": moments.map(lambda m: m.isoformat()),
    }
)


def _matches(run: dict[str, Any], filters: dict[str, Any]) -> bool:
    for name, value in filters.items():
        if name == "tags":
            if any(run["tags"].get(k) != v for k, v in value.items()):
                return False
        elif (run["created_at"][:10] if name == "day" else run[name]) != value:
            return False
    return True


def _expected(written: list[dict[str, Any]]) -> list[str]:
    ordered = sorted(written, key=lambda r: (r["created_at"], r["run_id"]), reverse=True)
    return [r["run_id"] for r in ordered]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(runs, min_size=1, max_size=8), st.integers(0, 7))
def test_round_trip_rebuild_and_filters(batch: list[dict[str, Any]], pick: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        written = []
        for run in batch:
            result = write_run(root, run)
            written.append({**run, "run_id": result["run_id"], "created_at": result["created_at"]})
        assert list(load_runs(root)["run_id"]) == _expected(written)

        compacted = compact_index(root).read_bytes()
        assert rebuild_index_from_manifest(root).read_bytes() == compacted

        probe = written[pick % len(written)]
        for filters in (
            {"backend": probe["backend"]},
            {"model": probe["model"], "precision": probe["precision"]},
            {"day": probe["created_at"][:10]},
            {"tags": probe["tags"]},
        ):
            got = [r["run_id"] for r in query(root, **filters)]
            want = _expected([r for r in written if _matches(r, filters)])
            assert got == want, filters
        rows = {r["run_id"]: r for r in query(root)}
        for run in written:
            row = rows[run["run_id"]]
            assert row["tags"] == run["tags"]
            assert row["batch_size"] == run["batch_size"] and row["seq_len"] == run["seq_len"]
            assert row["total_latency_ms"] == run["metrics"]["total_latency_ms"]


# Documents at the edges of what the schema allows: whatever write_run accepts, every
# reader must read.
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=12,
)
edge_runs = st.fixed_dictionaries(
    {
        "model": st.text(min_size=1, max_size=10),
        "backend": segments,
        "precision": st.text(min_size=1, max_size=5),
        "batch_size": st.integers(min_value=-5) | st.floats(allow_nan=False),
        "seq_len": st.none() | st.integers() | st.floats(allow_nan=False),
        "metrics": st.fixed_dictionaries(
            {"total_latency_ms": st.integers() | st.floats(allow_nan=False)},
            optional={
                "gpu_utilization": st.none() | st.floats(0, 100),
                "other": st.integers() | st.text(max_size=4),
            },
        ),
        "tags": st.dictionaries(st.text(min_size=1, max_size=6), st.text(max_size=6), max_size=3),
        "created_at": st.datetimes(
            min_value=dt.datetime(1, 1, 2), max_value=dt.datetime(9999, 12, 30), timezones=st.timezones()
        ).map(lambda m: m.isoformat()),
        "extra": st.dictionaries(st.text(max_size=4), json_values, max_size=3),
    }
)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(edge_runs)
def test_whatever_write_run_accepts_every_reader_reads(run: dict[str, Any]) -> None:
    import io
    import json
    import warnings

    from neurolens.cli import main
    from neurolens.errors import RunValidationError
    from neurolens.storage.exchange.merge import merge_stores
    from neurolens.storage.exchange.verify import verify_store

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "store"
        try:
            result = write_run(root, run)
        except RunValidationError as exc:
            assert exc.field != "" or "mapping" in str(exc)  # a refusal names its field
            return
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no reader may skip an accepted run
            out = io.StringIO()
            assert main(["ls", "--root", str(root), "--json"], out=out) == 0
            assert [r["run_id"] for r in json.loads(out.getvalue())] == [result["run_id"]]
            out = io.StringIO()
            assert main(["show", result["run_id"], "--root", str(root), "--json"], out=out) == 0
            assert json.loads(out.getvalue())["run_id"] == result["run_id"]
            assert main(["ls", "--root", str(root)], out=io.StringIO()) == 0
            rebuild_index_from_manifest(root)
            assert verify_store(root, full=True).clean
            report = merge_stores(Path(tmp) / "merged", [root])
            assert report.complete and report.added == 1


# --- the fast schema check agrees with jsonschema (the reference) ---------------------------

schema_probe_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=6,
)
FIELDS = [
    *("model", "backend", "precision", "batch_size", "seq_len", "metrics", "tags", "test", "hardware"),
    *("latencies_ms", "session_id", "fingerprint_hash", "extra", "run_id", "schema_version"),
]
NESTED = ["total_latency_ms", "gpu_utilization", "outcome", "repeat", "nodeid", "gpu_name", "k"]


@settings(max_examples=400, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from(FIELDS), st.sampled_from([None, *NESTED]), schema_probe_values), max_size=4
    )
)
def test_the_fast_schema_check_never_accepts_what_jsonschema_refuses(
    edits: list[tuple[str, Any, Any]],
) -> None:
    from neurolens.storage.ledger.document import _compiled, _validator
    from tests.factories import make_run

    document: dict[str, Any] = {
        **make_run(),
        "schema_version": 1,
        "run_id": "01900000-0000-7000-8000-000000000001",
        "created_at": "2025-10-20T08:30:00.000000Z",
        "test": {"nodeid": "t.py::t", "outcome": "passed", "repeat": 0},
    }
    for field, nested, value in edits:
        if nested is not None and isinstance(document.get(field), dict):
            document[field] = {**document[field], nested: value}
        else:
            document[field] = value
    compiled = _compiled()
    assert compiled is not None
    check, failure = compiled
    try:
        check(document)
        fast_accepts = True
    except failure:
        fast_accepts = False
    reference_accepts = not list(_validator().iter_errors(document))
    if fast_accepts:
        assert reference_accepts, document


def _json_containers(children: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    keyed_by_text: st.SearchStrategy[Any] = st.dictionaries(st.text(max_size=8), children, max_size=5)
    keyed_by_int: st.SearchStrategy[Any] = st.dictionaries(st.integers(0, 9), children, max_size=3)
    return (
        st.lists(children, max_size=5)
        | st.tuples(children, children)  # json writes a tuple as a list: left to json
        | keyed_by_text
        | keyed_by_int  # keys json converts to text: left to json
    )


encodable_values: st.SearchStrategy[Any] = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats()  # NaN and infinities too: both encoders must refuse them alike
    | st.text(),
    _json_containers,
    max_leaves=40,
)


@settings(max_examples=400, deadline=None)
@given(encodable_values)
def test_canonical_bytes_are_exactly_what_json_dumps_writes(value: Any) -> None:
    import json

    from neurolens.storage.ledger.canonical import canonical_bytes

    try:
        text = json.dumps(value, sort_keys=True, ensure_ascii=False, allow_nan=False, indent=2)
    except ValueError as exc:  # NaN or an infinity
        try:
            canonical_bytes(value)
        except ValueError as ours:
            assert str(ours) == str(exc)
            return
        raise AssertionError("canonical_bytes accepted what json refuses") from None
    assert canonical_bytes(value) == (text + "\n").encode("utf-8")


@given(
    st.datetimes(min_value=dt.datetime(1000, 1, 1), max_value=dt.datetime(9999, 12, 31)),
    st.sampled_from(
        [dt.timezone.utc, dt.timezone(dt.timedelta(hours=5, minutes=30)), dt.timezone(-dt.timedelta(hours=8))]
    ),
)
def test_created_at_normalises_to_text_that_normalises_to_itself(
    moment: dt.datetime, zone: dt.tzinfo
) -> None:
    """Any offset becomes UTC text; that text is taken as it is (its fast path) and names
    the same moment."""
    from neurolens.storage.ledger.document import normalize_created_at

    aware = moment.replace(tzinfo=zone)
    try:
        if not 1000 <= aware.astimezone(dt.timezone.utc).year <= 9999:
            return  # outside the stored years: refused, as another test shows
    except OverflowError:  # past year 9999 in UTC
        return
    text = normalize_created_at(aware.isoformat())
    assert normalize_created_at(text) == text == normalize_created_at(aware)
    assert dt.datetime.fromisoformat(text[:-1] + "+00:00") == aware
    for day in ("00", "32"):  # the stored form of a day that does not exist
        with pytest.raises(RunValidationError, match="created_at"):
            normalize_created_at(f"{text[:8]}{day}{text[10:]}")
