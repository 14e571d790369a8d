"""The decoding constraint admits consistent judgments and nothing that breaks the method's rules."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import jsonschema
import pytest

from flexjudge.constraints import pair_constraint

OUTPUTS = Path(__file__).parent.parent / "examples" / "outputs"
FLEX = json.loads((OUTPUTS / "flex_image.json").read_text(encoding="utf-8"))
NATIVE = json.loads((OUTPUTS / "native_image.json").read_text(encoding="utf-8"))


def _valid(obj: dict, schema: dict) -> bool:
    return jsonschema.Draft202012Validator(schema).is_valid(obj)


def test_consistent_examples_are_admitted() -> None:
    assert _valid(FLEX, pair_constraint("image", "flex"))
    assert _valid(NATIVE, pair_constraint("image", "native"))


def _broken(obj: dict, edit) -> dict:  # type: ignore[no-untyped-def]
    out = copy.deepcopy(obj)
    edit(out)
    return out


@pytest.mark.parametrize(
    "edit",
    [
        lambda o: o["categories"][0]["dims"][0].update(score_1=6, score_2=5),  # split broken
        lambda o: o["categories"].__setitem__(slice(0, 2), [o["categories"][1], o["categories"][0]]),  # order
        lambda o: o["categories"][1].update(name="B. Image Quality"),  # renamed anchor
        lambda o: o["categories"][0].update(dims=o["categories"][0]["dims"][:2]),  # 2 criteria
        lambda o: o["categories"].extend([o["categories"][-1]] * 3),  # 7 dimensions
        lambda o: o.update(winner="Video 1"),  # wrong modality
        lambda o: o.update(winner="Image 1/2"),  # ambiguous winner
    ],
)
def test_flex_rule_breaks_are_refused(edit) -> None:  # type: ignore[no-untyped-def]
    assert not _valid(_broken(FLEX, edit), pair_constraint("image", "flex"))


@pytest.mark.parametrize(
    "edit",
    [
        lambda o: o["dimensions"][0]["criteria"][0].update(score_1=9, score_2=9),
        lambda o: o["dimensions"][0].update(origin="generated"),
        lambda o: o["dimensions"][2].update(name="Aesthetics"),
        lambda o: o["verdict"].update(winner=None),
        lambda o: o["evidence"].reverse(),
        lambda o: o.update(meta={}),
    ],
)
def test_native_rule_breaks_are_refused(edit) -> None:  # type: ignore[no-untyped-def]
    assert not _valid(_broken(NATIVE, edit), pair_constraint("image", "native"))


def test_custom_dimensions_are_required_in_order() -> None:
    schema = pair_constraint("image", "flex", custom_dimensions=("Text Legibility",))
    assert not _valid(FLEX, schema) or FLEX["categories"][3]["name"] == "D. Text Legibility"
    with_custom = copy.deepcopy(FLEX)
    with_custom["categories"] = [
        *FLEX["categories"][:3],
        {**FLEX["categories"][0], "name": "D. Text Legibility"},
    ]
    assert _valid(with_custom, schema)
    without = copy.deepcopy(with_custom)
    without["categories"] = without["categories"][:3]
    assert not _valid(without, schema)
    with pytest.raises(ValueError, match="at most"):
        pair_constraint("image", custom_dimensions=("a", "b", "c"))


def test_string_bound_is_only_for_test_models() -> None:
    assert "maxLength" not in json.dumps(pair_constraint("video", "native"))
    bounded = pair_constraint("video", "native", max_string_length=40)
    assert json.dumps(bounded).count('"maxLength": 40') > 10
    long_reason = _broken(NATIVE, lambda o: o["verdict"].update(analysis="x" * 41))
    assert not _valid(long_reason, pair_constraint("image", "native", max_string_length=40))
