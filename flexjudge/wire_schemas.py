"""JSON Schemas that a judge model is constrained by, derived from the Pydantic models.

The in-memory models allow what a model must never emit (ties, metadata, any modality); the wire schemas
fix those, bound the hierarchy (3 anchors + at most 2 generated dimensions, 3-5 criteria), enumerate the
scores, and stay inside OpenAI's strict structured-output subset so vLLM, SGLang and OpenAI all take them.
Cross-field rules (score_1 + score_2 == 10, anchors in order) are beyond JSON Schema: the grammar
builder enforces them and `flexjudge.check` re-checks them.
"""

from __future__ import annotations

import copy
from typing import Any

from flexjudge.anchors import Modality
from flexjudge.formats.flex import FlexOutput
from flexjudge.formats.winners import winner_text
from flexjudge.schema import Judgment, PointScale, PointwiseJudgment

Schema = dict[str, Any]

MIN_CRITERIA, MAX_CRITERIA = 3, 5
MIN_DIMENSIONS, MAX_DIMENSIONS = 3, 5  # 3 anchors + at most 2 generated

# What OpenAI strict mode accepts; anything else is stripped or rejected (checked in the tests).
_STRICT_KEYWORDS = frozenset(
    {
        "type",
        "properties",
        "required",
        "additionalProperties",
        "items",
        "enum",
        "anyOf",
        "$ref",
        "$defs",
        "description",
        "title",
        "minItems",
        "maxItems",
    }
)
_DROPPED = ("default", "title", "minLength", "maxLength", "minimum", "maximum")


def native_pair_schema(modality: Modality) -> Schema:
    """The native pairwise judgment a judge must emit: intent, evidence, dimensions, verdict."""
    schema = Judgment.model_json_schema()
    props = schema["properties"]
    props["modality"] = {
        "type": "string",
        "enum": [modality],
        "description": props["modality"]["description"],
    }
    props["scoring"] = {"type": "string", "enum": ["split"], "description": props["scoring"]["description"]}
    props["intent"] = {"$ref": "#/$defs/Intent", "description": props["intent"]["description"]}
    _bound(props["dimensions"], MIN_DIMENSIONS, MAX_DIMENSIONS)
    _bound(props["evidence"], 2, 2)
    defs = schema["$defs"]
    _bound(defs["Dimension"]["properties"]["criteria"], MIN_CRITERIA, MAX_CRITERIA)
    defs["Dimension"]["properties"]["winner"] = _int_enum([1, 2], "Candidate that wins this dimension.")
    defs["Verdict"]["properties"]["winner"] = _int_enum([1, 2], "Candidate preferred overall.")
    for name in ("score_1", "score_2"):
        field = defs["Criterion"]["properties"][name]
        defs["Criterion"]["properties"][name] = _int_enum(list(range(11)), field["description"])
    defs["Evidence"]["properties"]["candidate"] = _int_enum(
        [1, 2], defs["Evidence"]["properties"]["candidate"]["description"]
    )
    return _strictify(schema)


def native_point_schema(modality: Modality, scale: PointScale | None = None) -> Schema:
    """The native pointwise judgment of one candidate, scores enumerated on `scale` (default 1..10)."""
    scale = scale or PointScale()
    schema = PointwiseJudgment.model_json_schema()
    props = schema["properties"]
    del props["scale"]
    schema["$defs"].pop("PointScale", None)
    props["modality"] = {
        "type": "string",
        "enum": [modality],
        "description": props["modality"]["description"],
    }
    props["intent"] = {"$ref": "#/$defs/Intent", "description": props["intent"]["description"]}
    _bound(props["dimensions"], MIN_DIMENSIONS, MAX_DIMENSIONS)
    defs = schema["$defs"]
    _bound(defs["PointDimension"]["properties"]["criteria"], MIN_CRITERIA, MAX_CRITERIA)
    values = list(range(scale.low, scale.high + 1))
    for holder in (defs["PointCriterion"], defs["PointDimension"], defs["PointVerdict"]):
        holder["properties"]["score"] = _int_enum(values, holder["properties"]["score"]["description"])
    return _strictify(schema)


def flex_schema(modality: Modality) -> Schema:
    """The released UnifiedReward-Flex object, winners spelled "Image 1"/"Image 2" (or "Video ...")."""
    schema = FlexOutput.model_json_schema()
    winners = [winner_text(1, modality), winner_text(2, modality)]
    defs = schema["$defs"]
    schema["properties"]["winner"] = {"type": "string", "enum": winners, "description": "Overall winner."}
    defs["FlexCategory"]["properties"]["cat_winner"] = {
        "type": "string",
        "enum": winners,
        "description": "Category winner.",
    }
    _bound(schema["properties"]["categories"], MIN_DIMENSIONS, MAX_DIMENSIONS)
    _bound(defs["FlexCategory"]["properties"]["dims"], MIN_CRITERIA, MAX_CRITERIA)
    for name in ("score_1", "score_2"):
        field = defs["FlexDim"]["properties"][name]
        defs["FlexDim"]["properties"][name] = _int_enum(list(range(11)), field["description"])
    return _strictify(schema)


def all_schemas() -> dict[str, Schema]:
    """Every exported schema by file name, as written by `flexjudge schemas --out DIR`."""
    out: dict[str, Schema] = {}
    for modality in ("image", "video"):
        out[f"pair-{modality}.schema.json"] = native_pair_schema(modality)
        out[f"point-{modality}.schema.json"] = native_point_schema(modality)
        out[f"flex-{modality}.schema.json"] = flex_schema(modality)
    return out


def strict_problems(schema: Schema) -> list[str]:
    """Why OpenAI strict structured outputs would refuse `schema` (empty when it would accept it)."""
    problems: list[str] = []

    def walk(node: Any, path: str) -> None:
        if isinstance(node, list):
            for i, item in enumerate(node):
                walk(item, f"{path}[{i}]")
            return
        if not isinstance(node, dict):
            return
        for key in node:
            if key not in _STRICT_KEYWORDS:
                problems.append(f"{path}: keyword {key!r} is not supported")
        if node.get("type") == "object" or "properties" in node:
            if node.get("additionalProperties") is not False:
                problems.append(f"{path}: additionalProperties must be false")
            if sorted(node.get("required", [])) != sorted(node.get("properties", {})):
                problems.append(f"{path}: every property must be required")
        for key in ("properties", "$defs"):
            for name, child in node.get(key, {}).items():
                walk(child, f"{path}.{key}.{name}")
        for key in ("items", "anyOf"):
            if key in node:
                walk(node[key], f"{path}.{key}")

    walk(schema, "$")
    return problems


def _bound(array: Schema, low: int, high: int) -> None:
    array["minItems"], array["maxItems"] = low, high


def _int_enum(values: list[int], description: str) -> Schema:
    return {"type": "integer", "enum": values, "description": description}


def _strictify(schema: Schema) -> Schema:
    """Every property required, no extra properties, no keywords strict mode refuses."""
    schema = copy.deepcopy(schema)

    def walk(node: Any) -> None:
        if isinstance(node, list):
            for item in node:
                walk(item)
            return
        if not isinstance(node, dict):
            return
        for key in _DROPPED:
            node.pop(key, None)
        if "properties" in node:
            node["required"] = list(node["properties"])
            node["additionalProperties"] = False
            for child in node["properties"].values():
                walk(child)
        for key in ("items", "anyOf", "$defs"):
            if key in node:
                walk(list(node[key].values()) if key == "$defs" else node[key])

    walk(schema)
    return schema
