"""flexjudge's own JSON: the whole hierarchy (intent, evidence, dimensions, verdict), winners as numbers.

It is `Judgment` without `meta`, field for field, so any judgment renders to it without loss.
This is the format new students learn: intent and evidence come before any score.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from operator import attrgetter
from typing import Any, Final

from pydantic import BaseModel, ValidationError

from flexjudge.anchors import Modality
from flexjudge.errors import ParseError
from flexjudge.formats import _common
from flexjudge.formats._recovery import NoObject, extract_object
from flexjudge.formats.winners import WinnerError, read_winner
from flexjudge.schema import Criterion, Dimension, Evidence, Intent, Judgment, JudgmentMeta, Verdict

FORMAT: Final = "native"
_NOT_WIRE = ("meta", "findings")  # fields of `Judgment` that a judge never writes
_KEYS = frozenset(Judgment.model_fields) - frozenset(_NOT_WIRE)


def parse_native(text: str, *, modality: Modality | None, strict: bool) -> Judgment:
    try:
        judgment = Judgment.model_validate_json(text, strict=True)
    except ValidationError:
        judgment = None
    exact = (
        judgment is not None
        and not judgment.model_fields_set.intersection(_NOT_WIRE)
        and _common.members_once(text, _members(judgment))  # no duplicated key, however escaped
    )
    if judgment is not None and exact and modality in (None, judgment.modality):
        # Set as `trusted` sets fields: assignment through pydantic costs more than the rest of this step.
        judgment.__dict__["meta"] = _common.fresh_meta(FORMAT, text, None)
        judgment.__pydantic_fields_set__.add("meta")
        return judgment
    if strict:
        raise _strict_failure(text, modality)
    return _parse_lenient(text, modality)


def _members(value: Judgment) -> int:
    """How many JSON members the validated `value` was read from, in closed form: every field of the
    nested models is required, so each nested object holds all of its fields (checked at import).
    (The walk over every model's fields cost about half of a `json.loads` of the same text.)"""
    fields = value.__dict__  # read in C, not by attribute: see checks._CRITERION_ROW
    dims = fields["dimensions"]
    return (
        len(value.__pydantic_fields_set__)
        + _PER_VERDICT
        + _PER_DIMENSION * len(dims)
        + _PER_CRITERION * sum(map(len, map(_CRITERIA, dims)))
        + _PER_EVIDENCE * len(fields["evidence"])
        + (_PER_INTENT if fields["intent"] is not None else 0)
    )


_CRITERIA = attrgetter("criteria")


def _fields(model: type[BaseModel]) -> int:
    if not all(field.is_required() for field in model.model_fields.values()):
        raise TypeError(f"{model.__name__} has an optional field: _members must count the fields set")
    return len(model.model_fields)


_PER_VERDICT = _fields(Verdict)
_PER_DIMENSION = _fields(Dimension)
_PER_CRITERION = _fields(Criterion)
_PER_EVIDENCE = _fields(Evidence)
_PER_INTENT = _fields(Intent)


def _booleans(value: Any, loc: _common.Loc = ()) -> Iterator[_common.Loc]:
    """Where `value` (read leniently) holds a JSON boolean: never valid in this format."""
    if isinstance(value, bool):
        yield loc
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _booleans(item, (*loc, key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from _booleans(item, (*loc, i))


def _strict_failure(text: str, modality: Modality | None) -> ParseError:
    try:
        value, base = _common.load_strict(text, FORMAT)
    except ParseError as exc:
        return exc
    for key in _NOT_WIRE:
        if isinstance(value, dict) and key in value:
            return ParseError(
                f"{key!r} is not part of the native format", offset=base, path=key, format=FORMAT
            )
    for loc in _booleans(value):
        return _boolean_error(text, value, loc, base)
    try:
        Judgment.model_validate(value, strict=True)
    except ValidationError as exc:
        return _common.schema_error(exc, text, value, base, FORMAT)
    duplicate = _common.duplicated_key(text)
    if duplicate is not None:
        return ParseError(f"the member {duplicate!r} appears twice in one object", offset=base, format=FORMAT)
    return ParseError(
        f"modality is {value.get('modality')!r} but the caller said {modality!r}",
        offset=_common.locate(text, value, ("modality",), base),
        path="modality",
        format=FORMAT,
    )


def _parse_lenient(text: str, modality: Modality | None) -> Judgment:
    try:
        found = extract_object(text, _KEYS)
    except NoObject as exc:
        raise ParseError(exc.reason, offset=exc.offset, format=FORMAT) from None
    except RecursionError:
        raise ParseError("JSON nested too deeply", offset=0, format=FORMAT) from None
    notes = list(found.notes)
    value = _common.prune(found.value, Judgment, notes)
    for key in _NOT_WIRE:
        if key in value:
            del value[key]
            notes.append(f"dropped {key!r}, which is not part of the native format")
    if modality is not None and value.get("modality") != modality:
        notes.append(f"modality {value.get('modality')!r} replaced by the caller's {modality!r}")
        value["modality"] = modality
    for loc in _booleans(value):
        raise _boolean_error(text, found.value, loc, found.start)
    try:
        _read_winners(value, notes)
    except _WinnerAt as exc:
        offset = _common.locate(text, found.value, exc.loc, found.start)
        raise ParseError(
            exc.reason, offset=offset, path=_common.format_path(exc.loc), format=FORMAT
        ) from None
    try:
        judgment = Judgment.model_validate(value)
    except ValidationError as exc:
        if not found.complete:
            raise _common.incomplete_error(text, found, FORMAT) from None
        raise _common.schema_error(exc, text, found.value, found.start, FORMAT) from None
    judgment.meta = JudgmentMeta(source_format=FORMAT, raw_text=text, recovered=True, recovery_notes=notes)
    return judgment


def _boolean_error(text: str, value: Any, loc: _common.Loc, base: int) -> ParseError:
    return ParseError(
        "a JSON boolean is not a value of the native format (never a candidate)",
        offset=_common.locate(text, value, loc, base),
        path=_common.format_path(loc) or None,
        format=FORMAT,
    )


class _WinnerAt(Exception):
    def __init__(self, loc: _common.Loc, reason: str) -> None:
        self.loc = loc
        self.reason = reason


def _read_winners(value: dict[str, Any], notes: list[str]) -> None:
    """Normalise loose winners in place; None stays a tie, anything unreadable is an error."""
    places: list[tuple[_common.Loc, dict[str, Any]]] = []
    dimensions = value.get("dimensions")
    if isinstance(dimensions, list):
        places += [(("dimensions", i, "winner"), d) for i, d in enumerate(dimensions) if isinstance(d, dict)]
    if isinstance(value.get("verdict"), dict):
        places.append((("verdict", "winner"), value["verdict"]))
    for loc, holder in places:
        raw = holder.get("winner")
        if raw is None or (raw in (1, 2) and not isinstance(raw, bool)):
            continue
        try:
            holder["winner"] = read_winner(raw)
        except WinnerError as exc:
            raise _WinnerAt(loc, str(exc)) from None
        notes.append(f"read winner {raw!r} at {_common.format_path(loc)} as candidate {holder['winner']}")


def render_native(judgment: Judgment) -> str:
    return json.dumps(judgment.content(), ensure_ascii=False)
