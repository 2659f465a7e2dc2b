"""What a store refuses, and why: strings it could not hold, through write_run and through
a pytest run (one line, the field named, nothing stored)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from neurolens.errors import RunValidationError
from neurolens.storage.store import write_run
from tests.factories import Cli, make_run


@pytest.mark.parametrize(
    ("fields", "named", "says"),
    [
        ({"backend": "\U0001f600" * 70}, "backend", "is 280 bytes in UTF-8"),  # 70 characters, under 100
        ({"tags": {"k": "x\ud800"}}, "tags.k", "lone surrogate"),
        ({"tags": {"\udcff": "x"}}, "tags.'\\udcff'", "lone surrogate"),
        ({"model": "m\udc80"}, "model", "lone surrogate"),
        ({"hardware": {"gpu_name": "\ud83d"}}, "hardware.gpu_name", "lone surrogate"),
    ],
)
def test_strings_the_store_cannot_hold_are_refused_naming_the_field(
    tmp_path: Path, fields: dict[str, Any], named: str, says: str
) -> None:
    with pytest.raises(RunValidationError) as caught:
        write_run(tmp_path, make_run(**fields))
    assert caught.value.field == named and says in str(caught.value)
    assert not (tmp_path / "_manifest.jsonl").exists() or (tmp_path / "_manifest.jsonl").read_bytes() == b""


def test_a_test_recording_such_a_run_fails_on_its_own_line_naming_the_field(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.neurolens(model="m", backend="\\U0001f600" * 70, precision="fp32", batch_size=1)
        def test_emoji(neurolens):
            neurolens.record(total_latency_ms=1.0)

        @pytest.mark.neurolens(model="m", backend="cpu", precision="fp32", batch_size=1,
                               tags={"k": "x\\ud800"})
        def test_surrogate(neurolens):
            neurolens.measure(lambda: None, iterations=5)

        @pytest.mark.neurolens(model="m", backend="cpu", precision="fp32", batch_size=1)
        def test_fine(neurolens):
            neurolens.record(total_latency_ms=1.0)
        """
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-W", "error", "--neurolens-store=runs")
    result.assert_outcomes(passed=1, failed=2)
    out = result.stdout.str()
    assert "fixture.py" not in out and "document.py" not in out  # not the library's frames
    result.stdout.fnmatch_lines(
        [
            ">       neurolens.record(total_latency_ms=1.0)",
            "E       neurolens.errors.RunValidationError: backend: is 280 bytes in UTF-8*",
            ">       neurolens.measure(lambda: None, iterations=5)",
            "E       neurolens.errors.RunValidationError: tags.k: holds a lone surrogate*",
            "recorded 1 run in *",
        ]
    )


# --- bounded memory: a store holds lines and files of known size -----------------------------

MIB = 1024 * 1024


def test_a_run_too_large_for_the_store_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    with pytest.raises(
        RunValidationError, match=r"^tags: the run's manifest line would be 2,\d{3},\d{3} bytes"
    ):
        write_run(tmp_path, make_run(tags={"big": "x" * (2 * MIB)}))
    with pytest.raises(RunValidationError, match=r"^the run document is 17,\d{3},\d{3} bytes; a store holds"):
        write_run(tmp_path, make_run(extra={"blob": "x" * (17 * MIB)}))
    assert not list(tmp_path.rglob("*.json"))


def test_a_manifest_line_over_the_limit_is_skipped_by_every_reader(tmp_path: Path, cli: Cli) -> None:
    import json
    import subprocess
    import sys

    root = tmp_path / "store"
    write_run(root, make_run(seq_len=1))
    size = (root / "_manifest.jsonl").stat().st_size
    with open(root / "_manifest.jsonl", "ab") as manifest:  # a hand edit: a 20 MB line
        manifest.write(b'{"tags":"' + b"x" * (20 * MIB) + b'"}\n')
    write_run(root, make_run(seq_len=2))
    neurolens = str(Path(sys.executable).with_name("neurolens"))
    for argv in (["ls", "--json"], ["verify"], ["rebuild"]):
        done = subprocess.run(
            [neurolens, *argv, "--root", str(root)], capture_output=True, text=True, timeout=60
        )
        said = done.stdout + done.stderr
        assert f"manifest byte {size}: line of {20 * MIB + 12:,} bytes skipped" in said, argv
        assert "Traceback" not in said
    listed = json.loads(subprocess.run([neurolens, "ls", "--json", "--root", str(root)], capture_output=True,
                                       text=True).stdout)  # fmt: skip
    assert sorted(r["seq_len"] for r in listed) == [1, 2]


def test_an_archive_member_over_the_limit_is_refused_by_name(tmp_path: Path, cli: Cli) -> None:
    import io
    import json
    import tarfile

    src = tmp_path / "src"
    stored = write_run(src, make_run())
    relative = str(Path(stored["run_json"]).relative_to(src))
    archive = tmp_path / "big.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for name, data in (("_manifest.jsonl", (src / "_manifest.jsonl").read_bytes()),
                           (relative, b" " * (17 * MIB))):  # fmt: skip
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    assert archive.stat().st_size < MIB
    status, out = cli("merge", str(archive), "--root", str(tmp_path / "dest"), "--json")
    report = json.loads(out)
    assert status == 1 and report["added"] == 0
    assert any(f"member '{relative}' refused (17,825,792 bytes" in r for r in report["refused"])
