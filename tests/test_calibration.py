"""Reliability tables, ECE and fitted calibration maps, on judgments drawn from a known noise model:
the rule judge of tests/rule_judge.py writes margin k, which `confidence_of` reads as 0.5 + k / 10, and is
right with a known probability at each k."""

from __future__ import annotations

import itertools
import json
import math
import random
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from rule_judge import RIGHT, written

from flexjudge.confidence import confidence_of
from flexjudge.errors import FlexjudgeError, UsageError
from flexjudge.evaluation.calibration import (
    CalibrationFileError,
    CalibrationMap,
    expected_calibration_error,
    fit_calibration,
    reliability,
)


def _draw(n: int, truth: dict[int, float], seed: int) -> tuple[list[float], list[bool]]:
    """`n` rule-judge judgments per margin: their confidence and whether each was right."""
    rng = random.Random(seed)
    confidences, correct = [], []
    for k, right in truth.items():
        confidence = confidence_of(written(1, k))
        for _ in range(n):
            confidences.append(confidence)
            correct.append(rng.random() < right)
    return confidences, correct


def test_the_reliability_table_counts_each_bin() -> None:
    table = reliability([0.05, 0.15, 0.95, 1.0, 0.91], [False, True, True, False, True], bins=10)
    assert [b.count for b in table] == [1, 1, 0, 0, 0, 0, 0, 0, 0, 3]
    assert (table[0].low, table[0].high, table[9].high) == (0.0, pytest.approx(0.1), 1.0)
    assert table[9].mean_confidence == pytest.approx((0.95 + 1.0 + 0.91) / 3)
    assert table[9].accuracy == pytest.approx(2 / 3)
    assert table[2].mean_confidence is None and table[2].accuracy is None
    assert table[9].to_json()["count"] == 3
    ece = expected_calibration_error([0.05, 0.15, 0.95, 1.0, 0.91], [False, True, True, False, True])
    assert ece == pytest.approx((0.05 + 0.85 + 3 * abs(2 / 3 - 2.86 / 3)) / 5)
    assert expected_calibration_error([], []) is None


@pytest.mark.parametrize(
    ("confidences", "correct"),
    [([0.5], [True, False]), ([1.5], [True]), ([math.nan], [True]), ([0.5], [1]), ([True], [True])],
)
def test_bad_inputs_are_usage_errors(confidences: list[float], correct: list[bool]) -> None:
    with pytest.raises(UsageError):
        reliability(confidences, correct)
    with pytest.raises(UsageError):
        fit_calibration(confidences, correct)


def test_isotonic_recovers_the_known_accuracy_at_each_margin_and_ece_falls() -> None:
    confidences, correct = _draw(1000, RIGHT, seed=1)
    fitted = fit_calibration(confidences, correct, "isotonic")
    for k, right in RIGHT.items():
        assert fitted(0.5 + k / 10) == pytest.approx(right, abs=0.04)  # 1000 draws: s.e. <= 0.016
    held_out, truth = _draw(1000, RIGHT, seed=2)
    before = expected_calibration_error(held_out, truth)
    after = expected_calibration_error([fitted(p) for p in held_out], truth)
    assert before is not None and after is not None
    assert before > 0.04 and after < 0.015 and after < before / 3


def test_isotonic_pools_tied_confidences_before_it_pools_violators() -> None:
    # the first judgment at 0.7 is wrong, the rest right: 0.7's block must not be swallowed by 0.6's
    fitted = fit_calibration(
        [0.6, 0.6, 0.7, 0.7, 0.7, 0.7], [True, False, False, True, True, True], "isotonic"
    )
    assert (fitted.x, fitted.y) == ((0.6, 0.7), (0.5, 0.75))


def test_platt_recovers_a_known_logistic_truth() -> None:
    a, b = 2.0, -0.4
    truth = {k: 1 / (1 + math.exp(-(a * math.log((5 + k) / (5 - k)) + b))) for k in (1, 2, 3, 4)}
    confidences, correct = _draw(2000, truth, seed=3)
    fitted = fit_calibration(confidences, correct, "platt")
    assert fitted.a == pytest.approx(a, abs=0.25) and fitted.b == pytest.approx(b, abs=0.2)
    for k, right in truth.items():
        assert fitted(0.5 + k / 10) == pytest.approx(right, abs=0.03)
    held_out, labels = _draw(1000, truth, seed=4)
    before = expected_calibration_error(held_out, labels)
    after = expected_calibration_error([fitted(p) for p in held_out], labels)
    assert before is not None and after is not None and after < before / 2


def test_platt_never_reverses_the_order() -> None:
    # confidence that anti-predicts correctness: the map goes flat at the smoothed base rate
    fitted = fit_calibration([0.6] * 50 + [0.9] * 50, [True] * 50 + [False] * 50, "platt")
    assert fitted.a == 0.0
    assert fitted(0.6) == pytest.approx(fitted(0.9)) == pytest.approx(0.5, abs=0.01)


@given(
    st.lists(st.tuples(st.floats(0, 1), st.booleans()), min_size=1, max_size=60),
    st.sampled_from(["platt", "isotonic"]),
    st.lists(st.floats(0, 1), min_size=2, max_size=10),
)
def test_every_fitted_map_is_monotone_and_stays_in_0_1(
    data: list[tuple[float, bool]], method: str, points: list[float]
) -> None:
    fitted = fit_calibration([p for p, _ in data], [c for _, c in data], method)  # type: ignore[arg-type]
    values = [fitted(p) for p in sorted(points)]
    assert all(0.0 <= v <= 1.0 for v in values)
    assert all(b >= a - 1e-12 for a, b in itertools.pairwise(values))
    assert CalibrationMap.from_json(json.loads(json.dumps(fitted.to_json()))) == fitted


@pytest.mark.parametrize("method", ["platt", "isotonic"])
def test_save_and_load_round_trip(tmp_path: Path, method: str) -> None:
    confidences, correct = _draw(50, RIGHT, seed=5)
    fitted = fit_calibration(confidences, correct, method)  # type: ignore[arg-type]
    path = tmp_path / "calibration.json"
    fitted.save(path)
    fitted.save(path)  # replaced whole, no temporary file left behind
    assert [p.name for p in tmp_path.iterdir()] == ["calibration.json"]
    loaded = CalibrationMap.load(path)
    assert loaded == fitted
    assert [loaded(p) for p in (0.0, 0.55, 0.75, 1.0)] == [fitted(p) for p in (0.0, 0.55, 0.75, 1.0)]


@pytest.mark.parametrize(
    "content",
    [
        None,  # missing
        "not json",
        "[]",
        '{"format": "other", "version": 1, "method": "platt", "n": 1, "a": 1, "b": 0}',
        '{"format": "flexjudge-calibration", "version": 2, "method": "platt", "n": 1, "a": 1, "b": 0}',
        '{"format": "flexjudge-calibration", "version": 1, "method": "platt", "n": 1, "a": -1, "b": 0}',
        '{"format": "flexjudge-calibration", "version": 1, "method": "platt", "n": 1, "a": 1}',
        '{"format": "flexjudge-calibration", "version": 1, "method": "isotonic", "n": 1, "x": [0.2, 0.1], '
        '"y": [0.1, 0.2]}',
        '{"format": "flexjudge-calibration", "version": 1, "method": "isotonic", "n": 1, "x": [0.1, 0.2], '
        '"y": [0.3, 0.2]}',
        '{"format": "flexjudge-calibration", "version": 1, "method": "isotonic", "n": 1, "x": "ab", '
        '"y": [1]}',
        '{"format": "flexjudge-calibration", "version": 1, "method": "sigmoid", "n": 1, "a": 1, "b": 0}',
    ],
)
def test_bad_files_are_typed_errors(tmp_path: Path, content: str | None) -> None:
    path = tmp_path / "calibration.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(CalibrationFileError) as caught:
        CalibrationMap.load(path)
    assert isinstance(caught.value, FlexjudgeError)


def test_a_map_refuses_a_confidence_off_0_1() -> None:
    fitted = fit_calibration([0.6, 0.9], [False, True], "isotonic")
    for bad in (-0.1, 1.1, math.nan):
        with pytest.raises(UsageError):
            fitted(bad)
