"""Statistics for comparing two models from repeated training runs, with numpy alone.

The probability of outperforming, P(A > B), is the probability that one run of model A scores
higher than one run of model B. It is estimated over all pairs of runs, a tie counting one half,
which is the Mann-Whitney U statistic divided by the number of pairs. It compares whole
distributions of runs, as Bouthillier et al., "Accounting for Variance in Machine Learning
Benchmarks" (MLSys 2021), argue a comparison must, since data sampling, initialisation and the
hyperparameter choice each move a single run's result.

Every confidence interval is a percentile bootstrap interval drawn with a generator seeded by the
caller, so the same values and seed give the same interval, digit for digit, on every run.
"""

from __future__ import annotations

import dataclasses

import numpy as np

BOOTSTRAP_RESAMPLES = 10_000
CONFIDENCE = 0.95
# Pairs compared at once in the bootstrap of P(A > B), which bounds the array of differences to 16 MB.
PAIRS_PER_CHUNK = 2_000_000


class StatsError(ValueError):
    """Values that no statistic here can be computed from, such as fewer than two runs."""


@dataclasses.dataclass(frozen=True)
class Interval:
    """A two-sided confidence interval."""

    low: float
    high: float
    confidence: float

    def contains(self, value: float) -> bool:
        return self.low <= value <= self.high


@dataclasses.dataclass(frozen=True)
class Summary:
    """Mean, sample standard deviation and bootstrap interval of the mean of one model's runs."""

    count: int
    mean: float
    std: float  # with Bessel's correction (ddof=1)
    mean_interval: Interval
    minimum: float
    maximum: float


def check_sample(values, name: str) -> np.ndarray:
    """Return `values` as a float array, or raise StatsError when they are too few or not finite."""
    array = np.asarray(values, dtype=float)
    if array.ndim != 1:
        raise StatsError(f"{name} must be a flat list of numbers, got an array of shape {array.shape}")
    if len(array) < 2:
        raise StatsError(f"{name} has {len(array)} value(s), but at least 2 are needed for a standard deviation "
                         f"and a bootstrap interval; run more repeats")
    if not np.all(np.isfinite(array)):
        raise StatsError(f"{name} contains a value that is not finite: {array.tolist()}")
    return array


# ---------------------------------------------------------------- one model


def summarize(values, name: str, seed: int, resamples: int = BOOTSTRAP_RESAMPLES,
              confidence: float = CONFIDENCE) -> Summary:
    """Summarize one model's scores, with a percentile bootstrap interval of their mean."""
    sample = check_sample(values, name)
    rng = np.random.default_rng(seed)
    indices = rng.integers(0, len(sample), size=(resamples, len(sample)))
    means = sample[indices].mean(axis=1)
    return Summary(count=len(sample), mean=float(sample.mean()), std=float(sample.std(ddof=1)),
                   mean_interval=percentile_interval(means, confidence),
                   minimum=float(sample.min()), maximum=float(sample.max()))


def percentile_interval(statistics: np.ndarray, confidence: float) -> Interval:
    """Return the central `confidence` interval of bootstrap `statistics`."""
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(statistics, [tail, 1.0 - tail])
    return Interval(float(low), float(high), confidence)


# ---------------------------------------------------------------- two models


def probability_of_outperforming(a, b) -> float:
    """Return P(A > B): the share of pairs (a_i, b_j) with a_i > b_j, a tie counting one half."""
    sample_a = check_sample(a, "the scores of A")
    sample_b = check_sample(b, "the scores of B")
    return float(_pairwise_wins(sample_a[None, :], sample_b[None, :])[0])


def outperforming_interval(a, b, seed: int, resamples: int = BOOTSTRAP_RESAMPLES,
                           confidence: float = CONFIDENCE) -> Interval:
    """Return a percentile bootstrap interval of P(A > B), resampling the runs of A and of B independently."""
    sample_a = check_sample(a, "the scores of A")
    sample_b = check_sample(b, "the scores of B")
    rng = np.random.default_rng(seed)
    indices_a = rng.integers(0, len(sample_a), size=(resamples, len(sample_a)))
    indices_b = rng.integers(0, len(sample_b), size=(resamples, len(sample_b)))
    chunk = max(1, PAIRS_PER_CHUNK // (len(sample_a) * len(sample_b)))
    probabilities = np.concatenate([
        _pairwise_wins(sample_a[indices_a[start:start + chunk]], sample_b[indices_b[start:start + chunk]])
        for start in range(0, resamples, chunk)
    ])
    return percentile_interval(probabilities, confidence)


def _pairwise_wins(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Return P(A > B) of each row of `a` (R, n) against the same row of `b` (R, m)."""
    difference = a[:, :, None] - b[:, None, :]
    return (difference > 0).mean(axis=(1, 2)) + 0.5 * (difference == 0).mean(axis=(1, 2))


@dataclasses.dataclass(frozen=True)
class Comparison:
    """P(A > B) with its bootstrap interval, and what the decision rule concludes from them."""

    probability: float
    interval: Interval
    threshold: float  # gamma: P(A > B) must exceed it, or fall below 1 - gamma, to be meaningful

    @property
    def significant(self) -> bool:
        """The interval excludes 0.5, so one model wins more than half of the pairs beyond chance."""
        return self.interval.low > 0.5 or self.interval.high < 0.5

    @property
    def winner(self) -> str | None:
        """Return "A" or "B" when the difference is significant and meaningful, else None."""
        if self.interval.low > 0.5 and self.probability > self.threshold:
            return "A"
        if self.interval.high < 0.5 and self.probability < 1.0 - self.threshold:
            return "B"
        return None


def compare(a, b, seed: int, threshold: float = 0.75, resamples: int = BOOTSTRAP_RESAMPLES,
            confidence: float = CONFIDENCE) -> Comparison:
    """Estimate P(A > B) and its interval from the scores of A's and B's runs."""
    if not 0.5 <= threshold < 1.0:
        raise StatsError(f"invalid threshold {threshold}: must be in [0.5, 1)")
    return Comparison(probability=probability_of_outperforming(a, b),
                      interval=outperforming_interval(a, b, seed, resamples, confidence),
                      threshold=threshold)
