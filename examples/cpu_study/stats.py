"""Statistics for per-item correctness: bootstrap intervals and paired tests of two methods.

Every function takes 0/1 correctness arrays. Paired functions take two arrays over the same
items in the same order (method A and method B evaluated on identical prompts).

- `accuracy_ci`: percentile bootstrap 95% interval of an accuracy (items resampled).
- `mcnemar_exact`: exact McNemar test, a two-sided binomial test on the discordant pairs.
- `paired_bootstrap`: the accuracy difference A - B with a percentile bootstrap interval over
  items (pairs resampled together), and a two-sided bootstrap p-value.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats

CONFIDENCE = 0.95
N_RESAMPLES = 10_000
SEED = 0


def _as_scores(values, name: str) -> np.ndarray:
    """A float array of per-item scores in [0, 1] (0/1 correctness, or a mean over seeds)."""
    array = np.asarray(values, dtype=float)
    if array.ndim != 1 or array.size == 0:
        raise ValueError(f"`{name}` must be a non-empty 1-D sequence, got shape {array.shape}")
    if np.any((array < 0) | (array > 1)) or not np.all(np.isfinite(array)):
        raise ValueError(f"`{name}` must hold scores in [0, 1]")
    return array


def _percentile_interval(
    statistic, data: tuple[np.ndarray, ...], *, paired: bool, seed: int
) -> tuple[float, float, np.ndarray]:
    result = stats.bootstrap(
        data,
        statistic,
        paired=paired,
        vectorized=True,
        n_resamples=N_RESAMPLES,
        confidence_level=CONFIDENCE,
        method="percentile",
        rng=np.random.default_rng(seed),
    )
    low, high = result.confidence_interval
    return float(low), float(high), result.bootstrap_distribution


@dataclass(frozen=True)
class Interval:
    """An estimate with its bootstrap interval (same units as the estimate)."""

    estimate: float
    low: float
    high: float
    n: int


def accuracy_ci(correct, *, seed: int = SEED) -> Interval:
    """Mean of `correct` with a percentile bootstrap interval over items.

    .. math:: \\hat a = \\frac1n\\sum_i c_i,\\quad [q_{2.5\\%}, q_{97.5\\%}] \\text{ of } \\hat a^{*b}
    """
    scores = _as_scores(correct, "correct")
    if np.all(scores == scores[0]):  # every resample is identical: the interval is the point
        return Interval(float(scores[0]), float(scores[0]), float(scores[0]), scores.size)
    low, high, _ = _percentile_interval(lambda x, axis: x.mean(axis=axis), (scores,), paired=False, seed=seed)
    return Interval(float(scores.mean()), low, high, scores.size)


@dataclass(frozen=True)
class McNemar:
    """Discordant counts (`a_only`: A right and B wrong; `b_only`: the reverse) and the exact two-sided p-value."""

    a_only: int
    b_only: int
    p_value: float


def mcnemar_exact(correct_a, correct_b) -> McNemar:
    """Exact McNemar test: under H0 each discordant pair is A-only with probability 1/2.

    .. math:: p = P(|X - m/2| \\ge |b - m/2|),\\ X \\sim \\mathrm{Bin}(m, 1/2),\\ m = b + c

    With no discordant pair the p-value is 1.
    """
    a, b = _paired(correct_a, correct_b)
    if not (np.isin(a, (0, 1)).all() and np.isin(b, (0, 1)).all()):
        raise ValueError("McNemar needs 0/1 correctness, not averaged scores")
    a_only = int(np.sum((a == 1) & (b == 0)))
    b_only = int(np.sum((a == 0) & (b == 1)))
    discordant = a_only + b_only
    p_value = 1.0 if discordant == 0 else float(stats.binomtest(a_only, discordant, 0.5).pvalue)
    return McNemar(a_only, b_only, p_value)


@dataclass(frozen=True)
class PairedDifference:
    """Accuracy of A minus accuracy of B on the same items, its bootstrap interval and p-value."""

    difference: float
    low: float
    high: float
    p_value: float
    n: int


def paired_bootstrap(correct_a, correct_b, *, seed: int = SEED) -> PairedDifference:
    """Paired percentile bootstrap of ``mean(a) - mean(b)``: items are resampled with both scores together.

    The two-sided p-value is ``min(1, 2 min(P*(d <= 0), P*(d >= 0)))`` over the bootstrap
    distribution of the difference d (the share of resamples on the other side of zero, doubled).
    """
    a, b = _paired(correct_a, correct_b)
    difference = float(a.mean() - b.mean())
    per_item = a - b
    if np.all(per_item == per_item[0]):
        return PairedDifference(difference, difference, difference, 1.0 if difference == 0 else 0.0, a.size)
    low, high, draws = _percentile_interval(lambda x, axis: x.mean(axis=axis), (per_item,), paired=False, seed=seed)
    p_value = min(1.0, 2 * min(np.mean(draws <= 0), np.mean(draws >= 0)))
    return PairedDifference(difference, low, high, float(p_value), a.size)


def _paired(correct_a, correct_b) -> tuple[np.ndarray, np.ndarray]:
    a, b = _as_scores(correct_a, "correct_a"), _as_scores(correct_b, "correct_b")
    if a.shape != b.shape:
        raise ValueError(f"paired scores need the same items: {a.size} vs {b.size}")
    return a, b
