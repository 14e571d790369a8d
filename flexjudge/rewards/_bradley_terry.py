"""Bradley-Terry strengths from pairwise games, for schedules that do not judge every pair."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

__all__ = ["bradley_terry", "expected_win_rates"]

Game = tuple[Any, ...]
"""`(i, j, winner, ...)`: candidates i and j (0-based), the winner's index or None for a tie."""


def bradley_terry(num_candidates: int, outcomes: Iterable[Game], *, iterations: int = 200) -> list[float]:
    """Bradley-Terry strengths (log scale, mean 0) from `(i, j, winner, ...)` games (an outcome's first
    three fields), a tie (winner None) counting half a win each.

    Fitted by minorisation-maximisation (Hunter 2004) with one virtual tie of every candidate against an
    average opponent: a prior that keeps a candidate who won (or lost) all its games finite, and that
    leaves one never compared at the average."""
    return _fit(num_candidates, [(game[0], game[1], game[2]) for game in outcomes], iterations)


def expected_win_rates(strengths: Sequence[float]) -> list[float]:
    """Each candidate's expected win rate against a random other member of the group, under Bradley-Terry:
    what points / comparisons estimates when every pair is judged."""
    g = len(strengths)
    if g < 2:
        return [0.5] * g
    return [
        sum(1.0 / (1.0 + math.exp(strengths[j] - strengths[i])) for j in range(g) if j != i) / (g - 1)
        for i in range(g)
    ]


def _fit(g: int, games: Sequence[tuple[int, int, int | None]], iterations: int) -> list[float]:
    wins = [0.5] * g  # the virtual tie against an average opponent (strength 1)
    opponents: list[list[int]] = [[] for _ in range(g)]
    for i, j, winner in games:
        opponents[i].append(j)
        opponents[j].append(i)
        if winner is None:
            wins[i] += 0.5
            wins[j] += 0.5
        else:
            wins[winner] += 1.0
    p = [1.0] * g
    for _ in range(iterations):
        updated = [
            wins[i] / (1.0 / (p[i] + 1.0) + sum(1.0 / (p[i] + p[j]) for j in opponents[i])) for i in range(g)
        ]
        change = max(abs(math.log(a / b)) for a, b in zip(updated, p, strict=True))
        p = updated
        if change < 1e-9:
            break
    logs = [math.log(x) for x in p]
    mean = sum(logs) / g
    return [x - mean for x in logs]
