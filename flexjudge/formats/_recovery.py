"""Find the JSON object in what a real judge emitted, and read as much of it as is really there.

Only the lenient path comes here: clean text is read by the format's fast path first.
A damaged or truncated object is read member by member; a member whose value does not end
inside the text is dropped, never guessed, so a verdict can only come from text that holds it whole.
"""

from __future__ import annotations

import gc
import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from json.decoder import scanstring  # type: ignore[attr-defined]
from typing import Any

_JSON_FENCE = re.compile(r"```[ \t]*(?:json|jsonc)[ \t]*\r?\n?", re.I)
_ANY_FENCE = re.compile(r"```[ \t]*\w*[ \t]*\r?\n?")
_OPENING_KEY = re.compile(r'\{\s*"([^"\\]{1,64})"\s*:')
# Bounded digits: Python refuses int() beyond 4300 digits, and no judgment needs more than a few.
_NUMBER = re.compile(r"-?(?:0|[1-9]\d{0,99})(?:\.\d{1,100})?(?:[eE][-+]?\d{1,3})?")
_VERDICT_KEYS = ("winner", "cat_winner", "verdict")
_WS_RUN = re.compile(r"[ \t\n\r]*")  # JSON's whitespace, skipped in one C call instead of a loop per char
_LITERALS = {"true": True, "false": False, "null": None}


@contextmanager
def paused_gc() -> Iterator[None]:
    """No cyclic garbage collection while a C decoder builds a tree of containers.

    JSON builds no cycles, yet every collection that runs mid-decode walks the whole young tree again:
    on deeply nested arrays that made `json.loads` several times slower and its cost grow faster than
    the text. A collector the caller switched off stays off.
    """
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


@dataclass
class Extracted:
    """A JSON object read leniently out of a larger text."""

    value: dict[str, Any]
    start: int
    """Offset of the object's opening brace."""
    complete: bool
    """True when the object closed properly."""
    stop_offset: int
    """Where reading stopped: just past the object, or at the damage, or at the end of the text."""
    hit_end: bool
    """True when the text ended before the object did (the usual sign of a token budget)."""
    reason: str = ""
    """Why reading stopped early, when it did."""
    notes: list[str] = field(default_factory=list)


class NoObject(Exception):
    """The text holds no JSON object at all."""

    def __init__(self, reason: str, offset: int) -> None:
        super().__init__(reason)
        self.reason = reason
        self.offset = offset


def extract_object(text: str, keys: frozenset[str] = frozenset()) -> Extracted:
    """Locate the judgment object (inside a fence or amid prose) and read it leniently.

    `keys` are member names the judgment object may open with: braces in prose or code before it
    ("{placeholders}", a Python dict) are passed over. Raises `NoObject` when there is no object, or
    when the text holds two verdicts that disagree (a duplicated winner key, or a second judgment).
    """
    with paused_gc():  # every read below builds trees of containers, some of them more than once
        return _extract(text, keys)


def _extract(text: str, keys: frozenset[str]) -> Extracted:
    notes: list[str] = []
    fence = _JSON_FENCE.search(text)
    if fence is None:
        plain = _ANY_FENCE.search(text)  # a bare fence counts only when it opens before any brace
        brace = text.find("{")
        if plain is not None and (brace < 0 or plain.start() < brace):
            fence = plain
    search_from = fence.end() if fence is not None else 0
    fence_end: int | None = None
    if fence is not None:
        close = text.find("```", search_from)
        fence_end = close if close >= 0 else None
        notes.append("read the object inside a code fence" + ("" if close >= 0 else " that was never closed"))
    start = _object_start(text, search_from, keys)
    if start is None:
        raise NoObject("no JSON object found", len(text))
    # No judgment opens after `start` when the search for one fell back to a bare brace: the search
    # for a second judgment would only scan the same text again.
    keys_after = keys if _OPENING_KEY.match(text, start) else frozenset()
    if text[search_from:start].strip():
        notes.append(f"skipped {start - search_from} characters of prose before the object")
    try:
        try:
            value, end = _decoder(notes).raw_decode(text, start)
        except (json.JSONDecodeError, ValueError):  # ValueError: a number Python will not convert
            partial = _read_partial(text, start, fence_end, notes)
            if not partial.hit_end:  # a repaired or damaged object may still be followed by another
                _check_later_objects(text, partial.stop_offset, partial.value, keys_after, [])
            return partial
    except NoObject as conflict:
        raise NoObject(conflict.reason, conflict.offset or start) from None
    _check_later_objects(text, end, value, keys_after, notes)
    return Extracted(value, start, True, end, False, notes=notes)


def _object_start(text: str, position: int, keys: frozenset[str]) -> int | None:
    """The first brace that opens a JSON object (a quoted member name follows), else the first brace.

    With `keys`, braces in prose or code ("{placeholders}", a Python dict) are passed over; the
    fallback keeps an object cut right after its brace readable as a truncation.
    """
    first = text.find("{", position)
    if first < 0 or not keys:
        return first if first >= 0 else None
    # One search, not a Python step per brace: "{{{{..." would otherwise cost a find and a match each.
    opening = _OPENING_KEY.search(text, first)
    return opening.start() if opening is not None else first


def _put(out: dict[str, Any], key: str, item: Any, notes: list[str]) -> None:
    """Add one member; a repeated verdict key is a conflict, any other repeat keeps the last and says so.

    Keys arrive decoded, so a name spelled with escapes ("winn\\u0065r") is the name it spells.
    """
    if key in out:
        if key in _VERDICT_KEYS:
            raise NoObject(f"the key {key!r} appears twice in one object", 0)
        notes.append(f"key {key!r} appears twice; the last value is kept")
    out[key] = item


def _decoder(notes: list[str]) -> json.JSONDecoder:
    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, item in items:
            _put(out, key, item, notes)
        return out

    return json.JSONDecoder(strict=False, object_pairs_hook=pairs)


def _verdicts(value: Any, path: tuple[Any, ...] = ()) -> dict[tuple[Any, ...], Any]:
    """Every verdict-keyed value in `value`, by its path: what two judgments must agree on."""
    found: dict[tuple[Any, ...], Any] = {}
    if isinstance(value, dict):
        for key, item in value.items():
            if key in _VERDICT_KEYS and not isinstance(item, dict | list):
                found[(*path, key)] = item
            found.update(_verdicts(item, (*path, key)))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            found.update(_verdicts(item, (*path, i)))
    return found


def _check_later_objects(
    text: str, end: int, value: dict[str, Any], keys: frozenset[str], notes: list[str]
) -> None:
    """Refuse when another judgment follows whose verdicts differ from `value`'s or cannot be read.

    A later judgment (an object opening with one of `keys`) is read as leniently as the first, damaged
    or cut; it must state an overall verdict, and every verdict it states must equal the first's.
    """
    tail = text[end:].strip()
    if not tail or tail == "```":
        return
    notes.append("ignored text after the object")
    if not keys:
        return
    mine = _verdicts(value)
    position = end
    while True:
        opening = _OPENING_KEY.search(text, position)  # the next brace that opens a judgment
        if opening is None:
            return
        second = opening.start()
        try:
            other = _read_any(text, second)
        except NoObject as conflict:
            raise NoObject(f"a second judgment follows: {conflict.reason}", second) from None
        theirs = _verdicts(other.value)
        if not any(len(path) == 1 or path[0] == "verdict" for path in theirs):
            raise NoObject("a second judgment follows whose overall winner cannot be read", second)
        if any(mine.get(path, _MISSING) != item for path, item in theirs.items()):
            raise NoObject("two judgments in the text name different winners", second)
        position = max(other.stop_offset, second + 1)


_MISSING = object()


def _read_any(text: str, start: int) -> Extracted:
    """The object at `start`, whole or as far as it can be read."""
    notes: list[str] = []
    try:
        value, end = _decoder(notes).raw_decode(text, start)
    except (json.JSONDecodeError, ValueError):
        return _read_partial(text, start, None, notes)
    return Extracted(value, start, True, end, False, notes=notes)


class _Stop(Exception):
    def __init__(self, offset: int, reason: str, hit_end: bool) -> None:
        self.offset = offset
        self.reason = reason
        self.hit_end = hit_end


def _read_partial(text: str, start: int, fence_end: int | None, notes: list[str]) -> Extracted:
    # A closing fence right where the JSON stops means the JSON itself was cut short; but a fence inside
    # a string cuts it falsely, so an object that ends at the fence is read again without that limit.
    if fence_end is not None:
        fenced = _read_partial(text[:fence_end], start, None, list(notes))
        if not fenced.hit_end:
            return fenced
        unfenced = _read_partial(text, start, None, list(notes))
        return unfenced if unfenced.complete else fenced
    reader = _Reader(text, notes)
    value: dict[str, Any] = {}
    i = start + 1
    try:
        while True:
            i = reader.skip(i)
            if i >= reader.n:
                raise _Stop(i, "the object is not closed", True)
            if text[i] == "}":
                break
            if text[i] != '"':
                raise _Stop(i, f"expected a member name, found {text[i]!r}", False)
            key, i = reader.string(i)
            i = reader.expect(i, ":")
            member, i = reader.value(i)
            i = reader.skip(i)
            # A member counts only when what follows shows it ended: "winner": 1 or 2 is not 1, and a
            # number where the text stops may be cut short (2 of 25). Words, digits or quotes after it
            # drop it whole; a stray closing bracket is a damaged tail after a finished member.
            if i < reader.n and text[i] not in ",}":
                if text[i] == "]":
                    _put(value, key, member, notes)
                raise _Stop(i, f"expected ',' or '}}', found {text[i]!r}", False)
            if i >= reader.n and _may_be_cut(member):
                raise _Stop(i, "the text ends right after a number", True)
            if i < reader.n and text[i] == ",":
                after = reader.skip(i + 1)  # "winner": 1,2 lists two: a comma must lead to a member
                if after < reader.n and text[after] not in '"}':
                    raise _Stop(after, f"expected a member name after ',', found {text[after]!r}", False)
                i = after  # the whitespace is skipped once
            _put(value, key, member, notes)
    except _Stop as stop:
        notes.append(
            f"read {len(value)} complete member(s) before offset {stop.offset}: {stop.reason}"
            + (" (text ended)" if stop.hit_end else "")
        )
        return Extracted(value, start, False, stop.offset, stop.hit_end, stop.reason, notes)
    notes.append("repaired the object (trailing commas or similar)")
    return Extracted(value, start, True, i + 1, False, notes=notes)


def _may_be_cut(member: Any) -> bool:
    """A number (or literal) read up to the end of the text: its last digits may be missing."""
    return isinstance(member, (int, float)) and not isinstance(member, bool)


class _Refused(Exception):
    """A value the C scanner reads but this reader does not (NaN, Infinity, an overlong number)."""


def _refuse(word: str) -> Any:
    raise _Refused(word)


def _bounded(convert: Any) -> Any:
    def read(digits: str) -> Any:
        if _NUMBER.fullmatch(digits) is None:
            raise _Refused(digits)
        return convert(digits)

    return read


MAX_DEPTH = 16
"""Deepest nesting the step-by-step reader follows into damaged JSON (a judgment nests five levels)."""


class _Reader:
    """A forgiving JSON value reader that reports exactly where and why it stops.

    A nested object or array is first read whole by the C scanner, held to exactly what this reader
    accepts (numbers as `_NUMBER` bounds them, no NaN or Infinity, repeats through `_put`); only one
    that fails there is read here step by step, so undamaged nesting costs what `json.loads` costs
    instead of a Python call per bracket.
    """

    def __init__(self, text: str, notes: list[str]) -> None:
        self.text = text
        self.n = len(text)
        self.notes = notes
        self._scanned: list[str] = []  # a C read's notes, kept only when the read succeeds
        self.depth = 1  # containers being read step by step, the judgment's own object included

        def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
            out: dict[str, Any] = {}
            for key, item in items:
                _put(out, key, item, self._scanned)
            return out

        decoder = json.JSONDecoder(
            strict=False,
            object_pairs_hook=pairs,
            parse_int=_bounded(int),
            parse_float=_bounded(float),
            parse_constant=_refuse,
        )
        self._scan = decoder.scan_once  # type: ignore[attr-defined]  # set by JSONDecoder.__init__

    def _whole(self, i: int) -> tuple[Any, int] | None:
        """The container at `i` read by the C scanner, or None when it is damaged or cut there."""
        self._scanned = []
        try:
            found: tuple[Any, int] = self._scan(self.text, i)
        except (json.JSONDecodeError, StopIteration, _Refused, ValueError):
            return None  # read again step by step, which says where and why it stops
        self.notes.extend(self._scanned)
        return found

    def skip(self, i: int) -> int:
        if i >= self.n:  # past the end (an object that opens beyond a closing fence): stay there
            return i
        return _WS_RUN.match(self.text, i).end()  # type: ignore[union-attr]  # `*` matches everywhere

    def expect(self, i: int, char: str) -> int:
        i = self.skip(i)
        if i >= self.n:
            raise _Stop(i, f"expected {char!r}", True)
        if self.text[i] != char:
            raise _Stop(i, f"expected {char!r}, found {self.text[i]!r}", False)
        return i + 1

    def string(self, i: int) -> tuple[str, int]:
        try:
            value, end = scanstring(self.text, i + 1, False)
        except json.JSONDecodeError as exc:
            # No closing quote before the end: the text was cut inside this string (even mid-escape).
            cut = exc.msg.startswith("Unterminated") or self.text.find('"', exc.pos) < 0
            raise _Stop(exc.pos, exc.msg, cut) from None
        return value, end

    def value(self, i: int) -> tuple[Any, int]:
        i = self.skip(i)
        if i >= self.n:
            raise _Stop(i, "expected a value", True)
        char = self.text[i]
        if char == '"':
            return self.string(i)
        if char == "{" or char == "[":
            whole = self._whole(i)
            if whole is not None:
                return whole
            # Each damaged level is scanned again from its start: bounding the depth bounds that cost
            # at MAX_DEPTH times the text (a judgment nests five levels deep).
            if self.depth >= MAX_DEPTH:
                raise _Stop(i, f"nested deeper than {MAX_DEPTH} levels", False)
            self.depth += 1
            try:
                return self._object(i) if char == "{" else self._array(i)
            finally:
                self.depth -= 1
        number = _NUMBER.match(self.text, i)
        if number is not None:
            end = number.end()
            if end >= self.n:  # "7" at the very end may be the start of "70"
                raise _Stop(end, "number cut off", True)
            if self.text[end].isdigit():
                raise _Stop(i, "number too long", False)
            text = number.group()
            return (float(text) if any(c in text for c in ".eE") else int(text)), end
        for word, literal in _LITERALS.items():
            if self.text.startswith(word, i):
                return literal, i + len(word)
            if word.startswith(self.text[i:]):
                raise _Stop(self.n, f"{word} cut off", True)
        raise _Stop(i, f"unexpected character {char!r}", False)

    def _object(self, i: int) -> tuple[dict[str, Any], int]:
        result: dict[str, Any] = {}
        i += 1
        while True:
            i = self.skip(i)
            if i >= self.n:
                raise _Stop(i, "object not closed", True)
            if self.text[i] == "}":
                return result, i + 1
            if self.text[i] != '"':
                raise _Stop(i, f"expected a member name, found {self.text[i]!r}", False)
            key, i = self.string(i)
            i = self.expect(i, ":")
            item, i = self.value(i)
            _put(result, key, item, self.notes)
            i = self.skip(i)
            if i < self.n and self.text[i] == ",":
                i += 1
            elif i >= self.n:
                raise _Stop(i, "object not closed", True)
            elif self.text[i] != "}":
                raise _Stop(i, f"expected ',' or '}}', found {self.text[i]!r}", False)

    def _array(self, i: int) -> tuple[list[Any], int]:
        result: list[Any] = []
        i += 1
        while True:
            i = self.skip(i)
            if i >= self.n:
                raise _Stop(i, "array not closed", True)
            if self.text[i] == "]":
                return result, i + 1
            item, i = self.value(i)
            result.append(item)
            i = self.skip(i)
            if i < self.n and self.text[i] == ",":
                i += 1
            elif i >= self.n:
                raise _Stop(i, "array not closed", True)
            elif self.text[i] != "]":
                raise _Stop(i, f"expected ',' or ']', found {self.text[i]!r}", False)
