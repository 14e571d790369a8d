"""The dimension vote: how many dimensions each candidate won, weighted when the user asks for it.

One definition for the three places that need it: the weighted verdict (`reading.py`), the order-swap
merge when the two runs disagree (`swap.py`), and the check that a verdict follows its dimensions
(`checks.py`).
"""

from __future__ import annotations

from collections.abc import Iterable

from flexjudge.schema import Candidate, Dimension, Preferences

__all__ = ["dimension_votes", "leader"]


def dimension_votes(dimensions: Iterable[Dimension], preferences: Preferences | None) -> tuple[float, float]:
    """(candidate 1's votes, candidate 2's): one per dimension won, or the dimension's weight when
    `preferences.weighted_verdict` is set. Tied dimensions vote for neither."""
    weighted = preferences is not None and preferences.weighted_verdict
    votes = {1: 0.0, 2: 0.0}
    for dim in dimensions:
        if dim.winner is not None:
            votes[dim.winner] += preferences.weight(dim.name) if weighted and preferences else 1.0
    return votes[1], votes[2]


def leader(one: float, two: float) -> Candidate | None:
    """The candidate with more votes; None on a tie."""
    return 1 if one > two else 2 if two > one else None
