"""The judgment grammar (`flexjudge.grammar`) accepts exactly what the constraint schema accepts, minus
dimension winners that contradict their scores: checked with llguidance on a real tokenizer, against
`jsonschema` on instances drawn from the schema itself."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

llguidance = pytest.importorskip("llguidance")
pytest.importorskip("llguidance.hf")
jsonschema = pytest.importorskip("jsonschema")
pytest.importorskip("transformers")

from flexjudge.constraints import pair_constraint, point_constraint  # noqa: E402
from flexjudge.grammar import lark_grammar  # noqa: E402
from flexjudge.schema import PointScale  # noqa: E402

SHAPES = [
    ("image", "flex", ()),
    ("video", "flex", ()),
    ("image", "native", ()),
    ("image", "native", ("Text Legibility",)),
    ("image", "point", ()),
    ("video", "point", ("Text Legibility",)),
]


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    from transformers import AutoTokenizer

    from flexjudge.backends.tiny import tiny_model_dir

    return AutoTokenizer.from_pretrained(tiny_model_dir(0))


@pytest.fixture(scope="module")
def table(tokenizer: Any) -> Any:
    import llguidance.hf

    return llguidance.hf.from_tokenizer(tokenizer)


def _constraint(shape: tuple[Any, ...], max_string_length: int | None = None) -> dict[str, Any]:
    modality, output_format, custom = shape
    if output_format == "point":
        return point_constraint(
            modality, PointScale(), custom_dimensions=custom, max_string_length=max_string_length
        )
    return pair_constraint(
        modality, output_format, custom_dimensions=custom, max_string_length=max_string_length
    )


class _Grammar:
    def __init__(self, schema: dict[str, Any], table: Any, tokenizer: Any) -> None:
        lark = lark_grammar(schema)
        assert lark is not None
        self.schema, self.tokenizer = schema, tokenizer
        self.matcher = llguidance.LLMatcher(table, llguidance.LLMatcher.grammar_from_lark(lark), log_level=0)
        assert not self.matcher.is_error(), self.matcher.get_error()

    def accepts(self, text: str) -> bool:
        matcher = self.matcher.deep_copy()
        ids = self.tokenizer.encode(text, add_special_tokens=False)
        return bool(matcher.consume_tokens(ids)) and matcher.is_accepting()


@pytest.fixture(scope="module")
def grammars(table: Any, tokenizer: Any) -> dict[tuple[Any, ...], _Grammar]:
    return {shape: _Grammar(_constraint(shape, max_string_length=12), table, tokenizer) for shape in SHAPES}


@st.composite
def instance(draw: st.DrawFn, node: Any) -> Any:
    """A value valid under `node` (the subset `flexjudge.constraints` emits), winners drawn freely."""
    if "const" in node:
        return node["const"]
    if "enum" in node:
        return draw(st.sampled_from(node["enum"]))
    if "anyOf" in node:
        return draw(instance(draw(st.sampled_from(node["anyOf"]))))
    kind = node.get("type")
    if kind == "string":
        low, high = node.get("minLength", 0), node.get("maxLength", 12)
        return draw(st.text(st.sampled_from('ab é"\\\u2603\n\t/'), min_size=low, max_size=high))
    if kind == "integer":
        return draw(st.integers(-5, 500))
    if kind == "object":
        return {key: draw(instance(value)) for key, value in node["properties"].items()}
    prefix = [draw(instance(item)) for item in node.get("prefixItems", ())]
    items = node.get("items", False)
    if items is False:
        return prefix
    low = max(node.get("minItems", 0) - len(prefix), 0)
    high = node.get("maxItems", len(prefix) + 3) - len(prefix)
    return prefix + draw(st.lists(instance(items), min_size=low, max_size=high))


def compact(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "-".join([s[0], s[1], *s[2]]))
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_grammar_accepts_exactly_the_schema_with_consistent_winners(
    grammars: dict[tuple[Any, ...], _Grammar], shape: tuple[Any, ...], data: st.DataObject
) -> None:
    grammar = grammars[shape]
    value = data.draw(instance(grammar.schema))
    jsonschema.validate(value, grammar.schema)  # the drawing is faithful to the schema
    consistent = _dimension_winners_consistent(value)
    assert grammar.accepts(compact(value)) == consistent


def _dimension_winners_consistent(value: dict[str, Any]) -> bool:
    dimensions = value.get("categories", value.get("dimensions", []))
    for dimension in dimensions:
        if "score" in dimension:  # pointwise: the dimension score lies within its criteria's scores
            scores = [c["score"] for c in dimension["criteria"]]
            if not min(scores) <= dimension["score"] <= max(scores):
                return False
            continue
        criteria = dimension.get("dims", dimension.get("criteria"))
        winner = dimension.get("cat_winner", dimension.get("winner"))
        margin = sum(c["score_1"] - c["score_2"] for c in criteria)
        index = winner if isinstance(winner, int) else int(str(winner)[-1])
        if (margin > 0 and index != 1) or (margin < 0 and index != 2):
            return False
    return True


def _valid_flex(splits: list[list[int]], winners: list[str], modality: str = "image") -> dict[str, Any]:
    from flexjudge.constraints import anchor_names

    noun = "Image" if modality == "image" else "Video"
    categories = [
        {
            "name": name,
            "dims": [
                {"name": f"c{j}", "reason_1": "r", "reason_2": "s", "score_1": a, "score_2": 10 - a}
                for j, a in enumerate(split)
            ],
            "cat_reason": "why",
            "cat_winner": f"{noun} {winner}",
        }
        for name, split, winner in zip(anchor_names(modality, "flex"), splits, winners, strict=True)  # type: ignore[arg-type]
    ]
    return {"prompt": "p", "categories": categories, "reason": "overall", "winner": f"{noun} 1"}


def test_examples_by_hand(grammars: dict[tuple[Any, ...], _Grammar]) -> None:
    grammar = grammars[("image", "flex", ())]
    good = _valid_flex([[7, 6, 5], [2, 3, 5, 5], [5, 5, 5]], ["1", "2", "2"])
    assert grammar.accepts(compact(good))
    assert not grammar.accepts(compact(good)[:-1])  # unfinished
    assert not grammar.accepts(json.dumps(good))  # whitespace: the engines emit compact JSON
    contradicted = _valid_flex([[7, 6, 5], [2, 3, 5, 5], [5, 5, 5]], ["2", "2", "2"])
    assert not grammar.accepts(compact(contradicted))  # 18 to 12, yet Image 2
    two = _valid_flex([[7, 6], [2, 3, 5], [5, 5, 5]], ["1", "2", "1"])
    assert not grammar.accepts(compact(two))  # two criteria
    six = _valid_flex([[7, 6, 5, 5, 5, 5], [2, 3, 5], [5, 5, 5]], ["1", "2", "1"])
    assert not grammar.accepts(compact(six))
    broken_split = compact(good).replace('"score_1":7,"score_2":3', '"score_1":7,"score_2":4')
    assert not grammar.accepts(broken_split)
    renamed = compact(good).replace("A. Semantic", "A. Semantics")
    assert not grammar.accepts(renamed)
    unnamed = compact(good).replace('"name":"c0"', '"name":""', 1)
    assert not grammar.accepts(unnamed)
    assert grammar.accepts(compact({**good, "prompt": "a\x7fb"}))  # DEL is a JSON string character


def test_schemas_without_scored_criteria_have_no_grammar() -> None:
    assert lark_grammar({"type": "object", "properties": {"a": {"type": "string"}}}) is None
    # A scale too wide for the running minimum and maximum is left to JSON Schema.
    assert lark_grammar(point_constraint("image", PointScale(low=0, high=100))) is None
    assert lark_grammar(point_constraint("image", PointScale(low=0, high=10))) is not None


def _point(criteria: list[list[int]], scores: list[int]) -> dict[str, Any]:
    from flexjudge.constraints import anchor_names

    dimensions = [
        {
            "name": name,
            "origin": "predefined",
            "criteria": [{"name": f"c{j}", "evidence": "e", "score": v} for j, v in enumerate(values)],
            "analysis": "a",
            "score": score,
        }
        for name, values, score in zip(anchor_names("image", "native"), criteria, scores, strict=True)
    ]
    intent = {k: [] for k in ("subjects", "attributes_and_actions", "constraints", "style", "preferences")}
    return {
        "prompt": "p",
        "modality": "image",
        "intent": intent,
        "observations": ["o"],
        "dimensions": dimensions,
        "verdict": {"analysis": "v", "score": 7},
    }


def test_point_examples_by_hand(grammars: dict[tuple[Any, ...], _Grammar]) -> None:
    grammar = grammars[("image", "point", ())]
    good = _point([[7, 6, 5], [2, 3, 5, 5], [9, 9, 9]], [6, 2, 9])
    assert grammar.accepts(compact(good))
    assert not grammar.accepts(compact(_point([[7, 6, 5], [2, 3, 5, 5], [9, 9, 9]], [8, 2, 9])))
    assert not grammar.accepts(compact(_point([[7, 6, 5], [2, 3, 5, 5], [9, 9, 9]], [6, 1, 9])))
    assert not grammar.accepts(compact(_point([[7, 6], [2, 3, 5], [9, 9, 9]], [6, 2, 9])))  # 2 criteria
    assert not grammar.accepts(compact(_point([[7, 6, 11], [2, 3, 5], [9, 9, 9]], [6, 2, 9])))  # off scale
    assert not grammar.accepts(compact({**good, "dimensions": good["dimensions"][1:]}))  # anchor missing
    assert not grammar.accepts(compact({**good, "observations": []}))


def test_unsupported_keywords_are_refused() -> None:
    schema = pair_constraint("image", "flex")
    schema["properties"]["prompt"] = {"type": "string", "pattern": "^a"}
    with pytest.raises(ValueError, match="unsupported"):
        lark_grammar(schema)
    schema = pair_constraint("image", "flex")
    schema["required"] = ["prompt"]
    with pytest.raises(ValueError, match="every property required"):
        lark_grammar(schema)


def test_every_shape_compiles_without_warnings(table: Any) -> None:
    for shape in SHAPES:
        lark = lark_grammar(_constraint(shape))
        assert lark is not None
        grammar = llguidance.LLMatcher.grammar_from_lark(lark)
        is_error, messages = llguidance.LLMatcher.validate_grammar_with_warnings(grammar, table)
        assert not is_error and not messages, messages


def test_backend_falls_back_to_json_schema_when_the_grammar_cannot_be_built() -> None:
    from flexjudge.backends.transformers import TransformersBackend

    schema = pair_constraint("image", "flex", max_string_length=4)
    schema["properties"]["prompt"] = {"type": "string", "maxLength": 4, "pattern": "^[a-z]*$"}
    with pytest.raises(ValueError, match="unsupported"):
        lark_grammar(schema)
    backend = TransformersBackend("tiny-random", engine="llguidance")
    assert backend.compile(schema) > 0  # compiled, as JSON Schema


def test_vllm_guidance_backend_reads_it_as_lark() -> None:
    """vLLM's guidance backend compiles `structured_outputs.grammar` with `llguidance.grammar_from("grammar",
    ...)`, which tells GBNF from Lark: ours must come out as the Lark grammar it is."""
    lark = lark_grammar(_constraint(SHAPES[0]))
    assert lark is not None
    assert llguidance.grammar_from("grammar", lark) == llguidance.grammar_from("lark", lark)
