"""Change points in a series of per-session values: binary segmentation, mean-shift cost.

The method is binary segmentation (Scott and Knott, 1974; ``Binseg`` in the ruptures
library): split the series where splitting lowers the sum of squared deviations from the
segments' means the most, if it lowers it by more than a penalty, then split each part the
same way. O(n log n), so a 1,000-session history of each of 1,000 groups takes a fraction of
a second. The penalty is ``PENALTY_FACTOR x sigma^2 x log(n)`` (a BIC-like choice), where
sigma is the noise estimated robustly from successive differences (MAD / 0.6745 / sqrt 2),
so one odd session does not inflate it and a step does not hide itself. Segments are at
least ``MIN_SEGMENT`` points long, and the series is first passed through a running median
of 3, which keeps steps where they are and removes single odd sessions: an outlier is not a
change. A split is kept only where the level changes (the point before it on the left
level, the point at it on the right one): a jump in the newest session alone is not marked
on a flat session before it.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

PENALTY_FACTOR = 3.0
MIN_SEGMENT = 3


def noise_sigma(values: Sequence[float]) -> float:
    """Noise standard deviation from successive differences (a step moves one difference only)."""
    diffs = sorted(abs(b - a) for a, b in itertools.pairwise(values))
    if not diffs:
        return 0.0
    half = len(diffs) // 2
    mad = diffs[half] if len(diffs) % 2 else (diffs[half - 1] + diffs[half]) / 2
    return mad / 0.6745 / math.sqrt(2)


def change_points(values: Sequence[float], min_segment: int = MIN_SEGMENT) -> list[int]:
    """Indices where a new level starts (each > 0), oldest first; [] for a steady series."""
    n = len(values)
    if n < 2 * min_segment:
        return []
    sigma = noise_sigma(values)  # of the raw series: the smoothed one's differences are correlated
    values = _running_median3(values)
    spread = max(values) - min(values)
    if spread == 0:
        return []
    if sigma == 0:  # (nearly) exact repeats: a step of any size is real
        sigma = spread * 1e-3
    penalty = PENALTY_FACTOR * sigma**2 * math.log(n)
    # prefix sums: the cost of a segment [a, b) in O(1)
    sums = [0.0]
    squares = [0.0]
    for v in values:
        sums.append(sums[-1] + v)
        squares.append(squares[-1] + v * v)

    def cost(a: int, b: int) -> float:
        total = sums[b] - sums[a]
        return max(0.0, squares[b] - squares[a] - total * total / (b - a))

    def mean(a: int, b: int) -> float:
        return (sums[b] - sums[a]) / (b - a)

    def at_the_step(a: int, s: int, b: int) -> bool:
        """The level changes at ``s``: the point before it belongs to the left level and ``s``
        to the right one. A jump in the last point alone also lowers the cost most when the
        minimum segment reaches back over flat sessions; that is not where it changed."""
        left, right = mean(a, s), mean(s, b)
        return abs(values[s - 1] - left) <= abs(values[s - 1] - right) and abs(values[s] - right) <= abs(
            values[s] - left
        )

    def split(a: int, b: int) -> list[int]:
        if b - a < 2 * min_segment:
            return []
        whole = cost(a, b)
        gains = sorted(
            ((whole - cost(a, s) - cost(s, b), s) for s in range(a + min_segment, b - min_segment + 1)),
            reverse=True,
        )
        at = next((s for gain, s in gains if gain > penalty and at_the_step(a, s, b)), None)
        if at is None:
            return []
        return [*split(a, at), at, *split(at, b)]

    return split(0, n)


def _running_median3(values: Sequence[float]) -> list[float]:
    inner = [sorted(values[i - 1 : i + 2])[1] for i in range(1, len(values) - 1)]
    return [values[0], *inner, values[-1]]
