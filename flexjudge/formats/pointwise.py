"""Pointwise judgments in the native JSON form (the released judges have no pointwise format)."""

from __future__ import annotations

import json
from typing import Final

from pydantic import ValidationError

from flexjudge.errors import ParseError
from flexjudge.formats import _common
from flexjudge.formats._recovery import NoObject, extract_object
from flexjudge.schema import JudgmentMeta, PointScale, PointwiseJudgment

FORMAT: Final = "native"
_NOT_WIRE = ("meta", "findings")  # fields of `PointwiseJudgment` that a judge never writes


def parse_pointwise(text: str, *, strict: bool = False, scale: PointScale | None = None) -> PointwiseJudgment:
    """Read a pointwise judgment; raises `ParseError` (or `TruncatedOutput`) and nothing else.

    `scale` is the one the judgment was asked on (the wire format leaves it out; default 1..10): its
    scores are read against it."""
    try:
        return _parse(text, strict, scale)
    except RecursionError:  # only expected failures become ParseError: a bug surfaces as itself
        raise ParseError("nested too deeply", offset=0, format=FORMAT) from None


def _parse(text: str, strict: bool, scale: PointScale | None) -> PointwiseJudgment:
    if not isinstance(text, str):
        raise ParseError(f"expected text, got {type(text).__name__}", offset=0)
    if strict:
        value, base = _common.load_strict(text, FORMAT)
        notes, complete = [], True
        found = None
        raw_value = value
    else:
        try:
            found = extract_object(text, frozenset(PointwiseJudgment.model_fields) - frozenset(_NOT_WIRE))
        except NoObject as exc:
            raise ParseError(exc.reason, offset=exc.offset, format=FORMAT) from None
        notes = list(found.notes)
        value = _common.prune(found.value, PointwiseJudgment, notes)
        base, complete = found.start, found.complete
        raw_value = found.value
    for key in _NOT_WIRE:
        if isinstance(value, dict) and key in value:
            if strict:
                raise ParseError(
                    f"{key!r} is not part of the native format", offset=base, path=key, format=FORMAT
                )
            del value[key]
            notes.append(f"dropped {key!r}, which is not part of the native format")
    if scale is not None and isinstance(value, dict):
        value = {**value, "scale": scale}
    try:
        judgment = PointwiseJudgment.model_validate(value, strict=strict)
    except ValidationError as exc:
        if found is not None and not complete:
            raise _common.incomplete_error(text, found, FORMAT) from None
        raise _common.schema_error(exc, text, raw_value, base, FORMAT) from None
    judgment.meta = JudgmentMeta(
        source_format=FORMAT, candidate_order=[1], raw_text=text, recovered=bool(notes), recovery_notes=notes
    )
    return judgment


def render_pointwise(judgment: PointwiseJudgment) -> str:
    return json.dumps(judgment.content(), ensure_ascii=False)
