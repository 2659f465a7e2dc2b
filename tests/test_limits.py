"""What a store refuses, and why: strings it could not hold, through write_run and through
a pytest run (one line, the field named, nothing stored)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from neurolens.errors import RunValidationError
from neurolens.storage.store import write_run
from tests.factories import make_run


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
