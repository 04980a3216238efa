"""Confidence intervals for benchmark numbers, and paired comparisons of two models on the same items.

One model: Wilson intervals for proportions, a normal approximation for means. Two models on the same items: for
right/wrong outcomes (GSM8K) the exact McNemar test on the discordant pairs and Tango's score interval for the
difference in accuracy; for scores (FactScore per biography) the mean per-item difference with a normal interval
and z-test. Pairing removes the variation between items, so it tells two models apart on far fewer items than
comparing their separate intervals does.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import NormalDist, fmean, stdev

BINARY_METHOD = "exact McNemar p, Tango score interval"
SCORE_METHOD = "paired z-test, normal interval"
PAIRED_METHODS = (
    "difference = model minus M0 on the items both answered (percentage points for right/wrong outcomes); "
    "right/wrong: exact McNemar p-value (two-sided binomial on the discordant items) and Tango's 95% score "
    "interval (the exact p-value is the stricter: with few discordant items the interval can exclude 0 while p > "
    "0.05); scores: mean per-item difference, normal 95% interval and z-test p-value"
)


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


@dataclass(frozen=True)
class PairedComparison:
    """A model against a baseline on the same items: `difference` is model minus baseline (mean of the per-item
    values, so a fraction for right/wrong outcomes), with its interval and the p-value of no difference.

    `wins` counts items only the model gets right, `losses` items only the baseline gets right (right/wrong
    outcomes only; `None` for scores).
    """

    n: int
    difference: float
    ci_low: float
    ci_high: float
    p_value: float
    method: str
    wins: int | None = None
    losses: int | None = None


def mcnemar_exact_p(wins: int, losses: int) -> float:
    """Exact McNemar test: the two-sided binomial p-value of `wins` among the `wins + losses` discordant pairs under
    p = 1/2, i.e. min(1, 2 P(X <= min(wins, losses))); 1 when there is no discordant pair."""
    if wins < 0 or losses < 0:
        raise ValueError(f"counts must be >= 0, got {wins} and {losses}")
    discordant = wins + losses
    if discordant == 0:
        return 1.0
    tail = sum(math.comb(discordant, k) for k in range(min(wins, losses) + 1))
    return min(1.0, 2 * tail / 2**discordant)


def tango_interval(wins: int, losses: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Tango's score interval (1998) for p_model - p_baseline from `n` paired right/wrong outcomes, `wins` of them
    right for the model only and `losses` right for the baseline only.

    The limits are the differences d at which Tango's score statistic, with the cell probabilities re-estimated
    under d, reaches the normal quantile; found by bisection. Unlike the Wald interval it stays inside [-1, 1] and
    keeps a width when there is no discordant pair (then it is +-z^2 / (n + z^2)).
    """
    if n < 1 or wins < 0 or losses < 0 or wins + losses > n:
        raise ValueError(f"need 0 <= wins + losses <= n and n >= 1, got {wins}, {losses}, {n}")
    z = _z(confidence)
    estimate = (wins - losses) / n
    low = _bisect(lambda d: _tango_statistic(wins, losses, n, d) - z, -1.0, estimate)
    high = _bisect(lambda d: _tango_statistic(wins, losses, n, d) + z, estimate, 1.0)
    return low, high


def _tango_statistic(wins: int, losses: int, n: int, d: float) -> float:
    """(b - c - n d) / sqrt(n (2 q + d (1 - d))), q the restricted maximum-likelihood estimate of the
    baseline-only cell under difference d; decreasing in d."""
    a, b = 2 * n, -wins - losses + (2 * n - wins + losses) * d
    c = -losses * d * (1 - d)
    q = (math.sqrt(max(0.0, b * b - 4 * a * c)) - b) / (2 * a)
    variance = n * (2 * q + d * (1 - d))
    numerator = wins - losses - n * d
    if variance <= 0:
        return 0.0 if numerator == 0 else math.copysign(math.inf, numerator)
    return numerator / math.sqrt(variance)


def _bisect(f, low: float, high: float, steps: int = 60) -> float:
    """The root of a decreasing `f` on [low, high]; an end when `f` does not change sign there."""
    if f(low) <= 0:
        return low
    if f(high) >= 0:
        return high
    for _ in range(steps):
        middle = (low + high) / 2
        if f(middle) > 0:
            low = middle
        else:
            high = middle
    return (low + high) / 2


def paired_binary(model: Sequence[bool], baseline: Sequence[bool], confidence: float = 0.95) -> PairedComparison:
    """Right/wrong outcomes of two models on the same items, in the same order: exact McNemar p-value and
    Tango's score interval for the difference in accuracy."""
    _check_pairs(model, baseline)
    wins = sum(1 for m, b in zip(model, baseline, strict=True) if m and not b)
    losses = sum(1 for m, b in zip(model, baseline, strict=True) if b and not m)
    low, high = tango_interval(wins, losses, len(model), confidence)
    return PairedComparison(
        n=len(model),
        difference=(wins - losses) / len(model),
        ci_low=low,
        ci_high=high,
        p_value=mcnemar_exact_p(wins, losses),
        method=BINARY_METHOD,
        wins=wins,
        losses=losses,
    )


def paired_scores(model: Sequence[float], baseline: Sequence[float], confidence: float = 0.95) -> PairedComparison:
    """Scores of two models on the same items: the mean per-item difference with a normal interval and the
    two-sided z-test p-value (an approximation that needs a few dozen items to hold)."""
    _check_pairs(model, baseline)
    differences = [m - b for m, b in zip(model, baseline, strict=True)]
    mean = fmean(differences)
    spread = stdev(differences) if len(differences) > 1 else 0.0
    if spread == 0:
        return PairedComparison(len(differences), mean, mean, mean, 1.0 if mean == 0 else 0.0, SCORE_METHOD)
    error = spread / math.sqrt(len(differences))
    half = _z(confidence) * error
    p_value = 2 * (1 - NormalDist().cdf(abs(mean) / error))
    return PairedComparison(len(differences), mean, mean - half, mean + half, p_value, SCORE_METHOD)


def paired_comparison(model: Sequence[float], baseline: Sequence[float]) -> PairedComparison:
    """`paired_binary` when every value is 0 or 1, else `paired_scores`."""
    if all(value in (0, 1) for value in (*model, *baseline)):
        return paired_binary([bool(v) for v in model], [bool(v) for v in baseline])
    return paired_scores(model, baseline)


def _check_pairs(model: Sequence, baseline: Sequence) -> None:
    if len(model) != len(baseline):
        raise ValueError(f"paired outcomes need equal lengths, got {len(model)} and {len(baseline)}")
    if not model:
        raise ValueError("no paired items")
