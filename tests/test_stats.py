"""stats.py: P(A > B), bootstrap intervals and the decision rule, on cases with known results."""

from __future__ import annotations

import numpy as np
import pytest

import stats


def test_probability_identical_samples_is_half():
    values = [0.61, 0.64, 0.60, 0.66, 0.63]
    assert stats.probability_of_outperforming(values, values) == 0.5


def test_probability_full_separation_is_one():
    assert stats.probability_of_outperforming([0.8, 0.9, 0.85], [0.1, 0.2, 0.3]) == 1.0
    assert stats.probability_of_outperforming([0.1, 0.2, 0.3], [0.8, 0.9, 0.85]) == 0.0


def test_probability_ties_count_half():
    # Pairs: (1, 1) tie, (1, 0) win, (0, 1) loss, (0, 0) tie: (0.5 + 1 + 0 + 0.5) / 4.
    assert stats.probability_of_outperforming([1.0, 0.0], [1.0, 0.0]) == 0.5
    # All four pairs are ties.
    assert stats.probability_of_outperforming([0.7, 0.7], [0.7, 0.7]) == 0.5
    # (2 vs 1) win, (2 vs 2) tie, (3 vs 1) win, (3 vs 2) win: 3.5 / 4.
    assert stats.probability_of_outperforming([2.0, 3.0], [1.0, 2.0]) == 0.875


def test_probability_counts_every_pair():
    a = [3.0, 1.0, 4.0]
    b = [2.0, 5.0]
    wins = sum((x > y) + 0.5 * (x == y) for x in a for y in b)
    assert stats.probability_of_outperforming(a, b) == wins / 6


def test_probability_is_antisymmetric():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=7), rng.normal(size=4)
    assert stats.probability_of_outperforming(a, b) + stats.probability_of_outperforming(b, a) == pytest.approx(1.0)


def test_identical_models_interval_contains_half():
    rng = np.random.default_rng(1)
    values = rng.normal(0.6, 0.02, size=10)
    comparison = stats.compare(values, values, seed=0)
    assert comparison.probability == 0.5
    assert comparison.interval.contains(0.5)
    assert not comparison.significant
    assert comparison.winner is None


def test_same_distribution_interval_contains_half():
    rng = np.random.default_rng(2)
    comparison = stats.compare(rng.normal(0.6, 0.02, size=20), rng.normal(0.6, 0.02, size=20), seed=0)
    assert 0.3 < comparison.probability < 0.7
    assert comparison.interval.contains(0.5)
    assert comparison.winner is None


def test_separated_models_a_wins():
    comparison = stats.compare([0.80, 0.81, 0.82, 0.83, 0.84], [0.60, 0.61, 0.62, 0.63, 0.64], seed=0)
    assert comparison.probability == 1.0
    assert comparison.interval.low == 1.0
    assert comparison.interval.high == 1.0
    assert comparison.significant
    assert comparison.winner == "A"


def test_separated_models_b_wins():
    comparison = stats.compare([0.60, 0.61, 0.62], [0.80, 0.81, 0.82], seed=0)
    assert comparison.probability == 0.0
    assert comparison.winner == "B"


def test_overlapping_clearly_better_is_near_one():
    rng = np.random.default_rng(3)
    comparison = stats.compare(rng.normal(0.70, 0.01, size=30), rng.normal(0.60, 0.01, size=30), seed=0)
    assert comparison.probability > 0.99
    assert comparison.interval.low > 0.9


def test_significant_but_below_threshold_has_no_winner():
    rng = np.random.default_rng(4)
    comparison = stats.compare(rng.normal(0.605, 0.02, size=400), rng.normal(0.60, 0.02, size=400), seed=0,
                               resamples=2000)
    assert 0.5 < comparison.probability < 0.75
    assert comparison.significant
    assert comparison.winner is None


def test_bootstrap_is_seeded():
    a, b = [0.61, 0.64, 0.60, 0.66], [0.62, 0.59, 0.63, 0.60]
    assert stats.compare(a, b, seed=7) == stats.compare(a, b, seed=7)
    assert stats.summarize(a, "A", seed=7) == stats.summarize(a, "A", seed=7)
    # Another seed draws other resamples. Many distinct values keep the quantiles off a coarse grid.
    values = np.random.default_rng(5).normal(size=30)
    assert stats.summarize(values, "A", seed=7) != stats.summarize(values, "A", seed=8)


def test_bootstrap_chunks_agree_with_one_pass(monkeypatch):
    a, b = [0.61, 0.64, 0.60, 0.66], [0.62, 0.59, 0.63, 0.60]
    whole = stats.outperforming_interval(a, b, seed=3, resamples=500)
    monkeypatch.setattr(stats, "PAIRS_PER_CHUNK", 16 * 7)  # 7 resamples per chunk
    assert stats.outperforming_interval(a, b, seed=3, resamples=500) == whole


def test_summary_known_values():
    summary = stats.summarize([1.0, 2.0, 3.0, 4.0], "A", seed=0)
    assert summary.count == 4
    assert summary.mean == 2.5
    assert summary.std == pytest.approx(np.sqrt(5 / 3))
    assert summary.minimum == 1.0
    assert summary.maximum == 4.0
    assert 1.0 <= summary.mean_interval.low < 2.5 < summary.mean_interval.high <= 4.0


def test_summary_constant_values():
    summary = stats.summarize([0.5, 0.5, 0.5], "A", seed=0)
    assert summary.std == 0.0
    assert summary.mean_interval.low == 0.5
    assert summary.mean_interval.high == 0.5


@pytest.mark.parametrize("values", [[], [0.5], [0.5, float("nan")], [0.5, float("inf")], [[0.5, 0.6]]])
def test_bad_sample_raises(values):
    with pytest.raises(stats.StatsError, match="the scores of A"):
        stats.probability_of_outperforming(values, [0.1, 0.2])


def test_one_value_names_the_fix():
    with pytest.raises(stats.StatsError, match="at least 2 are needed"):
        stats.summarize([0.5], "vgg11", seed=0)


@pytest.mark.parametrize("threshold", [0.4, 1.0])
def test_bad_threshold_raises(threshold):
    with pytest.raises(stats.StatsError, match="invalid threshold"):
        stats.compare([0.1, 0.2], [0.3, 0.4], seed=0, threshold=threshold)
