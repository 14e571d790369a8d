"""`ScoreFirst` and its latent-quality posterior (`flexjudge.rewards._latent`): every candidate scored
first, then the pairs the scores and the judgments so far leave most in doubt."""

from __future__ import annotations

import itertools
import math
import random
import statistics

import pytest

from flexjudge import Judge, ParseError
from flexjudge.errors import UsageError
from flexjudge.rewards import Bayesian, Outcome, ScoreFirst, from_outcomes, group_rewards
from flexjudge.rewards._group import score_readings
from flexjudge.rewards._latent import latent_order_probabilities, latent_prior, latent_win_rates
from flexjudge.rewards._posterior import posterior_win_rates
from flexjudge.rewards.adapters import schedule_spec
from flexjudge.rewards.schedules import estimate_of
from flexjudge.rewards.server import RewardsRequest
from tests.simulated import SimulatedJudge, candidate

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
    """`ScoreFirst` driven as `group_rewards` drives it, at the outcome level: four scores per candidate
    (quality plus noise that errs on `err` of pairs), then its pairs; the rewards' overall rates."""
    g = len(quality)
    s = math.tan(math.pi * err)
    scores = [[q + s * rng.gauss(0.0, 1.0) for _ in range(4)] for q in quality]
    schedule = ScoreFirst().with_scores(scores)
    outcomes: list[Outcome] = []
    while pairs := schedule.next_pairs(g, outcomes, rng):
        for a, b in pairs:
            better, worse = (a, b) if quality[a] > quality[b] else (b, a)
            picks = [better if rng.random() >= err else worse for _ in range(4)]
            outcomes.append((a, b, picks[0], (picks[1], picks[2], picks[3])))
    assert len(outcomes) == 18 - 9  # half of 36 calls, 9 of them the scores
    rates = from_outcomes(g, outcomes, estimate="latent", scores=scores).overall
    return [r if r is not None else 0.5 for r in rates]


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


QUALITIES = [90, 10, 170, 50, 130, 30, 150, 70, 110]


def test_group_rewards_scores_every_candidate_then_judges_the_rest_of_half_the_calls() -> None:
    sim = SimulatedJudge()
    with Judge("simulated", backend=sim) as judge:
        result = group_rewards(
            "a red fox", [candidate(q) for q in QUALITIES], judge, schedule=ScoreFirst(), seed=2
        )
    assert sorted(sim.scored) == sorted(QUALITIES) and sim.calls == 18 - 9  # 9 scores + 9 pairs: half of 36
    assert len({(i, j) for i, j, _, _ in result.outcomes}) == 9 and result.failures == []
    readings = [score_readings(j) for j in result.scores if j is not None]
    assert len(readings) == 9 and all(len(r) == 4 for r in readings)  # overall and the three anchors
    expected = latent_win_rates(readings, result.outcomes)
    assert result.rewards.overall == pytest.approx(expected)
    assert _tau(result.rewards.advantages, [float(q) for q in QUALITIES]) > 0.9
    assert estimate_of(ScoreFirst()) == "latent"


def test_a_failed_score_call_is_counted_and_the_candidate_keeps_the_groups_prior() -> None:
    sim = SimulatedJudge(broken={frozenset((170,))})  # candidate 2's score call gets no judgment
    images = [candidate(q) for q in QUALITIES]
    with Judge("simulated", backend=sim) as judge:
        result = group_rewards("a red fox", images, judge, schedule=ScoreFirst(), seed=2)
        (failure,) = result.failures
        assert (failure.first, failure.second) == (2, 2) and isinstance(failure.error, ParseError)
        assert result.scores[2] is None and result.rewards.overall[2] is not None
        assert any(2 in (i, j) for i, j, _, _ in result.outcomes)  # its order is left to the pairs
        with pytest.raises(ParseError):
            group_rewards("a red fox", images, judge, schedule=ScoreFirst(), on_failure="raise", seed=2)


def test_score_first_refuses_what_it_cannot_do() -> None:
    rng = random.Random(0)
    for bad in (ScoreFirst(fraction=0.0), ScoreFirst(per_round=0), ScoreFirst()):  # the last: no scores
        with pytest.raises(UsageError):
            bad.next_pairs(4, [], rng)
    with pytest.raises(UsageError):
        from_outcomes(4, [], estimate="latent")  # the latent estimate needs the scores
    assert ScoreFirst().with_scores(SCORES).next_pairs(4, [], rng) == []  # 6 calls at G = 4: all scores
    assert len(ScoreFirst(fraction=1.0).with_scores(SCORES).next_pairs(4, [], rng)) == 1


def test_the_reward_server_and_adapters_carry_score_first() -> None:
    for schedule in (ScoreFirst(), ScoreFirst(0.6, per_round=2)):
        body = RewardsRequest.model_validate(
            {"groups": [{"prompt": "p", "candidates": ["a", "b"]}], "schedule": schedule_spec(schedule)}
        )
        assert body.to_schedule() == schedule
