"""`flexjudge.outlines_type`: the judgment constraint as an Outlines output type, decoded by Outlines itself
on the tiny model (`outlines.from_transformers`) and read back with `parse` like any other output."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

outlines = pytest.importorskip("outlines")
torch = pytest.importorskip("torch")
pytest.importorskip("llguidance")

import flexjudge  # noqa: E402
from flexjudge.anchors import anchors  # noqa: E402
from flexjudge.constraints import enforced_findings, pair_constraint  # noqa: E402
from flexjudge.outlines_types import outlines_type  # noqa: E402
from flexjudge.schema import PointScale  # noqa: E402

# Outlines' llguidance processor imports `llguidance.torch`, whose torch.compile call trips a deprecation
# inside torch itself (not ours to fix).
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")


def test_the_grammar_by_default_json_schema_on_request() -> None:
    from outlines.types import CFG, JsonSchema

    assert isinstance(outlines_type(), CFG)
    assert isinstance(outlines_type("point", "video"), CFG)
    as_schema = outlines_type("pair", "image", "native", grammar=False)
    assert isinstance(as_schema, JsonSchema)
    schema = json.loads(as_schema.schema)
    assert schema.pop("x-guidance") == {"whitespace_flexible": False}
    assert schema == pair_constraint("image", "native")
    # A scale too wide for the grammar's states is JSON Schema, its scores enumerated.
    wide = outlines_type("point", scale=PointScale(low=0, high=100))
    assert isinstance(wide, JsonSchema) and '"enum": [0, 1, 2' in wide.schema


@pytest.mark.parametrize(
    "kwargs",
    [
        {"mode": "rank"},
        {"mode": "point", "output_format": "flex"},
        {"mode": "pair", "output_format": "think"},
        {"modality": "audio"},
        {"mode": "point", "scale": (1, 5)},
        {"custom_dimensions": ("a", "b", "c")},
    ],
)
def test_wrong_arguments_say_what_to_pass(kwargs: dict[str, Any]) -> None:
    with pytest.raises(flexjudge.UsageError):
        outlines_type(**kwargs)


# ------------------------------------------------------------------ decoded by Outlines on the tiny model


@pytest.fixture(scope="module")
def model() -> Iterator[Any]:
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from flexjudge.backends.tiny import tiny_model_dir

    directory = tiny_model_dir(0)
    processor = AutoProcessor.from_pretrained(directory)
    hf_model = AutoModelForImageTextToText.from_pretrained(directory, dtype=torch.float32).eval()
    # Outlines' llguidance processor compiles its mask kernel with torch.compile: a minute of CPU on the
    # first call, nothing to do with what is tested here. Patched for this module only, then restored.
    with torch._dynamo.config.patch(disable=True):
        yield outlines.from_transformers(hf_model, processor)


def _chat() -> Any:
    from outlines.inputs import Chat, Image
    from PIL import Image as PILImage

    parts: list[dict[str, Any]] = []
    for colour in ((200, 30, 30), (30, 30, 200)):
        image = PILImage.new("RGB", (32, 32), colour)
        image.format = "PNG"  # Outlines' Image wants to know the format
        parts.append({"type": "image", "image": Image(image)})
    parts.append({"type": "text", "text": "Compare both for: a red square. Answer in JSON."})
    return Chat([{"role": "user", "content": parts}])


def _generate(model: Any, output_type: Any, seed: int, backend: str | None = None) -> str:
    generator = outlines.Generator(model, output_type, backend=backend)
    torch.manual_seed(seed)
    text: str = generator(_chat(), max_new_tokens=1500, do_sample=True, temperature=1.0, top_k=0)
    return text


@pytest.mark.parametrize("output_format", ["flex", pytest.param("native", marks=pytest.mark.slow)])
def test_outlines_decodes_pair_judgments_that_read_and_keep_the_rules(model: Any, output_format: Any) -> None:
    output_type = outlines_type("pair", "image", output_format, max_string_length=6)
    text = _generate(model, output_type, seed=0)
    judgment = flexjudge.parse(text, format=output_format, modality="image", strict=True)
    assert [d.origin for d in judgment.dimensions[:3]] == ["predefined"] * 3
    codes = {f.code for f in flexjudge.check(judgment)}
    # The grammar's rules, winners that follow the scores included; names are not kept unique here.
    assert not codes & enforced_findings("llguidance", output_format=output_format), codes


def test_outlines_decodes_pointwise_judgments_that_parse_and_keep_the_rules(model: Any) -> None:
    output_type = outlines_type("point", "image", custom_dimensions=("Text Legibility",), max_string_length=6)
    text = _generate(model, output_type, seed=1)
    judgment = flexjudge.parse_pointwise(text, strict=True)
    assert [d.name for d in judgment.dimensions[:4]] == [*anchors("image"), "Text Legibility"]
    assert all(3 <= len(d.criteria) <= 5 for d in judgment.dimensions)
    codes = {f.code for f in flexjudge.check(judgment)}
    assert not codes & enforced_findings("llguidance", mode="point"), codes


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(3))
def test_outlines_core_takes_the_json_schema(model: Any, seed: int) -> None:
    output_type = outlines_type("point", "image", grammar=False, max_string_length=6)
    text = _generate(model, output_type, seed=seed, backend="outlines_core")
    judgment = flexjudge.parse_pointwise(text, strict=True)
    codes = {f.code for f in flexjudge.check(judgment)}
    assert not codes & enforced_findings("outlines_core", mode="point"), codes
