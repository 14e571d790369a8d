"""Each wire format read exactly, read leniently, and refused with a located reason."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import flexjudge
from flexjudge import ParseError, RenderError, TruncatedOutput

OUTPUTS = Path(__file__).parent.parent / "examples" / "outputs"


@pytest.fixture
def flex_text() -> str:
    return (OUTPUTS / "flex_image.json").read_text(encoding="utf-8")


@pytest.fixture
def flex_obj(flex_text: str) -> dict:
    return json.loads(flex_text)


def test_flex_reads_the_released_object(flex_obj: dict, flex_text: str) -> None:
    judgment = flexjudge.parse(flex_text)
    assert judgment.modality == "image" and judgment.scoring == "split"
    assert [d.name for d in judgment.dimensions] == [c["name"] for c in flex_obj["categories"]]
    assert [d.origin for d in judgment.dimensions][:3] == ["predefined"] * 3
    assert judgment.verdict.winner == int(flex_obj["winner"][-1])
    first = judgment.dimensions[0].criteria[0]
    assert (first.evidence_1, first.score_1) == (
        flex_obj["categories"][0]["dims"][0]["reason_1"],
        flex_obj["categories"][0]["dims"][0]["score_1"],
    )
    assert (
        judgment.meta.source_format == "flex"
        and judgment.meta.raw_text == flex_text
        and not judgment.meta.recovered
    )


def test_flex_video_winners_give_the_modality(flex_obj: dict) -> None:
    for category in flex_obj["categories"]:
        category["cat_winner"] = category["cat_winner"].replace("Image", "Video")
    flex_obj["winner"] = flex_obj["winner"].replace("Image", "Video")
    judgment = flexjudge.parse(json.dumps(flex_obj), strict=True)
    assert judgment.modality == "video"
    assert json.loads(flexjudge.render(judgment, "flex")) == flex_obj


@pytest.mark.parametrize(
    ("wrap", "note"),
    [
        (lambda t: "Here is my evaluation:\n```json\n" + t + "\n```\nHope this helps.", "code fence"),
        (lambda t: "Sure.\n```json\n" + t, "never closed"),
        (lambda t: "My judgment follows. " + t + " That is all.", "prose"),
    ],
)
def test_lenient_reads_fences_and_prose_and_says_so(flex_text: str, flex_obj: dict, wrap, note: str) -> None:
    judgment = flexjudge.parse(wrap(flex_text))
    assert json.loads(flexjudge.render(judgment, "flex")) == flex_obj
    assert judgment.meta.recovered and any(note in n for n in judgment.meta.recovery_notes)
    with pytest.raises(ParseError):
        flexjudge.parse(wrap(flex_text), strict=True)


@pytest.mark.parametrize(
    ("written", "expected"),
    [
        ("Image 2", 2),
        ("image 2", 2),
        (2, 2),
        ("2", 2),
        ("Image 2 is clearly better", 2),
        ("**Image 1**", 1),
        ("Image 1 is better than Image 2.", 1),
        ("the first image", 1),
    ],
)
def test_lenient_winner_spellings(flex_obj: dict, written: object, expected: int) -> None:
    flex_obj["winner"] = written
    judgment = flexjudge.parse(json.dumps(flex_obj))
    assert judgment.verdict.winner == expected
    assert judgment.meta.recovered == (written not in ("Image 1", "Image 2"))


@pytest.mark.parametrize(
    "written", ["Image 1/2", "both", "Image 1 and Image 2", "tie", "Image 3", "neither", "", True]
)
def test_ambiguous_winner_is_an_error_not_a_guess(flex_obj: dict, written: object) -> None:
    flex_obj["categories"][1]["cat_winner"] = written
    text = json.dumps(flex_obj)
    with pytest.raises(ParseError) as info:
        flexjudge.parse(text)
    assert info.value.path == "categories[1].cat_winner"
    assert text[info.value.offset :].startswith('"cat_winner"')


def test_truncated_output_raises_with_partial_text(flex_text: str) -> None:
    cut = flex_text[: len(flex_text) // 2]
    with pytest.raises(TruncatedOutput) as info:
        flexjudge.parse(cut)
    assert info.value.partial_text == cut and info.value.offset <= len(cut)


def test_complete_verdict_with_damaged_tail_is_recovered_and_flagged(flex_text: str, flex_obj: dict) -> None:
    damaged = flex_text.rstrip()[:-1] + "\n]]"
    judgment = flexjudge.parse(damaged)
    assert judgment.content() == flexjudge.parse(flex_text).content()
    assert judgment.meta.recovered
    with pytest.raises(ParseError):
        flexjudge.parse(damaged, strict=True)
    missing_brace = flex_text.rstrip()[:-1]
    assert flexjudge.parse(missing_brace).verdict.winner == int(flex_obj["winner"][-1])


def test_cut_inside_the_winner_is_truncated_not_read(flex_text: str) -> None:
    cut = flex_text[: flex_text.rindex('"winner"') + len('"winner": "Image')]
    with pytest.raises(TruncatedOutput):
        flexjudge.parse(cut)


def test_schema_errors_name_the_field_and_its_offset(flex_obj: dict) -> None:
    flex_obj["categories"][2]["dims"][1]["score_2"] = 11
    text = json.dumps(flex_obj)
    for strict in (True, False):
        with pytest.raises(ParseError) as info:
            flexjudge.parse(text, strict=strict)
        assert info.value.path == "categories[2].dims[1].score_2"
        assert text[info.value.offset :].startswith('"score_2": 11')


def test_strict_refuses_what_lenient_coerces_and_drops(flex_obj: dict) -> None:
    flex_obj["categories"][0]["dims"][0]["score_1"] = "7"
    flex_obj["categories"][0]["dims"][0]["score_2"] = 3
    flex_obj["overall_score"] = 9
    text = json.dumps(flex_obj)
    judgment = flexjudge.parse(text)
    assert judgment.dimensions[0].criteria[0].score_1 == 7
    notes = " ".join(judgment.meta.recovery_notes)
    assert "overall_score" in notes and "coerced" in notes
    with pytest.raises(ParseError) as info:
        flexjudge.parse(text, strict=True)
    assert info.value.path in ("overall_score", "categories[0].dims[0].score_1")


def test_modality_given_by_the_caller_wins_and_mismatch_is_noted(flex_text: str) -> None:
    judgment = flexjudge.parse(flex_text, modality="video")
    assert judgment.modality == "video" and judgment.meta.recovered
    with pytest.raises(ParseError):
        flexjudge.parse(flex_text, modality="video", strict=True)


def test_think_reads_ratings_ties_and_answer() -> None:
    text = (OUTPUTS / "think_image.txt").read_text(encoding="utf-8")
    judgment = flexjudge.parse(text, strict=True, prompt="p")
    assert judgment.scoring == "rating" and judgment.prompt == "p"
    assert [d.origin for d in judgment.dimensions][:3] == ["predefined"] * 3
    for dim in judgment.dimensions:
        (crit,) = dim.criteria
        assert crit.name == dim.name
        assert dim.winner == (
            1 if crit.score_1 > crit.score_2 else 2 if crit.score_2 > crit.score_1 else None
        )
    assert flexjudge.render(judgment, "think").splitlines()[-1] == text.strip().splitlines()[-1].strip()


THINK = """<think>
1. Semantic consistency:
    Image 1 (9/10) - The red kite and both children are present;
    Image 2 (6/10) - Only one child appears
2. Aesthetics:
    Image 1 (7/10) - Balanced composition;
    Image 2 (7/10) - Pleasant but flat light
3. Authenticity:
    Image 1 (8/10) - Natural hands;
    Image 2 (5/10) - Melted fingers on the left hand
Total score:
Image 1: 9+7+8=24
Image 2: 6+7+5=18
</think>
<answer>Image 1 is better</answer>"""


def test_think_tie_dimension_and_totals() -> None:
    judgment = flexjudge.parse(THINK, strict=True)
    assert [d.winner for d in judgment.dimensions] == [1, None, 1]
    assert judgment.verdict.winner == 1 and judgment.modality == "image"
    wrong = THINK.replace("=24", "=25")
    with pytest.raises(ParseError, match="total"):
        flexjudge.parse(wrong, strict=True)
    lenient = flexjudge.parse(wrong)
    assert lenient.meta.recovered and any("total" in n for n in lenient.meta.recovery_notes)


def test_think_lenient_answer_and_truncation() -> None:
    loose = THINK.replace("<answer>Image 1 is better</answer>", "<answer>image 1 is clearly better.</answer>")
    assert flexjudge.parse(loose).verdict.winner == 1
    with pytest.raises(ParseError):
        flexjudge.parse(loose, strict=True)
    with pytest.raises(TruncatedOutput):
        flexjudge.parse(THINK[: THINK.index("Total score")])
    with pytest.raises(ParseError, match="ambiguous"):
        flexjudge.parse(THINK.replace("Image 1 is better", "Both are equally good"))


def test_native_reads_the_whole_hierarchy() -> None:
    text = (OUTPUTS / "native_image.json").read_text(encoding="utf-8")
    judgment = flexjudge.parse(text, strict=True)
    assert judgment.intent is not None and len(judgment.evidence) == 2
    assert json.loads(flexjudge.render(judgment, "native")) == json.loads(text)


def test_native_loose_winners_tie_and_meta() -> None:
    obj = json.loads((OUTPUTS / "native_image.json").read_text(encoding="utf-8"))
    obj["verdict"]["winner"] = "Image 2"
    obj["dimensions"][0]["winner"] = None
    judgment = flexjudge.parse(json.dumps(obj))
    assert judgment.verdict.winner == 2 and judgment.dimensions[0].winner is None
    obj["meta"] = {"recovered": False}
    with pytest.raises(ParseError) as info:
        flexjudge.parse(json.dumps(obj), strict=True)
    assert info.value.path in ("meta", "verdict.winner")


def test_render_refuses_what_a_format_cannot_carry(flex_text: str) -> None:
    split = flexjudge.parse(flex_text)
    with pytest.raises(RenderError, match="split"):
        flexjudge.render(split, "think")
    tie = split.model_copy(update={"verdict": flexjudge.Verdict(analysis="even", winner=None)})
    with pytest.raises(RenderError, match="tie"):
        flexjudge.render(tie, "flex")
    rating = flexjudge.parse(THINK)
    with pytest.raises(RenderError):
        flexjudge.render(rating, "flex")
    assert flexjudge.parse(flexjudge.render(rating, "native")).content() == rating.content()


@pytest.mark.parametrize(
    "text",
    ["", "   ", "hello", "{", "[1, 2]", "{}", '{"a": 1}', "<think>", "\x00\x01", "{" * 5000, "[" * 5000],
)
def test_garbage_is_a_parse_error(text: str) -> None:
    with pytest.raises(ParseError) as info:
        flexjudge.parse(text)
    assert not info.value.reason.startswith("internal")


def test_non_text_input_is_a_parse_error() -> None:
    with pytest.raises(ParseError):
        flexjudge.parse(b"{}")  # type: ignore[arg-type]


def test_detect_format() -> None:
    assert flexjudge.detect_format((OUTPUTS / "flex_video_fenced.txt").read_text(encoding="utf-8")) == "flex"
    assert flexjudge.detect_format(THINK) == "think"
    assert flexjudge.detect_format((OUTPUTS / "native_image.json").read_text(encoding="utf-8")) == "native"


def test_pointwise_round_trip_and_scale() -> None:
    judgment = flexjudge.PointwiseJudgment(
        prompt="a red kite",
        modality="image",
        scale=flexjudge.PointScale(low=1, high=5),
        observations=["a red kite over a beach"],
        dimensions=[
            flexjudge.PointDimension(
                name=name,
                origin="predefined",
                analysis="fine",
                score=4,
                criteria=[
                    flexjudge.PointCriterion(name=f"c{i}", evidence="visible", score=4) for i in range(3)
                ],
            )
            for name in flexjudge.anchor_dimensions("image")
        ],
        verdict=flexjudge.PointVerdict(analysis="good", score=4),
    )
    text = flexjudge.render_pointwise(judgment)
    back = flexjudge.parse_pointwise(text, strict=True)
    assert back.content() == judgment.content()
    assert flexjudge.check(back) == []
    off_scale = text.replace('"score": 4}', '"score": 6}', 1)
    with pytest.raises(ParseError, match="off the scale"):
        flexjudge.parse_pointwise(off_scale)
    with pytest.raises(TruncatedOutput):
        flexjudge.parse_pointwise(text[: len(text) // 2])


def test_think_rating_out_of_range_names_its_block() -> None:
    text = THINK.replace("(8/10) - Natural hands", "(12/10) - Natural hands")
    with pytest.raises(ParseError) as info:
        flexjudge.parse(text)
    assert info.value.path == "dimensions[2]"
    assert text[info.value.offset :].startswith("3. Authenticity")


# Regressions found in review: each input here once produced a wrong judgment or a crash.


def test_think_answer_cut_mid_phrase_is_truncated_not_read() -> None:
    for cut in ("Image 1 and", "Image 1", "Image 1 is", "Image 2 is better than Image"):
        text = THINK.replace("<answer>Image 1 is better</answer>", f"<answer>{cut}")
        with pytest.raises(TruncatedOutput):
            flexjudge.parse(text)
    complete = THINK.replace("</answer>", "")
    assert flexjudge.parse(complete).verdict.winner == 1


@pytest.mark.parametrize(
    "damage",
    [
        lambda t: t.replace("2. Aesthetics:\n", "2. Aesthetics:\n\n"),
        lambda t: t.replace("(7/10) - Balanced", "(7.5/10) - Balanced"),
    ],
)
def test_unreadable_think_block_is_an_error_not_a_lost_dimension(damage) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ParseError, match="block could not be read"):
        flexjudge.parse(damage(THINK))


def test_think_with_crlf_line_endings() -> None:
    crlf = THINK.replace("\n", "\r\n")
    assert flexjudge.parse(crlf, strict=True).content() == flexjudge.parse(THINK, strict=True).content()


def test_think_answers_that_disagree_are_refused() -> None:
    with pytest.raises(ParseError, match="different winners"):
        flexjudge.parse(THINK + "\n<answer>Image 2 is better</answer>")


def test_flex_after_a_thinking_preamble(flex_text: str) -> None:
    judgment = flexjudge.parse(
        "<think>\nLet me compare Image 1 (8/10) and the other.\n</think>\n\n" + flex_text
    )
    assert judgment.meta.source_format == "flex" and judgment.meta.recovered


def test_braces_in_prose_before_the_object(flex_text: str, flex_obj: dict) -> None:
    for before in (
        "I use {placeholders} here.\n```json\n",
        "```python\nx = {1: 2}\n```\nThe judgment:\n```json\n",
    ):
        judgment = flexjudge.parse(before + flex_text)
        assert json.loads(flexjudge.render(judgment, "flex")) == flex_obj


def test_conflicting_verdicts_are_refused(flex_text: str, flex_obj: dict) -> None:
    other = "Image 1" if flex_obj["winner"] == "Image 2" else "Image 2"
    duplicated = flex_text.rstrip()[:-1] + f', "winner": "{other}"}}'
    for strict in (False, True):
        with pytest.raises(ParseError):
            flexjudge.parse(duplicated, strict=strict)
    second = json.dumps({**flex_obj, "winner": other})
    with pytest.raises(ParseError, match="different winners"):
        flexjudge.parse(f"Draft:\n```json\n{flex_text}\n```\nCorrected:\n```json\n{second}\n```")


def test_booleans_and_huge_numbers_are_never_scores(flex_obj: dict) -> None:
    flex_obj["categories"][0]["dims"][0]["score_1"] = True
    with pytest.raises(ParseError):
        flexjudge.parse(json.dumps(flex_obj))
    huge = json.dumps(flex_obj).replace("true", "9" * 5000)
    with pytest.raises(ParseError) as info:
        flexjudge.parse(huge)
    assert not info.value.reason.startswith("internal")
    native = json.loads((OUTPUTS / "native_image.json").read_text(encoding="utf-8"))
    native["dimensions"][0]["criteria"][0]["score_1"] = True
    with pytest.raises(ParseError):
        flexjudge.parse(json.dumps(native))


def test_offsets_count_dropped_keys(flex_obj: dict) -> None:
    text = json.dumps({"extra": {"winner": "x"}, **{**flex_obj, "winner": "Image 1/2"}})
    with pytest.raises(ParseError) as info:
        flexjudge.parse(text)
    assert info.value.path == "winner"
    assert text[info.value.offset :].startswith('"winner": "Image 1/2"')


def test_fence_inside_a_reason_with_a_trailing_comma(flex_obj: dict) -> None:
    flex_obj["reason"] = "see ``` here"
    text = "```json\n" + json.dumps(flex_obj)[:-1] + ",}\n```"
    assert flexjudge.parse(text).verdict.winner == int(flex_obj["winner"][-1])


def test_a_string_value_that_reads_winner_is_not_a_key(flex_obj: dict) -> None:
    flex_obj["categories"][0]["dims"][0]["reason_1"] = "winner"
    flex_obj["categories"][0]["dims"][0]["reason_2"] = "cat_winner"
    judgment = flexjudge.parse(json.dumps(flex_obj), strict=True)
    assert not judgment.meta.recovered and judgment.dimensions[0].criteria[0].evidence_1 == "winner"
