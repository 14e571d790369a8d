"""Order-swap debiasing: mapping back, agreement, and the documented merge rule."""

from __future__ import annotations

import json
from pathlib import Path

import flexjudge
from flexjudge import Judgment, Verdict
from flexjudge.swap import SWAPPED_SUFFIX, merge_swapped, unswap

FLEX = (Path(__file__).parent.parent / "examples" / "outputs" / "flex_image.json").read_text(encoding="utf-8")


def _first() -> Judgment:
    return flexjudge.parse(FLEX)


def _as_if_swapped(judgment: Judgment) -> Judgment:
    """What a position-consistent judge would say with the candidates shown the other way round."""
    return unswap(judgment).model_copy(
        update={"meta": judgment.meta.model_copy(update={"candidate_order": [2, 1]})}
    )


def test_unswap_is_an_involution_and_flips_everything() -> None:
    j = _first()
    flipped = unswap(j)
    assert unswap(flipped).content() == j.content()
    c, f = j.dimensions[0].criteria[0], flipped.dimensions[0].criteria[0]
    assert (f.score_1, f.score_2, f.evidence_1) == (c.score_2, c.score_1, c.evidence_2)
    assert flipped.verdict.winner == 3 - j.verdict.winner  # type: ignore[operator]


def test_consistent_runs_agree_and_keep_the_verdict() -> None:
    first = _first()
    second = unswap(_as_if_swapped(first))
    merged = merge_swapped(first, second)
    report = merged.meta.swap
    assert report is not None and report.verdict_agreement and report.resolution == "agreed"
    assert all(report.dimension_agreement.values())
    assert merged.verdict.winner == first.verdict.winner
    assert merged.meta.verdict_rule == "swap"
    assert all(
        len(d.criteria) == 2 * len(f.criteria)
        for d, f in zip(merged.dimensions, first.dimensions, strict=True)
    )
    assert any(c.name.endswith(SWAPPED_SUFFIX) for c in merged.dimensions[0].criteria)
    serious = [f for f in flexjudge.check(merged) if f.severity != "info"]
    assert serious == []


def test_position_bias_is_cancelled_by_the_merge() -> None:
    # A judge that always prefers whatever it sees first: in swapped order it prefers candidate 2.
    first = _first()
    biased = json.loads(FLEX)
    for category in biased["categories"]:
        for dim in category["dims"]:
            dim["score_1"], dim["score_2"] = 6, 4
        category["cat_winner"] = "Image 1"
    biased["winner"] = "Image 1"
    shown_first = flexjudge.parse(json.dumps(biased))
    mapped_back = unswap(shown_first)  # the same bias, seen from the swapped order
    merged = merge_swapped(shown_first, mapped_back)
    assert all(d.winner is None for d in merged.dimensions)  # 6/4 then 4/6: a dead heat
    assert merged.verdict.winner is None and merged.meta.swap is not None
    assert merged.meta.swap.resolution == "tie" and not merged.meta.swap.verdict_agreement
    assert first.verdict.winner is not None


def test_disagreement_goes_to_the_merged_majority_or_weights() -> None:
    obj = json.loads(FLEX)
    for dim in obj["categories"][0]["dims"]:
        dim["score_1"], dim["score_2"] = 8, 2
    obj["categories"][0]["cat_winner"] = "Image 1"  # candidate 1 wins only the first dimension
    first = flexjudge.parse(json.dumps(obj))
    second = unswap(_as_if_swapped(first))
    second = second.model_copy(update={"verdict": Verdict(analysis="changed my mind", winner=1)})
    merged = merge_swapped(first, second)
    assert merged.meta.swap is not None and merged.meta.swap.resolution == "dimension_majority"
    assert [d.winner for d in merged.dimensions] == [1, 2, 2, 2] and merged.verdict.winner == 2
    reweighted = merge_swapped(first, second, {"Semantic Alignment & Accuracy": 5.0})
    assert reweighted.meta.swap is not None and reweighted.meta.swap.resolution == "weighted_majority"
    assert reweighted.verdict.winner == 1
