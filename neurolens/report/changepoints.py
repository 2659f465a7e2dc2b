"""Change points in a series of per-session values: PELT with a mean-shift cost.

The method is PELT (Killick, Fearnhead and Eckley, 2012: "Optimal detection of changepoints
with a linear computational cost"): the segmentation minimising the sum of each segment's
squared deviations from its mean plus a penalty per change, found exactly, with pruning.
The penalty is ``PENALTY_FACTOR x sigma^2 x log(n)`` (a BIC-like choice), where sigma is the
noise estimated robustly from successive differences (MAD / 0.6745 / sqrt 2), so one steady
outlier session does not inflate it and a step does not hide itself. Segments are at least
``MIN_SEGMENT`` points long, and the series is first passed through a running median of 3,
which keeps steps where they are and removes single odd sessions: an outlier is not a change.
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

    best = [0.0] + [math.inf] * n  # best[t]: the cost of values[:t] segmented
    best[0] = -penalty
    last = [0] * (n + 1)  # last[t]: where the final segment of values[:t] starts
    candidates = [0]
    for t in range(min_segment, n + 1):
        scored = [(best[s] + cost(s, t) + penalty, s) for s in candidates if t - s >= min_segment]
        if scored:
            best[t], last[t] = min(scored)
        # prune starts that can never be optimal again (PELT), keep the ones too close to judge
        candidates = [s for s in candidates if t - s < min_segment or best[s] + cost(s, t) <= best[t]]
        if t - min_segment + 1 >= 0 and best[t - min_segment + 1] < math.inf:
            candidates.append(t - min_segment + 1)
    points = []
    t = n
    while t > 0:
        s = last[t]
        if s > 0:
            points.append(s)
        t = s
    return sorted(points)


def _running_median3(values: Sequence[float]) -> list[float]:
    inner = [sorted(values[i - 1 : i + 2])[1] for i in range(1, len(values) - 1)]
    return [values[0], *inner, values[-1]]
