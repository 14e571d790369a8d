"""Unique criterion names while decoding (`flexjudge.backends._names`): the cursor follows compact JSON
token by token, and the guard masks exactly the closing tokens that would repeat a name."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest

torch = pytest.importorskip("torch")

from flexjudge.backends._names import Closers, NameGuard, _Cursor, _decoded, closers  # noqa: E402

DIMS = frozenset({"dims"})  # the flex format's criteria arrays, as its constraint names them

FLEX = {
    "prompt": "p",
    "categories": [
        {
            "name": "A. Semantic",
            "dims": [
                {"name": "Colour (red)", "reason_1": "x", "reason_2": "y", "score_1": 6, "score_2": 4},
                {"name": 'say "hi"', "reason_1": "x", "reason_2": "y", "score_1": 5, "score_2": 5},
            ],
            "cat_reason": "z",
            "cat_winner": "Image 1",
        },
        {
            "name": "B. Quality",
            "dims": [{"name": "colour RED", "reason_1": "", "reason_2": "", "score_1": 1, "score_2": 9}],
            "cat_reason": "",
            "cat_winner": "Image 2",
        },
    ],
    "reason": "r",
    "winner": "Image 1",
}


def _pieces(text: str, seed: int) -> list[str]:
    rng = random.Random(seed)
    out, i = [], 0
    while i < len(text):
        step = rng.randint(1, 4)
        out.append(text[i : i + step])
        i += step
    return out


@pytest.mark.parametrize("seed", range(5))
def test_cursor_collects_names_per_dimension_whatever_the_token_boundaries(seed: int) -> None:
    text = json.dumps(FLEX, separators=(",", ":"))
    cursor = _Cursor(DIMS)
    seen: list[Any] = []
    for piece in _pieces(text, seed):
        cursor.feed(piece.encode())
        state = cursor.open_name()
        if state is not None:
            so_far = _decoded(state[0])
            if so_far is not None:
                seen.append((so_far, list(state[1])))
    # Only criterion names open (never dimension names, reasons or keys), each with the earlier names of
    # its own dimension, canonicalised; an escaped quote does not close a name.
    expected = {"Colour (red)": [], 'say "hi"': ["colour red"], "colour RED": []}
    matched = set()
    for so_far, earlier in seen:
        if not so_far:
            continue
        (name,) = [n for n in expected if n.startswith(so_far)]
        assert earlier == expected[name], (so_far, earlier)
        matched.add(name)
    assert matched == set(expected)


def _table(texts: list[str | bytes]) -> Closers:
    data = [t if isinstance(t, bytes) else t.encode() for t in texts]
    return closers(("test", tuple(data)), lambda: data)


def _mask_after(texts: list[str | bytes], fed: list[int], keys: frozenset[str] = DIMS) -> list[bool]:
    guard = NameGuard(_table(texts), 1, keys)
    for token in fed:
        guard.feed(0, token)
    bitmask = torch.full((1, (len(texts) + 31) // 32), -1, dtype=torch.int32)
    guard.restrict(bitmask, [0])
    return [bool(int(bitmask[0, t >> 5]) >> (t & 31) & 1) for t in range(len(texts))]


TEXTS: list[str | bytes] = [
    '{"dims":[{"name":"',  # 0
    "Colour",  # 1
    '","reason_1":"a","score_1":5}',  # 2
    ',{"name":"',  # 3
    '"',  # 4  closes now
    'r"',  # 5  "Colou" + "r" -> a repeat
    ' ("',  # 6  "Colour (" -> "colour": a repeat
    "s",  # 7  no quote: always allowed
    '.",',  # 8
    "Colou",  # 9
    '\\"',  # 10 an escaped quote does not close
]


def test_guard_masks_only_the_tokens_that_would_repeat_a_name() -> None:
    allowed = _mask_after(TEXTS, [0, 1, 2, 3, 9])  # second name so far: "Colou"
    assert allowed[5] is False  # "Colour" again
    assert allowed[4] is True and allowed[6] is True  # "Colou" and "Colou (" are new names
    assert allowed[7] and allowed[10] and allowed[1]
    allowed = _mask_after(TEXTS, [0, 1, 2, 3, 1])  # second name so far: "Colour"
    assert allowed[4] is False and allowed[6] is False and allowed[8] is False  # all "colour" again
    assert allowed[5] is True  # "Colourr"


def test_guard_masks_names_without_a_word() -> None:
    allowed = _mask_after(TEXTS, [0])  # first name, still empty
    assert allowed[4] is False and allowed[8] is False  # "" and "." have no word
    assert allowed[5] is True  # "r"


def test_guard_leaves_a_row_it_would_empty() -> None:
    texts: list[str | bytes] = ['{"dims":[{"name":"', "ab", '","score_1":5}', ',{"name":"', '"']
    guard = NameGuard(_table(texts), 1, DIMS)
    for token in (0, 1, 2, 3, 1):
        guard.feed(0, token)
    bitmask = torch.zeros((1, 1), dtype=torch.int32)
    bitmask[0, 0] = 1 << 4  # the grammar allows only the closing quote
    guard.restrict(bitmask, [0])
    assert int(bitmask[0, 0]) == 1 << 4 and guard.masked == [0]


def test_characters_split_across_tokens_are_read_whole() -> None:
    """Byte-level vocabularies split a CJK character over tokens; half a character is no name yet, and the
    whole one is a name with a word in it."""
    dragon = "龘".encode()
    texts: list[str | bytes] = [
        '{"dims":[{"name":"',
        dragon[:1],
        dragon[1:2],
        dragon[2:],
        '"',
        '","score_1":5}',
    ]
    halfway = _mask_after(texts, [0, 1, 2])
    assert all(halfway)  # inside the character: nothing is masked
    whole = _mask_after(texts, [0, 1, 2, 3])
    assert whole[4] and whole[5]  # "龘" may close
    again = _mask_after(texts, [0, 1, 2, 3, 5, 0, 1, 2, 3])  # a second "龘" in a new array: fine too
    assert again[4]


def test_an_escaped_backslash_is_a_finished_character() -> None:
    texts: list[str | bytes] = ['{"dims":[{"name":"', "a\\\\", '","score_1":5}', ',{"name":"', '"']
    allowed = _mask_after(texts, [0, 1, 2, 3, 1])  # second name so far: a\\ (escaped), as the first
    assert allowed[4] is False


def test_long_names_without_a_word_cannot_close() -> None:
    texts: list[str | bytes] = ['{"dims":[{"name":"', "-" * 30, '"']
    assert _mask_after(texts, [0, 1])[2] is False


def test_a_name_written_whole_in_one_token_cannot_repeat() -> None:
    """Vocabularies trained on JSON hold tokens like '"reason"' that open a name and close it at once."""
    texts: list[str | bytes] = ['{"dims":[{"name":', '"ab"', ',"score_1":5}', ",", '{"name":', '"cd"', '""']
    first = _mask_after(texts, [0])  # before the first name's value
    assert first[1] and first[5] and not first[6]  # "ab" and "cd" are new, "" has no word
    between = _mask_after(texts, [0, 1, 2, 3])  # after "ab", between two criteria
    assert between[4]  # '{"name":' writes no name yet
    again = _mask_after(texts, [0, 1, 2, 3, 4])  # second criterion, before its name's value
    assert again[1] is False and again[5] is True


def test_punctuation_cannot_pad_a_repeat_towards_a_length_bound() -> None:
    texts: list[str | bytes] = ['{"dims":[{"name":"', "De", '","score_1":5}', ',{"name":"', "],", "x", "-x"]
    allowed = _mask_after(texts, [0, 1, 2, 3, 1])  # second name so far: "De", the first name again
    assert allowed[4] is False  # "De]," could only close as "De" again
    assert allowed[5] and allowed[6]  # letters change the name
    fresh = _mask_after(texts, [0, 1, 2, 3])  # second name still empty: punctuation may open it
    assert fresh[4]


def test_the_guard_watches_only_the_arrays_it_is_given() -> None:
    """The key set comes from the constraint (`Constraint.unique_names`); other arrays' names may repeat."""
    texts: list[str | bytes] = ['{"criteria":[{"name":"', "ab", '","score":5}', ',{"name":"', '"']
    second_ab = [0, 1, 2, 3, 1]  # a second criterion named "ab" so far
    assert _mask_after(texts, second_ab, frozenset({"criteria"}))[4] is False
    assert _mask_after(texts, second_ab, DIMS)[4] is True
    assert _mask_after(texts, second_ab, frozenset())[4] is True
