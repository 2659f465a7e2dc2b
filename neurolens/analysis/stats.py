"""The statistics behind a verdict, in plain Python (no SciPy for a handful of tests):
the Mann-Whitney U test (exact for small samples), Student's t distribution, Holm's
step-down correction, the Hodges-Lehmann shift with its distribution-free interval, and an
order statistic that bounds a percentile from above."""

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


def _beta_fraction(a: float, b: float, x: float) -> float:
    """The continued fraction of the regularized incomplete beta function (modified Lentz)."""
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1)
    d = 1 / (d if abs(d) > tiny else tiny)
    fraction = d
    for m in range(1, 400):
        for numerator in (
            m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
            -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1)),
        ):
            d = 1 + numerator * d
            d = 1 / (d if abs(d) > tiny else tiny)
            c = 1 + numerator / c
            c = c if abs(c) > tiny else tiny
            fraction *= c * d
        if abs(c * d - 1) < 1e-15:
            break
    return fraction


def regularized_beta(a: float, b: float, x: float) -> float:
    """I_x(a, b), the regularized incomplete beta function, for a, b > 0 and 0 <= x <= 1."""
    if x <= 0:
        return 0.0
    if x >= 1:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1) / (a + b + 2):
        return math.exp(log_front) * _beta_fraction(a, b, x) / a
    return 1 - math.exp(log_front) * _beta_fraction(b, a, 1 - x) / b


def t_upper_tail(t: float, df: float) -> float:
    """P(T > t) for Student's t with ``df`` degrees of freedom."""
    if df <= 0:
        raise ValueError(f"degrees of freedom must be > 0, not {df}")
    if math.isinf(t):
        return 0.0 if t > 0 else 1.0
    tail = 0.5 * regularized_beta(df / 2, 0.5, df / (df + t * t))
    return tail if t >= 0 else 1 - tail


def t_quantile(q: float, df: float) -> float:
    """The ``q`` quantile of Student's t with ``df`` degrees of freedom (by bisection)."""
    if not 0 < q < 1:
        raise ValueError(f"q must be between 0 and 1, not {q}")
    if q < 0.5:
        return -t_quantile(1 - q, df)
    low, high = 0.0, 1.0
    while t_upper_tail(high, df) > 1 - q:
        high *= 2
    for _ in range(200):
        middle = (low + high) / 2
        if t_upper_tail(middle, df) > 1 - q:
            low = middle
        else:
            high = middle
        if high - low < 1e-12 * max(1.0, high):
            break
    return (low + high) / 2


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values, in the given order: compared with one level,
    they keep the chance of any false alarm across all the tests at that level."""
    count = len(p_values)
    adjusted = [1.0] * count
    running = 0.0
    for rank, i in enumerate(sorted(range(count), key=lambda i: p_values[i])):
        running = max(running, min(1.0, (count - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted


def hodges_lehmann(
    x: Sequence[float], y: Sequence[float], confidence: float = 0.95
) -> tuple[float, float | None, float | None]:
    """The Hodges-Lehmann estimate of the shift from ``x`` to ``y`` (the median of the
    pairwise differences y - x) and its distribution-free confidence interval (from the
    Mann-Whitney U distribution): (estimate, low, high), the bounds None where the samples
    are too few for that confidence."""
    m, n = len(x), len(y)
    if not m or not n:
        raise ValueError("both samples need values")
    differences = sorted(b - a for a in x for b in y)
    estimate = _median(differences)
    alpha = 1 - confidence
    if m <= 25 and n <= 25:
        counts = _u_counts(m, n)
        total = sum(counts)
        below, k = 0, 0  # k: how many differences each end drops
        while k < len(counts) and (below + counts[k]) / total <= alpha / 2:
            below += counts[k]
            k += 1
    else:
        z = _normal_quantile(1 - alpha / 2)
        k = max(0, math.floor(m * n / 2 - z * math.sqrt(m * n * (m + n + 1) / 12)))
    if k == 0 or k > len(differences) - k:
        return estimate, None, None
    return estimate, differences[k - 1], differences[len(differences) - k]


def _normal_quantile(q: float) -> float:
    """The standard normal quantile, by bisection on erfc (plenty for an interval's width)."""
    low, high = -10.0, 10.0
    for _ in range(100):
        middle = (low + high) / 2
        if 0.5 * math.erfc(-middle / math.sqrt(2)) < q:
            low = middle
        else:
            high = middle
    return (low + high) / 2


def binomial_cdf(k: int, trials: int, p: float) -> float:
    """P(X <= k) for X ~ Binomial(trials, p)."""
    if k < 0:
        return 0.0
    if k >= trials:
        return 1.0
    return regularized_beta(trials - k, k + 1, 1 - p)


def percentile_upper_bound_rank(samples: int, q: float, confidence: float = 0.99) -> int | None:
    """The smallest rank r (1-based, ascending) whose order statistic is an upper bound of
    the ``q`` quantile (0 < q < 1) with this ``confidence``, distribution-free: the chance
    that fewer than r of ``samples`` values fall below the quantile is at least
    ``confidence``. None when even the largest value is not such a bound (too few samples)."""
    if samples < 1 or binomial_cdf(samples - 1, samples, q) < confidence:
        return None
    low, high = 1, samples  # binomial_cdf(r - 1) grows with r
    while low < high:
        middle = (low + high) // 2
        if binomial_cdf(middle - 1, samples, q) >= confidence:
            high = middle
        else:
            low = middle + 1
    return low


def samples_to_bound(q: float, confidence: float = 0.99) -> int:
    """The fewest samples whose largest value bounds the ``q`` quantile with ``confidence``."""
    return math.ceil(math.log(1 - confidence) / math.log(q) - 1e-9)
