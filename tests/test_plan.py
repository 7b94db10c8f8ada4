"""Hyperband brackets against the paper's formulas, and the halving step."""

from __future__ import annotations

import math

import pytest

import plan


def paper_brackets(max_epochs: int, eta: int) -> list[list[tuple[int, float]]]:
    """Algorithm 1 of Li et al. (JMLR 2018), in exact rational arithmetic where it is exact."""
    s_max = round(math.log(max_epochs) / math.log(eta))  # the test cases are exact powers
    assert eta**s_max == max_epochs
    budget = (s_max + 1) * max_epochs
    brackets = []
    for s in range(s_max, -1, -1):
        n = math.ceil(budget / max_epochs * eta**s / (s + 1) - 1e-9)
        r = max_epochs / eta**s
        brackets.append([(math.floor(n / eta**i + 1e-9), r * eta**i) for i in range(s + 1)])
    return brackets


@pytest.mark.parametrize("max_epochs, eta", [(81, 3), (243, 3), (1000, 10), (64, 2)])
def test_brackets_match_paper(max_epochs, eta):
    planned = [[(r.configs, r.epochs) for r in b.rounds] for b in plan.plan_brackets(max_epochs, eta)]
    assert planned == paper_brackets(max_epochs, eta)


def test_paper_table_for_81_and_3():
    # The table printed in the paper for R = 81, eta = 3.
    expected = {4: [(81, 1), (27, 3), (9, 9), (3, 27), (1, 81)],
                3: [(34, 3), (11, 9), (3, 27), (1, 81)],
                2: [(15, 9), (5, 27), (1, 81)],
                1: [(8, 27), (2, 81)],
                0: [(5, 81)]}
    planned = {b.s: [(r.configs, r.epochs) for r in b.rounds] for b in plan.plan_brackets(81, 3)}
    assert planned == expected


@pytest.mark.parametrize("max_epochs, eta, s_max", [(243, 3, 5), (242, 3, 4), (1000, 10, 3), (999, 10, 2),
                                                     (64, 2, 6), (1, 3, 0), (2, 3, 0)])
def test_max_bracket_is_exact_at_powers(max_epochs, eta, s_max):
    assert plan.max_bracket(max_epochs, eta) == s_max


def test_brackets_run_most_exploratory_first():
    assert [b.s for b in plan.plan_brackets(27, 3)] == [3, 2, 1, 0]


def test_last_round_reaches_max_epochs():
    for max_epochs, eta in [(9, 3), (10, 3), (100, 3), (7, 2)]:
        for bracket in plan.plan_brackets(max_epochs, eta):
            assert bracket.rounds[-1].epochs == max_epochs


def test_epochs_are_whole_and_increasing():
    for bracket in plan.plan_brackets(10, 3):
        epochs = [r.epochs for r in bracket.rounds]
        assert all(isinstance(e, int) and e >= 1 for e in epochs)
        assert epochs == sorted(set(epochs))


def test_reuse_totals_for_9_and_3():
    brackets = plan.plan_brackets(9, 3)
    assert [b.epochs_with_reuse for b in brackets] == [21, 21, 27]
    assert [b.epochs_without_reuse for b in brackets] == [27, 24, 27]


@pytest.mark.parametrize("max_epochs, eta", [(0, 3), (9, 1), (9, 0)])
def test_plan_rejects_invalid(max_epochs, eta):
    with pytest.raises(ValueError):
        plan.plan_brackets(max_epochs, eta)


def test_select_best_orders_by_score():
    assert plan.select_best([0.1, 0.5, 0.3, 0.4], 2) == [1, 3]


def test_select_best_never_keeps_invalid():
    assert plan.select_best([math.nan, 0.2, None, 0.1], 3) == [1, 3]


def test_select_best_breaks_ties_by_index():
    assert plan.select_best([0.5, 0.7, 0.5, 0.7, 0.5], 3) == [1, 3, 0]


def test_select_best_is_stable_across_calls():
    scores = [0.3, math.nan, 0.3, None, 0.3, 0.9]
    assert all(plan.select_best(scores, 5) == [5, 0, 2, 4] for _ in range(5))


def test_select_best_keeps_none_when_zero():
    assert plan.select_best([0.1, 0.2], 0) == []


def test_format_plan_shows_totals():
    table = plan.format_plan(plan.plan_brackets(9, 3))
    assert "9 x 1" in table
    assert table.splitlines()[-1].split()[-2:] == ["69", "78"]
