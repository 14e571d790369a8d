"""`confidence_of`: from point margins, swap agreement and the winner token; and `Judge` setting it,
calibrated, against a served rule judge of known behaviour (tests/rule_judge.py)."""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from rule_judge import RIGHT, TOKEN, RuleJudge, pair, tokens, written
from served import running_server

from flexjudge.backends.base import TokenLogprob
from flexjudge.confidence import confidence_of, margin_of, winner_token_probability
from flexjudge.evaluation.calibration import CalibrationFileError, fit_calibration
from flexjudge.formats import parse, render
from flexjudge.judging import Judge
from flexjudge.reading import weighted_verdict
from flexjudge.schema import Judgment, Preferences, Verdict
from flexjudge.swap import merge_swapped, unswap


def logit(p: float) -> float:
    return math.log(p / (1 - p))


THINK = (Path(__file__).parent.parent / "examples" / "outputs" / "think_image.txt").read_text()


def _with_token(judgment: Judgment, probability: float | None) -> Judgment:
    return judgment.model_copy(
        update={"meta": judgment.meta.model_copy(update={"winner_probability": probability})}
    )


def test_split_confidence_is_the_winners_share_of_the_points_and_rises_with_the_margin() -> None:
    values = [confidence_of(written(winner, k)) for winner in (1, 2) for k in (0, 1, 2, 3, 4, 5)]
    for winner_values in (values[:6], values[6:]):
        assert winner_values == pytest.approx([0.5, 0.6, 0.7, 0.8, 0.9, 1.0])
        assert all(b > a for a, b in itertools.pairwise(winner_values))


def test_rating_margins_are_read_on_the_1_to_10_scale() -> None:
    judgment = parse(THINK, format="think")
    assert judgment.scoring == "rating" and judgment.verdict.winner is not None
    w = judgment.verdict.winner
    margins = [
        (c.score_1 - c.score_2) * (1 if w == 1 else -1) / 9 for d in judgment.dimensions for c in d.criteria
    ]
    assert margin_of(judgment, w) == pytest.approx(sum(margins) / len(margins))
    assert confidence_of(judgment) == pytest.approx(0.5 + sum(margins) / len(margins) / 2)


def test_a_winner_against_its_own_scores_is_below_one_half_and_a_tie_is_one_half() -> None:
    judgment = written(1, 3)
    against = judgment.model_copy(update={"verdict": Verdict(analysis="", winner=2)})
    assert confidence_of(against) == pytest.approx(0.2)
    tie = judgment.model_copy(update={"verdict": Verdict(analysis="", winner=None)})
    assert confidence_of(tie) == 0.5


def test_the_winner_token_pulls_the_confidence_its_way_only_for_the_judges_own_verdict() -> None:
    judgment = written(1, 1)  # margins alone: 0.6
    sure, unsure = _with_token(judgment, 0.99), _with_token(judgment, 0.3)
    assert confidence_of(unsure) < confidence_of(judgment) < confidence_of(sure)
    # log-odds averaged: logit(c) = (logit(0.6) + logit(0.99)) / 2
    assert logit(confidence_of(sure)) == pytest.approx((logit(0.6) + logit(0.99)) / 2)
    weighted = weighted_verdict(sure, Preferences(weighted_verdict=True))
    assert weighted.meta.verdict_rule == "weighted"
    assert confidence_of(weighted) == pytest.approx(0.6)


def test_swap_agreement_raises_and_disagreement_lowers_the_confidence() -> None:
    first = written(1, 3)
    agree = merge_swapped(first, unswap(written(2, 3)))  # the swapped run also prefers the caller's 1
    disagree = merge_swapped(first, unswap(written(1, 1)))  # shown second, 1 is the swapped run's 2
    assert agree.meta.swap is not None and agree.meta.swap.verdict_agreement
    assert disagree.meta.swap is not None and not disagree.meta.swap.verdict_agreement
    assert disagree.verdict.winner == 1  # the dimension majority over both runs' points
    assert confidence_of(agree) == pytest.approx(0.8)
    assert 0.5 < confidence_of(disagree) < confidence_of(first) < confidence_of(agree) + 1e-12
    assert logit(confidence_of(disagree)) == pytest.approx((logit(0.8) + logit(0.4)) / 2)


@pytest.mark.parametrize("output_format", ["flex", "native"])
def test_the_winner_token_is_found_in_flex_and_native_text(output_format: str) -> None:
    for winner in (1, 2):
        text = render(written(winner, 2), output_format)  # type: ignore[arg-type]
        spelled = tokens(text, 0.8)
        assert winner_token_probability(text, spelled, winner) == pytest.approx(0.8)
        assert winner_token_probability(text, spelled, 3 - winner) is None  # not the digit written
        assert winner_token_probability(text, None, winner) is None
        # tokens that do not spell the text's tail are not trusted
        shifted = (*spelled[:-1], TokenLogprob(spelled[-1].token + " ", 0.0))
        assert winner_token_probability(text, shifted, winner) is None


def test_the_winner_token_is_found_in_think_text() -> None:
    judgment = parse(THINK, format="think")
    pieces = [TokenLogprob(c, math.log(0.7) if c.isdigit() else 0.0) for c in THINK]
    assert winner_token_probability(THINK, pieces, judgment.verdict.winner) == pytest.approx(0.7)


# -- Judge against the served rule judge ---------------------------------------------------------------


@pytest.fixture(scope="module")
def served() -> Iterator[str]:
    with running_server(RuleJudge(logprobs=True), model_name="rule-judge") as (url, _):
        yield url


def _judge(url: str, **options: Any) -> Judge:
    backend_options = {"backoff_s": 0.01, **options.pop("backend_options", {})}
    return Judge("rule-judge", backend="openai", base_url=url, backend_options=backend_options, **options)


def test_judge_sets_the_uncalibrated_confidence_from_the_served_judgment(served: str) -> None:
    with _judge(served) as judge:
        for k in (1, 4):
            judgment = judge.judge("a cat", pair(True, k, sample=k))
            assert judgment.meta.confidence == pytest.approx(0.5 + k / 10)
            assert judgment.meta.winner_probability is None  # this backend was not asked for them


def test_judge_maps_the_confidence_through_a_calibration_map(served: str, tmp_path: Path) -> None:
    calibration = fit_calibration([0.6, 0.6, 0.9, 0.9, 0.9], [False, True, True, True, True], "isotonic")
    calibration.save(tmp_path / "map.json")
    with _judge(served, calibration=calibration) as judge:
        judgment = judge.judge("a cat", pair(True, 4, sample=7))
        assert judgment.meta.confidence == pytest.approx(1.0)  # isotonic: 0.9 -> 3 right of 3
        judgment = judge.judge("a cat", pair(True, 1, sample=8))
        assert judgment.meta.confidence == pytest.approx(0.5)  # 0.6 -> 1 right of 2
        swapped = judge.judge("a cat", pair(True, 4, sample=9), swap=True)
        assert swapped.meta.swap is not None and swapped.meta.winner_probability is None
        assert swapped.meta.confidence == pytest.approx(calibration(confidence_of(swapped)))
    for path in (tmp_path / "map.json", str(tmp_path / "map.json")):  # a saved map, by path
        judge = Judge("rule-judge", backend=RuleJudge(), calibration=path)
        assert judge.judge("a cat", pair(True, 4, sample=7)).meta.confidence == pytest.approx(1.0)


@pytest.mark.slow
def test_calibration_fitted_on_the_served_judge_recovers_its_known_accuracy(served: str) -> None:
    """The served rule judge is right with probability RIGHT[k] at margin k; confidence says 0.5 + k/10.
    Fit isotonic on its judgments: the map must give back RIGHT[k] (binomial noise allowed)."""
    items = [(k, s % 2 == 0, s) for k in (1, 2, 3, 4) for s in range(100)]
    with _judge(served, max_concurrency=16) as judge:
        judgments = judge.batch([("a dog", pair(first, k, sample)) for k, first, sample in items])
    confidences = [j.meta.confidence for j in judgments]
    pairs = zip(judgments, items, strict=True)
    correct = [j.verdict.winner == (1 if first else 2) for j, (_, first, _) in pairs]
    assert all(c is not None for c in confidences)
    fitted = fit_calibration([c for c in confidences if c is not None], correct, "isotonic")
    for k, right in RIGHT.items():
        assert fitted(0.5 + k / 10) == pytest.approx(right, abs=0.12)  # 100 draws: about 2.5 s.e.


@pytest.mark.parametrize("output_format", ["flex", "native"])
def test_served_log_probabilities_reach_the_winner_probability(output_format: str) -> None:
    with running_server(RuleJudge(output_format=output_format, logprobs=True)) as (url, injector):
        with _judge(url, output_format=output_format, backend_options={"logprobs": True}) as judge:
            judgment = judge.judge("a cat", pair(True, 2, sample=3))
            swapped = judge.judge("a cat", pair(True, 2, sample=3), swap=True)
        assert injector.bodies[0]["logprobs"] is True
    assert judgment.meta.winner_probability == pytest.approx(TOKEN[2], abs=1e-6)
    both = (logit(0.7) + logit(TOKEN[2])) / 2  # margins (0.5 + 2/10) and the token, log-odds averaged
    assert logit(judgment.meta.confidence or 0.5) == pytest.approx(both)
    assert swapped.meta.swap is not None
    assert [run.meta.winner_probability for run in (swapped.meta.swap.first, swapped.meta.swap.second)] == [
        pytest.approx(TOKEN[2], abs=1e-6)
    ] * 2


def test_a_bad_calibration_file_fails_when_the_judge_is_made(tmp_path: Path) -> None:
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(CalibrationFileError):
        Judge("rule-judge", backend=RuleJudge(), calibration=tmp_path / "bad.json")
    with pytest.raises(CalibrationFileError):
        Judge("rule-judge", backend=RuleJudge(), calibration=tmp_path / "missing.json")


@pytest.mark.slow
def test_the_local_backend_returns_the_chosen_tokens_log_probabilities(tmp_path: Path) -> None:
    """The tiny random model: one entry per generated token, each log-probability finite and at most 0;
    asking for them does not change what is decoded; a judgment reads its winner token's probability."""
    pytest.importorskip("transformers")
    from PIL import Image

    from flexjudge.backends.base import Message, Request, TextPart

    images = [Image.new("RGB", (32, 32), (200, 30, 30)), Image.new("RGB", (32, 32), (30, 30, 200))]
    with Judge("tiny-random", backend="transformers", max_string_length=6, max_new_tokens=700) as judge:
        asked = Request(
            messages=(Message(role="user", parts=(TextPart("hi"),)),), max_new_tokens=12, logprobs=True
        )
        (with_them,) = judge._run(judge.backend.generate([asked]))
        (without,) = judge._run(judge.backend.generate([Request(messages=asked.messages, max_new_tokens=12)]))
        judgment = judge.judge("a cat", images)
    assert without.token_logprobs is None and with_them.text == without.text
    assert with_them.token_logprobs is not None and len(with_them.token_logprobs) >= 1
    assert with_them.usage is not None  # one per generated token (the stop token is not text)
    assert len(with_them.token_logprobs) == with_them.usage.completion_tokens - (
        with_them.finish_reason == "stop"
    )
    if with_them.text.isascii():  # each token is decoded alone: a split character reads as U+FFFD pieces
        assert "".join(t.token for t in with_them.token_logprobs) == with_them.text
    assert all(math.isfinite(t.logprob) and t.logprob <= 0 for t in with_them.token_logprobs)
    assert judgment.meta.winner_probability is not None and 0 < judgment.meta.winner_probability <= 1
    assert judgment.meta.confidence == pytest.approx(confidence_of(judgment))
