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
  most in doubt under the exact posterior over rankings of a judge that errs at random (G <= 16).
- `Bayesian(fraction)`: the same posterior, one pair a round (or `per_round`), the judge's error rate
  read from its judgments, and the rewards taken from the posterior too (G <= 16).
- `ScoreFirst(fraction)`: every candidate scored alone first (G `score` calls, in the budget), then pairs
  where the posterior of the scores and the judgments together most doubts the order; ranked by it.

An incomplete schedule leaves some pairs unjudged, so points / comparisons would reward a candidate for
its luck of the draw; `flexjudge.rewards` then fits Bradley-Terry strengths instead (see `bradley_terry`).
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Literal, Protocol, runtime_checkable

from flexjudge.errors import UsageError
from flexjudge.rewards._bradley_terry import bradley_terry
from flexjudge.rewards._formula import Outcome
from flexjudge.rewards._latent import latent_order_probabilities, latent_prior
from flexjudge.rewards._posterior import MAX_EXACT, estimated_error, order_probabilities

__all__ = [
    "MAX_EXACT",
    "Active",
    "Bayesian",
    "Posterior",
    "RandomGraph",
    "RoundRobin",
    "Schedule",
    "ScoreFirst",
    "Swiss",
    "estimate_of",
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
        """The pairs to judge next (0-based, lower index first), given every outcome so far; [] when done.
        `group_rewards` calls an incomplete schedule's in a worker thread (it may fit a model), one call
        at a time."""
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
    `per_round` caps the pairs of every later round (default None: G // 2, a full matching): fewer pairs a
    round means more rounds, each chosen on more evidence (measured at G = 16 with 2 a round: 0.02 tau
    better than full matchings, in 27 rounds instead of 8).
    """

    fraction: float = 0.5
    per_round: int | None = None
    complete: bool = False

    def next_pairs(self, num_candidates: int, outcomes: Sequence[Outcome], rng: random.Random) -> list[Pair]:
        if not 0.0 < self.fraction <= 1.0:
            raise UsageError(f"Active needs a fraction in (0, 1], got {self.fraction}")
        if self.per_round is not None and self.per_round < 1:
            raise UsageError(f"Active needs per_round >= 1 (or None), got {self.per_round}")
        g = num_candidates
        left = int(self.fraction * g * (g - 1) / 2) - len(outcomes)
        if left <= 0:
            return []
        games = [(i, j, winner) for i, j, overall, anchors in outcomes for winner in (overall, *anchors)]
        strength = bradley_terry(g, games, prior_games=CHOICE_PRIOR_GAMES)
        closest = sorted(
            _open_pairs(g, outcomes), key=lambda p: (abs(strength[p[0]] - strength[p[1]]), rng.random())
        )
        size = g // 2 if not outcomes or self.per_round is None else self.per_round
        return _matching(closest, min(left, size))


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
        open_pairs = _open_pairs(g, outcomes)
        if outcomes:
            better = order_probabilities(g, outcomes, self.error)
            doubt = _by_doubt(open_pairs, better, rng)
            size = self.per_round
        else:  # nothing known: every order is a coin flip, so a random matching
            doubt = sorted(open_pairs, key=lambda _: rng.random())
            size = g // 2
        return _matching(doubt, min(left, size))


@dataclass(frozen=True)
class Bayesian:
    """`fraction` of the C(G, 2) pairs (rounded down): a random matching first (G // 2 pairs), then
    `per_round` pairs a round (default 1), the unjudged pairs whose order the exact posterior most doubts,
    each candidate at most once a round; ranked by that posterior.

    The model is `Posterior`'s (each of a judgment's four decisions names the better candidate with
    probability 1 - e, whatever the gap), with e read from the judgments themselves rather than given:
    the share of judgments whose four decisions disagree (`estimated_error`). One pair a round lets every
    answer steer the next question (at G = 9: 15 rounds for 18 calls; a round's latency is one judgment);
    more pairs a round trade some of that for fewer rounds (at G = 16, 4 a round: 14 rounds for 60 calls).
    Asking where P(a better than b) is nearest 1/2 is the greedy choice of the most informative question
    under this model: a judgment depends on the ranking only through its pair's order.

    The rewards come from the same posterior (`estimate_of` says "posterior"): every rate is the
    candidate's posterior expected win rate against a random other member of the group, from all four
    decisions of every judgment (see `flexjudge.rewards.from_outcomes`). Measured: with these pairs,
    Bradley-Terry per decision type ranks 0.03 to 0.05 tau worse (benchmarks/RESULTS.md). G <= `MAX_EXACT`.
    """

    fraction: float = 0.5
    per_round: int = 1
    complete: bool = False

    def next_pairs(self, num_candidates: int, outcomes: Sequence[Outcome], rng: random.Random) -> list[Pair]:
        g = num_candidates
        if not 0.0 < self.fraction <= 1.0:
            raise UsageError(f"Bayesian needs a fraction in (0, 1], got {self.fraction}")
        if self.per_round < 1:
            raise UsageError(f"Bayesian needs per_round >= 1, got {self.per_round}")
        if g > MAX_EXACT:
            raise UsageError(f"Bayesian sums over 2^G subsets: at most {MAX_EXACT} candidates, got {g}")
        left = int(self.fraction * g * (g - 1) / 2) - len(outcomes)
        if left <= 0:
            return []
        open_pairs = _open_pairs(g, outcomes)
        if not outcomes:  # nothing known: every order is a coin flip, so a random matching
            return _matching(sorted(open_pairs, key=lambda _: rng.random()), min(left, g // 2))
        better = order_probabilities(g, outcomes, estimated_error(outcomes))
        doubt = _by_doubt(open_pairs, better, rng)
        return _matching(doubt, min(left, self.per_round))


@dataclass(frozen=True)
class ScoreFirst:
    """`fraction` of the C(G, 2) calls (rounded down), G of them `score` calls: every candidate is scored
    alone first, then `per_round` pairs a round go to the open pairs whose order is most in doubt under
    the latent-quality posterior of the scores and the judgments so far (`flexjudge.rewards._latent`),
    each candidate at most once a round; ranked by that posterior (`estimate_of` says "latent").

    A score call informs every pair its candidate is in, a pair call only its own pair: the scores give
    a coarse order at once, and the pairs then settle the neighbours the scores leave in doubt. Measured
    in simulation (benchmarks/RESULTS.md): at G = 9 with a judge that errs on 25% of pairs, 9 scores and
    9 pairs rank 0.07 tau better than round robin's 36 pairs, where `Bayesian`'s 18 pairs rank 0.04 worse.
    The model reads its prior and the scores' noise from the group (a judge's scale does not matter), and
    takes the scores of a candidate as noisy readings of one quality: dimensions that disagree in earnest
    make it trust the scores less.

    `group_rewards` makes the score calls and hands their scores to the schedule (`with_scores`): the
    overall score and the anchor scores of each `PointwiseJudgment`, None for a candidate whose score
    call failed (it then keeps the group's prior).
    """

    fraction: float = 0.5
    per_round: int = 1
    scores: tuple[tuple[float, ...] | None, ...] | None = None
    complete: bool = False

    def with_scores(self, scores: Sequence[Sequence[float] | None]) -> ScoreFirst:
        """This schedule, told the candidates' scores."""
        return replace(self, scores=tuple(None if s is None else tuple(s) for s in scores))

    def next_pairs(self, num_candidates: int, outcomes: Sequence[Outcome], rng: random.Random) -> list[Pair]:
        g = num_candidates
        if not 0.0 < self.fraction <= 1.0:
            raise UsageError(f"ScoreFirst needs a fraction in (0, 1], got {self.fraction}")
        if self.per_round < 1:
            raise UsageError(f"ScoreFirst needs per_round >= 1, got {self.per_round}")
        if self.scores is None or len(self.scores) != g:
            raise UsageError(
                "ScoreFirst chooses pairs from every candidate's scores: give them (with_scores)"
            )
        left = score_first_pair_budget(self.fraction, g) - len(outcomes)
        if left <= 0:
            return []
        open_pairs = _open_pairs(g, outcomes)
        prior = latent_prior(self.scores)
        better = latent_order_probabilities(prior, outcomes, estimated_error(outcomes), rng)
        doubt = _by_doubt(open_pairs, better, rng)
        return _matching(doubt, min(left, self.per_round))


def score_first_pair_budget(fraction: float, g: int) -> int:
    """The pair calls `ScoreFirst(fraction)` makes at G: its share of C(G, 2) calls less the G scores."""
    return max(0, int(fraction * g * (g - 1) / 2) - g)


def estimate_of(schedule: Schedule) -> Literal["points", "bradley_terry", "posterior", "latent"]:
    """How `from_outcomes` fills the rates of `schedule`'s outcomes: points / comparisons when it judges
    every pair, the exact posterior for `Bayesian`, the latent one for `ScoreFirst`, else Bradley-Terry."""
    if schedule.complete:
        return "points"
    if isinstance(schedule, ScoreFirst):
        return "latent"
    return "posterior" if isinstance(schedule, Bayesian) else "bradley_terry"


def _open_pairs(g: int, outcomes: Sequence[Outcome]) -> list[Pair]:
    """The pairs not judged yet, in index order."""
    judged = {(i, j) for i, j, _, _ in outcomes}
    return [p for p in itertools.combinations(range(g), 2) if p not in judged]


def _by_doubt(pairs: Sequence[Pair], better: Sequence[Sequence[float]], rng: random.Random) -> list[Pair]:
    """`pairs`, the one whose P(a better than b) is nearest 1/2 first; the rng breaks ties."""
    return sorted(pairs, key=lambda p: (abs(better[p[0]][p[1]] - 0.5), rng.random()))


def _matching(ranked: Sequence[Pair], size: int) -> list[Pair]:
    """The first `size` pairs of `ranked` that share no candidate (a round judged concurrently)."""
    busy: set[int] = set()
    pairs: list[Pair] = []
    for a, b in ranked:
        if len(pairs) == size:
            break
        if a not in busy and b not in busy:
            busy.update((a, b))
            pairs.append((a, b))
    return sorted(pairs)


def _rounds_played(outcomes: Sequence[Outcome], g: int) -> int:
    return math.ceil(len(outcomes) / max(1, g // 2))


def _ordered(a: int, b: int) -> Pair:
    return (a, b) if a < b else (b, a)
