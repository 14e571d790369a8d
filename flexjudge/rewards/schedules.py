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

__all__ = ["Active", "RandomGraph", "RoundRobin", "Schedule", "Swiss"]

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
        strength = bradley_terry(g, games)
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


def _rounds_played(outcomes: Sequence[Outcome], g: int) -> int:
    return math.ceil(len(outcomes) / max(1, g // 2))


def _ordered(a: int, b: int) -> Pair:
    return (a, b) if a < b else (b, a)
