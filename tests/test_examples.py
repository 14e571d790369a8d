"""The shipped examples behave as each line says it should."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import flexjudge

TRACES = Path(__file__).parent.parent / "examples" / "traces"
MALFORMED = [
    json.loads(line)
    for line in (TRACES / "malformed.jsonl").read_text(encoding="utf-8").splitlines()
    if line.strip()
]


@pytest.mark.parametrize("record", MALFORMED, ids=[r["id"] for r in MALFORMED])
def test_malformed_example(record: dict) -> None:
    def read() -> flexjudge.Judgment:
        return flexjudge.parse(record["output"], modality=record.get("modality"), prompt=record["prompt"])

    expect = record["expect"]
    if expect == "truncated":
        with pytest.raises(flexjudge.TruncatedOutput):
            read()
    elif expect == "parse_error":
        with pytest.raises(flexjudge.ParseError) as info:
            read()
        assert not isinstance(info.value, flexjudge.TruncatedOutput)
    elif expect == "recovered":
        judgment = read()
        assert judgment.meta.recovered and judgment.meta.recovery_notes
        if record.get("label") in (1, 2):
            assert judgment.verdict.winner == record["label"]
    else:
        codes = {f.code for f in flexjudge.check(read(), prompt=record["prompt"])}
        assert record["expect_code"] in codes


def test_every_behaviour_is_covered_twice() -> None:
    kinds = [r["expect"] for r in MALFORMED]
    assert all(kinds.count(k) >= 2 for k in ("recovered", "truncated", "parse_error", "findings"))
