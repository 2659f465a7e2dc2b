"""The Mann-Whitney U test, exact for small samples: no SciPy needed for one test."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from functools import cache


def _rank_sum(x: Sequence[float], y: Sequence[float]) -> tuple[float, list[int]]:
    """The sum of ``x``'s average ranks (1-based) among ``x`` and ``y``, and the sizes of
    tied groups."""
    counts = Counter(x)
    counts.update(y)
    rank_of = {}
    below = 0
    for value in sorted(counts):
        rank_of[value] = below + (counts[value] + 1) / 2
        below += counts[value]
    return sum(map(rank_of.__getitem__, x)), [c for c in counts.values() if c > 1]


@cache
def _u_counts(m: int, n: int) -> tuple[int, ...]:
    """How many arrangements of m x's and n y's give each U = 0..m*n (no ties)."""
    if m == 0 or n == 0:
        return (1,)
    with_x_last = _u_counts(m - 1, n)  # the largest value is an x: it beats all n y's
    with_y_last = _u_counts(m, n - 1)
    counts = [0] * (m * n + 1)
    for u, c in enumerate(with_x_last):
        counts[u + n] += c
    for u, c in enumerate(with_y_last):
        counts[u] += c
    return tuple(counts)


def mann_whitney_u(x: Sequence[float], y: Sequence[float]) -> tuple[float, float]:
    """(U of x, two-sided p). Exact for small samples without ties, else the normal
    approximation with tie and continuity corrections."""
    m, n = len(x), len(y)
    if m == 0 or n == 0:
        raise ValueError("both samples need values")
    rank_sum, ties = _rank_sum(x, y)
    u = rank_sum - m * (m + 1) / 2
    if not ties and m <= 25 and n <= 25:
        counts = _u_counts(m, n)
        total = sum(counts)
        k = round(u)
        low = sum(counts[: k + 1]) / total
        high = sum(counts[k:]) / total
        return u, min(1.0, 2 * min(low, high))
    size = m + n
    tie_term = sum(t**3 - t for t in ties) / (size * (size - 1))
    sigma = math.sqrt(m * n / 12 * ((size + 1) - tie_term))
    if sigma == 0:
        return u, 1.0
    z = max(abs(u - m * n / 2) - 0.5, 0) / sigma
    return u, min(1.0, math.erfc(z / math.sqrt(2)))


def smallest_p_value(m: int, n: int) -> float:
    """The smallest two-sided p the exact test can give for samples of sizes m and n."""
    return min(1.0, 2 / math.comb(m + n, m)) if m and n else 1.0


# The scale that makes the median absolute deviation estimate a normal distribution's sigma.
MAD_TO_SIGMA = 1.4826


def robust_spread(values: Sequence[float]) -> float:
    """The standard deviation estimated from the median absolute deviation (robust to
    an outlier session, unlike the sample standard deviation)."""
    if not values:
        raise ValueError("no values")
    ordered = sorted(values)
    middle = _median(ordered)
    return MAD_TO_SIGMA * _median(sorted(abs(v - middle) for v in ordered))


def _median(ordered: Sequence[float]) -> float:
    half = len(ordered) // 2
    return ordered[half] if len(ordered) % 2 else (ordered[half - 1] + ordered[half]) / 2


# Student's t distribution, 0.99 quantile, by degrees of freedom (the noise floor's m - 1)
_T_99 = {1: 31.821, 2: 6.965, 3: 4.541, 4: 3.747, 5: 3.365, 6: 3.143, 7: 2.998, 8: 2.896, 9: 2.821}
_T_99_MANY = {10: 2.764, 15: 2.602, 20: 2.528, 30: 2.457, 60: 2.390, 120: 2.358}


def t_quantile_99(df: int) -> float:
    """The 0.99 quantile of Student's t with ``df`` degrees of freedom (tabulated; rounded
    towards fewer degrees, so never smaller than the true value)."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, not {df}")
    if df in _T_99:
        return _T_99[df]
    below = [k for k in _T_99_MANY if k <= df]
    return _T_99_MANY[max(below)] if df < 1000 else 2.326
