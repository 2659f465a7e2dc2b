"""The statistics behind a verdict: Student's t, Holm's correction over a suite of groups,
one candidate session judged as a prediction, short histories, and the change's interval.

Synthetic histories (deterministic seeds); the figures on real models are in
``benchmarks/gate_accuracy.py``.
"""

from __future__ import annotations

import json
import math
import random
import re
from pathlib import Path

import pytest

from neurolens.analysis.compare import compare
from neurolens.analysis.stats import (
    binomial_cdf,
    hodges_lehmann,
    holm,
    percentile_upper_bound_rank,
    samples_to_bound,
    t_quantile,
    t_upper_tail,
)
from neurolens.analysis.text import to_table
from neurolens.analysis.verdicts import NOISE_ALPHA, Comparison, Threshold, judge, settle
from neurolens.storage.index.filters import RunFilter
from neurolens.storage.store import write_run
from tests.factories import Cli, make_run

BASE = RunFilter(tags={"side": "base"})
CAND = RunFilter(tags={"side": "cand"})


# --- the distributions ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("q", "df", "table"),
    [(0.99, 1, 31.821), (0.99, 4, 3.747), (0.99, 9, 2.821), (0.975, 10, 2.228), (0.95, 30, 1.697)],
)
def test_t_quantiles_match_the_printed_tables(q: float, df: int, table: float) -> None:
    assert t_quantile(q, df) == pytest.approx(table, abs=6e-4)
    assert t_upper_tail(t_quantile(q, df), df) == pytest.approx(1 - q, rel=1e-6)
    assert t_upper_tail(-t_quantile(q, df), df) == pytest.approx(q, rel=1e-6)


def test_holm_adjusts_step_down_and_keeps_the_order() -> None:
    assert holm([0.01, 0.04, 0.03, 0.5]) == pytest.approx([0.04, 0.09, 0.09, 0.5])
    assert holm([]) == []
    assert holm([0.9, 0.2]) == pytest.approx([0.9, 0.4])
    assert holm([0.02, 0.03]) == pytest.approx([0.04, 0.04])  # never below an earlier rank


def test_hodges_lehmann_interval_covers_the_shift_at_its_confidence() -> None:
    rng = random.Random(11)
    covered = 0
    for _ in range(400):
        x = [rng.gauss(0, 1) for _ in range(8)]
        y = [rng.gauss(0.5, 1) for _ in range(6)]
        estimate, low, high = hodges_lehmann(x, y)
        assert low is not None and high is not None and low <= estimate <= high
        covered += low <= 0.5 <= high
    assert 0.92 <= covered / 400 <= 0.99
    assert hodges_lehmann([1.0, 2.0], [3.0])[1:] == (None, None)  # too few for 95%


def test_a_percentile_is_bounded_only_from_enough_samples() -> None:
    # the largest of n values bounds the q quantile with 99% once 1 - q**n >= 0.99
    assert (samples_to_bound(0.90), samples_to_bound(0.95), samples_to_bound(0.99)) == (44, 90, 459)
    assert percentile_upper_bound_rank(458, 0.99) is None
    assert percentile_upper_bound_rank(459, 0.99) == 459
    rank = percentile_upper_bound_rank(1000, 0.9)
    assert rank is not None and 900 < rank < 1000
    assert binomial_cdf(rank - 1, 1000, 0.9) >= 0.99 > binomial_cdf(rank - 2, 1000, 0.9)


# --- deciding a suite -------------------------------------------------------------------


def rules(**options: object) -> Comparison:
    return Comparison("total_latency_ms", False, Threshold.parse("5%"), gate=True,
                      require_significance=bool(options.get("require_significance")), alpha=0.05)  # fmt: skip


def sessions(rng: random.Random, count: int, level: float = 1.0, spread: float = 0.08) -> list[float]:
    return [rng.gauss(level, level * spread) for _ in range(count)]


def test_a_suite_of_many_same_build_groups_raises_no_false_alarm() -> None:
    """200 groups, each 5 baseline sessions against 1 candidate session of the same build:
    judged one by one some groups fall outside the noise by chance; Holm's correction over
    the suite keeps the gate quiet."""
    rng = random.Random(2024)
    alone_failures = 0
    for trial in range(3):
        comparison = rules()
        groups = []
        for g in range(200):
            base, cand = sessions(rng, 5), sessions(rng, 1)
            alone = judge(comparison, {"model": f"m{g}"}, base, cand)  # settled on its own
            alone_failures += alone.fails
            groups.append(judge(comparison, {"model": f"m{g}"}, base, cand))
        settle(comparison, groups)
        comparison.groups = groups
        assert not comparison.failed, trial
        adjusted = [g.noise_p for g in groups if g.noise_p is not None]
        assert len(adjusted) == 200 and min(adjusted) >= NOISE_ALPHA
    assert alone_failures >= 2  # the problem the correction solves


def test_a_real_slowdown_in_one_group_of_a_large_suite_still_fails() -> None:
    rng = random.Random(5)
    comparison = rules()
    groups = [judge(comparison, {"model": f"m{g}"}, sessions(rng, 5), sessions(rng, 1)) for g in range(100)]
    slow = judge(comparison, {"model": "slow"}, sessions(rng, 5), sessions(rng, 1, level=2.0))
    settle(comparison, [*groups, slow])
    assert slow.verdict == "regressed" and slow.fails
    assert not any(g.fails for g in groups)


def test_one_candidate_session_is_a_prediction_and_an_8x_slowdown_fails(tmp_path: Path) -> None:
    rng = random.Random(3)
    for i, level in enumerate(sessions(rng, 5)):
        store(tmp_path, "base", i, level)
    store(tmp_path, "cand", 100, 8.0)
    result = compare(tmp_path, BASE, CAND, threshold="5%", require_significance=True)
    (group,) = result.groups
    assert group.significance_test == "prediction" and group.significance_note is None
    assert group.p_value is not None and group.p_value < 1e-4
    assert group.verdict == "regressed" and result.failed
    assert group.interval == "t" and group.change_low_pct is not None and group.change_low_pct > 500
    # compare cannot re-run tests: it says the verdict rests on one session, and how to confirm
    assert "1 failing group rest on one candidate session" in to_table(result)
    assert "--neurolens-confirm" in to_table(result)


@pytest.mark.parametrize("baseline_sessions", [1, 2, 3])
def test_a_short_history_catches_a_50_percent_step_and_passes_the_same_build(
    tmp_path: Path, baseline_sessions: int
) -> None:
    """Sessions 2% apart (calibrated measurement of the example): with 1 to 3 baseline
    sessions, the prior's floor lets +50% fail and the same build pass."""
    for seed in range(5):
        root = tmp_path / f"{seed}"
        rng = random.Random(seed)
        for i, level in enumerate(sessions(rng, baseline_sessions, spread=0.02)):
            store(root / "same", "base", i, level)
            store(root / "slow", "base", i, level)
        store(root / "same", "cand", 100, sessions(rng, 1, spread=0.02)[0])
        store(root / "slow", "cand", 100, sessions(rng, 1, level=1.5, spread=0.02)[0])
        assert not compare(root / "same", BASE, CAND, threshold="5%").failed
        slow = compare(root / "slow", BASE, CAND, threshold="5%")
        assert slow.failed and slow.groups[0].noise_floor is not None
        assert slow.groups[0].noise_floor < 0.5  # the floor itself, in ms of a 1 ms level


def test_the_change_comes_with_its_interval_in_every_format(tmp_path: Path, cli: Cli) -> None:
    rng = random.Random(8)
    for i, level in enumerate(sessions(rng, 6, spread=0.03)):
        store(tmp_path, "base", i, level)
    for i, level in enumerate(sessions(rng, 6, level=1.3, spread=0.03)):
        store(tmp_path, "cand", 100 + i, level)
    (group,) = compare(tmp_path, BASE, CAND, threshold="5%").groups
    assert group.interval == "hodges-lehmann"
    assert group.change_low_pct is not None and group.change_high_pct is not None
    assert (
        group.change_pct is not None and 10 < group.change_low_pct < group.change_pct < group.change_high_pct
    )
    assert group.change_high_pct - group.change_low_pct < 25
    args = ("compare", "--root", str(tmp_path), "--baseline-tag", "side=base", "--candidate-tag", "side=cand")
    status, out = cli(*args, "--json", "--fail-above", "5%")
    data = json.loads(out)
    assert status == 1 and data["correction"] == "holm" and data["noise_alpha"] == NOISE_ALPHA
    assert data["groups"][0]["interval"] == "hodges-lehmann"
    assert math.isclose(data["groups"][0]["change_low_pct"], group.change_low_pct)
    status, table = cli(*args)
    low, high = f"{group.change_low_pct:+.1f}", f"{group.change_high_pct:+.1f}"
    assert f"[{low}, {high}]" in table and "Holm-corrected over 1 group" in table
    status, markdown = cli(*args, "--format", "markdown")
    assert f"[{low}, {high}]" in re.sub(r"\\(.)", r"\1", markdown)  # escaped for GFM


def store(root: Path, side: str, number: int, level: float) -> None:
    run = make_run(
        session_id=f"{side}-{number:03d}",
        created_at=f"2026-11-{1 + number % 28:02d}T00:00:{number % 60:02d}Z",
        tags={"side": side},
        metrics={"total_latency_ms": level, "gpu_utilization": None},
        test={"nodeid": "t.py::t", "outcome": "passed"},
    )
    write_run(root, run)
