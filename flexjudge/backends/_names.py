"""Unique criterion names, enforced while decoding.

No grammar can say "differs from the strings before it" about free text, so this runs beside the engine's
mask: each row's output is followed as it grows (compact JSON, the shape the judgment constraints fix), and
while a criterion name is open, the tokens that would close it as a repeat of an earlier criterion name of
the same dimension, or as a name without a single word character, are masked out. Names are compared as
`check` compares them (`canonical_name`: case, punctuation and enumerators aside). Nothing else is
touched; if masking would leave a row no token at all (a name at its length bound), that row is left as it
is and `check` reports the repeat.
"""

from __future__ import annotations

import json
import re
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from flexjudge.anchors import _canonical  # the unmemoised form: trial names must not fill the memo
from flexjudge.grammar import WINNER_AFTER

if TYPE_CHECKING:
    import torch

_PARTIAL_ESCAPE = re.compile(r"\\(u[0-9a-fA-F]{0,3})?$")
# An enumerator ("dimension iv. ") can reach this far into a name; past it, a name whose words are not
# the start of an earlier name's can no longer become it.
_ENUMERATOR_REACH = 24


@dataclass(frozen=True)
class Closers:
    """Per tokenizer: each token's text, and the tokens that contain a quote with the text before it."""

    texts: list[str]
    quoted: dict[str, list[int]]
    """Text before the first quote -> the tokens that would end a JSON string after that text."""


_cache: dict[tuple[Any, ...], Closers] = {}
_lock = threading.Lock()


def closers(key: tuple[Any, ...], texts: list[str]) -> Closers:
    """The `Closers` of a tokenizer whose token texts (by id) are `texts`; built once per `key`."""
    with _lock:
        if key not in _cache:
            quoted: dict[str, list[int]] = {}
            for token_id, text in enumerate(texts):
                before, quote, _ = text.partition('"')
                if quote and "\\" not in before:  # a backslash could escape the quote: left alone
                    quoted.setdefault(before, []).append(token_id)
            _cache[key] = Closers(texts=texts, quoted=quoted)
        return _cache[key]


class _Cursor:
    """Where a row's compact JSON output stands: the open containers, and the string being written."""

    def __init__(self) -> None:
        self.stack: list[list[Any]] = []  # ["{", current key] or ["[", array key, names closed so far]
        self.in_string = self.escape = self.is_key = False
        self.buffer: list[str] = []
        self.expect_key = False

    def feed(self, text: str) -> None:
        for char in text:
            if self.in_string:
                if self.escape:
                    self.escape = False
                elif char == "\\":
                    self.escape = True
                elif char == '"':
                    self.in_string = False
                    self._closed("".join(self.buffer))
                    continue
                self.buffer.append(char)
            elif char == '"':
                self.in_string, self.buffer = True, []
                self.is_key = self.expect_key
            elif char == "{":
                self.stack.append(["{", None])
                self.expect_key = True
            elif char == "[":
                parent = self.stack[-1] if self.stack else None
                self.stack.append(["[", parent[1] if parent and parent[0] == "{" else None, []])
                self.expect_key = False
            elif char in "}]":
                if self.stack:
                    self.stack.pop()
                self.expect_key = False
            elif char == ",":
                self.expect_key = bool(self.stack) and self.stack[-1][0] == "{"
            elif char == ":":
                self.expect_key = False

    def _names(self) -> list[str] | None:
        """The names closed so far in the criteria array around the current object's "name" value."""
        if len(self.stack) < 2 or self.is_key:
            return None
        top, below = self.stack[-1], self.stack[-2]
        if top[0] == "{" and top[1] == "name" and below[0] == "[" and below[1] in WINNER_AFTER:
            names: list[str] = below[2]
            return names
        return None

    def _closed(self, raw: str) -> None:
        if self.is_key:
            if self.stack and self.stack[-1][0] == "{":
                self.stack[-1][1] = raw
            return
        names = self._names()
        if names is not None:
            names.append(_canonical(_decoded(raw)))

    def open_name(self) -> tuple[str, list[str]] | None:
        """(the open criterion name so far, the earlier names of its dimension), or None."""
        if not self.in_string or self.escape:
            return None
        names = self._names()
        raw = "".join(self.buffer)
        if names is None or _PARTIAL_ESCAPE.search(raw):
            return None
        return _decoded(raw), names


def _decoded(raw: str) -> str:
    try:
        value = json.loads(f'"{raw}"')
    except ValueError:
        return raw
    return value if isinstance(value, str) else raw


def _letters(name: str) -> str:
    return "".join(c for c in name if c.isalnum())


class NameGuard:
    """One cursor per batch row; `feed` each accepted token, `restrict` each filled mask."""

    def __init__(self, table: Closers, batch: int) -> None:
        self.table = table
        self.cursors = [_Cursor() for _ in range(batch)]
        self.masked = 0
        """Closing tokens masked out so far, all rows together."""

    def feed(self, row: int, token: int) -> None:
        if token < len(self.table.texts):
            self.cursors[row].feed(self.table.texts[token])

    def restrict(self, bitmask: torch.Tensor, rows: list[int]) -> None:
        for row in rows:
            state = self.cursors[row].open_name()
            if state is not None:
                self._restrict_row(bitmask[row].numpy(), *state)

    def _restrict_row(self, words: Any, so_far: str, earlier: list[str]) -> None:
        taken = set(earlier) | {""}
        if len(so_far) > _ENUMERATOR_REACH:
            start = _letters(_canonical(so_far))
            if not any(_letters(name).startswith(start) for name in taken if name):
                return  # past any enumerator, and no earlier name starts this way: nothing can repeat
        cleared = []
        for before, token_ids in self.table.quoted.items():
            if _canonical(so_far + before) not in taken:
                continue
            for token_id in token_ids:
                word, bit = token_id >> 5, 1 << (token_id & 31)
                if int(words[word]) & bit:
                    words[word] = _as_int32(int(words[word]) & ~bit)
                    cleared.append((word, bit))
        if cleared and not words.any():  # nothing left to write: undo, and let `check` report it
            for word, bit in cleared:
                words[word] = _as_int32(int(words[word]) | bit)
            return
        self.masked += len(cleared)


def _as_int32(value: int) -> int:
    value &= 0xFFFFFFFF
    return value - (1 << 32) if value & 0x80000000 else value
