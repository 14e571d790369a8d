"""No invented verdict: the winner grammar, repeated and conflicting winners, booleans, strict repeats."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import flexjudge
from flexjudge.errors import ParseError
from flexjudge.formats.winners import WinnerError, read_winner

OUTPUTS = Path(__file__).parent.parent / "examples" / "outputs"


@pytest.fixture
def flex_obj() -> dict[str, Any]:
    obj: dict[str, Any] = json.loads((OUTPUTS / "flex_image.json").read_text(encoding="utf-8"))
    return obj


@pytest.fixture
def native_obj() -> dict[str, Any]:
    obj: dict[str, Any] = json.loads((OUTPUTS / "native_image.json").read_text(encoding="utf-8"))
    return obj


ACCEPTED = [
    ("Image 2", 2),
    ("image 2", 2),
    ("2", 2),
    ("Image #1", 1),
    ("Image2", 2),
    ("**Image 1**", 1),
    ("Video 1.", 1),
    ("Image 2 is better", 2),
    ("Image 2 is better than Image 1", 2),
    ("Image 2 is better than Image 1.", 2),
    ("Image 2 is clearly better", 2),
    ("Image 1 is slightly better overall", 1),
    ("Image 1 wins", 1),
    ("Image 1 wins over Image 2", 1),
    ("Image 2 is superior to Image 1", 2),
    ("Image 2 is preferred over Image 1", 2),
    ("Image 2 is the winner", 2),
    ("Image 1 is the better image", 1),
    ("the first image", 1),
    ("the second one", 2),
    ("Winner: Image 2", 2),
    ("the winner is Image 1", 1),
]

REFUSED = [
    "Image 1 vs Image 2",
    "Image 1 vs. Image 2",
    "Image 1 versus Image 2",
    "Image 1 isn't better",
    "Image 1 is not better",
    "Image 2 is not worse than Image 1",
    "not Image 1",
    "Image 1 isn’t the winner",  # typographic apostrophe
    "neither",
    "neither image",
    "both",
    "both images",
    "Image 1 and Image 2",
    "Image 1 or Image 2",
    "Image 1 or 2",
    "Image 1/2",
    "1/2",
    "Image 1 / Image 2",
    "tie",
    "a tie",
    "equal",
    "they are equal",
    "Both are equally good",
    "Image 2?",
    "Is Image 2 better?",
    "Image 2 is probably better",
    "probably Image 2",
    "maybe Image 1",
    "Image 1 is likely better",
    "Image 2 is worse",
    "Image 2 is better than Image 2",
    "Image 2 (clearly)",
    "Image 2. Image 1 is worse",
    "Image 3",
    "Image 0",
    "",
    "none",
    "the image",
    "9" * 5000,
]


@pytest.mark.parametrize(("written", "expected"), ACCEPTED)
def test_the_grammar_reads_phrases_that_settle_on_one_candidate(written: str, expected: int) -> None:
    assert read_winner(written) == expected


@pytest.mark.parametrize("written", REFUSED)
def test_everything_outside_the_grammar_is_refused(written: str) -> None:
    with pytest.raises(WinnerError):
        read_winner(written)


@pytest.mark.parametrize("written", [True, False, None, 1.5, [1], {"winner": 1}])
def test_non_text_non_numbers_are_no_candidate(written: object) -> None:
    with pytest.raises(WinnerError):
        read_winner(written)


@pytest.mark.parametrize("written", ["Image 1 vs Image 2", "Image 1 isn't better", "Image 1 or 2", "tie"])
def test_ambiguous_winners_in_flex_are_parse_errors_at_the_winner(flex_obj: dict, written: str) -> None:
    flex_obj["winner"] = written
    text = json.dumps(flex_obj)
    with pytest.raises(ParseError) as info:
        flexjudge.parse(text)
    assert info.value.path == "winner" and text[info.value.offset :].startswith('"winner"')


def _other(winner: str) -> str:
    return "Image 1" if winner == "Image 2" else "Image 2"


@pytest.mark.parametrize("strict", [False, True])
def test_a_duplicated_winner_with_an_escaped_key_is_refused(flex_obj: dict, strict: bool) -> None:
    text = json.dumps(flex_obj)[:-1] + f', "winn\\u0065r": "{_other(flex_obj["winner"])}"}}'
    assert json.loads(text)["winner"] != flex_obj["winner"]  # the escape really spells "winner"
    with pytest.raises(ParseError):
        flexjudge.parse(text, strict=strict)


@pytest.mark.parametrize("strict", [False, True])
def test_a_repeated_winner_is_refused_even_when_it_agrees(flex_obj: dict, strict: bool) -> None:
    text = json.dumps(flex_obj)[:-1] + f', "winner": "{flex_obj["winner"]}"}}'
    with pytest.raises(ParseError):
        flexjudge.parse(text, strict=strict)


def test_conflicting_winners_in_json_that_needs_repair_are_refused(flex_obj: dict) -> None:
    other = _other(flex_obj["winner"])
    repaired = json.dumps(flex_obj)[:-1] + f', "winner": "{other}",}}'  # trailing comma: repair path
    with pytest.raises(ParseError):
        flexjudge.parse(repaired)
    cut = json.dumps(flex_obj)[:-1] + f', "winner": "{other}", "reason": "x'  # cut: partial reader
    with pytest.raises(ParseError):
        flexjudge.parse(cut)
    # Without the repeat, the same repair reads the judgment: the refusal is the conflict's doing.
    assert flexjudge.parse(json.dumps(flex_obj)[:-1] + ",}").verdict.winner == int(flex_obj["winner"][-1])


def test_a_second_damaged_judgment_that_disagrees_is_refused(flex_obj: dict) -> None:
    first = json.dumps(flex_obj)
    second = json.dumps({**flex_obj, "winner": _other(flex_obj["winner"])})
    for damaged in (second[:-1] + ",}", second[:-1] + "]]", second[: second.rindex("}") - 2] + "x"):
        with pytest.raises(ParseError, match="judgment"):
            flexjudge.parse(f"{first}\nOn reflection:\n{damaged}")
    # A damaged first judgment followed by a disagreeing one is refused too.
    with pytest.raises(ParseError):
        flexjudge.parse(f"{first[:-1]},}}\n{second}")
    # An identical repeat agrees and reads.
    assert flexjudge.parse(f"{first}\n{first}").verdict.winner == int(flex_obj["winner"][-1])


def test_a_second_judgment_whose_winner_is_cut_is_refused(flex_obj: dict) -> None:
    first = json.dumps(flex_obj)
    cut = first[: first.rindex('"winner"')]
    with pytest.raises(ParseError):
        flexjudge.parse(f"{first}\n{cut}")


@pytest.mark.parametrize("key", ["winner", "winn\\u0065r"])
def test_a_second_judgment_with_conflicting_winners_of_its_own_is_refused(flex_obj: dict, key: str) -> None:
    # The first judgment is whole and exact; the one after it names its winner twice, once each way.
    first = json.dumps(flex_obj)
    second = first[:-1] + f', "{key}": "{_other(flex_obj["winner"])}"}}'
    with pytest.raises(ParseError):
        flexjudge.parse(f"{first}\nOn reflection:\n{second}")
    # The same second judgment without its repeat agrees with the first and reads.
    assert flexjudge.parse(f"{first}\nOn reflection:\n{first}").verdict.winner == int(flex_obj["winner"][-1])


@pytest.mark.parametrize("strict", [False, True])
@pytest.mark.parametrize("where", ["verdict", "dimension", "evidence"])
def test_native_booleans_are_no_candidate(native_obj: dict, strict: bool, where: str) -> None:
    if where == "verdict":
        native_obj["verdict"]["winner"] = True
    elif where == "dimension":
        native_obj["dimensions"][0]["winner"] = True
    else:
        native_obj["evidence"][0]["candidate"] = True
    with pytest.raises(ParseError):
        flexjudge.parse(json.dumps(native_obj), strict=strict)


def test_native_text_that_only_mentions_true_still_takes_the_fast_path(native_obj: dict) -> None:
    native_obj["verdict"]["analysis"] = "true to the prompt: true, and not false"
    judgment = flexjudge.parse(json.dumps(native_obj), strict=True)
    assert judgment.verdict.analysis.startswith("true") and not judgment.meta.recovered


@pytest.mark.parametrize("key", ["score_1", "sc\\u006fre_1", "name", "reason"])
def test_strict_refuses_every_duplicated_key(flex_obj: dict, key: str) -> None:
    text = json.dumps(flex_obj, indent=2)
    if key == "reason":
        text = text.rstrip()[:-1] + ', "reason": "again"}'
    else:
        first = text.index('"score_1"')
        text = text[:first] + f'"{key}": {"3" if "1" in key else json.dumps("x")}, ' + text[first:]
    assert json.loads(text)  # still one valid JSON document: only the repeat is wrong
    with pytest.raises(ParseError):
        flexjudge.parse(text, strict=True)


@pytest.mark.parametrize("strict", [False, True])
def test_native_duplicated_winner_is_refused(native_obj: dict, strict: bool) -> None:
    text = json.dumps(native_obj)
    at = text.index('"verdict": {') + len('"verdict": {')
    text = text[:at] + '"winn\\u0065r": 1, ' + text[at:]
    with pytest.raises(ParseError):
        flexjudge.parse(text, strict=strict)


def test_spaced_colons_and_escaped_quotes_still_read_exactly(flex_obj: dict) -> None:
    flex_obj["reason"] = 'a sign reading \\"OPEN\\": bright, note : this'
    spaced = json.dumps(flex_obj, separators=(", ", " : "))
    judgment = flexjudge.parse(spaced, strict=True)
    assert judgment.verdict.analysis == flex_obj["reason"]


# The property: random text around a winner value either fails or reads what a simple oracle says.
_WORD = st.sampled_from(
    ["Image", "image", "1", "2", "3", "is", "better", "than", "not", "isn't", "vs", "or", "/", "and",
     "tie", "both", "neither", "clearly", "probably", "?", ".", "the", "winner", ":", "wins", "over",
     "first", "second", "worse", "equal", "#", "**", "Video"]
)  # fmt: skip
_NUMBER_WORDS = {"1": 1, "2": 2, "3": 3, "first": 1, "second": 2}


def _oracle(words: list[str]) -> int | None:
    """The single candidate the text can only mean, or None: deliberately simple and independent.

    A text names a winner only when it holds no word of negation, doubt, tie, comparison-of-worse or
    alternatives; then the first number named wins, and any other number must follow "than"/"over".
    """
    lowered = [w.lower() for w in words]
    if any(
        w
        in {
            "not",
            "isn't",
            "vs",
            "or",
            "/",
            "and",
            "tie",
            "both",
            "neither",
            "probably",
            "?",
            "worse",
            "equal",
        }
        for w in lowered
    ):
        return None
    named = [(i, _NUMBER_WORDS[w]) for i, w in enumerate(lowered) if w in _NUMBER_WORDS]
    if not named:
        return None
    first = named[0][1]
    for i, number in named[1:]:
        beaten = bool({"than", "over"} & set(lowered[max(0, i - 3) : i]))
        if number == first or not beaten:
            return None
    return first if first in (1, 2) else None


@settings(max_examples=400, deadline=None)
@given(st.lists(_WORD, max_size=8))
def test_random_text_around_a_winner_reads_only_what_it_names(words: list[str]) -> None:
    text = " ".join(words)
    try:
        got = read_winner(text)
    except WinnerError:
        return
    assert got == _oracle(words), text


@settings(max_examples=200, deadline=None)
@given(st.lists(_WORD, max_size=8), st.sampled_from(["Image 1", "Image 2"]))
def test_random_text_as_a_flex_winner_never_invents(words: list[str], winner: str) -> None:
    # The winner's value is replaced by random phrasing: the judgment reads the oracle's answer or fails.
    flex_obj = json.loads((OUTPUTS / "flex_image.json").read_text(encoding="utf-8"))
    flex_obj["winner"] = " ".join([*words, winner] if len(words) % 2 else [winner, *words])
    try:
        judgment = flexjudge.parse(json.dumps(flex_obj))
    except ParseError:
        return
    assert judgment.verdict.winner == _oracle(flex_obj["winner"].split())
