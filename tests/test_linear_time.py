"""Every reader is linear in its input: hostile text costs at most 20x `json.loads` on as much JSON.

Each case builds a pathological input (whitespace runs, long winners, unclosed structures, deep but legal
nesting) and times the reader side by side with `json.loads` on a judgment-shaped JSON document of the
same length, best of a few interleaved repeats, so the bound is a ratio and not a wall-clock number. A
quadratic or backtracking reader fails at 100 KB already (its ratio grows with the size); the 1 MB cases
are marked slow. A reader that runs far past the bound is interrupted, so a regression fails instead of
hanging the suite.
"""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import pytest

import flexjudge
from flexjudge import FlexjudgeError

OUTPUTS = Path(__file__).parent.parent / "examples" / "outputs"
LIMIT = 20  # the reader may take this many times what json.loads takes on as many characters
REPEATS = 5  # best of five: on a shared, busy machine the best of three still flickered

Reader = Callable[[str], object]
Builder = Callable[[int], str]


class _Overdue(Exception):
    """The reader ran so far past the bound that measuring it further only hangs the suite."""


@contextmanager
def _interrupt_after(seconds: float) -> Iterator[None]:
    def overdue(signum: int, frame: object) -> None:
        raise _Overdue

    previous = signal.signal(signal.SIGALRM, overdue)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _judgment_json(size: int) -> str:
    """A JSON document of about `size` characters made of released flex judgments (the baseline)."""
    unit = json.dumps(json.loads((OUTPUTS / "flex_image.json").read_text(encoding="utf-8")))
    doc = "[" + ",".join([unit] * max(1, size // (len(unit) + 1))) + "]"
    return doc + " " * max(0, size - len(doc))


def _seconds(call: Callable[[], object]) -> float:
    # Process CPU time, not wall time: waiting for a core that other processes hold (CI runs beside other
    # jobs) is not the reader's cost, and wall time let a loaded machine read 26x for a linear 12x.
    start = time.process_time()
    with suppress(FlexjudgeError):  # refusing hostile text is the expected outcome; only the time matters
        call()
    return time.process_time() - start


def _ratio(read: Reader, text: str) -> float:
    doc = _judgment_json(len(text))
    baseline = reader = float("inf")
    for _ in range(REPEATS):
        baseline = min(baseline, _seconds(lambda: json.loads(doc)))
        try:
            with _interrupt_after(max(2.0, 20 * LIMIT * baseline)):
                reader = min(reader, _seconds(lambda: read(text)))
        except _Overdue:
            return float("inf")
    return reader / baseline


def _think_blocks(count: int) -> str:
    block = "{n}. Aesthetics:\n    Image 1 (7/10) - flat colours;\n    Image 2 (8/10) - warm tones\n"
    return "".join(block.format(n=n) for n in range(1, count + 1))


def _think(answer: str, body: str = "") -> str:
    totals = "Total score:\nImage 1: 7+7+7=21\nImage 2: 8+8+8=24\n"
    return f"<think>\n{_think_blocks(3)}{body}{totals}</think>\n{answer}"


def _flex_with_winner(winner: str) -> str:
    flex = json.loads((OUTPUTS / "flex_image.json").read_text(encoding="utf-8"))
    flex["winner"] = winner
    return json.dumps(flex)


def _native_with_winner(winner: str) -> str:
    native = json.loads((OUTPUTS / "native_image.json").read_text(encoding="utf-8"))
    native["verdict"]["winner"] = winner
    return json.dumps(native)


def _repeat(unit: str, size: int) -> str:
    return unit * max(1, size // len(unit))


_LONG_WINNER = "Image 2 is better than "

# Think text: the old whole-text regexes backtracked on each of the whitespace shapes below.
THINK: dict[str, Builder] = {
    "spaces": lambda n: "<think>\n1. Aesthetics" + " " * n,
    "spaces-before-colon": lambda n: "<think>\n" + _repeat("a \t", n) + "\n    Image 1 (7/10) - x;\n",
    "blank-lines": lambda n: (
        "<think>\n" + _repeat(" \t\r\n", n) + "</think>\n<answer>Image 1 is better</answer>"
    ),
    "colon-lines": lambda n: "<think>\n" + _repeat(" :\n", n),
    "rating-openings": lambda n: "<think>\nA:\n" + _repeat("Image 1 (", n),
    "total-whitespace": lambda n: _think("<answer>Image 2 is better</answer>").replace(
        "Image 1: 7+7+7=21", "Image 1: 7+" + " \t" * (n // 2) + "x"
    ),
    "total-terms": lambda n: _think("<answer>Image 2 is better</answer>").replace(
        "Image 1: 7+7+7=21", "Image 1: " + _repeat("7 + ", n) + "="
    ),
    "long-winner": lambda n: _think("<answer>" + _repeat(_LONG_WINNER, n) + "Image 1</answer>"),
    "unclosed-answer": lambda n: _think("<answer>" + _repeat(_LONG_WINNER, n)),
    "unclosed-think": lambda n: "<think>\n" + _think_blocks(3) + _repeat("Image 1 is fine \n", n),
    "many-answers": lambda n: _think(_repeat("<answer>Image 2 is better</answer>", n)),
}

# JSON text for flex, native and pointwise: unclosed structures, whitespace runs, long winners, deep nesting.
JSON: dict[str, Builder] = {
    "spaces-after-key": lambda n: '{"winner":' + " " * n,
    "unclosed-string": lambda n: '{"winner": "' + "a" * n,
    "open-braces": lambda n: "{" * n,
    "open-brackets": lambda n: '{"categories": ' + "[" * n,
    "open-objects": lambda n: _repeat('{"a": ', n),
    "deep-legal": lambda n: '{"categories": ' + _repeat("[" * 50 + "1" + "]" * 50 + ",", n).join("[]") + "}",
    "many-keys": lambda n: "{" + _repeat('"winner": "Image 1", ', n) + "}",
    "flex-long-winner": lambda n: _flex_with_winner(_repeat(_LONG_WINNER, n) + "Image 1"),
    "native-long-winner": lambda n: _native_with_winner(_repeat(_LONG_WINNER, n) + "Image 1"),
    "quotes": lambda n: '{"winner": ' + '"' * n,
    # 256 brackets opened in the middle of a judgment padded to size (the fuzzer's slowest input): each
    # damaged level used to be scanned again from its start, 256 times the text.
    "brackets-inside": lambda n: _flex_with_winner("Image 1" + " " * n).replace(
        '"categories": ', '"categories": ' + "[" * 256, 1
    ),
}


def _known(request: pytest.FixtureRequest, reader: str, case: str, strict: bool) -> None:
    reason = KNOWN_SLOW.get((reader, case, strict))
    if reason is not None:
        request.applymarker(pytest.mark.xfail(reason=reason, strict=False))


def _parse(format: str, strict: bool) -> Reader:
    return lambda text: flexjudge.parse(text, format, strict=strict)  # type: ignore[arg-type]


def _pointwise(strict: bool) -> Reader:
    return lambda text: flexjudge.parse_pointwise(text, strict=strict)


# Readers that do not hold the bound yet (issue 8, point 2), with the ratios measured at 100 KB and
# 400 KB on a busy 2-core machine. They stay in the suite as expected failures so their numbers show in
# every run; "strict" xfail is not used because the borderline ones flicker.
KNOWN_SLOW: dict[tuple[str, str, bool], str] = {
    # Deep but legal nesting, side by side with the old readers on the same busy machine: lenient
    # 110x (was 620x) at 100 KB and 66x (was 280x) at 1 MB; strict 40x (was 53x) and 36x (was 65x),
    # no longer growing with the size (the collector walked the growing tree; it is paused now). What is
    # left is C work on 50,000 nested lists: pydantic-core's fast path builds them once (7-10x alone),
    # json builds them once more strict and up to three times lenient (whole object, the damaged
    # array, then each item).
    **{
        (r, "deep-legal", s): "nested arrays are read several times over, each pass a full tree of lists"
        for r in ("flex", "native", "auto", "pointwise")
        for s in (False, True)
    },
}

SIZES = [100_000, pytest.param(1_000_000, marks=pytest.mark.slow)]


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("strict", [False, True], ids=["lenient", "strict"])
@pytest.mark.parametrize("case", sorted(THINK))
def test_think_reader_is_linear(case: str, strict: bool, size: int, request: pytest.FixtureRequest) -> None:
    _known(request, "think", case, strict)
    text = THINK[case](size)
    ratio = _ratio(_parse("think", strict), text)
    assert ratio <= LIMIT, f"think {case} ({len(text)} chars): {ratio:.1f}x json.loads"


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("strict", [False, True], ids=["lenient", "strict"])
@pytest.mark.parametrize("reader", ["flex", "native", "auto", "pointwise"])
@pytest.mark.parametrize("case", sorted(JSON))
def test_json_readers_are_linear(
    case: str, reader: str, strict: bool, size: int, request: pytest.FixtureRequest
) -> None:
    _known(request, reader, case, strict)
    text = JSON[case](size)
    read = _pointwise(strict) if reader == "pointwise" else _parse(reader, strict)
    ratio = _ratio(read, text)
    assert ratio <= LIMIT, f"{reader} {case} ({len(text)} chars): {ratio:.1f}x json.loads"
