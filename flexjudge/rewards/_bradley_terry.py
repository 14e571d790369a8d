"""Bradley-Terry strengths from pairwise games, for schedules that do not judge every pair."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

from flexjudge.errors import UsageError

__all__ = ["PRIOR_GAMES", "bradley_terry", "expected_win_rates"]

Game = tuple[Any, ...]
"""`(i, j, winner, ...)`: candidates i and j (0-based), the winner's index or None for a tie."""


PRIOR_GAMES = 0.1
"""The prior's weight: each candidate is credited `PRIOR_GAMES` virtual games against an average opponent
(strength 1, log strength 0), half of them won."""


def bradley_terry(
    num_candidates: int, outcomes: Iterable[Game], *, iterations: int = 200, prior_games: float = PRIOR_GAMES
) -> list[float]:
    """Bradley-Terry strengths (log scale, mean 0) from `(i, j, winner, ...)` games (an outcome's first
    three fields), a tie (winner None) counting half a win each.

    What is fitted: the strengths p_i of P(i beats j) = p_i / (p_i + p_j) that maximise the likelihood
    of the observed games times a prior of `prior_games` virtual games of every candidate against an
    average opponent of strength 1, half of them won (the maximum a posteriori fit), approached by
    minorisation-maximisation (Hunter 2004) from equal strengths and stopped after `iterations` steps or
    when no log strength moves by 1e-9. The prior keeps a candidate who won (or lost) all its games finite
    and leaves one never compared at the average. It is weak (0.1 of a game) on purpose: a stronger one
    pulls every fit towards net wins (points), which ignores whom a candidate met, and costs an adaptive
    schedule most of what its choice of opponents bought (`benchmarks/RESULTS.md`, schedules). The price
    of a weak prior is slow convergence for a candidate that won (or lost) nearly everything: after the
    default 200 steps such a candidate's strength may still be rising (and a near-tied pair may still
    swap), so the returned fit is the deterministic 200-step iterate, the MAP itself where it has
    converged. The benchmark's numbers are those of this iterate."""
    if prior_games <= 0:
        raise UsageError(
            f"prior_games must be positive (it keeps unbeaten candidates finite), got {prior_games}"
        )
    return _fit(num_candidates, [(game[0], game[1], game[2]) for game in outcomes], iterations, prior_games)


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


def _fit(
    g: int, games: Sequence[tuple[int, int, int | None]], iterations: int, prior_games: float
) -> list[float]:
    wins = [prior_games / 2] * g  # the virtual games against an average opponent (strength 1), half won
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
            wins[i] / (prior_games / (p[i] + 1.0) + sum(1.0 / (p[i] + p[j]) for j in opponents[i]))
            for i in range(g)
        ]
        change = max(abs(math.log(a / b)) for a, b in zip(updated, p, strict=True))
        p = updated
        if change < 1e-9:
            break
    logs = [math.log(x) for x in p]
    mean = sum(logs) / g
    return [x - mean for x in logs]
