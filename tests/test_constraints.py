"""The decoding constraint admits consistent judgments and nothing that breaks the method's rules."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import flexjudge
from flexjudge.anchors import FLEX_ANCHORS, anchors
from flexjudge.constraints import (
    ENFORCED_FINDINGS,
    PATHS,
    POINT_ENFORCED_FINDINGS,
    applied_findings,
    enforced_findings,
    pair_constraint,
    point_constraint,
)
from flexjudge.schema import PointScale

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


# ------------------------------------------------------------------ drawn from the constraint itself

# Names that tempt the rules: every anchor, spelled as check still reads it, beside random text.
_TEMPTING = [a for names in FLEX_ANCHORS.values() for a in names] + ["a. aesthetics and artistry", "**x**"]
_TEXT = st.text(st.sampled_from('ab é"\\\u2603\n\t/&.'), max_size=10)


@st.composite
def instance(draw: st.DrawFn, node: Any) -> Any:
    """A value valid under `node` (the subset `flexjudge.constraints` emits)."""
    if "const" in node:
        return node["const"]
    if "enum" in node:
        return draw(st.sampled_from(node["enum"]))
    if "anyOf" in node:
        return draw(instance(draw(st.sampled_from(node["anyOf"]))))
    kind = node.get("type")
    if kind == "string":
        low, high = node.get("minLength", 0), node.get("maxLength", 40)
        text = draw(_TEXT | st.sampled_from(_TEMPTING))
        return text if low <= len(text) <= high else "x" * max(low, 1)
    if kind == "object":
        return {key: draw(instance(value)) for key, value in node["properties"].items()}
    assert kind == "array", node
    prefix = [draw(instance(item)) for item in node.get("prefixItems", ())]
    items = node.get("items", False)
    if items is False:
        return prefix
    low = max(node.get("minItems", 0) - len(prefix), 0)
    high = node.get("maxItems", len(prefix) + 3) - len(prefix)
    return prefix + draw(st.lists(instance(items), min_size=low, max_size=high))


_CUSTOM = st.sampled_from([(), ("Text Legibility",), ("Text Legibility", "Palette")])
_MODALITY = st.sampled_from(["image", "video"])


@settings(max_examples=40)
@given(_MODALITY, _CUSTOM, st.sampled_from([(1, 10), (0, 5), (-3, 3), (1, 100)]), st.data())
def test_point_constraint_admits_nothing_that_breaks_an_enforced_rule(
    modality: Any, custom: tuple[str, ...], scale: tuple[int, int], data: st.DataObject
) -> None:
    schema = point_constraint(modality, PointScale(low=scale[0], high=scale[1]), custom_dimensions=custom)
    value = data.draw(instance(schema))
    scale_ = PointScale(low=scale[0], high=scale[1])
    judgment = flexjudge.parse_pointwise(json.dumps(value), strict=True, scale=scale_)
    codes = {f.code for f in flexjudge.check(judgment)}
    assert not codes & POINT_ENFORCED_FINDINGS, codes
    names = [d.name for d in judgment.dimensions]
    assert names[: 3 + len(custom)] == [*anchors(modality), *custom]
    assert [d.origin for d in judgment.dimensions[:3]] == ["predefined"] * 3
    assert all(d.origin == "generated" for d in judgment.dimensions[3:])
    assert all(3 <= len(d.criteria) <= 5 and all(c.name for c in d.criteria) for d in judgment.dimensions)


@settings(max_examples=40)
@given(_MODALITY, st.sampled_from(["flex", "native"]), _CUSTOM, st.data())
def test_pair_constraint_admits_nothing_that_breaks_an_enforced_rule(
    modality: Any, output_format: Any, custom: tuple[str, ...], data: st.DataObject
) -> None:
    value = data.draw(instance(pair_constraint(modality, output_format, custom_dimensions=custom)))
    judgment = flexjudge.parse(json.dumps(value), format=output_format, modality=modality, strict=True)
    codes = {f.code for f in flexjudge.check(judgment)}
    assert not codes & applied_findings("schema", "pair", output_format), codes


def test_point_constraint_refuses_what_the_tiny_model_wrote() -> None:
    schema = point_constraint("image", PointScale())
    good = _point_example()
    assert _valid(good, schema)
    dims = good["dimensions"]
    for edit in (
        lambda o: o.update(dimensions=dims[1:]),  # an anchor missing
        lambda o: o.update(dimensions=[dims[1], dims[0], dims[2]]),  # out of order
        lambda o: o.update(dimensions=dims + [{**dims[0], "name": "x", "origin": "generated"}] * 3),  # 6
        lambda o: o["dimensions"][0].update(origin="generated"),
        lambda o: o["dimensions"][0].update(criteria=dims[0]["criteria"][:2]),
        lambda o: o["dimensions"][0]["criteria"][0].update(name=""),
        lambda o: o["dimensions"][0]["criteria"][0].update(score=11),
        lambda o: o["verdict"].update(score=0),
        lambda o: o.update(observations=[]),
    ):
        assert not _valid(_broken(good, edit), schema)


def test_point_custom_dimensions_follow_the_anchors() -> None:
    schema = point_constraint("image", custom_dimensions=("Text Legibility",))
    good = _point_example()
    assert not _valid(good, schema)  # the custom dimension is required
    extra = {**good["dimensions"][0], "name": "Text Legibility", "origin": "generated"}
    assert _valid({**good, "dimensions": [*good["dimensions"], extra]}, schema)
    with pytest.raises(ValueError, match="at most"):
        point_constraint("image", custom_dimensions=("a", "b", "c"))


def _point_example() -> dict[str, Any]:
    criteria = [{"name": f"c{j}", "evidence": "seen", "score": 7} for j in range(3)]
    dims = [
        {"name": n, "origin": "predefined", "criteria": criteria, "analysis": "ok", "score": 7}
        for n in FLEX_ANCHORS["image"]
    ]
    intent = {k: [] for k in ("subjects", "attributes_and_actions", "constraints", "style", "preferences")}
    return {
        "prompt": "p",
        "modality": "image",
        "intent": intent,
        "observations": ["a red square"],
        "dimensions": dims,
        "verdict": {"analysis": "fine", "score": 7},
    }


def test_enforced_findings_by_path() -> None:
    assert enforced_findings("llguidance") > enforced_findings("xgrammar") == ENFORCED_FINDINGS
    assert "dimension_winner_contradicts_scores" in enforced_findings("vllm_guidance_grammar")
    assert "dimension_score_outside_criteria" in enforced_findings("llguidance", mode="point")
    assert enforced_findings("outlines_core", mode="point") == POINT_ENFORCED_FINDINGS
    assert "origin_mismatch" in enforced_findings("xgrammar", output_format="flex")
    assert "anchor_missing" not in enforced_findings("openai_strict")
    assert applied_findings(None) == frozenset()
    assert set(PATHS) >= {"llguidance", "outlines_core", "xgrammar", "openai_strict"}


# ------------------------------------------------------------------ the tiny model, end to end


@pytest.fixture(scope="module")
def tiny() -> Any:
    pytest.importorskip("transformers")
    from flexjudge.backends.transformers import TransformersBackend

    return TransformersBackend("tiny-random", engine="llguidance")


def _point_requests(custom: tuple[str, ...], seeds: range) -> list[Any]:
    from PIL import Image

    from flexjudge.backends.base import ImagePart, Message, Request, TextPart
    from flexjudge.reading import point_request_constraint

    constraint = point_request_constraint("image", 1, 10, 8, custom)
    image = Image.new("RGB", (32, 32), (200, 30, 30))
    message = Message(role="user", parts=(ImagePart(image), TextPart("Score this: a red square.")))
    return [
        Request(messages=(message,), constraint=constraint, max_new_tokens=1500, temperature=1.0, seed=seed)
        for seed in seeds
    ]


@pytest.mark.parametrize("custom", [(), ("Text Legibility",)])
def test_tiny_model_pointwise_judgments_keep_every_enforced_rule(tiny: Any, custom: tuple[str, ...]) -> None:
    import asyncio

    from flexjudge.reading import point_with_scale

    generations = asyncio.run(tiny.generate(_point_requests(custom, range(3))))
    texts = set()
    for generation in generations:
        assert generation.enforced == "grammar" and generation.finish_reason == "stop"
        judgment = point_with_scale(generation.text, PointScale())
        flexjudge.parse_pointwise(generation.text, strict=True)  # the exact format, nothing repaired
        names = [d.name for d in judgment.dimensions]
        assert names[: 3 + len(custom)] == [*anchors("image"), *custom]
        assert len(judgment.dimensions) <= 5
        assert all(3 <= len(d.criteria) <= 5 for d in judgment.dimensions)
        codes = {f.code for f in flexjudge.check(judgment)}
        assert not codes & enforced_findings("llguidance", mode="point"), codes
        texts.add(generation.text)
    assert len(texts) == len(generations)  # temperature 1, one seed each: different judgments


def test_score_through_the_public_api_keeps_the_anchors(tiny: Any) -> None:
    from PIL import Image

    image = Image.new("RGB", (32, 32), (200, 30, 30))
    with flexjudge.Judge(
        "tiny-random", backend=tiny, temperature=1.0, max_string_length=8, max_new_tokens=1500
    ) as judge:
        for seed in range(2):
            judgment = judge.score("a red square", image, seed=seed)
            assert [d.name for d in judgment.dimensions[:3]] == list(anchors("image"))
            assert all(3 <= len(d.criteria) <= 5 for d in judgment.dimensions)
            codes = {f.code for f in judgment.findings}
            assert not codes & enforced_findings("llguidance", mode="point"), codes
