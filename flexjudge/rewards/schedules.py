"""Which pairs of a group to judge: all of them (the paper), or fewer, chosen up front or as results come.

A schedule is asked for the next pairs given the outcomes so far, until it answers with none. Round robin
asks once for all C(G, 2) pairs. The cheaper ones:

- `RandomGraph(k)`: each candidate against k opponents on a balanced random graph (G * k / 2 pairs):
  every candidate gets the same number of comparisons, so no rate rests on fewer games than another.
- `Swiss(rounds)`: candidates are paired round by round with a neighbour in the current standings
  (never twice the same pair), so calls go where the order is still in doubt: a clear loser stops
  meeting clear winners after the first round.
- `Active(fraction)`: a fixed share of the C(G, 2) pairs, spent round by round on the unplayed pairs whose
  order is least settled (closest Bradley-Terry strengths, fitted on every decision judged so far).
- `Posterior(fraction)`: the same budget, spent a few pairs a round on the unjudged pairs whose order is
  most in doubt under the exact posterior over rankings of a judge that errs at random (G <= 12).

An incomplete schedule leaves some pairs unjudged, so points / comparisons would reward a candidate for
its luck of the draw; `flexjudge.rewards` then fits Bradley-Terry strengths instead (see `bradley_terry`).
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from flexjudge.errors import UsageError
from flexjudge.rewards._bradley_terry import bradley_terry
from flexjudge.rewards._formula import Outcome

__all__ = [
    "MAX_EXACT",
    "Active",
    "Posterior",
    "RandomGraph",
    "RoundRobin",
    "Schedule",
    "Swiss",
    "order_probabilities",
]

Pair = tuple[int, int]


@runtime_checkable
class Schedule(Protocol):
    """Chooses the pairs of a group to judge, in rounds."""

    @property
    def complete(self) -> bool:
        """True when it judges every pair, so rates are points / comparisons (no model needed)."""
        ...

    def next_pairs(self, num_candidates: int, outcomes: Sequence[Outcome], rng: random.Random) -> list[Pair]:
        """The pairs to judge next (0-based, lower index first), given every outcome so far; [] when done."""
        ...


@dataclass(frozen=True)
class RoundRobin:
    """Every pair once: C(G, 2) judgments, the paper's schedule."""

    complete: bool = True

    def next_pairs(self, num_candidates: int, outcomes: Sequence[Outcome], rng: random.Random) -> list[Pair]:
        return [] if outcomes else list(itertools.combinations(range(num_candidates), 2))


@dataclass(frozen=True)
class RandomGraph:
    """Each candidate against `k` opponents on a random k-regular graph: G * k / 2 judgments.

    The graph is a circulant (each candidate meets its k nearest neighbours on a cycle, plus the one
    opposite when k is odd) over a random relabelling: regular by construction, random in who meets whom.
    """

    k: int = 4
    complete: bool = False

    def next_pairs(self, num_candidates: int, outcomes: Sequence[Outcome], rng: random.Random) -> list[Pair]:
        if outcomes:
            return []
        g, k = num_candidates, self.k
        if k >= g - 1:
            return RoundRobin().next_pairs(g, outcomes, rng)
        if k < 1 or (k % 2 == 1 and g % 2 == 1):
            raise UsageError(f"RandomGraph needs 1 <= k and k * G even (k={k}, G={g})")
        cycle = list(range(g))
        rng.shuffle(cycle)
        offsets = list(range(1, k // 2 + 1)) + ([g // 2] if k % 2 else [])
        pairs = {_ordered(cycle[p], cycle[(p + d) % g]) for p in range(g) for d in offsets}
        return sorted(pairs)


@dataclass(frozen=True)
class Swiss:
    """`rounds` rounds; each pairs candidates in standing order with the nearest one not met yet.

    Standings are Bradley-Terry strengths of the outcomes so far (random order in round 1). With G odd,
    the lowest-ranked candidate not yet left out sits each round out. About G / 2 judgments a round.
    """

    rounds: int = 4
    complete: bool = False

    def next_pairs(self, num_candidates: int, outcomes: Sequence[Outcome], rng: random.Random) -> list[Pair]:
        g = num_candidates
        played = {(i, j) for i, j, _, _ in outcomes}
        if self.rounds < 1:
            raise UsageError(f"Swiss needs at least one round, got {self.rounds}")
        if _rounds_played(outcomes, g) >= self.rounds:
            return []
        if outcomes:
            strength = bradley_terry(g, outcomes)
            order = sorted(range(g), key=lambda c: (-strength[c], rng.random()))
        else:
            order = list(range(g))
            rng.shuffle(order)
        pairs: list[Pair] = []
        waiting = list(order)
        while len(waiting) >= 2:
            first = waiting.pop(0)
            partner = next((c for c in waiting if _ordered(first, c) not in played), None)
            if partner is None:  # met everyone left: pair with the nearest again rather than skip a turn
                partner = waiting[0]
            waiting.remove(partner)
            pairs.append(_ordered(first, partner))
        return sorted(set(pairs))


CHOICE_PRIOR_GAMES = 1.0
"""The prior `Active` fits its choice on (one virtual game against an average opponent, half won): firmer
than the rewards' own (`PRIOR_GAMES`), so one early upset does not send a strength to the extremes and
steer the next rounds' pairs; measured: the weak prior in the choice cost `Active` 0.01 to 0.02 tau."""


@dataclass(frozen=True)
class Active:
    """`fraction` of the C(G, 2) pairs (rounded down), spent where the ranking is still in doubt.

    Each round fits Bradley-Terry strengths on every decision so far (the overall winner and the three
    anchor winners, four games per judged pair: they all speak to which candidate is better, so the
    standings settle four times faster than on the verdict alone), then greedily takes the unplayed pairs
    with the closest strengths, each candidate at most once a round (so a round's pairs are judged
    concurrently), until the budget is spent. A pair of clearly separated candidates would most likely
    confirm what the fit already says; a close pair is the one whose answer can move the ranking. The
    first round, with nothing fitted, is a random matching (every strength is equal; the rng breaks ties).
    """

    fraction: float = 0.5
    complete: bool = False

    def next_pairs(self, num_candidates: int, outcomes: Sequence[Outcome], rng: random.Random) -> list[Pair]:
        if not 0.0 < self.fraction <= 1.0:
            raise UsageError(f"Active needs a fraction in (0, 1], got {self.fraction}")
        g = num_candidates
        left = int(self.fraction * g * (g - 1) / 2) - len(outcomes)
        if left <= 0:
            return []
        games = [(i, j, winner) for i, j, overall, anchors in outcomes for winner in (overall, *anchors)]
        strength = bradley_terry(g, games, prior_games=CHOICE_PRIOR_GAMES)
        played = {(i, j) for i, j, _, _ in outcomes}
        unplayed = [p for p in itertools.combinations(range(g), 2) if p not in played]
        closest = sorted(unplayed, key=lambda p: (abs(strength[p[0]] - strength[p[1]]), rng.random()))
        busy: set[int] = set()
        pairs: list[Pair] = []
        for a, b in closest:
            if len(pairs) == min(left, g // 2):
                break
            if a not in busy and b not in busy:
                busy.update((a, b))
                pairs.append((a, b))
        return sorted(pairs)


MAX_EXACT = 12
"""The largest group `Posterior` takes: its posterior sums over the 2^G subsets of candidates (4,096 at
G = 12; 65,536 at 16 costs about a second a round in pure Python)."""


@dataclass(frozen=True)
class Posterior:
    """`fraction` of the C(G, 2) pairs (rounded down), spent where the ranking is most in doubt under the
    exact posterior over rankings; a random matching first (G // 2 pairs), then `per_round` pairs a round.

    The model is the judge of `benchmarks/schedules.py`: each decision of a judgment (the overall winner
    and the three anchor winners) names the better candidate with probability 1 - `error`, whatever the
    gap, and every ranking is equally likely a priori. A ranking's posterior weight is then
    (error / (1 - error)) ** (decisions it contradicts) (a tie half a contradiction), and the probability
    that a is better than b sums over all G! rankings, which a forward-backward pass over the 2^G subsets
    does exactly (`order_probabilities`). The next pairs are the unjudged ones with that probability
    nearest 1/2, each candidate at most once a round (so a round is judged concurrently). Unlike the
    closest Bradley-Terry strengths (`Active`), the posterior sees that a pair never judged can already be
    settled by transitivity, and that one upset does not make a far pair close. Each pair is judged at
    most once. The rewards are still Bradley-Terry's: the posterior only chooses the pairs.
    """

    fraction: float = 0.5
    per_round: int = 2
    error: float = 0.15
    complete: bool = False

    def next_pairs(self, num_candidates: int, outcomes: Sequence[Outcome], rng: random.Random) -> list[Pair]:
        g = num_candidates
        if not 0.0 < self.fraction <= 1.0:
            raise UsageError(f"Posterior needs a fraction in (0, 1], got {self.fraction}")
        if self.per_round < 1:
            raise UsageError(f"Posterior needs per_round >= 1, got {self.per_round}")
        if not 0.0 < self.error < 0.5:
            raise UsageError(f"Posterior needs an error rate in (0, 0.5), got {self.error}")
        if g > MAX_EXACT:
            raise UsageError(f"Posterior sums over 2^G subsets: at most {MAX_EXACT} candidates, got {g}")
        left = int(self.fraction * g * (g - 1) / 2) - len(outcomes)
        if left <= 0:
            return []
        judged = {(i, j) for i, j, _, _ in outcomes}
        open_pairs = [p for p in itertools.combinations(range(g), 2) if p not in judged]
        if outcomes:
            better = order_probabilities(g, outcomes, self.error)
            doubt = sorted(open_pairs, key=lambda p: (abs(better[p[0]][p[1]] - 0.5), rng.random()))
            size = self.per_round
        else:  # nothing known: every order is a coin flip, so a random matching
            doubt = sorted(open_pairs, key=lambda _: rng.random())
            size = g // 2
        busy: set[int] = set()
        pairs: list[Pair] = []
        for a, b in doubt:
            if len(pairs) == min(left, size):
                break
            if a not in busy and b not in busy:
                busy.update((a, b))
                pairs.append((a, b))
        return sorted(pairs)


def order_probabilities(g: int, outcomes: Sequence[Outcome], error: float) -> list[list[float]]:
    """`p[a][b]`: the posterior probability that candidate a is better than b (see `Posterior`).

    A ranking is built best first; placing x just below the set S already placed contradicts the
    decisions that x beat a member of S, a factor F(S, x). Forward sums run over the orders of S,
    backward ones over the orders of the rest, and a placed just below S with b not in S means a is
    better than b."""
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


def _rounds_played(outcomes: Sequence[Outcome], g: int) -> int:
    return math.ceil(len(outcomes) / max(1, g // 2))


def _ordered(a: int, b: int) -> Pair:
    return (a, b) if a < b else (b, a)
