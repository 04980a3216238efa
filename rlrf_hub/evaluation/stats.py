"""Confidence intervals for benchmark numbers: Wilson for proportions, normal approximation for means."""

from __future__ import annotations

import math
from collections.abc import Sequence
from statistics import NormalDist, fmean, stdev


def _z(confidence: float) -> float:
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    return NormalDist().inv_cdf(0.5 + confidence / 2)


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """The Wilson score interval of a proportion `successes / n`, as fractions in [0, 1].

    Unlike the normal (Wald) interval it stays inside [0, 1] and does not collapse to a point at 0 % or 100 %,
    which matters for the small samples a CPU run evaluates on.
    """
    if n <= 0:
        raise ValueError(f"n must be positive, got {n}")
    if not 0 <= successes <= n:
        raise ValueError(f"successes must be in [0, {n}], got {successes}")
    z = _z(confidence)
    p = successes / n
    denominator = 1 + z * z / n
    center = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    low = 0.0 if successes == 0 else max(0.0, center - half)
    high = 1.0 if successes == n else min(1.0, center + half)
    return low, high


def mean_interval(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float] | None:
    """mean +- z * standard error; `None` with fewer than two values, where no spread can be estimated."""
    if len(values) < 2:
        return None
    mean = fmean(values)
    half = _z(confidence) * stdev(values) / math.sqrt(len(values))
    return mean - half, mean + half
