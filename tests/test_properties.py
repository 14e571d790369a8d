"""Property-based tests: every codec round-trips, and the lenient reader fails only with ParseError."""

from __future__ import annotations

import json
import random
from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from strategies import any_text, flex_objects, native_judgments, split_judgments, think_judgments

import flexjudge
from flexjudge import Judgment, ParseError


def _no_internal_error(exc: ParseError) -> None:
    assert not exc.reason.startswith("internal error"), exc.reason
    assert isinstance(exc.offset, int) and exc.offset >= 0


@given(flex_objects(), st.sampled_from([None, 2]), st.booleans())
def test_flex_text_round_trips_exactly(obj: dict, indent: int | None, ascii_only: bool) -> None:
    text = json.dumps(obj, indent=indent, ensure_ascii=ascii_only)
    judgment = flexjudge.parse(text, strict=True)
    assert json.loads(flexjudge.render(judgment, "flex")) == json.loads(text)
    assert judgment.meta.recovered is False and judgment.meta.source_format == "flex"


@given(split_judgments())
def test_flex_render_then_parse_is_identity(judgment: Judgment) -> None:
    back = flexjudge.parse(flexjudge.render(judgment, "flex"), strict=True)
    assert back.content() == judgment.content()


@given(native_judgments())
def test_native_render_then_parse_is_identity(judgment: Judgment) -> None:
    back = flexjudge.parse(flexjudge.render(judgment, "native"), strict=True)
    assert back.content() == judgment.content()


@given(think_judgments())
def test_think_render_then_parse_is_identity(judgment: Judgment) -> None:
    back = flexjudge.parse(flexjudge.render(judgment, "think"), strict=True, prompt=judgment.prompt)
    assert back.content() == judgment.content()


@given(st.text(max_size=400) | any_text, st.sampled_from(["auto", "flex", "native", "think"]))
def test_lenient_parser_raises_only_parse_error_on_arbitrary_text(text: str, fmt: str) -> None:
    try:
        flexjudge.parse(text, format=fmt)  # type: ignore[arg-type]
    except ParseError as exc:
        _no_internal_error(exc)


def _rendered(draw: st.DrawFn) -> tuple[Judgment, str, str]:
    fmt = draw(st.sampled_from(["flex", "native", "think"]))
    strategy = {"flex": split_judgments(), "native": native_judgments(), "think": think_judgments()}[fmt]
    judgment = draw(strategy)
    text = flexjudge.render(judgment, fmt)  # type: ignore[arg-type]
    if fmt != "think" and draw(st.booleans()):
        text = "Here is my evaluation:\n```json\n" + json.dumps(
            json.loads(text), indent=2, ensure_ascii=False
        )
    return judgment, fmt, text


@given(st.data())
def test_truncation_never_invents_a_verdict(data: st.DataObject) -> None:
    judgment, fmt, text = _rendered(data.draw)
    cut = data.draw(st.integers(0, len(text)))
    try:
        back = flexjudge.parse(text[:cut], format=fmt, prompt=judgment.prompt)  # type: ignore[arg-type]
    except ParseError as exc:
        _no_internal_error(exc)
        return
    # Whatever is recovered from a prefix is the original judgment, never a guess.
    assert back.content() == judgment.content()


@given(st.data())
def test_random_corruption_raises_only_parse_error(data: st.DataObject) -> None:
    judgment, _, text = _rendered(data.draw)
    rng = random.Random(data.draw(st.integers(0, 2**32)))
    chars = list(text)
    for _ in range(data.draw(st.integers(1, 5))):
        position = rng.randrange(len(chars) + 1)
        action = rng.choice(["insert", "delete", "replace"])
        junk = rng.choice(['"', "{", "}", ",", ":", "]", "\n", "x", "\\", "`", "<"])
        if action == "insert" or not chars:
            chars.insert(position, junk)
        elif position < len(chars):
            if action == "delete":
                del chars[position]
            else:
                chars[position] = junk
    try:
        back = flexjudge.parse("".join(chars), prompt=judgment.prompt)
    except ParseError as exc:
        _no_internal_error(exc)
        return
    assert back.verdict.winner in (1, 2, None)


@given(split_judgments())
def test_removing_the_verdict_is_never_recovered(judgment: Judgment) -> None:
    obj = json.loads(flexjudge.render(judgment, "flex"))
    del obj["winner"]
    text = json.dumps(obj)
    for cut in (len(text), len(text) - 1):
        try:
            flexjudge.parse(text[:cut])
        except ParseError as exc:
            _no_internal_error(exc)
        else:
            raise AssertionError("a judgment without a verdict was accepted")


@given(native_judgments(), any_text)
def test_check_never_raises_on_any_judgment(judgment: Judgment, prompt: str) -> None:
    findings = flexjudge.check(judgment, prompt=prompt)
    assert all(f.severity in ("error", "warning", "info") and f.code and f.message for f in findings)
    assert findings == flexjudge.check(judgment, prompt=prompt)


# ------------------------------------------------------------------ only expected failures become ParseError

_JSONISH_PIECES = st.sampled_from(
    [
        "{",
        "}",
        "[",
        "]",
        ",",
        ":",
        '"',
        "\\",
        "null",
        "true",
        "false",
        "-0",
        "1e999",
        "1.5",
        "7",
        "10",
        "NaN",
        "Infinity",
        '"Image 1"',
        '"Video 2"',
        '"winner"',
        '"cat_winner"',
        '"categories"',
        '"dims"',
        '"dimensions"',
        '"criteria"',
        '"verdict"',
        '"score"',
        '"score_1"',
        '"score_2"',
        '"name"',
        '"meta"',
        '"modality"',
        '"image"',
        '"origin"',
        '"predefined"',
        '"observations"',
        '"scale"',
        "```json",
        "\n",
        "<think>",
        "</think>",
        "<answer>",
        "Image 1 (7/10)",
        "\\u00e9",
        "\\ud800",
        "😀",
        " ",
    ]
)
_RANDOM_INPUT = (
    st.text(max_size=300)
    | st.lists(_JSONISH_PIECES | st.text(max_size=4), max_size=60).map("".join)
    | st.binary(max_size=300).map(lambda b: b.decode("utf-8", errors="replace"))
    | st.binary(max_size=300).map(lambda b: b.decode("latin-1"))
)


def _read_or_parse_error(read: Any) -> None:
    """`read()` returns a judgment or raises ParseError; anything else (a bug) fails the test as itself."""
    try:
        result = read()
    except ParseError as exc:
        _no_internal_error(exc)
    else:
        assert isinstance(result, Judgment | flexjudge.PointwiseJudgment)


@given(_RANDOM_INPUT, st.sampled_from(["auto", "flex", "native", "think"]), st.booleans())
def test_parse_raises_only_parse_error_on_random_input(text: str, fmt: str, strict: bool) -> None:
    _read_or_parse_error(lambda: flexjudge.parse(text, format=fmt, strict=strict))  # type: ignore[arg-type]


@given(_RANDOM_INPUT, st.booleans())
def test_parse_pointwise_raises_only_parse_error_on_random_input(text: str, strict: bool) -> None:
    _read_or_parse_error(lambda: flexjudge.parse_pointwise(text, strict=strict))


@given(st.data())
def test_corrupted_judgments_raise_only_parse_error_in_every_mode(data: st.DataObject) -> None:
    _, fmt, text = _rendered(data.draw)
    cut = data.draw(st.integers(0, len(text)))
    junk = data.draw(_JSONISH_PIECES)
    broken = text[:cut] + junk + text[cut + data.draw(st.integers(0, 3)) :]
    strict = data.draw(st.booleans())
    _read_or_parse_error(lambda: flexjudge.parse(broken, format=fmt, strict=strict))  # type: ignore[arg-type]
    _read_or_parse_error(lambda: flexjudge.parse_pointwise(broken, strict=strict))


def test_a_bug_inside_a_codec_is_not_passed_off_as_unreadable_text(monkeypatch: Any) -> None:
    from flexjudge.formats import flex

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise KeyError("a bug")

    monkeypatch.setattr(flex, "_parse_fast", broken)
    try:
        flexjudge.parse('{"categories": []}', format="flex")
    except KeyError:
        pass  # the bug surfaces as itself
    else:
        raise AssertionError("a KeyError inside the codec was swallowed")
