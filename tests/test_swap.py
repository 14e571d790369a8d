"""Order-swap debiasing: mapping back, agreement, and the documented merge rule."""

from __future__ import annotations

import json
from pathlib import Path

import flexjudge
from flexjudge import Judgment
from flexjudge.swap import SWAPPED_SUFFIX, merge_swapped, unswap

FLEX = (Path(__file__).parent.parent / "examples" / "outputs" / "flex_image.json").read_text(encoding="utf-8")


def _first() -> Judgment:
    return flexjudge.parse(FLEX)


def _swapped_run(obj: dict[str, object], *, changed_mind: bool = False) -> Judgment:
    """A second, separately written run: what a position-consistent judge writes when it is shown the
    candidates the other way round (its own words, each candidate's evidence and points under the other
    number), read from its own text and mapped back with `unswap`, as `Judge(swap=True)` does."""
    run = json.loads(json.dumps(obj))
    flip = {"Image 1": "Image 2", "Image 2": "Image 1"}
    for category in run["categories"]:
        for dim in category["dims"]:
            dim["reason_1"], dim["reason_2"] = (
                "seen second: " + dim["reason_2"],
                "seen first: " + dim["reason_1"],
            )
            dim["score_1"], dim["score_2"] = dim["score_2"], dim["score_1"]
        category["cat_winner"] = flip[category["cat_winner"]]
        category["cat_reason"] = "in swapped order: " + category["cat_reason"]
    run["winner"] = flip[run["winner"]] if not changed_mind else run["winner"]
    run["reason"] = "in swapped order: " + run["reason"]
    shown = flexjudge.parse(json.dumps(run))
    shown.meta = shown.meta.model_copy(update={"candidate_order": [2, 1]})
    return unswap(shown)


def test_unswap_is_an_involution_and_flips_everything() -> None:
    j = _first()
    flipped = unswap(j)
    assert unswap(flipped).content() == j.content()
    c, f = j.dimensions[0].criteria[0], flipped.dimensions[0].criteria[0]
    assert (f.score_1, f.score_2, f.evidence_1) == (c.score_2, c.score_1, c.evidence_2)
    assert flipped.verdict.winner == 3 - j.verdict.winner  # type: ignore[operator]


def test_consistent_runs_agree_and_keep_the_verdict() -> None:
    first = _first()
    second = _swapped_run(json.loads(FLEX))
    assert second.content() != first.content()  # two runs, not one judgment merged with itself
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
    evidence = [c.evidence_1 for c in merged.dimensions[0].criteria]
    assert any(e.startswith("seen first: ") for e in evidence)  # the second run's words, mapped back
    assert report.second.meta.candidate_order == [2, 1]
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
    # The same judge shown (2, 1) again gives 6/4 to what it sees first: candidate 2.
    mapped_back = flexjudge.parse(json.dumps(biased))  # read from its own text
    mapped_back.meta = mapped_back.meta.model_copy(update={"candidate_order": [2, 1]})
    mapped_back = unswap(mapped_back)
    assert all(c.score_1 == 4 for d in mapped_back.dimensions for c in d.criteria)
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
    second = _swapped_run(obj, changed_mind=True)  # its verdict says candidate 1 after mapping back: 2
    assert second.verdict.winner != first.verdict.winner
    merged = merge_swapped(first, second)
    assert merged.meta.swap is not None and merged.meta.swap.resolution == "dimension_majority"
    assert [d.winner for d in merged.dimensions] == [1, 2, 2, 2] and merged.verdict.winner == 2
    prefs = flexjudge.Preferences(weights={"Semantic Alignment & Accuracy": 5.0}, weighted_verdict=True)
    reweighted = merge_swapped(first, second, prefs)
    assert reweighted.meta.swap is not None and reweighted.meta.swap.resolution == "weighted_majority"
    assert reweighted.verdict.winner == 1
