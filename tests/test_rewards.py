"""`flexjudge.rewards.from_outcomes`: the paper's group reward against hand-computed groups and properties."""

from __future__ import annotations

import itertools
import math
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from flexjudge import UsageError
from flexjudge.rewards import RELEASED_IMAGE_WEIGHTS, Outcome, from_outcomes
from flexjudge.rewards._bradley_terry import bradley_terry, expected_win_rates

# G = 3: candidate 0 beats both overall, 1 beats 2. Anchors: see each tuple (None is a tie).
HAND: list[Outcome] = [(0, 1, 0, (0, 0, 1)), (0, 2, 0, (None, 2, 0)), (1, 2, 1, (1, 1, 1))]


def test_a_hand_computed_group() -> None:
    r = from_outcomes(3, HAND)
    assert r.overall == [1.0, 0.5, 0.0]  # 2/2, 1/2, 0/2
    assert r.anchors == [[0.75, 0.5, 0.25], [0.5, 0.5, 0.5], [0.5, 1.0, 0.0]]
    assert r.dimension == pytest.approx([7 / 12, 8 / 12, 3 / 12])
    # z(overall) = (1, 0, -1): mean 0.5, sample std 0.5. z(dimension) = (1, 2, -3) / sqrt(7):
    # deviations (1, 2, -3) / 12, sample std sqrt(7) / 12.
    s7 = math.sqrt(7)
    expected = [0.7 * 1 / s7 + 0.3 * 1, 0.7 * 2 / s7, 0.7 * -3 / s7 - 0.3]
    assert r.advantages == pytest.approx(expected, abs=1e-6)
    assert r.reward() == pytest.approx([0.3 + 0.7 * 7 / 12, 0.15 + 0.7 * 8 / 12, 0.7 * 3 / 12])
    assert r.unscored == [] and r.comparisons == [2, 2, 2]


def test_released_image_weights_weight_semantic_alignment_most() -> None:
    r = from_outcomes(3, HAND, category_weights=RELEASED_IMAGE_WEIGHTS)
    assert RELEASED_IMAGE_WEIGHTS == (1.0, 0.7, 0.7)
    assert r.dimension == pytest.approx([1.45 / 2.4, 1.55 / 2.4, 0.6 / 2.4])


def test_alpha_blends_the_two_z_scores() -> None:
    only_dimension = from_outcomes(3, HAND, alpha=1.0).advantages
    only_overall = from_outcomes(3, HAND, alpha=0.0).advantages
    assert only_overall == pytest.approx([1.0, 0.0, -1.0], abs=1e-6)
    assert only_dimension == pytest.approx([1 / math.sqrt(7), 2 / math.sqrt(7), -3 / math.sqrt(7)], abs=1e-6)


def test_a_candidate_never_compared_is_unscored_not_made_up() -> None:
    r = from_outcomes(3, [(0, 1, 0, (0, 0, 0))])
    assert r.unscored == [2]
    assert r.overall == [1.0, 0.0, None] and r.dimension[2] is None
    assert r.advantages[2] == 0.0 and r.reward()[2] is None
    assert r.advantages[0] > 0 > r.advantages[1]


def test_a_failed_pair_read_as_a_tie_counts_overall_only_as_released() -> None:
    """on_failure="tie" writes (i, j, None, ()): 0.5 overall each, no anchor counted; the released
    reward then falls back to the overall rate for a candidate with no anchor comparison."""
    r = from_outcomes(3, [(0, 1, None, ()), (0, 2, 0, (0, 0, 0)), (1, 2, None, ())])
    assert r.overall == [0.75, 0.5, 0.25]
    assert r.anchors[0] == [1.0, None, 0.0]
    assert r.dimension == [1.0, None, 0.0]
    assert r.reward()[1] == 0.5  # overall alone, as the released code does
    assert r.reward(overall_weight=1.0, dimension_weight=1.0)[0] == pytest.approx((0.75 + 1.0) / 2)


def test_one_scored_candidate_alone_has_no_relative_signal() -> None:
    assert from_outcomes(1, []).advantages == [0.0]
    assert from_outcomes(2, []).advantages == [0.0, 0.0]


@pytest.mark.parametrize(
    ("outcome", "why"),
    [
        ((1, 0, 1, ()), "0 <= i < j"),
        ((0, 3, 0, ()), "0 <= i < j"),
        ((0, 1, 2, ()), "overall winner"),
        ((0, 1, True, ()), "overall winner"),
        ((0, 1, 0, (0, 1)), "anchor winners"),
        ((0, 1, 0, (0, 1, 2)), "category winner"),
        ((0, 1), "an outcome is"),
    ],
)
def test_malformed_outcomes_are_usage_errors(outcome: object, why: str) -> None:
    with pytest.raises(UsageError, match=why):
        from_outcomes(3, [outcome])  # type: ignore[list-item]


@pytest.mark.parametrize(
    "options",
    [
        {"alpha": 1.5},
        {"category_weights": (1.0, 1.0)},
        {"category_weights": (-1.0, 1.0, 1.0)},
        {"estimate": "x"},
    ],
)
def test_bad_settings_are_usage_errors(options: dict[str, object]) -> None:
    with pytest.raises(UsageError):
        from_outcomes(3, HAND, **options)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------------------- properties


@st.composite
def round_robins(draw: st.DrawFn) -> tuple[int, list[Outcome]]:
    g = draw(st.integers(2, 9))
    outcomes: list[Outcome] = []
    for i, j in itertools.combinations(range(g), 2):
        pick = st.sampled_from([i, j, None])
        outcomes.append((i, j, draw(pick), tuple(draw(pick) for _ in range(3))))
    return g, outcomes


@given(round_robins())
def test_a_complete_round_robin_averages_exactly_one_half(group: tuple[int, list[Outcome]]) -> None:
    g, outcomes = group
    r = from_outcomes(g, outcomes)
    rates = [x for x in r.overall + r.dimension if x is not None]
    assert all(0.0 <= x <= 1.0 for x in rates)
    assert sum(x for x in r.overall if x is not None) / g == pytest.approx(0.5, abs=1e-12)
    assert sum(r.advantages) == pytest.approx(0.0, abs=1e-6)


@given(round_robins(), st.randoms())
def test_relabelling_the_candidates_permutes_the_results(
    group: tuple[int, list[Outcome]], rnd: random.Random
) -> None:
    g, outcomes = group
    perm = list(range(g))
    rnd.shuffle(perm)  # candidate k is called perm[k] after relabelling

    def relabel(x: int | None) -> int | None:
        return None if x is None else perm[x]

    moved: list[Outcome] = []
    for i, j, overall, cats in outcomes:
        a, b = sorted((perm[i], perm[j]))
        moved.append((a, b, relabel(overall), tuple(relabel(c) for c in cats)))
    before, after = from_outcomes(g, outcomes), from_outcomes(g, moved)
    for k in range(g):
        assert after.overall[perm[k]] == before.overall[k]
        assert after.dimension[perm[k]] == pytest.approx(before.dimension[k])
        assert after.advantages[perm[k]] == pytest.approx(before.advantages[k], abs=1e-9)


def test_bradley_terry_recovers_the_order_and_is_finite_for_an_unbeaten_candidate() -> None:
    games = [(0, 1, 0), (0, 2, 0), (1, 2, 1), (0, 1, 0)]
    strength = bradley_terry(3, games)
    assert strength[0] > strength[1] > strength[2] and all(math.isfinite(s) for s in strength)
    assert sum(strength) == pytest.approx(0.0, abs=1e-9)
    rates = expected_win_rates(strength)
    assert sum(rates) / 3 == pytest.approx(0.5)  # expected win rates in a group average one half
    assert bradley_terry(3, []) == [0.0, 0.0, 0.0]


def test_bradley_terry_estimate_follows_points_on_a_complete_round_robin() -> None:
    r_points = from_outcomes(3, HAND)
    r_bt = from_outcomes(3, HAND, estimate="bradley_terry")
    order = sorted(range(3), key=lambda k: -(r_points.overall[k] or 0))
    assert sorted(range(3), key=lambda k: -(r_bt.overall[k] or 0)) == order
