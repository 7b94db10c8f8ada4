"""Hyperband's brackets and the successive-halving step, in integer arithmetic.

The source is Algorithm 1 of Li, Jamieson, DeSalvo, Rostamizadeh and Talwalkar, "Hyperband: A Novel
Bandit-Based Approach to Hyperparameter Optimization", JMLR 18 (2018). With R the maximum epochs of
one configuration and eta the reduction factor:

    s_max = floor(log_eta(R)),  B = (s_max + 1) R
    for s = s_max, ..., 0:  n = ceil(B / R * eta^s / (s + 1)),  r = R eta^-s
        for i = 0, ..., s:  run n_i = floor(n eta^-i) configurations to r_i = r eta^i epochs,
                            keep the best floor(n_i / eta)

s_max is found by integer powers, because floating-point logs are off by one at exact powers
(math.log(243, 3) is 4.999...).
"""

from __future__ import annotations

import dataclasses
import math
from fractions import Fraction


@dataclasses.dataclass(frozen=True)
class Round:
    configs: int  # n_i
    epochs: int  # r_i, the total epochs each configuration has completed after this round


@dataclasses.dataclass(frozen=True)
class Bracket:
    s: int
    rounds: tuple[Round, ...]

    @property
    def epochs_with_reuse(self) -> int:
        """Epochs trained when promoted configurations resume from their checkpoints."""
        total, previous = 0, 0
        for round_ in self.rounds:
            total += round_.configs * (round_.epochs - previous)
            previous = round_.epochs
        return total

    @property
    def epochs_without_reuse(self) -> int:
        """Epochs trained when every round starts its configurations from scratch."""
        return sum(round_.configs * round_.epochs for round_ in self.rounds)


def max_bracket(max_epochs: int, eta: int) -> int:
    """Return s_max, the largest s with eta**s <= max_epochs."""
    if max_epochs < 1:
        raise ValueError(f"max_epochs must be >= 1, got {max_epochs}")
    if eta < 2:
        raise ValueError(f"eta must be >= 2, got {eta}")
    s = 0
    while eta ** (s + 1) <= max_epochs:
        s += 1
    return s


def round_epochs(max_epochs: int, eta: int, s: int, i: int) -> int:
    """Return r_i = R eta^(i - s) as a whole number of epochs.

    Departure from the paper: epochs are whole, so when R is not a power of eta, r_i is rounded to
    the nearest integer (halves up) and kept >= 1. When R is a power of eta this is exact.
    """
    exact = Fraction(max_epochs, eta ** (s - i))
    return max(1, math.floor(exact + Fraction(1, 2)))


def plan_brackets(max_epochs: int, eta: int) -> list[Bracket]:
    """Return Hyperband's brackets, from the most exploratory (s = s_max) to the least (s = 0)."""
    s_max = max_bracket(max_epochs, eta)
    brackets = []
    for s in range(s_max, -1, -1):
        # n = ceil((s_max + 1) eta^s / (s + 1)), in integers: B / R = s_max + 1.
        n = -(-(s_max + 1) * eta**s // (s + 1))
        rounds = tuple(Round(configs=n // eta**i, epochs=round_epochs(max_epochs, eta, s, i)) for i in range(s + 1))
        brackets.append(Bracket(s=s, rounds=rounds))
    return brackets


def select_best(scores: list[float | None], keep: int) -> list[int]:
    """Return the indices of the `keep` best scores, best first.

    Higher is better. None and NaN (diverged, failed or timed-out trials) are never kept, so a
    round with fewer valid scores than `keep` promotes fewer configurations. Ties go to the lower
    index, so the choice is the same on every run.
    """
    if keep < 0:
        raise ValueError(f"keep must be >= 0, got {keep}")

    valid = [index for index, score in enumerate(scores) if score is not None and not math.isnan(score)]
    return sorted(valid, key=lambda index: (-scores[index], index))[:keep]


def format_plan(brackets: list[Bracket]) -> str:
    """Render the bracket table: configurations x epochs per round, and the epochs each bracket trains."""
    width = max(len(b.rounds) for b in brackets)
    header = ["bracket"] + [f"round {i}" for i in range(width)] + ["epochs", "no reuse"]
    rows = []
    for bracket in brackets:
        cells = [f"s={bracket.s}"] + [f"{r.configs} x {r.epochs}" for r in bracket.rounds]
        cells += [""] * (width - len(bracket.rounds))
        rows.append(cells + [str(bracket.epochs_with_reuse), str(bracket.epochs_without_reuse)])
    total_with = sum(b.epochs_with_reuse for b in brackets)
    total_without = sum(b.epochs_without_reuse for b in brackets)
    rows.append(["total"] + [""] * width + [str(total_with), str(total_without)])
    widths = [max(len(row[c]) for row in [header] + rows) for c in range(len(header))]
    lines = ["  ".join(cell.rjust(w) for cell, w in zip(row, widths)) for row in [header] + rows]
    return "\n".join(lines)
