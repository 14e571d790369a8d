"""The exported JSON Schemas: in sync with the code, accepted by OpenAI strict mode, true to the examples."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest

import flexjudge
from flexjudge.wire_schemas import all_schemas, strict_problems

ROOT = Path(__file__).parent.parent


def test_committed_schemas_match_the_code() -> None:
    committed = {
        p.name: json.loads(p.read_text(encoding="utf-8")) for p in (ROOT / "schemas").glob("*.schema.json")
    }
    assert committed == all_schemas(), "schemas/ drifted: run `flexjudge schemas --out schemas/`"


def test_cli_regenerates_the_same_files(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "flexjudge.cli", "schemas", "--out", str(tmp_path)],
        check=True,
        capture_output=True,
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(all_schemas())
    for name, schema in all_schemas().items():
        assert json.loads((tmp_path / name).read_text(encoding="utf-8")) == schema


@pytest.mark.parametrize("name", sorted(all_schemas()))
def test_every_schema_satisfies_openai_strict_rules(name: str) -> None:
    schema = all_schemas()[name]
    assert strict_problems(schema) == []
    jsonschema.Draft202012Validator.check_schema(schema)


def test_strict_checker_catches_what_openai_refuses() -> None:
    bad = {
        "type": "object",
        "properties": {"a": {"type": "string", "minLength": 1}, "b": {"type": "integer"}},
        "required": ["a"],
    }
    problems = strict_problems(bad)
    assert any("minLength" in p for p in problems)
    assert any("additionalProperties" in p for p in problems)
    assert any("required" in p for p in problems)


def test_examples_validate_against_their_schemas() -> None:
    schemas = all_schemas()
    flex = json.loads((ROOT / "examples/outputs/flex_image.json").read_text(encoding="utf-8"))
    jsonschema.validate(flex, schemas["flex-image.schema.json"])
    native = json.loads((ROOT / "examples/outputs/native_image.json").read_text(encoding="utf-8"))
    jsonschema.validate(native, schemas["pair-image.schema.json"])
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(flex, schemas["flex-video.schema.json"])  # "Image 1" is not a video winner


def test_schema_refuses_ties_and_metadata() -> None:
    schema = all_schemas()["pair-image.schema.json"]
    native = json.loads(
        flexjudge.render(
            flexjudge.parse((ROOT / "examples/outputs/native_image.json").read_text(encoding="utf-8")),
            "native",
        )
    )
    native["verdict"]["winner"] = None
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(native, schema)
    native["verdict"]["winner"] = 1
    native["meta"] = {}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(native, schema)
