"""Unique criterion names, enforced while decoding.

No grammar can say "differs from the strings before it" about free text, so this runs beside the engine's
mask: each row's output is followed as it grows (compact JSON, the shape the constraints fix), and while
the `name` of an item of an array named in the key set (`Constraint.unique_names`: "dims" for flex,
"criteria" for native pairs and pointwise judgments) is open, the tokens that would close it as a repeat of
an earlier name of the same array, or as a name without a single word character, are masked out. The
guard knows no judgment fields of its own: the constraint says which arrays it watches. Names are compared as
`check` compares them (`canonical_name`: case, punctuation and enumerators aside). Nothing else is
touched; if masking would leave a row no token at all (a name at its length bound), that row is left as it
is and `check` reports the repeat.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from flexjudge.anchors import _canonical  # the unmemoised form: trial names must not fill the memo
from flexjudge.backends._cache import BoundedCache

if TYPE_CHECKING:
    import torch

# An enumerator ("dimension iv. ") can reach this far into a name; past it, a name whose words are not
# the start of an earlier name's can no longer become it.
_ENUMERATOR_REACH = 24
_QUOTE, _BACKSLASH = ord('"'), ord("\\")
_TRAILING_ESCAPE = re.compile(rb"(\\+)(u[0-9a-fA-F]{0,3})?$")


@dataclass(frozen=True)
class Closers:
    """Per tokenizer: each token's bytes, and the tokens that contain a quote with the bytes before it."""

    token_bytes: list[bytes]
    quoted: dict[bytes, list[int]]
    """Bytes before the first quote -> the tokens that would end a JSON string after them."""
    paired: list[int]
    """Tokens with two quotes or more: they can open a name and close it ('"reason"')."""
    wordless: list[int]
    """ASCII tokens with no quote, letter or digit ("-", "],"): they leave a name's words as they are."""


_cache: BoundedCache[tuple[Any, ...], Closers] = BoundedCache(4)  # one per tokenizer in use


def closers(key: tuple[Any, ...], read_tokens: Callable[[], list[bytes]]) -> Closers:
    """The `Closers` of a tokenizer whose tokens' bytes (by id) `read_tokens` lists; read and built once
    per `key` (a pass over the whole vocabulary, not repeated for a second backend)."""

    def build() -> Closers:
        token_bytes = read_tokens()
        quoted: dict[bytes, list[int]] = {}
        for token_id, data in enumerate(token_bytes):
            before, quote, _ = data.partition(b'"')
            if quote and b"\\" not in before:  # a backslash could escape the quote: left alone
                quoted.setdefault(before, []).append(token_id)
        paired = [token_id for token_id, data in enumerate(token_bytes) if data.count(b'"') >= 2]
        wordless = [
            token_id
            for token_id, data in enumerate(token_bytes)
            if data and data.isascii() and b'"' not in data and not any(chr(b).isalnum() for b in data)
        ]
        return Closers(token_bytes=token_bytes, quoted=quoted, paired=paired, wordless=wordless)

    return _cache.get_or_build(key, build)[0]


class _Cursor:
    """Where a row's compact JSON output stands: the open containers, and the string being written.
    `keys` names the arrays whose items' names are watched.

    It reads bytes: a token may hold part of a character, and JSON's structure is all ASCII, which no
    byte of a multi-byte UTF-8 character can be mistaken for."""

    def __init__(self, keys: frozenset[str]) -> None:
        self.keys = keys
        self.stack: list[list[Any]] = []  # ["{", current key] or ["[", array key, names closed so far]
        self.in_string = self.escape = self.is_key = False
        self.buffer = bytearray()
        self.expect_key = False
        self.repeated = False
        """A criterion name closed as a repeat of an earlier one of its dimension, or without a word."""

    def copy(self) -> _Cursor:
        other = _Cursor(self.keys)
        other.stack = [
            [*frame[:2], list(frame[2])] if frame[0] == "[" else list(frame) for frame in self.stack
        ]
        other.in_string, other.escape, other.is_key = self.in_string, self.escape, self.is_key
        other.buffer, other.expect_key = bytearray(self.buffer), self.expect_key
        return other

    def before_name(self) -> bool:
        """Between two criteria, or in a criterion object before its name's value: where one token may
        open a name and close it."""
        if self.in_string or not self.stack:
            return False
        top = self.stack[-1]
        if top[0] == "[":
            return top[1] in self.keys
        below = self.stack[-2] if len(self.stack) > 1 else None
        return below is not None and below[0] == "[" and below[1] in self.keys and top[1] in (None, "name")

    def feed(self, data: bytes) -> None:
        for byte in data:
            if self.in_string:
                if self.escape:
                    self.escape = False
                elif byte == _BACKSLASH:
                    self.escape = True
                elif byte == _QUOTE:
                    self.in_string = False
                    self._closed(bytes(self.buffer))
                    continue
                self.buffer.append(byte)
            elif byte == _QUOTE:
                self.in_string, self.buffer = True, bytearray()
                self.is_key = self.expect_key
            elif byte == 0x7B:  # {
                self.stack.append(["{", None])
                self.expect_key = True
            elif byte == 0x5B:  # [
                parent = self.stack[-1] if self.stack else None
                self.stack.append(["[", parent[1] if parent and parent[0] == "{" else None, []])
                self.expect_key = False
            elif byte in (0x7D, 0x5D):  # } ]
                if self.stack:
                    self.stack.pop()
                self.expect_key = False
            elif byte == 0x2C:  # ,
                self.expect_key = bool(self.stack) and self.stack[-1][0] == "{"
            elif byte == 0x3A:  # :
                self.expect_key = False

    def _names(self) -> list[str] | None:
        """The names closed so far in the criteria array around the current object's "name" value."""
        if len(self.stack) < 2 or self.is_key:
            return None
        top, below = self.stack[-1], self.stack[-2]
        if top[0] == "{" and top[1] == "name" and below[0] == "[" and below[1] in self.keys:
            names: list[str] = below[2]
            return names
        return None

    def _closed(self, raw: bytes) -> None:
        if self.is_key:
            if self.stack and self.stack[-1][0] == "{":
                self.stack[-1][1] = raw.decode("utf-8", "replace")
            return
        names = self._names()
        name = _decoded(raw)
        if names is not None and name is not None:
            canonical = _canonical(name)
            self.repeated |= canonical in names or not canonical
            names.append(canonical)

    def open_name(self) -> tuple[bytes, list[str]] | None:
        """(the open criterion name so far, as written, the earlier names of its dimension), or None while
        an escape or a character is half written."""
        if not self.in_string or self.escape:
            return None
        names = self._names()
        if names is None or _half_escape(self.buffer):
            return None
        return bytes(self.buffer), names


def _half_escape(raw: bytes | bytearray) -> bool:
    match = _TRAILING_ESCAPE.search(raw)
    return match is not None and len(match.group(1)) % 2 == 1


def _decoded(raw: bytes) -> str | None:
    """The string a JSON string body stands for; None while it ends inside a character or an escape."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if "\\" not in text:
        return text  # nothing escaped: the body is the string
    try:
        value = json.loads(f'"{text}"')
    except ValueError:
        return None if _half_escape(raw) else text
    return value if isinstance(value, str) else text


def _letters(name: str) -> str:
    return "".join(c for c in name if c.isalnum())


class NameGuard:
    """One cursor per batch row; `feed` each accepted token, `restrict` each filled mask. `keys`: the JSON
    keys of the arrays whose items' names must stay distinct (`Constraint.unique_names`)."""

    def __init__(self, table: Closers, batch: int, keys: frozenset[str]) -> None:
        self.table = table
        self.cursors = [_Cursor(frozenset(keys)) for _ in range(batch)]
        self.masked = [0] * batch
        """Closing tokens masked out so far, per row."""

    def feed(self, row: int, token: int) -> None:
        if token < len(self.table.token_bytes):
            self.cursors[row].feed(self.table.token_bytes[token])

    def restrict(self, bitmask: torch.Tensor, rows: list[int]) -> None:
        for row in rows:
            cursor = self.cursors[row]
            state = cursor.open_name()
            if state is not None:
                repeats = self._closing_repeats(*state)
            elif cursor.before_name():
                repeats = self._whole_repeats(cursor)
            else:
                continue
            self.masked[row] += _clear(bitmask[row].numpy(), repeats)

    def _closing_repeats(self, so_far: bytes, earlier: list[str]) -> list[int]:
        """While a name is open: the tokens that would close it as a repeat (or without a word)."""
        taken = set(earlier) | {""}
        current = _decoded(so_far)
        if current is None:
            return []  # inside a character: the next token completes it
        start = _letters(_canonical(current))
        # Past any enumerator, with words that no earlier name starts with, nothing can make a repeat.
        if (
            start
            and len(current) > _ENUMERATOR_REACH
            and not any(_letters(name).startswith(start) for name in taken if name)
        ):
            return []
        repeats: list[int] = []
        for before, token_ids in self.table.quoted.items():
            name = _decoded(so_far + before)
            if name is not None and _canonical(name) in taken:
                repeats += token_ids
        if _canonical(current) in taken - {""}:
            # Already an earlier name: punctuation keeps it one ("De" -> "De]," can only close as a repeat,
            # a dead end under a length bound), so the next token must change its words.
            for token_id in self.table.wordless:
                name = _decoded(so_far + self.table.token_bytes[token_id])
                if name is not None and _canonical(name) in taken:
                    repeats.append(token_id)
        return repeats

    def _whole_repeats(self, cursor: _Cursor) -> list[int]:
        """Before a name: the tokens that would write a whole repeated name at once."""
        repeats = []
        for token_id in self.table.paired:
            trial = cursor.copy()
            trial.feed(self.table.token_bytes[token_id])
            if trial.repeated:
                repeats.append(token_id)
        return repeats


def _clear(words: Any, token_ids: list[int]) -> int:
    """Clear the bits of `token_ids` in one row's mask; returns how many were set. If that would leave the
    row no token at all, nothing is cleared (and `check` reports the repeat)."""
    cleared = []
    for token_id in token_ids:
        word, bit = token_id >> 5, 1 << (token_id & 31)
        if int(words[word]) & bit:
            words[word] = _as_int32(int(words[word]) & ~bit)
            cleared.append((word, bit))
    if cleared and not words.any():
        for word, bit in cleared:
            words[word] = _as_int32(int(words[word]) | bit)
        return 0
    return len(cleared)


def _as_int32(value: int) -> int:
    value &= 0xFFFFFFFF
    return value - (1 << 32) if value & 0x80000000 else value
