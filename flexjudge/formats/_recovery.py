"""Find the JSON object in what a real judge emitted, and read as much of it as is really there.

Only the lenient path comes here: clean text is read by the format's fast path first.
A damaged or truncated object is read member by member; a member whose value does not end
inside the text is dropped, never guessed, so a verdict can only come from text that holds it whole.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from json.decoder import scanstring  # type: ignore[attr-defined]
from typing import Any

_FENCE_OPEN = re.compile(r"```[ \t]*(?:json|JSON|jsonc|javascript)?[ \t]*\r?\n?")
_NUMBER = re.compile(r"-?(?:0|[1-9]\d*)(?:\.\d+)?(?:[eE][-+]?\d+)?")
_WS = " \t\n\r"
_LITERALS = {"true": True, "false": False, "null": None}
_DECODER = json.JSONDecoder(strict=False)


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


def extract_object(text: str) -> Extracted:
    """Locate the judgment object (inside a fence or amid prose) and read it leniently."""
    notes: list[str] = []
    search_from = 0
    fence_end: int | None = None
    fence = _FENCE_OPEN.search(text)
    brace = text.find("{")
    if fence is not None and 0 <= brace < fence.start():
        fence = None  # a fence after the object opens is inside a string, not around the object
    if fence is not None:
        search_from = fence.end()
        close = text.find("```", search_from)
        fence_end = close if close >= 0 else None
        notes.append("read the object inside a code fence" + ("" if close >= 0 else " that was never closed"))
    start = text.find("{", search_from)
    if start < 0:
        raise NoObject("no JSON object found", len(text))
    if text[:start].strip() and fence is None:
        notes.append(f"skipped {start} characters of prose before the object")
    try:
        value, end = _DECODER.raw_decode(text, start)
    except json.JSONDecodeError:
        return _read_partial(text, start, fence_end, notes)
    if not isinstance(value, dict):  # pragma: no cover - raw_decode at "{" always yields a dict
        raise NoObject("the JSON value is not an object", start)
    tail = text[end:].strip()
    if tail and tail != "```":
        notes.append("ignored text after the object")
    return Extracted(value, start, True, end, False, notes=notes)


class _Stop(Exception):
    def __init__(self, offset: int, reason: str, hit_end: bool) -> None:
        self.offset = offset
        self.reason = reason
        self.hit_end = hit_end


def _read_partial(text: str, start: int, fence_end: int | None, notes: list[str]) -> Extracted:
    # A closing fence right where the JSON stops means the JSON itself was cut short.
    limit = fence_end if fence_end is not None else len(text)
    reader = _Reader(text[:limit])
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
            value[key] = member
            i = reader.skip(i)
            if i < reader.n and text[i] == ",":
                i += 1
            elif i < reader.n and text[i] != "}":
                raise _Stop(i, f"expected ',' or '}}', found {text[i]!r}", False)
    except _Stop as stop:
        notes.append(
            f"read {len(value)} complete member(s) before offset {stop.offset}: {stop.reason}"
            + (" (text ended)" if stop.hit_end else "")
        )
        return Extracted(value, start, False, stop.offset, stop.hit_end, stop.reason, notes)
    notes.append("repaired the object (trailing commas or similar)")
    return Extracted(value, start, True, i + 1, False, notes=notes)


class _Reader:
    """A forgiving JSON value reader that reports exactly where and why it stops."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.n = len(text)

    def skip(self, i: int) -> int:
        while i < self.n and self.text[i] in _WS:
            i += 1
        return i

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
            cut = exc.msg.startswith("Unterminated") or '"' not in self.text[exc.pos :]
            raise _Stop(exc.pos, exc.msg, cut) from None
        return value, end

    def value(self, i: int) -> tuple[Any, int]:
        i = self.skip(i)
        if i >= self.n:
            raise _Stop(i, "expected a value", True)
        char = self.text[i]
        if char == '"':
            return self.string(i)
        if char == "{":
            return self._object(i)
        if char == "[":
            return self._array(i)
        number = _NUMBER.match(self.text, i)
        if number is not None:
            end = number.end()
            if end >= self.n:  # "7" at the very end may be the start of "70"
                raise _Stop(end, "number cut off", True)
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
            result[key], i = self.value(i)
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
