"""The typed hierarchy: described, closed to unknown fields, typed where a value would be meaningless."""

from __future__ import annotations

import pydantic
import pytest

import flexjudge
from flexjudge.checks import Finding
from flexjudge.formats.flex import FlexCategory, FlexDim, FlexOutput

MODELS = [
    flexjudge.Intent,
    flexjudge.Evidence,
    flexjudge.Criterion,
    flexjudge.Dimension,
    flexjudge.Verdict,
    flexjudge.JudgmentMeta,
    flexjudge.Judgment,
    flexjudge.PointScale,
    flexjudge.PointCriterion,
    flexjudge.PointDimension,
    flexjudge.PointVerdict,
    flexjudge.PointwiseJudgment,
    Finding,
    FlexDim,
    FlexCategory,
    FlexOutput,
]


@pytest.mark.parametrize("model", MODELS, ids=lambda m: m.__name__)
def test_every_model_is_closed_and_every_field_described(model: type[pydantic.BaseModel]) -> None:
    assert model.model_config.get("extra") == "forbid"
    assert model.__doc__
    undocumented = [name for name, field in model.model_fields.items() if not field.description]
    assert undocumented == []


def test_field_types_refuse_meaningless_values() -> None:
    good = {"name": "n", "evidence_1": "a", "evidence_2": "b", "score_1": 7, "score_2": 3}
    flexjudge.Criterion(**good)
    for bad in ({"score_1": 11}, {"score_2": -1}, {"extra": 1}):
        with pytest.raises(pydantic.ValidationError):
            flexjudge.Criterion(**{**good, **bad})
    with pytest.raises(pydantic.ValidationError):
        flexjudge.Verdict(analysis="", winner=3)  # type: ignore[arg-type]
    with pytest.raises(pydantic.ValidationError):
        flexjudge.PointScale(low=5, high=5)


def test_public_surface() -> None:
    assert set(flexjudge.__all__) <= set(dir(flexjudge))
    for name in ("parse", "render", "check", "Judgment", "ParseError", "TruncatedOutput", "ValidationFailed"):
        assert name in flexjudge.__all__
    assert issubclass(flexjudge.TruncatedOutput, flexjudge.ParseError)
    assert issubclass(flexjudge.ParseError, flexjudge.FlexjudgeError)


def test_bad_arguments_are_parse_errors() -> None:
    with pytest.raises(flexjudge.ParseError, match="modality"):
        flexjudge.parse("{}", modality="audio")  # type: ignore[arg-type]
    with pytest.raises(flexjudge.ParseError, match="format"):
        flexjudge.parse("{}", format="yaml")  # type: ignore[arg-type]
