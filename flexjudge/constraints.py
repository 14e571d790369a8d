"""What a constrained decoder enforces beyond the exported wire schemas: valid by construction.

The wire schemas (`flexjudge.wire_schemas`) stay inside OpenAI's strict subset. Engines that take full
JSON Schema (llguidance, outlines-core, xgrammar, vLLM's structured outputs) get more here:

- the anchors, by name and in order (`prefixItems` with `const` names), then at most two generated
  dimensions, and the user's required custom dimensions right after the anchors;
- the 10-point split: each criterion is one of 11 alternatives (`anyOf`) whose scores are constants
  (0/10, 1/9, ..., 10/0), so `score_1 + score_2 == 10` cannot be broken;
- 3 to 5 criteria per dimension, each with a non-empty name.

The llguidance engine decodes this schema as a grammar (`flexjudge.grammar`) that also makes every
dimension winner follow its criteria's scores, which JSON Schema cannot express. The transformers backend
also keeps criterion names unique within a dimension while decoding (`backends/_names.py`), on every
engine; no grammar can.

One definition feeds every engine. `flexjudge.check` re-checks the same rules after decoding.
`max_string_length` bounds every string: only for random-weight test models (a real judge closes its
strings; DESIGN.md measured that character bounds multiply mask cost, so production leaves it None).
"""

from __future__ import annotations

import copy
from typing import Any, Literal

from flexjudge.anchors import MAX_GENERATED, Modality, anchors
from flexjudge.errors import UsageError
from flexjudge.formats.winners import winner_text
from flexjudge.schema import PointScale
from flexjudge.wire_schemas import (
    MAX_CRITERIA,
    MIN_CRITERIA,
    flex_schema,
    native_pair_schema,
    native_point_schema,
)

Schema = dict[str, Any]
OutputFormat = Literal["flex", "native"]

Mode = Literal["pair", "point"]
Applied = Literal["grammar", "schema", "strict_schema"]
"""Which form of a request's constraint was decoded under (`Generation.enforced`)."""

_SHAPE = frozenset({"anchor_missing", "anchor_renamed", "anchor_out_of_order", "criteria_count"})
ENFORCED_FINDINGS = _SHAPE | {"split_sum", "score_range", "too_many_generated"}
"""`check` codes that a pairwise judgment decoded under `pair_constraint` (as JSON Schema, by any engine)
cannot produce. Beyond it, left to `check`: unique names (the transformers backend's name guard keeps
criterion names distinct), winners that follow the scores (the grammar), evidence that is not blank, and
`origin_mismatch` in the native format: a generated dimension may repeat an anchor's name in a spelling
`check` reads as the anchor (no schema can forbid a name in every such spelling); it is then also a
`duplicate_name`. Flex writes no origins (they are read from the names), so there it cannot mismatch."""

POINT_ENFORCED_FINDINGS = _SHAPE | {"too_many_generated"}
"""`check` codes that a pointwise judgment decoded under `point_constraint` cannot produce (scores off the
scale cannot be decoded either; `parse` would refuse them). Left to `check`: as for pairs, and
`dimension_score_outside_criteria` unless decoded under the grammar."""

GRAMMAR_ENFORCED_FINDINGS = ENFORCED_FINDINGS | {"dimension_winner_contradicts_scores"}
"""What the judgment grammar (`flexjudge.grammar`) adds for pairs: each dimension winner follows its
scores."""

POINT_GRAMMAR_ENFORCED_FINDINGS = POINT_ENFORCED_FINDINGS | {"dimension_score_outside_criteria"}
"""What the grammar adds for pointwise judgments (scales of up to 11 values): each dimension score lies
between its lowest and highest criterion score."""

_STRICT_ENFORCED: dict[Mode, frozenset[str]] = {
    "pair": frozenset({"criteria_count", "score_range"}),
    "point": frozenset({"criteria_count"}),
}
"""What OpenAI's strict subset (`Constraint.strict_schema`: no `const`, no `prefixItems`) still enforces:
3-5 criteria (minItems / maxItems), scores enumerated, split scoring."""

PATHS: dict[str, Applied] = {
    "llguidance": "grammar",
    "outlines_core": "schema",
    "xgrammar": "schema",
    "vllm_json_schema": "schema",
    "vllm_guidance_grammar": "grammar",
    "openai_strict": "strict_schema",
    "serve_json_schema": "schema",
    "serve_grammar": "grammar",
}
"""Each way a judgment gets decoded, and the form of the constraint it applies: the local engines of the
transformers backend (llguidance takes the grammar), vLLM / SGLang given the full JSON Schema, vLLM's
guidance backend given the grammar (`OpenAIBackend(grammar=True)`), OpenAI itself (the strict subset), and
`flexjudge serve` given a JSON Schema or a grammar."""


def applied_findings(
    applied: Applied | None, mode: Mode = "pair", output_format: OutputFormat = "native"
) -> frozenset[str]:
    """The `check` codes a judgment cannot produce when decoded under this form of its constraint (None:
    unconstrained, nothing is enforced). A pointwise grammar exists on scales of up to 11 values."""
    if applied is None:
        return frozenset()
    if applied == "strict_schema":
        return _STRICT_ENFORCED[mode]
    if mode == "point":
        return POINT_GRAMMAR_ENFORCED_FINDINGS if applied == "grammar" else POINT_ENFORCED_FINDINGS
    found = GRAMMAR_ENFORCED_FINDINGS if applied == "grammar" else ENFORCED_FINDINGS
    return found | {"origin_mismatch"} if output_format == "flex" else found


def enforced_findings(
    engine: str | None, *, mode: Mode = "pair", output_format: OutputFormat = "native"
) -> frozenset[str]:
    """The `check` codes a judgment decoded by `engine` (a local engine or a name in `PATHS`) cannot
    produce; None or an unknown name: the JSON Schema's."""
    return applied_findings(PATHS.get(engine or "", "schema"), mode, output_format)


def pair_constraint(
    modality: Modality,
    output_format: OutputFormat = "flex",
    *,
    custom_dimensions: tuple[str, ...] = (),
    max_generated: int = MAX_GENERATED,
    max_string_length: int | None = None,
) -> Schema:
    """The full decoding constraint for a pairwise judgment in `output_format`."""
    if len(custom_dimensions) > max_generated:
        raise UsageError(f"{len(custom_dimensions)} custom dimensions; at most {max_generated} fit")
    if output_format == "flex":
        schema = _flex(modality, custom_dimensions, max_generated)
    else:
        schema = _native(modality, custom_dimensions, max_generated)
    if max_string_length is not None:
        _bound_strings(schema, max_string_length)
    return schema


def point_constraint(
    modality: Modality,
    scale: PointScale | None = None,
    *,
    custom_dimensions: tuple[str, ...] = (),
    max_generated: int = MAX_GENERATED,
    max_string_length: int | None = None,
) -> Schema:
    """The full decoding constraint for a pointwise judgment: the anchors by name and in order (origin
    "predefined"), then the user's custom dimensions and at most `max_generated` in all of their own
    (origin "generated"), 3 to 5 criteria with non-empty names, every score enumerated on `scale`."""
    if len(custom_dimensions) > max_generated:
        raise UsageError(f"{len(custom_dimensions)} custom dimensions; at most {max_generated} fit")
    base = native_point_schema(modality, scale or PointScale())
    defs = base.pop("$defs")
    base["properties"]["intent"] = defs["Intent"]
    base["properties"]["observations"]["minItems"] = 1  # observed before scoring: at least one
    criterion = copy.deepcopy(defs["PointCriterion"])
    criterion["properties"]["name"]["minLength"] = 1
    dimension = copy.deepcopy(defs["PointDimension"])
    dimension["properties"]["criteria"] = {
        "type": "array",
        "items": criterion,
        "minItems": MIN_CRITERIA,
        "maxItems": MAX_CRITERIA,
    }
    base["properties"]["verdict"] = defs["PointVerdict"]
    base["properties"]["dimensions"] = _dimensions(modality, dimension, custom_dimensions, max_generated)
    if max_string_length is not None:
        _bound_strings(base, max_string_length)
    return base


def anchor_names(modality: Modality, output_format: OutputFormat) -> list[str]:
    """Anchor names as the format writes them: Flex letters them ("A. ..."), native does not."""
    names = anchors(modality)
    return [f"{'ABC'[i]}. {name}" for i, name in enumerate(names)] if output_format == "flex" else list(names)


def custom_names(custom_dimensions: tuple[str, ...], output_format: OutputFormat) -> list[str]:
    """Custom dimension names as the format writes them (Flex continues the lettering: "D. ...")."""
    if output_format == "native":
        return list(custom_dimensions)
    return [f"{'DE'[i]}. {name}" for i, name in enumerate(custom_dimensions)]


def _split_alternatives(criterion: Schema, first: str, second: str) -> Schema:
    alternatives = []
    criterion = copy.deepcopy(criterion)
    criterion["properties"]["name"]["minLength"] = 1  # an empty name says nothing and repeats the next one
    for share in range(11):
        option = copy.deepcopy(criterion)
        option["properties"][first] = {"type": "integer", "const": share}
        option["properties"][second] = {"type": "integer", "const": 10 - share}
        alternatives.append(option)
    return {"anyOf": alternatives}


def _dimension_items(
    dimension: Schema, names: list[str], name_key: str, extra: dict[str, Any]
) -> list[Schema]:
    items = []
    for name in names:
        item = copy.deepcopy(dimension)
        item["properties"][name_key] = {"type": "string", "const": name}
        for key, value in extra.items():
            item["properties"][key] = value
        items.append(item)
    return items


def _flex(modality: Modality, custom: tuple[str, ...], max_generated: int) -> Schema:
    base = flex_schema(modality)
    defs = base.pop("$defs")
    dim = defs["FlexDim"]
    category = copy.deepcopy(defs["FlexCategory"])
    category["properties"]["dims"] = {
        "type": "array",
        "items": _split_alternatives(dim, "score_1", "score_2"),
        "minItems": MIN_CRITERIA,
        "maxItems": MAX_CRITERIA,
    }
    winners = [winner_text(1, modality), winner_text(2, modality)]
    category["properties"]["cat_winner"] = {"type": "string", "enum": winners}
    fixed = anchor_names(modality, "flex") + custom_names(custom, "flex")
    base["properties"]["categories"] = {
        "type": "array",
        "prefixItems": _dimension_items(category, fixed, "name", {}),
        "items": _named(category),
        "minItems": len(fixed),
        "maxItems": 3 + max_generated,
    }
    return base


def _native(modality: Modality, custom: tuple[str, ...], max_generated: int) -> Schema:
    base = native_pair_schema(modality)
    defs = base.pop("$defs")
    base["properties"]["intent"] = defs["Intent"]
    evidence = defs["Evidence"]
    base["properties"]["evidence"] = {
        "type": "array",
        "prefixItems": [_with_const(evidence, "candidate", n) for n in (1, 2)],
        "items": False,
        "minItems": 2,
        "maxItems": 2,
    }
    dimension = copy.deepcopy(defs["Dimension"])
    dimension["properties"]["criteria"] = {
        "type": "array",
        "items": _split_alternatives(defs["Criterion"], "score_1", "score_2"),
        "minItems": MIN_CRITERIA,
        "maxItems": MAX_CRITERIA,
    }
    base["properties"]["verdict"] = defs["Verdict"]
    base["properties"]["dimensions"] = _dimensions(modality, dimension, custom, max_generated)
    return base


def _dimensions(modality: Modality, dimension: Schema, custom: tuple[str, ...], max_generated: int) -> Schema:
    """Native dimensions: the anchors (predefined) by name and in order, the custom ones right after them,
    then free generated ones up to `max_generated` beyond the anchors."""
    predefined = {"origin": {"type": "string", "const": "predefined"}}
    generated = {"origin": {"type": "string", "const": "generated"}}
    items = _dimension_items(dimension, anchor_names(modality, "native"), "name", predefined)
    items += _dimension_items(dimension, custom_names(custom, "native"), "name", generated)
    free = copy.deepcopy(dimension)
    free["properties"].update(generated)
    return {
        "type": "array",
        "prefixItems": items,
        "items": _named(free),
        "minItems": len(items),
        "maxItems": 3 + max_generated,
    }


def _named(dimension: Schema) -> Schema:
    """A generated dimension whose name is not empty (an empty one says nothing)."""
    out = copy.deepcopy(dimension)
    out["properties"]["name"] = {**out["properties"]["name"], "minLength": 1}
    return out


def _with_const(schema: Schema, key: str, value: Any) -> Schema:
    out = copy.deepcopy(schema)
    out["properties"][key] = {"type": "integer", "const": value}
    return out


def _bound_strings(node: Any, limit: int) -> None:
    if isinstance(node, list):
        for item in node:
            _bound_strings(item, limit)
    elif isinstance(node, dict):
        if node.get("type") == "string" and "const" not in node and "enum" not in node:
            node["maxLength"] = limit
        if node.get("type") == "array" and node.get("items", {}) == {"type": "string"}:
            node.setdefault("maxItems", 4)  # lists of free strings (intent, observations) stay short too
        for value in node.values():
            _bound_strings(value, limit)
