"""Pieces every codec shares: turning pydantic errors into located `ParseError`s, pruning unknown keys."""

from __future__ import annotations

import functools
import json
import re
import types
import typing
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from flexjudge.errors import ParseError, TruncatedOutput
from flexjudge.formats._recovery import Extracted, paused_gc
from flexjudge.schema import JudgmentMeta

Loc = tuple[int | str, ...]
M = TypeVar("M", bound=BaseModel)


_META_FIELDS = set(JudgmentMeta.model_fields)
# Defaults that are immutable (None, False, strings) can be shared; list defaults are set per call below.
_META_DEFAULTS = {
    name: field.default for name, field in JudgmentMeta.model_fields.items() if field.default_factory is None
}


def fresh_meta(source_format: str, text: str, notes: list[str] | None) -> JudgmentMeta:
    """The metadata of a judgment just read from `text` (without validating it again: a fast path)."""
    meta = {
        **_META_DEFAULTS,
        "source_format": source_format,
        "candidate_order": [1, 2],
        "raw_text": text,
        "recovered": notes is not None,
        "recovery_notes": notes or [],
    }
    return trusted(JudgmentMeta, meta, _META_FIELDS)


def trusted(cls: type[M], data: dict[str, Any], fields: set[str]) -> M:
    """Wrap already-validated `data` (exact field names and types) in `cls` without validating again.

    The fast paths use this instead of `model_construct`, which costs several times more in Python.
    `fields` is one shared set of every field name: pydantic only ever adds names to it, and all are in.
    """
    obj = _new(cls)
    _set_dict(obj, data)
    _set_fields_set(obj, fields)
    _set_extra(obj, None)
    _set_private(obj, None)
    return obj


# BaseModel's own slot descriptors, called directly: `object.__setattr__(obj, name, value)` first looks
# the name up on the type, which cost about a third more per object (a parse builds ~20 objects).
_new = object.__new__
_set_dict = BaseModel.__dict__["__dict__"].__set__
_set_fields_set = BaseModel.__dict__["__pydantic_fields_set__"].__set__
_set_extra = BaseModel.__dict__["__pydantic_extra__"].__set__
_set_private = BaseModel.__dict__["__pydantic_private__"].__set__


def members_once(text: str, members: int) -> bool:
    """True when the JSON `text`, which validated into exactly `members` distinct members, repeats none.

    Duplicated member names (pydantic-core silently keeps the last) would make the text hold more
    members than that. Every member name ends in a quote, optional whitespace and a colon; when no
    colon anywhere follows whitespace, each one is counted by `'":'` (escaped names such as
    "winn\\u0065r" included, since the count sees the raw text's closing quote). Strings can only
    add to that count, so a count of exactly `members` proves there is no duplicate. Anything else
    pays for the exact count on decoded names.
    """
    # Every member adds one colon, so a text whose colons number exactly `members` repeats no name (one
    # fast count: the usual case). Otherwise every '":' must be a member and no colon follow whitespace.
    if text.count(":") == members or (
        text.count('":') == members and not any(s in text for s in _SPACED_COLONS)
    ):
        return True
    try:
        return _first_duplicate(text) is None
    except (ValueError, RecursionError):  # pydantic-core read JSON that Python's json will not: not exact
        return False


_SPACED_COLONS = (" :", "\n:", "\t:", "\r:")


def duplicated_key(text: str) -> str | None:
    """The first member name (decoded, so "winn\\u0065r" is "winner") that occurs twice in one object."""
    try:
        return _first_duplicate(text)
    except (ValueError, RecursionError):  # not one JSON value: the caller's own reading says why
        return None


def _first_duplicate(text: str) -> str | None:
    found: list[str] = []

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        if not found:
            seen: set[str] = set()
            for key, _ in items:
                if key in seen:
                    found.append(key)
                    break
                seen.add(key)
        return dict(items)

    json.loads(text, object_pairs_hook=pairs)
    return found[0] if found else None


def trusted_many(cls: type[M], rows: list[dict[str, Any]], fields: set[str]) -> list[M]:
    """`trusted` for a list of rows, inlined (the hot path: one call per criterion cost a fifth more)."""
    out = []
    for data in rows:
        obj = _new(cls)
        _set_dict(obj, data)
        _set_fields_set(obj, fields)
        _set_extra(obj, None)
        _set_private(obj, None)
        out.append(obj)
    return out


def load_strict(text: str, fmt: str) -> tuple[Any, int]:
    """`text` as one JSON value and the offset where it starts; a located `ParseError` otherwise."""
    try:
        with paused_gc():
            value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ParseError(f"not a single JSON object: {exc.msg}", offset=exc.pos, format=fmt) from None
    except RecursionError:
        raise ParseError("JSON nested too deeply", offset=0, format=fmt) from None
    except ValueError as exc:  # a number Python will not convert
        raise ParseError(f"unreadable number: {exc}", offset=0, format=fmt) from None
    return value, len(text) - len(text.lstrip())


def format_path(loc: Loc) -> str:
    """('categories', 1, 'dims', 0, 'score_2') -> 'categories[1].dims[0].score_2'."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def locate(text: str, value: Any, loc: Loc, base: int) -> int:
    """Offset in `text` of the member named by `loc` inside the JSON `value` read from `text` at `base`.

    A quoted key followed by a colon cannot occur inside a JSON string (its quotes would be escaped),
    so the n-th `"key":` in the text is the n-th member of that name in document order.
    """
    keys = [p for p in loc if isinstance(p, str)]
    if not keys:
        return base
    key = keys[-1]
    members = re.compile(rf'"{re.escape(key)}"\s*:')
    if members.search(text, base) is None:
        return base  # no member of that name in the text: walking the value cannot find one
    target = tuple(loc[: max(i for i, p in enumerate(loc) if p == key) + 1])
    seen = _members_before(value, target, key)
    for n, match in enumerate(members.finditer(text, base)):
        if n == seen:
            return match.start()
    return base


def _members_before(value: Any, target: Loc, key: str) -> int:
    """How many members named `key` come before the member at `target` in document order (all of
    them when there is none there). A loop with its own stack and no path per node: a deeply nested
    value costs one step per node, not one per node and level."""
    seen = 0
    # (node, the name it is held under or None, how many leading parts of `target` its path matches)
    stack: list[tuple[Any, str | None, int]] = [(value, None, 0)]
    while stack:
        node, name, matched = stack.pop()
        if name is not None:
            if matched == len(target):
                break
            if name == key:
                seen += 1
        if isinstance(node, dict):
            stack.extend((item, k, _extend(matched, target, k)) for k, item in reversed(node.items()))
        elif isinstance(node, list):
            stack.extend((node[i], None, _extend(matched, target, i)) for i in range(len(node) - 1, -1, -1))
    return seen


def _extend(matched: int, target: Loc, part: int | str) -> int:
    """-1 once a path leaves `target`; otherwise how many leading parts of `target` it matches."""
    if matched < 0 or matched >= len(target) or target[matched] != part:
        return -1
    return matched + 1


def first_error(exc: ValidationError) -> tuple[Loc, str]:
    error = exc.errors(include_url=False)[0]
    loc = tuple(p for p in error["loc"] if isinstance(p, int | str))
    return loc, error["msg"]


def schema_error(exc: ValidationError, text: str, value: Any, base: int, fmt: str) -> ParseError:
    """The first problem pydantic found, with its field path and where that field sits in the text."""
    loc, message = first_error(exc)
    count = exc.error_count()
    more = f" (and {count - 1} more problem(s))" if count > 1 else ""
    return ParseError(
        message + more, offset=locate(text, value, loc, base), path=format_path(loc) or None, format=fmt
    )


def incomplete_error(text: str, found: Extracted, fmt: str) -> ParseError:
    """The object stopped early and what was complete is not a whole judgment."""
    if found.hit_end:
        return TruncatedOutput(
            f"output ends before the judgment is complete: {found.reason}",
            offset=found.stop_offset,
            partial_text=text,
            format=fmt,
        )
    return ParseError(f"malformed JSON: {found.reason}", offset=found.stop_offset, format=fmt)


def prune(value: Any, model: type[BaseModel], notes: list[str], path: str = "") -> Any:
    """Drop keys the model does not know (lenient reading), recording each dropped key in `notes`."""
    if not isinstance(value, dict):
        return value
    nested = _nested_models(model)
    kept: dict[str, Any] = {}
    for key, item in value.items():
        if key not in nested:
            notes.append(f"dropped unknown key {path + key!r}")
            continue
        inner = nested[key]
        if inner is None:
            kept[key] = item
        elif isinstance(item, list):
            kept[key] = [prune(x, inner, notes, f"{path}{key}[{i}].") for i, x in enumerate(item)]
        else:
            kept[key] = prune(item, inner, notes, f"{path}{key}.")
    return kept


@functools.cache
def _nested_models(model: type[BaseModel]) -> dict[str, type[BaseModel] | None]:
    """Each field of `model`, mapped to the model its values hold (None for plain values)."""
    return {name: _model_in(field.annotation) for name, field in model.model_fields.items()}


def _model_in(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    origin = typing.get_origin(annotation)
    if origin in (list, typing.Union, types.UnionType):
        for arg in typing.get_args(annotation):
            found = _model_in(arg)
            if found is not None:
                return found
    return None
