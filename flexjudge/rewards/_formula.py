"""The paper's group reward (eq. 12, as in the released Pref-GRPO code), from pairwise outcomes.

A group holds G candidates for one prompt. Each judged pair gives an outcome: who won overall and who won
each of the three anchor dimensions. A win counts 1, a tie 0.5 to each side. Per candidate, a rate is its
points over its comparisons; the dimension rate is the weighted mean of the three anchor rates; the
advantage blends the two rates z-normalised over the group:

    A = alpha * z(dimension) + (1 - alpha) * z(overall),   z(r) = (r - mean(r)) / (std(r) + 1e-8)

with `std` the sample standard deviation (N - 1), as the released code computes it.

When not every pair was judged (a cheaper schedule), points / comparisons depends on who drew whom; with
`estimate="bradley_terry"` each rate is instead the expected win rate against a random other member of
the group under Bradley-Terry strengths fitted on the observed outcomes (`_bradley_terry.py`); with
`estimate="posterior"` (the `Bayesian` schedule's) every rate, overall and per anchor, is the expected win
rate under the exact posterior over rankings fitted on all four decisions of every outcome at once
(`_posterior.py`, G <= 16): one order for all rates, so alpha and the category weights do not change
the ranking it induces; `estimate="latent"` (the `ScoreFirst` schedule's) does the same under the
posterior of the candidates' pointwise scores and the judgments together (`_latent.py`). The generated
dimension D is not an anchor: it moves a candidate's reward only through the overall winner.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

from flexjudge.errors import UsageError
from flexjudge.rewards._bradley_terry import bradley_terry, expected_win_rates
from flexjudge.rewards._latent import latent_win_rates
from flexjudge.rewards._posterior import posterior_win_rates

__all__ = ["RELEASED_IMAGE_WEIGHTS", "GroupRewards", "Outcome", "from_outcomes"]

Outcome = tuple[int, int, int | None, Sequence[int | None]]
"""`(i, j, overall, categories)`: candidates `i < j` (0-based), the overall winner (`i`, `j`, or None for a
tie), and the winners of the three anchor dimensions in anchor order (each `i`, `j` or None); an empty
`categories` means the pair's dimensions are not counted (a failed pair read as a tie, as released)."""

RELEASED_IMAGE_WEIGHTS = (1.0, 0.7, 0.7)
"""The category weights of the released image scripts (semantic alignment counts most); video: equal."""

ANCHOR_COUNT = 3
_EPSILON = 1e-8


@dataclass(frozen=True)
class GroupRewards:
    """One group's rewards, in candidate order. A candidate with no completed comparison is *unscored*:
    its rates are None and its advantage 0 (the group mean), never a made-up rate."""

    overall: list[float | None]
    """Overall win rate: points / comparisons."""
    dimension: list[float | None]
    """The weighted mean of the anchor rates (over the anchors the candidate was compared on)."""
    anchors: list[list[float | None]]
    """Per anchor dimension (in anchor order), per candidate: its win rate on that dimension."""
    advantages: list[float]
    """`alpha * z(dimension) + (1 - alpha) * z(overall)`, z over the scored candidates."""
    comparisons: list[int]
    """Completed comparisons per candidate (a pair judged in both orders and merged counts once)."""
    alpha: float

    @property
    def unscored(self) -> list[int]:
        """Candidates (0-based) left without a completed comparison."""
        return [k for k, count in enumerate(self.comparisons) if count == 0]

    def reward(self, overall_weight: float = 0.3, dimension_weight: float = 0.7) -> list[float | None]:
        """The released code's scalar reward, `(0.3 * overall + 0.7 * dimension) / (0.3 + 0.7)`, for loops
        that normalise rewards themselves; a candidate never compared on an anchor (its every pair failed
        and was read as a tie) gets its overall rate alone, as released; None for an unscored one."""
        if overall_weight < 0 or dimension_weight < 0 or overall_weight + dimension_weight <= 0:
            raise UsageError(
                f"reward weights must be non-negative, not both 0: {overall_weight}, {dimension_weight}"
            )
        rewards: list[float | None] = []
        for overall, dimension in zip(self.overall, self.dimension, strict=True):
            if overall is None or dimension is None or dimension_weight == 0:
                rewards.append(overall)
            else:
                blended = overall_weight * overall + dimension_weight * dimension
                rewards.append(blended / (overall_weight + dimension_weight))
        return rewards


def from_outcomes(
    num_candidates: int,
    outcomes: Iterable[Outcome],
    *,
    alpha: float = 0.7,
    category_weights: Sequence[float] | None = None,
    estimate: Literal["points", "bradley_terry", "posterior", "latent"] = "points",
    scores: Sequence[Sequence[float] | None] | None = None,
) -> GroupRewards:
    """The group's rates and advantages from its pairwise outcomes: see the module docstring. `scores`
    (for `estimate="latent"` only): each candidate's pointwise scores, None for one never scored."""
    weights = _weights(category_weights)
    if num_candidates < 1:
        raise UsageError(f"a group needs at least one candidate, got {num_candidates}")
    if not 0.0 <= alpha <= 1.0:
        raise UsageError(f"alpha must lie in [0, 1], got {alpha}")
    points = [0.0] * num_candidates
    counts = [0] * num_candidates
    anchor_points = [[0.0] * num_candidates for _ in range(ANCHOR_COUNT)]
    anchor_counts = [[0] * num_candidates for _ in range(ANCHOR_COUNT)]
    games: list[tuple[int, int, int | None]] = []
    anchor_games: list[list[tuple[int, int, int | None]]] = [[] for _ in range(ANCHOR_COUNT)]
    outcomes_seen: list[Outcome] = []
    for outcome in outcomes:
        i, j, overall, categories = _checked(outcome, num_candidates)
        outcomes_seen.append((i, j, overall, categories))
        _score(points, counts, i, j, overall)
        games.append((i, j, overall))
        for d, winner in enumerate(categories):
            _score(anchor_points[d], anchor_counts[d], i, j, winner)
            anchor_games[d].append((i, j, winner))
    if estimate == "points":
        overall_rate = _rates(points, counts)
        anchor_rates = [_rates(p, c) for p, c in zip(anchor_points, anchor_counts, strict=True)]
    elif estimate == "bradley_terry":
        overall_rate = _modelled(num_candidates, games, counts)
        anchor_rates = [
            _modelled(num_candidates, g, c) for g, c in zip(anchor_games, anchor_counts, strict=True)
        ]
    elif estimate == "posterior":
        shared = posterior_win_rates(num_candidates, list(outcomes_seen))
        overall_rate = [r if c else None for r, c in zip(shared, counts, strict=True)]
        anchor_rates = [[r if c else None for r, c in zip(shared, n, strict=True)] for n in anchor_counts]
    elif estimate == "latent":
        if scores is None or len(scores) != num_candidates:
            raise UsageError("estimate='latent' needs scores: one entry (a list, or None) per candidate")
        shared = latent_win_rates(scores, list(outcomes_seen))
        rated = [bool(s) or c > 0 for s, c in zip(scores, counts, strict=True)]
        overall_rate = [r if k else None for r, k in zip(shared, rated, strict=True)]
        anchor_rates = [list(overall_rate) for _ in range(ANCHOR_COUNT)]
    else:
        raise UsageError(
            f"estimate must be 'points', 'bradley_terry', 'posterior' or 'latent', got {estimate!r}"
        )
    dimension = [_weighted_mean([rates[k] for rates in anchor_rates], weights) for k in range(num_candidates)]
    advantages = [
        alpha * zd + (1.0 - alpha) * zo for zd, zo in zip(_z(dimension), _z(overall_rate), strict=True)
    ]
    return GroupRewards(
        overall=overall_rate,
        dimension=dimension,
        anchors=anchor_rates,
        advantages=advantages,
        comparisons=counts,
        alpha=alpha,
    )


def _weights(category_weights: Sequence[float] | None) -> tuple[float, ...]:
    if category_weights is None:
        return (1.0,) * ANCHOR_COUNT
    weights = tuple(float(w) for w in category_weights)
    if len(weights) != ANCHOR_COUNT:
        raise UsageError(f"category_weights needs one weight per anchor ({ANCHOR_COUNT}), got {len(weights)}")
    if any(not math.isfinite(w) or w < 0 for w in weights) or sum(weights) <= 0:
        raise UsageError(f"category_weights must be finite, non-negative and not all 0, got {weights}")
    return weights


def _checked(outcome: Outcome, num_candidates: int) -> Outcome:
    try:
        i, j, overall, categories = outcome
    except (TypeError, ValueError):
        raise UsageError(f"an outcome is (i, j, overall, categories), got {outcome!r}") from None
    if not (isinstance(i, int) and isinstance(j, int) and 0 <= i < j < num_candidates):
        raise UsageError(f"an outcome's candidates must satisfy 0 <= i < j < {num_candidates}, got {i}, {j}")
    if overall not in (i, j, None) or isinstance(overall, bool):
        raise UsageError(f"outcome ({i}, {j}): the overall winner must be {i}, {j} or None, got {overall!r}")
    categories = tuple(categories)
    if len(categories) not in (0, ANCHOR_COUNT):
        raise UsageError(
            f"outcome ({i}, {j}): categories lists the {ANCHOR_COUNT} anchor winners (or none), "
            f"got {len(categories)}"
        )
    for winner in categories:
        if winner not in (i, j, None) or isinstance(winner, bool):
            raise UsageError(
                f"outcome ({i}, {j}): a category winner must be {i}, {j} or None, got {winner!r}"
            )
    return i, j, overall, categories


def _score(points: list[float], counts: list[int], i: int, j: int, winner: int | None) -> None:
    counts[i] += 1
    counts[j] += 1
    if winner is None:
        points[i] += 0.5
        points[j] += 0.5
    else:
        points[winner] += 1.0


def _rates(points: list[float], counts: list[int]) -> list[float | None]:
    return [p / c if c else None for p, c in zip(points, counts, strict=True)]


def _modelled(g: int, games: list[tuple[int, int, int | None]], counts: list[int]) -> list[float | None]:
    rates = expected_win_rates(bradley_terry(g, games))
    return [r if c else None for r, c in zip(rates, counts, strict=True)]


def _weighted_mean(rates: list[float | None], weights: tuple[float, ...]) -> float | None:
    """The weighted mean over the anchors that have a rate (weights renormalised); None without any."""
    known = [(r, w) for r, w in zip(rates, weights, strict=True) if r is not None and w > 0]
    total = sum(w for _, w in known)
    return sum(r * w for r, w in known) / total if known else None


def _z(rates: list[float | None]) -> list[float]:
    """z-scores over the candidates that have a rate (sample std, N - 1); 0 for the others, and for
    everyone when fewer than two have one (one candidate alone carries no relative signal)."""
    known = [r for r in rates if r is not None]
    if len(known) < 2:
        return [0.0] * len(rates)
    mean = sum(known) / len(known)
    std = math.sqrt(sum((r - mean) ** 2 for r in known) / (len(known) - 1))
    return [0.0 if r is None else (r - mean) / (std + _EPSILON) for r in rates]
