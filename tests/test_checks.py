"""Every rule `check` knows, triggered on purpose; a consistent judgment yields nothing serious."""

from __future__ import annotations

from pathlib import Path

import pytest

import flexjudge
from flexjudge import Criterion, Dimension, Judgment, Verdict

OUTPUTS = Path(__file__).parent.parent / "examples" / "outputs"


def _crit(name: str, one: int, two: int) -> Criterion:
    return Criterion(
        name=name, evidence_1=f"{name}: seen in 1", evidence_2=f"{name}: seen in 2", score_1=one, score_2=two
    )


def _dim(
    name: str,
    winner: int | None = 1,
    splits: tuple[tuple[int, int], ...] = ((7, 3), (6, 4), (5, 5)),
    origin: str = "predefined",
) -> Dimension:
    return Dimension(
        name=name,
        origin=origin,
        analysis="compared",
        winner=winner,  # type: ignore[arg-type]
        criteria=[_crit(f"c{i}", a, b) for i, (a, b) in enumerate(splits)],
    )


def _judgment(
    dims: list[Dimension] | None = None, winner: int | None = 1, prompt: str = "a kite"
) -> Judgment:
    dims = dims if dims is not None else [_dim(a) for a in flexjudge.anchor_dimensions("image")]
    return Judgment(
        prompt=prompt, modality="image", dimensions=dims, verdict=Verdict(analysis="overall", winner=winner)
    )


def _codes(judgment: Judgment, **kwargs: object) -> dict[str, str]:
    return {f.code: f.severity for f in flexjudge.check(judgment, **kwargs)}  # type: ignore[arg-type]


def test_consistent_judgment_has_no_findings() -> None:
    assert flexjudge.check(_judgment(), prompt="a kite") == []
    flexjudge.require_consistent(_judgment())
    for name in ("flex_image.json", "native_image.json", "think_image.txt", "flex_video_fenced.txt"):
        judgment = flexjudge.parse((OUTPUTS / name).read_text(encoding="utf-8"))
        assert [f for f in flexjudge.check(judgment) if f.severity != "info"] == [], name


def test_split_violation_is_an_error_with_its_path() -> None:
    dims = [_dim(a) for a in flexjudge.anchor_dimensions("image")]
    dims[1] = _dim(dims[1].name, splits=((6, 5), (6, 4), (5, 5)))
    (finding,) = flexjudge.check(_judgment(dims))
    assert (finding.code, finding.severity, finding.path) == (
        "split_sum",
        "error",
        "dimensions[1].criteria[0]",
    )
    with pytest.raises(flexjudge.ValidationFailed) as info:
        flexjudge.require_consistent(_judgment(dims))
    assert info.value.findings == [finding]


def test_dimension_winner_against_its_scores() -> None:
    dims = [_dim(a) for a in flexjudge.anchor_dimensions("image")]
    dims[0] = _dim(dims[0].name, winner=2)
    found = _codes(_judgment(dims))
    assert found["dimension_winner_contradicts_scores"] == "error"
    even = [_dim(a, winner=2, splits=((5, 5), (6, 4), (4, 6))) for a in flexjudge.anchor_dimensions("image")]
    assert "dimension_winner_contradicts_scores" not in _codes(_judgment(even, winner=2))


def test_verdict_against_the_dimension_majority() -> None:
    assert _codes(_judgment(winner=2))["verdict_contradicts_dimensions"] == "warning"


@pytest.mark.parametrize(
    ("names", "code"),
    [
        (
            ["Semantic Alignment & Accuracy", "Aesthetics & Artistry", "Image Quality & Realism"],
            "anchor_out_of_order",
        ),
        (["Semantic Alignment & Accuracy", "Image Quality", "Aesthetics & Artistry"], "anchor_renamed"),
        (["Semantic Alignment & Accuracy", "Image Quality & Realism"], "anchor_missing"),
        (["Prompt Fidelity", "Image Quality & Realism", "Aesthetics & Artistry"], "anchor_missing"),
    ],
)
def test_anchor_rules(names: list[str], code: str) -> None:
    origins = ["predefined" if flexjudge.anchor_dimensions("image").count(n) else "generated" for n in names]
    dims = [_dim(n, origin=o) for n, o in zip(names, origins, strict=True)]
    assert _codes(_judgment(dims))[code] == "error"


def test_anchor_names_match_with_prefixes_and_case() -> None:
    names = [
        "A. Semantic Alignment and Accuracy",
        "**b) image quality & realism**",
        "C: Aesthetics & Artistry",
    ]
    assert flexjudge.check(_judgment([_dim(n) for n in names])) == []


def test_generated_dimensions_origin_and_count() -> None:
    dims = [_dim(a) for a in flexjudge.anchor_dimensions("image")]
    extra = [_dim(f"D{i}. Extra {i}", origin="generated") for i in range(3)]
    assert _codes(_judgment(dims + extra))["too_many_generated"] == "error"
    assert "too_many_generated" not in _codes(_judgment(dims + extra), max_generated=3)
    mislabelled = [*dims, _dim("Storytelling", origin="predefined")]
    assert _codes(_judgment(mislabelled))["origin_mismatch"] == "warning"


def test_criteria_count_duplicates_and_empty_evidence() -> None:
    dims = [_dim(a) for a in flexjudge.anchor_dimensions("image")]
    dims[0] = _dim(dims[0].name, splits=((7, 3), (6, 4)))
    dims[1].criteria[1] = dims[1].criteria[0].model_copy(update={"evidence_2": "  "})
    found = _codes(_judgment(dims))
    assert found["criteria_count"] == "warning"
    assert found["duplicate_name"] == "error"
    assert found["empty_evidence"] == "warning"
    assert "criteria_count" not in _codes(_judgment(dims), min_criteria=2)


def test_echoed_prompt_must_match() -> None:
    assert _codes(_judgment(prompt="a kite"), prompt="a red kite")["prompt_mismatch"] == "warning"
    assert _codes(_judgment(prompt="A  kite"), prompt="a kite")["prompt_mismatch"] == "info"


def test_think_rules_use_totals_and_skip_criteria_counts() -> None:
    text = (OUTPUTS / "think_image.txt").read_text(encoding="utf-8")
    judgment = flexjudge.parse(text)
    assert [f for f in flexjudge.check(judgment, prompt="not echoed by think") if f.severity != "info"] == []
    flipped = judgment.model_copy(
        update={"verdict": Verdict(analysis="", winner=3 - judgment.verdict.winner)}
    )  # type: ignore[operator]
    finding = next(f for f in flexjudge.check(flipped) if f.code == "verdict_contradicts_dimensions")
    assert "total scores" in finding.message


def test_blank_names_and_invisible_evidence() -> None:
    dims = [_dim(a) for a in flexjudge.anchor_dimensions("image")]
    dims[0].criteria[0] = dims[0].criteria[0].model_copy(update={"name": "  ", "evidence_1": "\u200b"})
    found = _codes(_judgment(dims))
    assert found["empty_name"] == "warning" and found["empty_evidence"] == "warning"
    names = ["A.Semantic Alignment & Accuracy", "B)Image Quality & Realism", "C. Aesthetics & Artistry"]
    assert flexjudge.check(_judgment([_dim(n) for n in names])) == []
