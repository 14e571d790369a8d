"""The latent-quality posterior of `flexjudge.rewards._latent`: scores and pairwise judgments together.

Work in progress on branch `scored` (issue 9, point 3, G = 9 with a 25% judge): the model and its
estimate, not yet a schedule that `group_rewards` drives.
"""

from __future__ import annotations

import itertools
import math
import random
import statistics

import pytest

from flexjudge.errors import UsageError
from flexjudge.rewards import Bayesian, Outcome
from flexjudge.rewards._latent import latent_order_probabilities, latent_prior
from flexjudge.rewards._posterior import estimated_error, posterior_win_rates

SCORES = [[7.0, 6.0, 8.0, 7.0], [5.0, 5.0, 6.0, 4.0], [7.0, 7.0, 6.0, 8.0], [2.0, 3.0, 2.0, 1.0]]


def normal_cdf(x: float) -> float:
    return 0.5 * (1.0 + math.erf(x / math.sqrt(2.0)))


def test_with_scores_alone_each_order_is_the_normal_posteriors() -> None:
    prior = latent_prior(SCORES)
    p = latent_order_probabilities(prior, [], 0.2, random.Random(0))
    for a, b in itertools.permutations(range(4), 2):
        gap = prior.means[a] - prior.means[b]
        expected = normal_cdf(gap / math.sqrt(prior.variances[a] + prior.variances[b]))
        assert p[a][b] == pytest.approx(expected, abs=0.015)  # 20,000 draws
        assert p[a][b] + p[b][a] == pytest.approx(1.0)


def test_the_scale_the_judge_scores_on_does_not_matter() -> None:
    stretched = [[10.0 * x + 3.0 for x in s] for s in SCORES]
    plain = latent_order_probabilities(latent_prior(SCORES), [], 0.2, random.Random(5))
    moved = latent_order_probabilities(latent_prior(stretched), [], 0.2, random.Random(5))
    for row_moved, row_plain in zip(moved, plain, strict=True):
        assert row_moved == pytest.approx(row_plain, abs=1e-12)


def test_pairwise_judgments_reweigh_what_the_scores_left_open() -> None:
    prior = latent_prior(SCORES)
    before = latent_order_probabilities(prior, [], 0.2, random.Random(1))
    unanimous: list[Outcome] = [(0, 2, 2, (2, 2, 2))]  # 2 over 0 on all four decisions
    after = latent_order_probabilities(prior, unanimous, 0.2, random.Random(1))
    assert 0.3 < before[2][0] < 0.7 and after[2][0] > 0.9
    assert after[1][3] == pytest.approx(before[1][3], abs=0.02)  # far from the judged pair


def test_an_unscored_candidate_keeps_the_groups_prior() -> None:
    prior = latent_prior([*SCORES, None])
    assert prior.means[4] == pytest.approx(statistics.fmean(statistics.fmean(s) for s in SCORES))
    assert prior.variances[4] > max(prior.variances[:4])


def test_what_cannot_be_read_is_refused() -> None:
    with pytest.raises(UsageError):
        latent_prior([[5.0, 6.0], None])  # one scored candidate: no spread between candidates
    with pytest.raises(UsageError):
        latent_prior([[5.0], [6.0, 7.0]])  # one score: no spread within a candidate
    with pytest.raises(UsageError):
        latent_order_probabilities(latent_prior(SCORES), [], 0.5, random.Random(0))


def _score_then_compare(quality: list[float], err: float, rng: random.Random) -> list[float]:
    """G pointwise calls (four scores each, quality plus noise that errs on `err` of pairs), then the rest
    of half the calls, one pair a round, on the open pair most in doubt; posterior mean rank."""
    g = len(quality)
    s = math.tan(math.pi * err)
    scores = [[q + s * rng.gauss(0.0, 1.0) for _ in range(4)] for q in quality]
    prior = latent_prior(scores)
    outcomes: list[Outcome] = []
    for _ in range(g * (g - 1) // 4 - g):
        error = estimated_error(outcomes)
        p = latent_order_probabilities(prior, outcomes, error, rng, draws=4000)
        judged = {(i, j) for i, j, _, _ in outcomes}
        a, b = min(
            (pair for pair in itertools.combinations(range(g), 2) if pair not in judged),
            key=lambda pair: abs(p[pair[0]][pair[1]] - 0.5),
        )
        better, worse = (a, b) if quality[a] > quality[b] else (b, a)
        picks = [better if rng.random() >= err else worse for _ in range(4)]
        outcomes.append((a, b, picks[0], (picks[1], picks[2], picks[3])))
    p = latent_order_probabilities(prior, outcomes, estimated_error(outcomes), rng, draws=4000)
    return [sum(row) for row in p]


def _bayesian(quality: list[float], err: float, rng: random.Random) -> list[float]:
    g = len(quality)
    answers: dict[tuple[int, int], Outcome] = {}
    for a, b in itertools.combinations(range(g), 2):
        better, worse = (a, b) if quality[a] > quality[b] else (b, a)
        picks = [better if rng.random() >= err else worse for _ in range(4)]
        answers[a, b] = (a, b, picks[0], (picks[1], picks[2], picks[3]))
    outcomes: list[Outcome] = []
    while pairs := Bayesian().next_pairs(g, outcomes, rng):
        outcomes.extend(answers[pair] for pair in pairs)
    return posterior_win_rates(g, outcomes)


def _tau(x: list[float], y: list[float]) -> float:
    signs = [(x[a] - x[b]) * (y[a] - y[b]) for a, b in itertools.combinations(range(len(x)), 2)]
    return (sum(s > 0 for s in signs) - sum(s < 0 for s in signs)) / len(signs)


def test_scoring_first_ranks_better_than_pairs_alone_at_half_the_calls() -> None:
    """G = 9, a judge that errs on 25%: 9 scores and 9 pairs against `Bayesian`'s 18 pairs."""
    mixed, paired = [], []
    for seed in range(30):
        rng = random.Random(seed)
        quality = [rng.gauss(0.0, 1.0) for _ in range(9)]
        mixed.append(_tau(_score_then_compare(quality, 0.25, random.Random(seed)), quality))
        paired.append(_tau(_bayesian(quality, 0.25, random.Random(seed)), quality))
    assert statistics.fmean(mixed) - statistics.fmean(paired) > 0.05
