"""`mode="rank"`: N candidates ranked by their pairwise win rate, every judgment behind it kept."""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import BaseModel, ConfigDict

from flexjudge.schema import Judgment

__all__ = ["RankedPair", "Ranking", "rank_by_win_rate"]


class RankedPair(BaseModel):
    """One pairwise judgment behind a ranking (candidate numbers are the caller's, 1-based)."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    first: int
    """The candidate shown as candidate 1."""
    second: int
    """The candidate shown as candidate 2."""
    judgment: Judgment
    """The judgment of that pair, in that order (after order-swap merging when asked)."""


class Ranking(BaseModel):
    """N candidates ranked by their pairwise win rate, with every judgment behind it."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    order: list[int]
    """Candidate numbers (1-based), best first; equal win rates keep the caller's order."""
    win_rate: list[float]
    """Per candidate, in the caller's order: wins / (N - 1), a tie counting one half."""
    pairs: list[RankedPair]
    """Every pair that was judged."""


def rank_by_win_rate(count: int, pairs: Sequence[tuple[int, int]], judgments: Sequence[Judgment]) -> Ranking:
    """Rank `count` candidates from the judgments of `pairs` (0-based indices, each pair shown in that
    order): a win counts 1, a tie one half for each side."""
    wins = [0.0] * count
    for (i, j), judgment in zip(pairs, judgments, strict=True):
        winner = judgment.verdict.winner
        if winner is None:
            wins[i] += 0.5
            wins[j] += 0.5
        else:
            wins[i if winner == 1 else j] += 1.0
    rate = [w / (count - 1) for w in wins]
    order = sorted(range(count), key=lambda k: -rate[k])  # stable: equal rates keep the caller's order
    return Ranking(
        order=[k + 1 for k in order],
        win_rate=rate,
        pairs=[
            RankedPair(first=i + 1, second=j + 1, judgment=jd)
            for (i, j), jd in zip(pairs, judgments, strict=True)
        ],
    )
