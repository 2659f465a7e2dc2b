"""Remote tables (Delta Lake via delta-rs) against a real S3 endpoint: moto's server on
127.0.0.1, in a process of its own, with a bucket per test."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas  # noqa: F401  (loaded before pytester runs: numpy cannot be imported twice)
import pyarrow
import pyarrow.parquet
import pytest

from neurolens.remote.layout import is_typed
from neurolens.storage.store import write_run
from tests.factories import Cli, make_run
from tests.s3_server import running_s3_server

SCRIPT = str(Path(sys.executable).with_name("neurolens"))


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    with running_s3_server() as url:
        yield url


@pytest.fixture
def bucket(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh bucket; the URL of a table in it. Credentials and endpoint come from the
    standard environment variables, as on a CI runner."""
    import boto3

    for key, value in {
        "AWS_ENDPOINT_URL": s3_endpoint,
        "AWS_ALLOW_HTTP": "true",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(key, value)
    name = f"neurolens-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1").create_bucket(Bucket=name)
    return f"s3://{name}/runs"


def command(*argv: str) -> subprocess.CompletedProcess[str]:
    """The real console script, in a process of its own."""
    return subprocess.run([SCRIPT, *argv], capture_output=True, text=True, timeout=120)


def local_store(root: Path) -> list[str]:
    """Two sessions on two days, tags, a failed run, one run with a fingerprint."""
    runs = [
        make_run(session_id="s-one", created_at="2026-11-01T10:00:00Z", tags={"branch": "main"}),
        make_run(
            session_id="s-one", created_at="2026-11-01T10:00:01Z", model="bert", tags={"branch": "main"}
        ),
        make_run(
            session_id="s-two",
            created_at="2026-11-02T10:00:00Z",
            tags={"branch": "pr"},
            test={"nodeid": "t.py::t", "outcome": "failed"},
        ),
        make_run(session_id="s-two", created_at="2026-11-02T10:00:01Z", tags={"branch": "pr", "q": "it's"}),
    ]
    ids = [write_run(root, run)["run_id"] for run in runs]
    ids.append(
        write_run(root, make_run(created_at="2026-11-02T11:00:00Z"), fingerprint={"python": "3.11"})["run_id"]
    )
    return ids


def files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*.json")) if p.is_file()}


def test_push_is_idempotent_and_the_remote_reads_like_the_local_store(
    tmp_path: Path, bucket: str, cli: Cli
) -> None:
    root = tmp_path / "store"
    ids = local_store(root)
    status, out = cli("push", bucket, "--root", str(root), "--json")
    report = json.loads(out)
    assert status == 0 and sorted(report["added"]) == sorted(ids) and report["already"] == 0
    status, out = cli("push", bucket, "--root", str(root), "--json")
    assert status == 0 and json.loads(out)["added"] == [] and json.loads(out)["already"] == 5
    for filters in (
        [],
        ["--tag", "branch=pr"],
        ["--tag", "q=it's"],
        ["--session", "latest"],
        ["--session", "s-o"],
        ["--model", "bert"],
        ["--day", "2026-11-02", "--include-failed"],
        ["--limit", "2"],
        ["--include-failed"],
    ):
        remote = cli("ls", "--root", bucket, "--json", *filters)
        local = cli("ls", "--root", str(root), "--json", *filters)
        assert remote == local, filters
        assert remote[0] == 0 and json.loads(remote[1]), filters
    # the table view for a person too
    status, out = cli("ls", "--root", bucket, "--tag", "branch=main")
    assert status == 0 and out.endswith("2 runs\n")
    # compare gives the same answer on the table as on the store
    sides = ["--baseline-tag", "branch=main", "--candidate-tag", "branch=pr", "--fail-above", "5%", "--json"]
    assert cli("compare", "--root", bucket, *sides) == cli("compare", "--root", str(root), *sides)
    assert json.loads(cli("compare", "--root", bucket, *sides)[1])["groups"]


def test_push_takes_the_ls_filters(tmp_path: Path, bucket: str, cli: Cli) -> None:
    root = tmp_path / "store"
    local_store(root)
    status, out = cli("push", bucket, "--root", str(root), "--session", "s-one", "--json")
    assert status == 0 and len(json.loads(out)["added"]) == 2
    assert {r["session_id"] for r in json.loads(cli("ls", "--root", bucket, "--json")[1])} == {"s-one"}
    status, out = cli("push", bucket, "--root", str(root))
    assert status == 0 and out.startswith("pushed 3 runs to " + bucket + " (2 already there)")


def test_show_and_pull_restore_the_exact_files(tmp_path: Path, bucket: str, cli: Cli) -> None:
    root, pulled = tmp_path / "store", tmp_path / "pulled"
    ids = local_store(root)
    assert cli("push", bucket, "--root", str(root))[0] == 0
    prefix = ids[-1][:18]  # past the millisecond (runs written in one share it), into the counter
    status, out = cli("show", "--root", bucket, prefix, "--json")
    local = cli("show", "--root", str(root), prefix, "--json")
    assert status == 0 and out == local[1]
    status, out = cli("show", "--root", bucket, ids[-1])
    assert status == 0 and '"python": "3.11"' in out  # the fingerprint, from the table
    status, out = cli("pull", bucket, "--root", str(pulled), "--json")
    assert status == 0 and json.loads(out)["added"] == 5
    assert files(pulled) == files(root)  # run files and fingerprints, byte for byte
    assert cli("verify", "--root", str(pulled))[0] == 0
    status, out = cli("pull", bucket, "--root", str(pulled))
    assert status == 0 and out.startswith("pulled 0 runs into") and "(5 already there)" in out
    # a filtered pull reads and copies only its part
    part = tmp_path / "part"
    status, out = cli("pull", bucket, "--root", str(part), "--tag", "branch=main", "--json")
    assert status == 0 and json.loads(out)["added"] == 2
    assert {r["tags"]["branch"] for r in json.loads(cli("ls", "--root", str(part), "--json")[1])} == {"main"}


def test_compare_takes_its_baseline_from_the_remote(tmp_path: Path, bucket: str, cli: Cli) -> None:
    runner_a, runner_b = tmp_path / "a", tmp_path / "b"
    for latency in (10.0, 10.1, 9.9):
        write_run(runner_a, make_run(tags={"branch": "main"}, metrics={"total_latency_ms": latency}))
    assert cli("push", bucket, "--root", str(runner_a))[0] == 0
    write_run(runner_b, make_run(tags={"branch": "pr"}, metrics={"total_latency_ms": 20.0}))
    args = ["--root", str(runner_b), "--baseline-root", bucket, "--baseline-tag", "branch=main"]
    status, out = cli("compare", *args, "--candidate-tag", "branch=pr", "--fail-above", "5%")
    assert status == 1 and "REGRESSED" in out
    # the candidate may come from the remote too
    status, _ = cli(
        "compare", "--root", bucket, "--baseline-tag", "branch=main", "--candidate-tag", "branch=x"
    )
    assert status == 3


def test_pull_refuses_a_row_whose_document_does_not_match_its_hash(
    tmp_path: Path, bucket: str, cli: Cli
) -> None:
    from neurolens.remote.sync import push
    from neurolens.remote.table import RemoteTable

    root = tmp_path / "store"
    good = write_run(root, make_run(model="good"))["run_id"]
    bad = write_run(root, make_run(model="bad"))["run_id"]
    remote = RemoteTable(bucket)
    push(root, remote)
    # a row edited in the table: another latency in the document, the old hash kept
    import deltalake

    table = deltalake.DeltaTable(bucket, storage_options=dict(remote.storage_options))
    table.update(
        predicate=f"run_id = '{bad}'",
        updates={"document": "replace(document, '12.5', '1.25')"},
    )
    status, out = cli("pull", bucket, "--root", str(tmp_path / "pulled"))
    assert (
        status == 1 and f"not pulled: {bucket}: run file" in out and "does not match its manifest hash" in out
    )
    ids = [r["run_id"] for r in json.loads(cli("ls", "--root", str(tmp_path / "pulled"), "--json")[1])]
    assert ids == [good]


def test_a_day_filter_reads_only_that_day_s_files(
    tmp_path: Path, bucket: str, cli: Cli, s3_endpoint: str
) -> None:
    import boto3

    root = tmp_path / "store"
    local_store(root)
    assert cli("push", bucket, "--root", str(root))[0] == 0
    name = bucket.split("/")[2]
    s3 = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    listed = s3.list_objects_v2(Bucket=name, Prefix="runs/day=2026-11-01/")["Contents"]
    for item in listed:  # that day's data files gone: only a scan that prunes them still works
        s3.delete_object(Bucket=name, Key=item["Key"])
    status, out = cli("ls", "--root", bucket, "--day", "2026-11-02", "--include-failed", "--json")
    assert status == 0 and len(json.loads(out)) == 3
    status, _ = cli("ls", "--root", bucket, "--json")
    assert status == 1  # without the filter the missing files are read, and fail


@pytest.mark.slow
def test_runners_pushing_at_once_keep_every_run_exactly_once(tmp_path: Path, bucket: str) -> None:
    stores = []
    for runner in range(6):
        root = tmp_path / f"runner{runner}"
        for i in range(15):
            write_run(root, make_run(model=f"m{runner}", metrics={"total_latency_ms": float(i)}))
        stores.append(root)
    # two more runners push the same store at the same moment (a retried CI job)
    pushes = [*stores, stores[0], stores[0]]
    procs = [
        subprocess.Popen(
            [SCRIPT, "push", bucket, "--root", str(root), "--json"], stdout=subprocess.PIPE, text=True
        )
        for root in pushes
    ]
    reports = []
    for proc in procs:
        out, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0
        reports.append(json.loads(out))
    listed = json.loads(command("ls", "--root", bucket, "--json").stdout)
    assert len(listed) == 90 and len({r["run_id"] for r in listed}) == 90
    # each of runner 0's runs was added by exactly one of the three pushes of it
    added_by_first = [reports[0], reports[6], reports[7]]
    assert sum(len(r["added"]) for r in added_by_first) == 15
    assert all(len(r["added"]) + r["already"] == 15 for r in reports)


def test_optimize_compacts_and_keeps_every_run(tmp_path: Path, bucket: str, cli: Cli) -> None:
    root = tmp_path / "store"
    for i in range(4):  # four pushes: four small files in one day's partition
        write_run(root, make_run(model=f"m{i}", created_at="2026-11-05T00:00:00Z"))
        assert cli("push", bucket, "--root", str(root))[0] == 0
    before = cli("ls", "--root", bucket, "--json")
    status, out = cli("remote", "optimize", bucket, "--retention-hours", "0", "--json")
    outcome = json.loads(out)
    assert status == 0 and outcome["files_removed"] >= 4 and outcome["files_added"] == 1
    assert outcome["vacuumed"] >= 4
    assert cli("ls", "--root", bucket, "--json") == before


def test_remote_failures_are_one_line(
    tmp_path: Path, bucket: str, cli: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "store"
    write_run(root, make_run())
    missing_bucket = "s3://no-such-bucket-here/runs"
    result = command("push", missing_bucket, "--root", str(root))
    assert result.returncode == 1 and "NoSuchBucket" in result.stderr and "Traceback" not in result.stderr
    result = command("ls", "--root", bucket)
    assert result.returncode == 1 and f"no remote table at {bucket}" in result.stderr
    result = command("verify", "--root", bucket)
    assert result.returncode == 2 and "works on a local store" in result.stderr
    result = command("ls", "--root", bucket, "--storage-option", "novalue")
    assert result.returncode == 2 and "KEY=VALUE" in result.stderr
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens there
    result = command("ls", "--root", bucket)
    assert (
        result.returncode == 1 and "Connection refused" in result.stderr and "Traceback" not in result.stderr
    )
    assert result.stderr.count("\n") == 1


def test_without_credentials_one_line_names_what_to_set(tmp_path: Path) -> None:
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "RUST_LOG"))}
    env["AWS_EC2_METADATA_SERVICE_ENDPOINT"] = "http://127.0.0.1:9"  # no instance metadata here
    done = subprocess.run(
        [SCRIPT, "ls", "--root", "s3://some-bucket/runs"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.count("\n") == 1 and "WARN" not in done.stderr  # delta-rs' logs kept quiet
    assert (
        "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY" in done.stderr and "--storage-option" in done.stderr
    )


def test_without_deltalake_a_remote_command_says_what_to_install(tmp_path: Path, bucket: str) -> None:
    script = (
        "import sys; sys.modules['deltalake'] = None; "
        "from neurolens.cli import main; sys.exit(main(sys.argv[1:]))"
    )
    result = subprocess.run(
        [sys.executable, "-c", script, "ls", "--root", bucket], capture_output=True, text=True
    )
    assert result.returncode == 1
    assert (
        result.stderr
        == "neurolens: error: remote tables need the 'remote' extra: pip install 'pytest-neurolens[remote]'\n"
    )


@pytest.mark.slow
def test_short_lived_readers_exit_cleanly(tmp_path: Path, bucket: str) -> None:
    # delta-rs's to_pyarrow readers abort at exit now and then; the readers used here must not
    root = tmp_path / "store"
    ids = local_store(root)
    assert command("push", bucket, "--root", str(root)).returncode == 0
    codes = [command("ls", "--root", bucket, "--json").returncode for _ in range(10)]
    codes += [command("show", "--root", bucket, ids[0]).returncode for _ in range(5)]
    codes += [command("pull", bucket, "--root", str(tmp_path / f"p{i}")).returncode for i in range(5)]
    assert codes == [0] * 20


def test_a_local_delta_table_is_a_remote_too(tmp_path: Path, cli: Cli) -> None:
    root, table = tmp_path / "store", tmp_path / "table"
    local_store(root)
    assert cli("push", str(table), "--root", str(root))[0] == 0
    assert (table / "_delta_log").is_dir()
    assert cli("ls", "--root", str(table), "--json") == cli("ls", "--root", str(root), "--json")


def plain_table(path: Path, root: Path, *, drop: tuple[str, ...] = (), edit: Any = None) -> None:
    """The layout versions before 0.2 wrote (the manifest's columns as text), made from the
    runs of ``root``; ``edit(rows)`` may change the row dicts first."""
    import datetime as dt

    import deltalake

    from neurolens.remote.layout import rows_for
    from neurolens.sources import query

    records = []
    for record in sorted(query(root, include_failed=True), key=lambda r: r["created_at"]):
        fp = record["fp_json"]
        records.append({**record, "tags": json.dumps(record["tags"], sort_keys=True, separators=(",", ":")),
                        "document": (root / record["run_json"]).read_text(),
                        "fingerprint": (root / fp).read_text() if fp else None,
                        "pushed_at": dt.datetime.now(dt.timezone.utc)})  # fmt: skip
    if edit is not None:
        edit(records)
    rows = rows_for(records, typed=False).drop_columns(list(drop))
    rows = rows.cast(pyarrow.schema([f.with_nullable(True) for f in rows.schema]))  # a table by hand
    deltalake.write_deltalake(str(path), rows, partition_by=["day"])


def test_a_table_made_before_cpu_model_reads_as_null_and_gains_the_column_on_push(
    tmp_path: Path, cli: Cli
) -> None:
    import deltalake

    root, earlier = tmp_path / "store", tmp_path / "earlier"
    local_store(root)
    plain_table(earlier, root, drop=("cpu_model",))  # the layout of 0.1 before cpu_model
    assert not is_typed(deltalake.DeltaTable(str(earlier)))
    code, out = cli("ls", "--root", str(earlier), "--json")
    assert code == 0
    assert len(json.loads(out)) == 4 and all(r["cpu_model"] is None for r in json.loads(out))
    newer = tmp_path / "newer"
    write_run(newer, make_run(hardware={"gpu_name": None, "cpu_model": "AMD EPYC 7B13"}))
    assert cli("push", str(earlier), "--root", str(newer))[0] == 0
    listed = json.loads(cli("ls", "--root", str(earlier), "--json")[1])
    assert sorted(str(r["cpu_model"]) for r in listed) == ["AMD EPYC 7B13", *["None"] * 4]


def hostile_table(tmp_path: Path, cli: Cli) -> tuple[Path, list[str]]:
    """A plain table of 4 runs: one row without a document, one whose tags are a JSON list,
    one with tags nested 5,000 deep, one whose document is nested 100,000 deep."""
    root, table = tmp_path / "store", tmp_path / "hostile"
    ids = [
        write_run(root, make_run(seq_len=i, created_at=f"2026-11-0{1 + i}T10:00:00Z"))["run_id"]
        for i in range(4)
    ]

    def damage(rows: list[dict[str, Any]]) -> None:  # in the plain layout, tags are text
        rows[0]["document"] = None
        rows[1]["tags"] = "[1]"
        rows[2]["tags"] = '{"a":' * 5000 + "1" + "}" * 5000
        rows[3]["document"] = '{"a":' * 100_000 + "1" + "}" * 100_000

    plain_table(table, root, edit=damage)
    return table, ids


def test_a_hostile_table_is_read_with_warnings_and_one_line_errors(tmp_path: Path, cli: Cli) -> None:
    table, ids = hostile_table(tmp_path, cli)
    listed = command("ls", "--root", str(table), "--json")
    assert listed.returncode == 0 and "Traceback" not in listed.stderr
    assert sorted(r["seq_len"] for r in json.loads(listed.stdout)) == [0, 3]
    assert "2 row(s) skipped: their tags are not a JSON object of strings" in listed.stderr
    pulled = command("pull", str(table), "--root", str(tmp_path / "pulled"))
    assert pulled.returncode == 1 and "Traceback" not in pulled.stderr + pulled.stdout
    assert f"run {ids[0]}: its row has no document" in pulled.stdout + pulled.stderr
    shown = command("show", "--root", str(table), ids[3])
    assert shown.returncode == 1 and "Traceback" not in shown.stderr
    assert len(shown.stderr.strip().splitlines()) == 1


def test_a_damaged_fingerprint_is_damage_to_verify_merge_and_push_alike(tmp_path: Path, cli: Cli) -> None:
    root = tmp_path / "store"
    bad = write_run(root, make_run(seq_len=1), fingerprint={"python": "3.11"})
    write_run(root, make_run(seq_len=2), fingerprint={"python": "3.11"})
    Path(bad["fp_json"]).write_text("{not json")
    verified = command("verify", "--root", str(root), "--json")
    assert verified.returncode == 1
    assert json.loads(verified.stdout)["counts"] == {"invalid_fingerprint": 1}
    merged = command("merge", str(root), "--root", str(tmp_path / "merged"), "--json")
    assert merged.returncode == 1 and len(json.loads(merged.stdout)["damaged"]) == 1
    pushed = command("push", str(tmp_path / "table"), "--root", str(root))
    assert pushed.returncode == 1 and f"run {bad['run_id']}: fingerprint" in pushed.stdout + pushed.stderr
    listed = json.loads(command("ls", "--root", str(tmp_path / "table"), "--json").stdout)
    assert [r["seq_len"] for r in listed] == [2]  # the table holds only runs that can come back
    assert command("pull", str(tmp_path / "table"), "--root", str(tmp_path / "pulled")).returncode == 0


@pytest.mark.parametrize("where", ["../victim/victim.parquet", "absolute", "..%2Fvictim%2Fvictim.parquet"])
def test_a_log_naming_a_file_outside_the_table_is_refused(tmp_path: Path, cli: Cli, where: str) -> None:
    root, victim_table, table = tmp_path / "store", tmp_path / "victim_table", tmp_path / "table"
    write_run(root, make_run(model="mine"))
    assert cli("push", str(table), "--root", str(root))[0] == 0
    # a file of someone else's runs beside the table, and a commit whose add names it
    other = tmp_path / "other"
    write_run(other, make_run(model="theirs"))
    assert cli("push", str(victim_table), "--root", str(other))[0] == 0
    (victim,) = victim_table.rglob("*.parquet")
    (tmp_path / "victim").mkdir()
    target = tmp_path / "victim" / "victim.parquet"
    target.write_bytes(victim.read_bytes())
    path = target.as_uri() if where == "absolute" else where
    day = json.loads(command("ls", "--root", str(table), "--json").stdout)[0]["day"]
    add = {"add": {"path": path, "partitionValues": {"day": day}, "size": target.stat().st_size,
                   "modificationTime": 1, "dataChange": True}}  # fmt: skip
    versions = sorted((table / "_delta_log").glob("*.json"))
    (table / "_delta_log" / f"{len(versions):020d}.json").write_text(json.dumps(add) + "\n")
    for argv in (["ls", "--root", str(table)], ["pull", str(table), "--root", str(tmp_path / "p")]):
        done = command(*argv)
        assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
        assert "names a data file outside the table" in done.stderr and "theirs" not in done.stdout
        assert len(done.stderr.strip().splitlines()) == 1


# --- the plugin ---------------------------------------------------------------------------

RECORDING = textwrap.dedent(
    """
    import pytest

    @pytest.mark.neurolens(model="m", backend="cpu", precision="fp32", batch_size=1)
    @pytest.mark.parametrize("latency", [20.0, 21.0])
    def test_record(neurolens, latency):
        neurolens.record(total_latency_ms=latency)
    """
)


def test_the_plugin_pushes_the_session_once_at_the_end(pytester: pytest.Pytester, bucket: str) -> None:
    pytest.importorskip("xdist")
    pytester.makepyfile(test_rec=RECORDING)
    result = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "-n", "2", "--neurolens-store=runs", f"--neurolens-push={bucket}"
    )
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines([f"pushed 2 runs to {bucket} (0 already there)"])
    listed = json.loads(command("ls", "--root", bucket, "--json").stdout)
    assert sorted(r["total_latency_ms"] for r in listed) == [20.0, 21.0]


def test_a_failed_push_fails_the_session_and_keeps_the_runs(pytester: pytest.Pytester, bucket: str) -> None:
    pytester.makepyfile(test_rec=RECORDING)
    result = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "--neurolens-store=runs", "--neurolens-push=s3://no-such-bucket-here/runs"
    )
    result.assert_outcomes(passed=2)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(["*push to s3://no-such-bucket-here/runs failed*NoSuchBucket*"])
    assert "Traceback" not in result.stdout.str()
    assert len(json.loads(command("ls", "--root", str(pytester.path / "runs"), "--json").stdout)) == 2


def test_the_plugin_gate_takes_its_baseline_from_the_remote(
    pytester: pytest.Pytester, bucket: str, tmp_path: Path
) -> None:
    baseline = tmp_path / "baseline"
    for latency in (10.0, 10.2):
        write_run(baseline, make_run(model="m", backend="cpu", precision="fp32", batch_size=1,
                                     seq_len=None, hardware={}, tags={"branch": "main"},
                                     metrics={"total_latency_ms": latency}))  # fmt: skip
    assert command("push", bucket, "--root", str(baseline)).returncode == 0
    pytester.makepyfile(test_rec=RECORDING)
    result = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "--neurolens-store=runs",
        f"--neurolens-baseline-root={bucket}", "--neurolens-compare=--tag branch=main",
        "--neurolens-fail-above=5%",
    )  # fmt: skip
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(["*REGRESSED*", "*regression above 5%*"])


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--neurolens-push=s3://b/x"], "*--neurolens-push needs --neurolens-store*"),
        (
            ["--neurolens-store=runs", "--neurolens-baseline-root=s3://b/x"],
            "*--neurolens-baseline-root needs --neurolens-compare*",
        ),
        (
            ["--neurolens-store=runs", "--neurolens-storage-option=bad"],
            "*--neurolens-storage-option expects KEY=VALUE, got 'bad'*",
        ),
        (
            ["--neurolens-store=runs", "--neurolens-push=ftp://x/y"],
            "*--neurolens-push: ftp://x/y: unknown scheme 'ftp'*",
        ),
    ],
)
def test_push_options_need_what_they_work_on(
    pytester: pytest.Pytester, options: list[str], message: str
) -> None:
    result = pytester.runpytest("-p", "no:cacheprovider", *options)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([message])


PUSH_IN_SMALL_BATCHES = """
import sys
import neurolens.remote.sync as sync
from neurolens.remote.table import RemoteTable
sync._BATCH = 3
sync.push(__import__("pathlib").Path(sys.argv[2]), RemoteTable(sys.argv[1]))
"""


@pytest.mark.slow
def test_a_push_killed_half_way_completes_on_a_rerun(tmp_path: Path, bucket: str) -> None:
    import signal
    import time

    root = tmp_path / "store"
    ids = [write_run(root, make_run(metrics={"total_latency_ms": float(i)}))["run_id"] for i in range(60)]
    proc = subprocess.Popen([sys.executable, "-c", PUSH_IN_SMALL_BATCHES, bucket, str(root)])
    deadline = time.monotonic() + 120
    while True:  # until some batches are in: then kill it among the others
        listed = command("ls", "--root", bucket, "--json")
        if (listed.returncode == 0 and len(json.loads(listed.stdout)) > 0) or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    partial = len(json.loads(command("ls", "--root", bucket, "--json").stdout))
    assert 0 < partial < 60
    result = command("push", bucket, "--root", str(root), "--json")
    report = json.loads(result.stdout)
    assert result.returncode == 0 and len(report["added"]) == 60 - partial and report["already"] == partial
    listed = json.loads(command("ls", "--root", bucket, "--json").stdout)
    assert sorted(r["run_id"] for r in listed) == sorted(ids)


def test_a_reader_that_is_not_this_project_sees_the_same_rows(tmp_path: Path, cli: Cli) -> None:
    """pyarrow's own dataset over the Parquet files the Delta log names (what Spark, Polars
    and DuckDB do): the same rows as ``ls``, and documents equal to the run files."""
    import deltalake
    import pyarrow.dataset as ds

    root, table_path = tmp_path / "store", tmp_path / "table"
    local_store(root)
    assert cli("push", str(table_path), "--root", str(root))[0] == 0
    files = deltalake.DeltaTable(str(table_path)).file_uris()
    dataset = ds.dataset([f.removeprefix("file://") for f in files], format="parquet", partitioning="hive")
    outside = dataset.to_table().to_pylist()
    listed = json.loads(cli("ls", "--root", str(root), "--json", "--include-failed")[1])
    assert sorted(r["run_id"] for r in outside) == sorted(r["run_id"] for r in listed)
    for row in outside:
        local = next(r for r in listed if r["run_id"] == row["run_id"])
        assert row["total_latency_ms"] == local["total_latency_ms"] and row["model"] == local["model"]
        assert row["document"].encode() == (root / local["run_json"]).read_bytes()


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("unknown://bucket/x", "unknown scheme 'unknown'"),
        ("s3://", "no bucket or container in the URL"),
        ("s3://no-such-bucket-here/runs", "NoSuchBucket: The specified bucket does not exist"),
    ],
)
def test_bad_urls_are_one_line_and_change_nothing(
    tmp_path: Path, bucket: str, url: str, message: str
) -> None:
    root = tmp_path / "store"
    write_run(root, make_run())
    before = files(root)
    for argv in (
        ["push", url, "--root", str(root)],
        ["ls", "--root", url],
        ["pull", url, "--root", str(root)],
    ):
        result = command(*argv)
        assert result.returncode == 1, argv
        assert result.stderr.count("\n") == 1 and message in result.stderr, (argv, result.stderr)
    assert files(root) == before


def test_a_table_of_another_schema_is_refused_and_left_alone(tmp_path: Path, cli: Cli) -> None:
    import deltalake
    import pyarrow as pa

    other = tmp_path / "other"
    deltalake.write_deltalake(str(other), pa.table({"a": [1, 2]}))
    root = tmp_path / "store"
    write_run(root, make_run())
    for argv in (["push", str(other), "--root", str(root)], ["ls", "--root", str(other)]):
        result = command(*argv)
        assert result.returncode == 1 and "holds a Delta table of another schema" in result.stderr
    table = deltalake.DeltaTable(str(other))
    assert table.version() == 0 and [f.name for f in table.schema().fields] == ["a"]


def test_a_local_run_whose_file_is_gone_is_reported_and_the_rest_pushed(
    tmp_path: Path, bucket: str, cli: Cli
) -> None:
    root = tmp_path / "store"
    kept = write_run(root, make_run(model="kept"))["run_id"]
    lost = write_run(root, make_run(model="lost"))
    Path(lost["run_json"]).unlink()
    status, out = cli("push", bucket, "--root", str(root), "--json")
    report = json.loads(out)
    assert status == 1 and report["added"] == [kept] and not report["complete"]
    assert report["damaged"] == [f"run {lost['run_id']}: a file cannot be read (No such file or directory)"]


# --- the typed layout ---------------------------------------------------------------------


def test_a_plain_table_is_migrated_to_typed_columns_and_every_run_comes_back(
    tmp_path: Path, cli: Cli
) -> None:
    import deltalake

    root, table = tmp_path / "store", tmp_path / "table"
    ids = local_store(root)
    plain_table(table, root)
    assert cli("ls", "--root", str(table), "--json") == cli("ls", "--root", str(root), "--json")
    # a push to the plain table still works, in its layout
    newer = tmp_path / "newer"
    later = write_run(newer, make_run(model="later", created_at="2026-11-03T10:00:00Z"))["run_id"]
    assert cli("push", str(table), "--root", str(newer))[0] == 0
    assert not is_typed(deltalake.DeltaTable(str(table)))
    done = command("remote", "migrate", str(table), "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["migrated"] == len(ids) + 1
    migrated = deltalake.DeltaTable(str(table))
    assert is_typed(migrated)
    kinds = {f.name: str(f.type) for f in migrated.schema().fields}
    assert "timestamp" in kinds["created_at"].lower() and "map" in kinds["tags"].lower()
    assert kinds["latency_samples"].lower().startswith(("long", 'primitivetype("long'))
    # read as before: the same rows, tag filters and all; pulled back byte for byte
    write_run(root, make_run(model="later", created_at="2026-11-03T10:00:00Z", run_id=later))
    assert cli("ls", "--root", str(table), "--json") == cli("ls", "--root", str(root), "--json")
    assert cli("ls", "--root", str(table), "--tag", "q=it's", "--json")[1].count('"run_id"') == 1
    pulled = tmp_path / "pulled"
    assert cli("pull", str(table), "--root", str(pulled))[0] == 0
    assert files(pulled) == files(root)
    again = command("remote", "migrate", str(table))
    assert again.returncode == 0 and "has the typed layout already" in again.stdout


def test_polars_reads_the_typed_table_on_s3_without_parsing_json(
    tmp_path: Path, bucket: str, cli: Cli
) -> None:
    import datetime as dt

    import polars as pl

    root = tmp_path / "store"
    for day in range(1, 8):
        for branch, slower in (("main", 1.0), ("pr", 1.5)):
            for batch, level in ((1, 2.0), (8, 9.0)):
                p50 = level * slower * (1 + day / 100)
                metrics = {"total_latency_ms": p50, "latency_p50_ms": p50, "latency_samples": 500}
                write_run(root, make_run(batch_size=batch, created_at=f"2026-11-0{day}T12:00:00Z",
                                         tags={"branch": branch}, metrics=metrics))  # fmt: skip
    assert cli("push", bucket, "--root", str(root))[0] == 0
    frame = pl.scan_delta(bucket).filter(
        pl.col("day").is_between(dt.date(2026, 11, 1), dt.date(2026, 11, 7)),
        pl.col("tags").map.get("branch") == "main",
    )
    weekly = (
        frame.group_by("model", "backend", "precision", "batch_size")
        .agg(pl.col("latency_p50_ms").median().alias("p50"), pl.col("latency_samples").sum().alias("samples"))
        .sort("batch_size")
        .collect()
    )
    assert weekly["batch_size"].to_list() == [1, 8] and weekly["samples"].to_list() == [3500, 3500]
    assert weekly["p50"].to_list() == pytest.approx([2.0 * 1.04, 9.0 * 1.04])
    schema = pl.scan_delta(bucket).collect_schema()
    assert schema["created_at"] == pl.Datetime("us", "UTC") and schema["day"] == pl.Date


def test_migrating_beside_live_pushes_loses_no_run(tmp_path: Path) -> None:
    root, table = tmp_path / "store", tmp_path / "table"
    for i in range(300):
        write_run(root, make_run(seq_len=i, created_at=f"2026-11-0{1 + i % 7}T10:00:00Z"))
    plain_table(table, root)
    # three runners, each pushing 16 runs of its own one push at a time, while the table migrates
    pusher = textwrap.dedent(
        """
        import sys
        from pathlib import Path
        from neurolens.remote.sync import push
        from neurolens.remote.table import RemoteTable
        from neurolens.storage.index.filters import RunFilter
        from neurolens.storage.store import write_run
        root, table, me = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
        for i in range(16):
            run = {"model": f"runner-{me}", "backend": "b", "precision": "p", "batch_size": 1 + i,
                   "metrics": {"total_latency_ms": 1.0}, "tags": {"runner": me}}
            write_run(root, run)
            push(root, RemoteTable(table), RunFilter(model=f"runner-{me}"))
        """
    )
    runners = [
        subprocess.Popen([sys.executable, "-c", pusher, str(tmp_path / f"r{n}"), str(table), str(n)])
        for n in range(3)
    ]
    import deltalake

    start = deltalake.DeltaTable(str(table)).version()
    while deltalake.DeltaTable(str(table)).version() == start:  # the runners are pushing
        assert all(r.poll() is None for r in runners)
        time.sleep(0.01)
    migrated = command("remote", "migrate", str(table), "--json")
    assert any(r.poll() is None for r in runners)  # and some still were when it ended
    assert all(r.wait(timeout=120) == 0 for r in runners)
    assert migrated.returncode == 0, migrated.stderr
    assert is_typed(deltalake.DeltaTable(str(table)))
    listed = json.loads(command("ls", "--root", str(table), "--json", "--include-failed").stdout)
    assert len(listed) == 300 + 3 * 16 and len({r["run_id"] for r in listed}) == len(listed)


@pytest.mark.parametrize("where", ["local", "s3"])
def test_a_failed_optimize_removes_the_files_it_wrote_and_nothing_else(
    tmp_path: Path,
    cli: Cli,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    request: pytest.FixtureRequest,
    where: str,
) -> None:
    import deltalake

    from neurolens.remote.orphans import never_referenced
    from neurolens.remote.table import RemoteTable

    table = str(tmp_path / "table") if where == "local" else request.getfixturevalue("bucket")
    options = {} if where == "local" else {"conditional_put": "etag"}
    for i in range(6):  # six pushes: six small files to compact
        write_run(tmp_path / f"s{i}", make_run(seq_len=i, created_at="2026-11-01T10:00:00Z"))
        assert cli("push", table, "--root", str(tmp_path / f"s{i}"))[0] == 0
    opened = RemoteTable.open

    def open_then_delete_behind_its_back(self: RemoteTable) -> Any:
        stale = opened(self)
        deltalake.DeltaTable(self.url, storage_options=options).delete("seq_len = 3")  # committed first
        monkeypatch.setattr(RemoteTable, "open", opened)
        return stale

    monkeypatch.setattr(RemoteTable, "open", open_then_delete_behind_its_back)
    tombstoned_before = set(
        deltalake.DeltaTable(table, storage_options=options).vacuum(
            0, dry_run=True, enforce_retention_duration=False
        )
    )
    status, _ = cli("remote", "optimize", table, "--orphan-grace", "0")
    err = capsys.readouterr().err
    assert status == 1 and "optimizing the remote table" in err and "concurrent transaction" in err
    assert "the 1 file(s) it had written were removed" in err and err.count("\n") == 1
    after = deltalake.DeltaTable(table, storage_options=options)
    assert never_referenced(after) == set()  # no orphan left
    assert tombstoned_before <= set(
        after.vacuum(0, dry_run=True, enforce_retention_duration=False)
    )  # vacuum's own
    listed = json.loads(cli("ls", "--root", table, "--json")[1])
    assert sorted(r["seq_len"] for r in listed) == [0, 1, 2, 4, 5]  # the table reads as the delete left it
    assert cli("remote", "optimize", table)[0] == 0  # and optimizes once nothing races it
