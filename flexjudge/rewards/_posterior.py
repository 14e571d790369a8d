"""The exact posterior over a group's rankings under a judge that errs at random, and what follows from it.

The model: each decision of a judgment (the overall winner and the three anchor winners) names the better
candidate with probability 1 - `error`, whatever the gap, independently, and every ranking is equally
likely a priori. A ranking's posterior weight is then (error / (1 - error)) ** (decisions it contradicts),
a tie half a contradiction. The probability that a is better than b sums over all G! rankings, which a
forward-backward pass over the 2^G subsets of candidates does exactly (`order_probabilities`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from flexjudge.errors import UsageError

if TYPE_CHECKING:  # _formula fills rates from this module: a runtime import would be circular
    from flexjudge.rewards._formula import Outcome

__all__ = ["MAX_EXACT", "estimated_error", "order_probabilities", "posterior_win_rates"]

MAX_EXACT = 12
"""The largest group the exact posterior takes: it sums over the 2^G subsets of candidates (4,096 at
G = 12; 65,536 at 16 costs about a second in pure Python)."""

PRIOR_ERROR = 0.15
PRIOR_JUDGMENTS = 4.0
"""`estimated_error` starts from an error of `PRIOR_ERROR`, worth `PRIOR_JUDGMENTS` judgments."""


def order_probabilities(g: int, outcomes: Sequence[Outcome], error: float) -> list[list[float]]:
    """`p[a][b]`: the posterior probability that candidate a is better than b (see the module docstring).

    A ranking is built best first; placing x just below the set S already placed contradicts the
    decisions that x beat a member of S, a factor F(S, x). Forward sums run over the orders of S,
    backward ones over the orders of the rest, and a placed just below S with b not in S means a is
    better than b."""
    if g > MAX_EXACT:
        raise UsageError(f"the exact posterior takes at most {MAX_EXACT} candidates (2^G subsets), got {g}")
    if not 0.0 < error < 0.5:
        raise UsageError(f"the posterior needs an error rate in (0, 0.5), got {error}")
    against = [[0.0] * g for _ in range(g)]  # against[x][s]: decisions that x beat s
    for i, j, overall, categories in outcomes:
        for winner in (overall, *categories):
            if winner is None:
                against[i][j] += 0.5
                against[j][i] += 0.5
            else:
                against[winner][j if winner == i else i] += 1.0
    ratio = error / (1.0 - error)
    factor = [[ratio ** against[x][s] for s in range(g)] for x in range(g)]
    full = (1 << g) - 1
    placed_below = [[1.0] * g for _ in range(full + 1)]  # F(S, x), from S without its lowest member
    for subset in range(1, full + 1):
        low = (subset & -subset).bit_length() - 1
        previous = placed_below[subset & (subset - 1)]
        placed_below[subset] = [previous[x] * factor[x][low] for x in range(g)]
    forward = [0.0] * (full + 1)
    forward[0] = 1.0
    for subset in range(full):
        weights = placed_below[subset]
        for x in range(g):
            if not subset >> x & 1:
                forward[subset | 1 << x] += forward[subset] * weights[x]
    backward = [0.0] * (full + 1)
    backward[full] = 1.0
    for subset in range(full - 1, -1, -1):
        weights = placed_below[subset]
        backward[subset] = sum(
            weights[x] * backward[subset | 1 << x] for x in range(g) if not subset >> x & 1
        )
    total = backward[0]
    p = [[0.0] * g for _ in range(g)]
    for subset in range(full):
        for a in range(g):
            if subset >> a & 1:
                continue
            share = forward[subset] * placed_below[subset][a] * backward[subset | 1 << a] / total
            rest = full & ~(subset | 1 << a)
            while rest:
                b = (rest & -rest).bit_length() - 1
                rest &= rest - 1
                p[a][b] += share
    return p


def estimated_error(outcomes: Sequence[Outcome]) -> float:
    """The judge's per-decision error rate, read from the judgments themselves: under the model, a
    judgment's four decisions all agree with probability (1 - e)^4 + e^4, whatever the pair, so the share
    of judgments whose decisions split tells e without knowing who is better. Shrunk towards
    `PRIOR_ERROR` (a group has few judgments) and kept in [0.02, 0.45]. Judgments without anchor winners
    (a failed pair read as a tie) say nothing about it and are skipped."""
    full = [(overall, *categories) for _, _, overall, categories in outcomes if categories]
    split = sum(1 for decisions in full if len(set(decisions)) > 1)
    share = (split + PRIOR_JUDGMENTS * _split_share(PRIOR_ERROR)) / (len(full) + PRIOR_JUDGMENTS)
    low, high = 0.0, 0.5  # _split_share rises from 0 to 7/8 on [0, 0.5]: bisect
    for _ in range(40):
        middle = (low + high) / 2
        low, high = (middle, high) if _split_share(middle) < share else (low, middle)
    return min(max(low, 0.02), 0.45)


def posterior_win_rates(g: int, outcomes: Sequence[Outcome]) -> list[float]:
    """Each candidate's posterior expected win rate against a random other member of the group, with the
    error rate read from the outcomes (`estimated_error`): (1 / (G - 1)) * sum_b P(a better than b).
    Ranking by it ranks by posterior mean rank."""
    if g < 2:
        return [0.5] * g
    p = order_probabilities(g, outcomes, estimated_error(outcomes))
    return [sum(row) / (g - 1) for row in p]


def _split_share(error: float) -> float:
    return 1.0 - (1.0 - error) ** 4 - error**4
