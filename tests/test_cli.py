"""The neurolens command: in-process through main() and end to end through the console script."""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from neurolens import __version__
from neurolens.cli import main
from neurolens.sources import query
from neurolens.storage.store import write_run
from tests.factories import Cli, make_run

SCRIPT = str(Path(sys.executable).with_name("neurolens"))


@pytest.fixture
def store(make_store: Callable[..., Path]) -> Path:
    return make_store(
        make_run(
            model="gpt2",
            backend="onnxrt",
            precision="fp16",
            batch_size=1,
            created_at="2025-10-20T08:00:00Z",
            tags={"experiment": "smoke", "branch": "main"},
        ),
        make_run(
            model="gpt2",
            backend="tensorrt",
            precision="int8",
            batch_size=8,
            created_at="2025-10-21T08:00:00Z",
            tags={"experiment": "smoke", "branch": "pr-1"},
        ),
        (
            make_run(
                model="bert",
                backend="onnxrt",
                precision="fp32",
                batch_size=4,
                seq_len=None,
                created_at="2025-10-22T08:00:00Z",
                tags={"branch": "main"},
                metrics={"total_latency_ms": 3.25, "gpu_utilization": None},
            ),
            {"python": "3.11"},
        ),
    )


@pytest.fixture
def ls_json(cli: Cli) -> Callable[..., list[dict]]:
    def run(root: Path, *args: str) -> list[dict]:
        status, out = cli("ls", "--root", str(root), "--json", *args)
        assert status == 0
        return json.loads(out)

    return run


@pytest.mark.parametrize(
    ("args", "models"),
    [
        ((), ["bert", "gpt2", "gpt2"]),
        (("--model", "gpt2"), ["gpt2", "gpt2"]),
        (("--backend", "onnxrt"), ["bert", "gpt2"]),
        (("--precision", "int8"), ["gpt2"]),
        (("--day", "2025-10-20"), ["gpt2"]),
        (("--tag", "branch=main"), ["bert", "gpt2"]),
        (("--tag", "branch=main", "--tag", "experiment=smoke"), ["gpt2"]),
        (("--model", "gpt2", "--backend", "onnxrt", "--tag", "branch=main"), ["gpt2"]),
        (("--model", "nope"), []),
        (("--limit", "2"), ["bert", "gpt2"]),
        (("--limit", "0"), []),
    ],
)
def test_ls_filters_combine(
    ls_json: Callable[..., list[dict]], store: Path, args: tuple[str, ...], models: list[str]
) -> None:
    assert [r["model"] for r in ls_json(store, *args)] == models


def test_ls_orders_newest_first_and_limit_takes_the_latest(
    ls_json: Callable[..., list[dict]], store: Path
) -> None:
    rows = ls_json(store)
    assert [r["day"] for r in rows] == ["2025-10-22", "2025-10-21", "2025-10-20"]
    assert [r["day"] for r in ls_json(store, "--limit", "1")] == ["2025-10-22"]


def test_ls_json_shape(ls_json: Callable[..., list[dict]], store: Path) -> None:
    row = ls_json(store, "--model", "bert")[0]
    assert row["tags"] == {"branch": "main"}
    assert row["seq_len"] is None and row["gpu_utilization"] is None
    assert row["total_latency_ms"] == 3.25 and row["batch_size"] == 4
    assert row["fp_json"].endswith(".fp.json")
    assert set(row) >= {"run_id", "created_at", "model", "backend", "precision", "gpu_name", "sha256"}


def test_ls_table(cli: Cli, store: Path) -> None:
    status, out = cli("ls", "--root", str(store))
    lines = out.splitlines()
    assert status == 0
    assert lines[0].split()[:3] == ["RUN", "ID", "CREATED"]
    assert "LATENCY MS" in lines[0] and "TAGS" in lines[0]
    assert lines[-1] == "3 runs"
    assert "branch=main,experiment=smoke" in out
    assert "3.250" in out and "2025-10-22 08:00:00" in out
    # aligned: the LATENCY column ends at the same offset on every row
    end = lines[0].index("LATENCY MS") + len("LATENCY MS")
    assert all(line[end - 1] != " " for line in lines[1:4])


def test_root_flag_beats_env_which_beats_default(
    cli: Cli, store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    other = tmp_path / "other"
    write_run(other, make_run(model="from-env"))
    monkeypatch.chdir(tmp_path)
    write_run(tmp_path / "runs_store", make_run(model="from-default"))
    monkeypatch.delenv("NEUROLENS_STORE_ROOT", raising=False)
    assert [r["model"] for r in json.loads(cli("ls", "--json")[1])] == ["from-default"]
    monkeypatch.setenv("NEUROLENS_STORE_ROOT", str(other))
    assert [r["model"] for r in json.loads(cli("ls", "--json")[1])] == ["from-env"]
    assert len(json.loads(cli("ls", "--json", "--root", str(store))[1])) == 3


def test_a_root_that_is_not_a_store_gets_one_answer_and_nothing_is_written(
    cli: Cli, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing, empty = tmp_path / "missing", tmp_path / "empty"
    empty.mkdir()
    for root in (missing, empty):
        for argv in (["ls"], ["ls", "--json"], ["show", "01"], ["rebuild"], ["verify"], ["verify", "--fix"]):
            assert cli(*argv, "--root", str(root)) == (1, "")
            assert f"no store at {root}" in capsys.readouterr().err
    assert not missing.exists() and list(empty.iterdir()) == []


def test_corrupt_or_missing_index_still_answers(
    ls_json: Callable[..., list[dict]], store: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (store / "_index.parquet").write_bytes(b"not parquet")
    assert len(ls_json(store)) == 3
    assert "neurolens rebuild" in capsys.readouterr().err
    (store / "_index.parquet").unlink()
    assert [r["model"] for r in ls_json(store, "--tag", "branch=main")] == ["bert", "gpt2"]
    err = capsys.readouterr().err
    assert "missing" in err and "Traceback" not in err


@pytest.mark.parametrize(
    "argv",
    [
        ["ls", "--tag", "novalue"],
        ["ls", "--tag", "=v"],
        ["ls", "--day", "2025-13-01"],
        ["ls", "--day", "yesterday"],
        ["ls", "--limit", "-1"],
        ["ls", "--limit", "ten"],
        ["frobnicate"],
        [],
    ],
)
def test_usage_errors_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as excinfo:
        main(argv)
    assert excinfo.value.code == 2
    assert "usage:" in capsys.readouterr().err


def test_show_by_prefix_and_json(ls_json: Callable[..., list[dict]], cli: Cli, store: Path) -> None:
    bert = ls_json(store, "--model", "bert")[0]
    status, out = cli("show", "--root", str(store), bert["run_id"][:30])
    assert status == 0
    assert out.startswith(f"run {bert['run_id']}")
    assert '"python": "3.11"' in out  # the fingerprint
    status, out = cli("show", "--root", str(store), bert["run_id"], "--json")
    assert out.encode() == (store / bert["run_json"]).read_bytes()


def test_show_unknown_and_ambiguous_ids(
    ls_json: Callable[..., list[dict]], cli: Cli, store: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli("show", "--root", str(store), "zzz")[0] == 1
    assert "no run id starts with 'zzz'" in capsys.readouterr().err
    common = ls_json(store)[0]["run_id"][:2]  # ids generated in one test share a prefix
    assert cli("show", "--root", str(store), common)[0] == 1
    assert "ambiguous: 3 runs match" in capsys.readouterr().err


def test_show_missing_run_file_is_a_clean_error(
    ls_json: Callable[..., list[dict]], cli: Cli, store: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    row = ls_json(store)[0]
    (store / row["run_json"]).unlink()
    assert cli("show", "--root", str(store), row["run_id"])[0] == 1
    err = capsys.readouterr().err
    assert err.startswith("neurolens: error: cannot read") and "Traceback" not in err


def test_rebuild_reports_rows_and_skipped_lines(
    cli: Cli, store: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with open(store / "_manifest.jsonl", "ab") as handle:
        handle.write(b"{torn\n")
    status, out = cli("rebuild", "--root", str(store))
    assert status == 0
    assert out == f"rebuilt {store / '_index.parquet'} (3 rows)\n"
    err = capsys.readouterr().err
    assert "skipped: manifest byte" in err and "1 manifest line skipped" in err


def test_rebuild_of_missing_store_is_exit_1(
    cli: Cli, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli("rebuild", "--root", str(tmp_path / "nope"))[0] == 1
    assert "no store at" in capsys.readouterr().err


def test_console_script_end_to_end(store: Path) -> None:
    out = subprocess.run(
        [SCRIPT, "ls", "--root", str(store), "--json", "--tag", "branch=main"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert [r["model"] for r in json.loads(out.stdout)] == ["bert", "gpt2"]
    out = subprocess.run([SCRIPT, "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == f"neurolens {__version__}"
    out = subprocess.run([SCRIPT, "ls", "--limit", "x"], capture_output=True, text=True)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    (store / "_index.parquet").write_bytes(b"junk")
    out = subprocess.run([SCRIPT, "ls", "--root", str(store)], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.endswith("3 runs\n")
    assert "neurolens rebuild" in out.stderr and "Traceback" not in out.stderr


def test_python_dash_m_and_help_do_not_import_heavy_modules() -> None:
    code = (
        "import sys, runpy; sys.argv = ['neurolens', '--help']\n"
        "try:\n    runpy.run_module('neurolens', run_name='__main__')\n"
        "except SystemExit as e:\n    assert e.code == 0\n"
        "heavy = [m for m in ('pandas', 'pyarrow', 'jsonschema', 'numpy') if m in sys.modules]\n"
        "print('HEAVY', heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "neurolens ls --backend onnxrt" in out.stdout  # the examples
    assert out.stdout.strip().endswith("HEAVY []")
    for sub in ("ls", "show", "rebuild"):
        help_text = subprocess.run(
            [sys.executable, "-m", "neurolens", sub, "--help"], capture_output=True, text=True, check=True
        ).stdout
        assert "examples:" in help_text and "--root" in help_text


class Terminal(io.StringIO):
    """stderr as a terminal shows it."""

    def isatty(self) -> bool:
        return True


def test_long_commands_show_progress_on_a_terminal_only(
    cli: Cli, store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import neurolens.cli.common as common
    import neurolens.storage.ledger.manifest as manifest

    monkeypatch.setattr(common, "_PROGRESS_MIN_BYTES", 1)  # every store counts as large
    monkeypatch.setattr(common, "_PROGRESS_MIN_RUNS", 1)
    monkeypatch.setattr(common, "_PROGRESS_MIN_GROUPS", 1)
    monkeypatch.setattr(manifest, "_READ_CHUNK", 512)  # several slices to report
    assert cli("rebuild", "--root", str(store))[0] == 0
    assert cli("merge", str(store), "--root", str(tmp_path / "m1"))[0] == 0
    assert capsys.readouterr().err == ""  # a CI log: nothing
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    assert cli("rebuild", "--root", str(store))[0] == 0
    assert cli("merge", str(store), "--root", str(tmp_path / "m2"))[0] == 0
    assert cli("merge", str(store), "--root", str(tmp_path / "m3"), "--json")[0] == 0  # --json: quiet
    assert cli("report", "--root", str(store), "--out", str(tmp_path / "r.html"))[0] == 0
    assert cli("export", "--root", str(store), "--out", str(tmp_path / "r.parquet"))[0] == 0
    lines = terminal.getvalue().split("\r")
    assert any(line.startswith("reading manifest:") for line in lines) and "(100%)\n" in terminal.getvalue()
    merged = [line for line in lines if line.startswith("merged:")]
    assert merged and merged[-1].endswith("(100%)\n") and len(merged) == len(query(store))
    assert [line for line in lines if line.startswith("charted:")][-1].endswith("groups (100%)\n")
    exported = [line for line in lines if line.startswith("exported:")]
    assert exported[-1].endswith("(100%)\n") and f"{len(query(store)):,} runs" in exported[-2]


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="the native index file is reopened via /proc")
def test_short_lived_readers_of_an_index_with_a_tail_exit_cleanly(tmp_path: Path) -> None:
    # Arrow's reader threads once held Python buffers (the index read through a Python file
    # object, the tail through pa.py_buffer): one released as the interpreter exited aborted
    # the process ("terminate called without an active exception") in about 1 run in 40.
    from neurolens.storage.index import reading as _index
    from neurolens.storage.store import compact_index

    for i in range(3):
        write_run(tmp_path, make_run(model=f"m{i}", tags={"branch": "main"}))
    compact_index(tmp_path)
    write_run(tmp_path, make_run(model="m1", tags={"branch": "main"}))  # a tail the index lacks
    with _index.opened_index(tmp_path) as (index, _):
        assert type(getattr(index, "handle", None)).__name__ == "OSFile"  # not a Python file
    argv = [
        sys.executable,
        "-m",
        "neurolens",
        "ls",
        "--root",
        str(tmp_path),
        "--tag",
        "branch=main",
        "--json",
    ]
    failed = []
    for _ in range(8):  # 32 processes, 4 at a time
        running = [
            subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for _ in range(4)
        ]
        for process in running:
            _, err = process.communicate()
            if process.returncode != 0:
                failed.append((process.returncode, err.decode()))
    assert failed == []


def test_ls_filters_without_importing_pandas(tmp_path: Path) -> None:
    # pyarrow imports pandas (0.3 s) on its first conversion of a Python value: ls needs none,
    # nor pyarrow.compute's Python wrappers (0.05-0.1 s): it calls the kernels by name
    from neurolens.storage.store import compact_index
    from tests.factories import make_run

    for i in range(3):
        write_run(tmp_path, make_run(model=f"m{i}", tags={"branch": "main"}))
    compact_index(tmp_path)
    write_run(tmp_path, make_run(model="m1", tags={"branch": "main"}))  # a tail the index lacks
    script = (
        "import sys, io, contextlib; from neurolens.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()) as out:\n"
        "    code = main(sys.argv[1:])\n"
        "print(code, len(__import__('json').loads(out.getvalue())), 'pandas' in sys.modules,\n"
        "      'pyarrow.compute' in sys.modules, 'neurolens.storage.exchange.merge' in sys.modules)"
    )
    argv = ["ls", "--root", str(tmp_path), "--tag", "branch=main", "--model", "m1", "--limit", "5", "--json"]
    done = subprocess.run([sys.executable, "-c", script, *argv], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    # nor what other commands run: only the command given has its options registered
    assert done.stdout.split() == ["0", "2", "False", "False", "False"], done.stderr


def test_compare_gates_without_importing_pandas(tmp_path: Path) -> None:
    # Table.group_by needs pyarrow.dataset, which imports pandas (0.4 s): compare groups by sorting,
    # calling Arrow's kernels by name (pyarrow.compute's wrappers take 0.05-0.1 s to import)
    from neurolens.storage.store import compact_index
    from tests.factories import make_run

    for branch, latency in (("main", 10.0), ("pr", 20.0)):
        for session in range(3):
            for i in range(2):  # sessions of two runs: medians, not lone samples
                run = make_run(tags={"branch": branch}, session_id=f"{branch}-{session}")
                run["metrics"] = {**run["metrics"], "total_latency_ms": latency + i}
                write_run(tmp_path, run)
        write_run(tmp_path, make_run(tags={"branch": branch}))  # and a run without a session
    compact_index(tmp_path)
    script = (
        "import sys, io, contextlib; from neurolens.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()) as out:\n"
        "    code = main(sys.argv[1:])\n"
        "verdict = __import__('json').loads(out.getvalue())['groups'][0]['verdict']\n"
        "print(code, verdict, 'pandas' in sys.modules, 'pyarrow.compute' in sys.modules)"
    )
    sides = ["--baseline-tag", "branch=main", "--candidate-tag", "branch=pr"]
    argv = ["compare", "--root", str(tmp_path), *sides, "--fail-above", "5%", "--json"]
    done = subprocess.run([sys.executable, "-c", script, *argv], capture_output=True, text=True)
    assert done.stdout.split() == ["1", "regressed", "False", "False"], done.stderr


def neurolens_command(*argv: str) -> subprocess.CompletedProcess[str]:
    """The installed ``neurolens`` entry point, as a user runs it."""
    script = str(Path(sys.executable).with_name("neurolens"))
    return subprocess.run([script, *argv], capture_output=True, text=True, timeout=60, check=False)


def test_a_mistyped_option_gets_its_command_s_usage_and_the_closest_option(tmp_path: Path) -> None:
    typo = neurolens_command("compare", "--root", str(tmp_path), "--basline-tag", "branch=main")
    assert typo.returncode == 2
    assert typo.stderr.startswith("usage: neurolens compare")
    assert "unrecognized arguments: --basline-tag branch=main (did you mean --baseline-tag?)" in typo.stderr
    # abbreviations are not guessed: the full name or an error that names it
    short = neurolens_command("ls", "--root", str(tmp_path), "--lim", "3")
    assert short.returncode == 2 and "(did you mean --limit?)" in short.stderr


def test_help_lists_each_command_once_and_remote_has_no_idle_root() -> None:
    main_help = neurolens_command("--help").stdout
    for command in ("ls", "show", "compare", "merge", "verify", "push", "pull", "remote"):
        assert len(re.findall(rf"^\s+{command}\s", main_help, re.M)) == 1, command
    remote_help = neurolens_command("remote", "--help").stdout
    assert "--root" not in remote_help and "--storage-option" in remote_help
