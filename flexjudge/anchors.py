"""The predefined anchor dimensions of each method, and how a written name is matched to one.

Real judges decorate names ("A. Semantic Alignment & Accuracy", "**Aesthetics**:"), so names are compared
in a canonical form: no enumerator prefix, no markdown or punctuation, "&" read as "and", case-folded.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Literal

Modality = Literal["image", "video"]
Scoring = Literal["split", "rating"]

FLEX_ANCHORS: dict[Modality, tuple[str, str, str]] = {
    "image": ("Semantic Alignment & Accuracy", "Image Quality & Realism", "Aesthetics & Artistry"),
    "video": (
        "Semantic Alignment & Accuracy",
        "Video Quality & Dynamic Realism",
        "Narrative, Aesthetics & Cinematography",
    ),
}
"""UnifiedReward-Flex: three categories that open every judgment, in this order."""

THINK_ANCHORS: dict[Modality, tuple[str, str, str]] = {
    "image": ("Semantic consistency", "Aesthetics", "Authenticity"),
    "video": ("Semantic consistency", "Temporal coherence", "Authenticity"),
}
"""UnifiedReward-Think: the three core dimensions, scored independently from 1 to 10."""


MAX_GENERATED = 2
"""At most this many generated dimensions follow the anchors."""


def anchors(modality: Modality, scoring: Scoring = "split") -> tuple[str, str, str]:
    """The anchor names a judgment of this modality and scoring scheme must open with."""
    return (FLEX_ANCHORS if scoring == "split" else THINK_ANCHORS)[modality]


_ENUMERATOR = re.compile(
    r"^(?:(?:category|dimension|dim|part)\s+)?(?:[a-z]|\d{1,2}|[ivx]{1,4})\s*[.):\-]\s*(?=\w)"
)
_NOT_WORD = re.compile(r"[^\w]+")


_CANONICAL: dict[str, str] = {}
_CANONICAL_MAX = 16384  # names held; past it (or past the character budget) the memo starts over
_CANONICAL_MAX_CHARS = 1 << 20  # characters held, keys and values together: a few MB at most
_CANONICAL_LONGEST = 128  # real criterion names are short; a longer one is computed, not remembered
_canonical_chars = 0
_last_long: tuple[str, str] = ("", "")


def canonical_name(name: str) -> str:
    """Lower-case words of `name` without enumerator, markdown or punctuation ("A. X & Y:" -> "x and y")."""
    # A plain dict memo: checking a judgment looks up every criterion name, and a dict hit costs less
    # than an lru_cache hit. It is bounded in entries and in characters, and skips long names, so a
    # stream of huge or endlessly new names (hostile traces) cannot grow it past a few MB.
    global _canonical_chars, _last_long
    found = _CANONICAL.get(name)
    if found is None:
        if len(name) > _CANONICAL_LONGEST:
            # Not remembered, but `check` asks about the same long name several times in a row: the
            # last one is kept by identity (one slot), so a huge hostile name is canonicalised once.
            last = _last_long  # one read: another thread may replace the slot
            if last[0] is not name:
                last = _last_long = (name, _canonical(name))
            return last[1]
        found = _canonical(name)
        if len(_CANONICAL) >= _CANONICAL_MAX or _canonical_chars >= _CANONICAL_MAX_CHARS:
            _CANONICAL.clear()
            _canonical_chars = 0
        _CANONICAL[name] = found
        _canonical_chars += len(name) + len(found)
    return found


def canonical_names(names: list[str]) -> list[str]:
    """`canonical_name` of each name; one C-level pass over the memo when all are in it (the usual case)."""
    found = list(map(_CANONICAL.get, names))
    if None in found:
        return [canonical_name(name) for name in names]
    return found  # type: ignore[return-value]  # no None in it


def _canonical(name: str) -> str:
    text = name.strip().strip("*_#`").strip().casefold()
    text = _ENUMERATOR.sub("", text, count=1)
    text = text.replace("&", " and ")
    return " ".join(_NOT_WORD.sub(" ", text).split())


@lru_cache(maxsize=64)
def canonical_anchors(modality: Modality, scoring: Scoring) -> tuple[str, ...]:
    """`canonical_name` of each anchor of this modality and scoring scheme, in order."""
    return tuple(canonical_name(a) for a in anchors(modality, scoring))


def anchor_position(name: str, modality: Modality, scoring: Scoring = "split") -> int | None:
    """0-based index of the anchor that `name` denotes, or None when it is not an anchor."""
    # A dict lookup: `tuple.index` raised ValueError for every generated dimension, and an exception
    # cost more than the rest of this call (every flex parse asks once per category).
    return _POSITIONS[modality, scoring].get(canonical_name(name))


_POSITIONS: dict[tuple[Modality, Scoring], dict[str, int]] = {
    (modality, scoring): {name: i for i, name in enumerate(canonical_anchors(modality, scoring))}
    for modality in ("image", "video")
    for scoring in ("split", "rating")
}
