"""The eval metrics: each one on small examples worked by hand, the bootstrap intervals, and compare."""

from __future__ import annotations

import importlib
import json
import math
import random
import subprocess
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rich.table import Table

from flexjudge.errors import UsageError
from flexjudge.evaluation.metrics import METRICS, _tau_b, compare, summarize
from flexjudge.evaluation.results import Label, ResultRow, Run

LABELS: list[Label] = [1, 2, "tie"]


def run(
    winner: Label | None,
    *,
    order: tuple[int, int] = (1, 2),
    status: str = "ok",
    findings: Sequence[str] = (),
    dims: dict[str, Label] | None = None,
    confidence: float | None = None,
) -> Run:
    if status != "ok":
        return Run(order=order, status=status, error="E: failed")  # type: ignore[arg-type]
    return Run(
        order=order,
        status="ok",
        winner=winner,
        findings=list(findings),
        dimension_winners=dims or {},
        confidence=confidence,
    )


def row(
    id: str, label: Label, primary: Run, swapped: Run | None = None, dims: dict[str, Label] | None = None
) -> ResultRow:
    return ResultRow(
        id=id,
        prompt="a cat",
        candidates=("a.png", "b.png"),
        label=label,
        primary=primary,
        swapped=swapped,
        dimension_labels=dims or {},
    )


# Seven examples for the accuracies and tau-b (primary runs only), worked by hand below.
ACCURACY_ROWS = [
    row("r1", 1, run(1)),  # right
    row("r2", 2, run(1)),  # wrong
    row("r3", "tie", run(1)),  # tie label: dropped from accuracy; wrong three-way
    row("r4", 1, run("tie")),  # tie verdict: dropped from accuracy; wrong three-way
    row("r5", "tie", run("tie")),  # dropped from accuracy; right three-way
    row("r6", 2, run(None, status="parse_failure")),  # failed: dropped from both
    row("r7", 2, run(2)),  # right
]


def test_accuracy_drops_ties_and_failures() -> None:
    m = summarize(ACCURACY_ROWS).to_json()
    assert m["n"] == 7
    assert m["accuracy"] == pytest.approx(2 / 3)  # r1, r7 right of r1, r2, r7
    assert m["denominators"]["accuracy"] == 3
    assert m["accuracy_with_ties"] == pytest.approx(3 / 6)  # r1, r5, r7 right of the six ok rows
    assert m["denominators"]["accuracy_with_ties"] == 6
    assert m["parse_failure_rate"] == pytest.approx(1 / 7)
    assert m["error_rate"] == 0.0 and m["truncation_rate"] == 0.0


def test_kendall_tau_b_by_hand() -> None:
    # (label, winner) codes of the six ok rows: r1 (1, 1), r2 (-1, 1), r3 (0, 1), r4 (1, 0), r5 (0, 0),
    # r7 (-1, -1). Of the 15 pairs, concordant: r1-r5, r1-r7, r3-r7, r4-r7, r5-r7 (5); discordant:
    # r2-r4, r2-r5, r3-r4 (3). Label ties: three pairs of equal codes (3); winner ties: three 1s and two
    # 0s (3 + 1 = 4). tau_b = (5 - 3) / sqrt((15 - 3)(15 - 4)).
    m = summarize(ACCURACY_ROWS).to_json()
    assert m["kendall_tau_b"] == pytest.approx(2 / math.sqrt(12 * 11))
    assert m["denominators"]["kendall_tau_b"] == 6


def test_kendall_tau_b_is_null_when_one_side_never_varies() -> None:
    same_winner = [row("a", 1, run(1)), row("b", 2, run(1)), row("c", "tie", run(1))]
    m = summarize(same_winner).to_json()
    assert m["kendall_tau_b"] is None and m["kendall_tau_b_ci"] is None
    assert m["accuracy"] == pytest.approx(0.5)  # the other metrics are still there
    perfect = [row("a", 1, run(1)), row("b", 2, run(2)), row("c", "tie", run("tie"))]
    assert summarize(perfect).to_json()["kendall_tau_b"] == pytest.approx(1.0)
    reversed_ = [row("a", 1, run(2)), row("b", 2, run(1))]
    assert summarize(reversed_).to_json()["kendall_tau_b"] == pytest.approx(-1.0)


# Six examples with swapped runs for position consistency, first-position wins, findings and failures.
SWAP_ROWS = [
    # consistent; first position won in the primary run, not in the swapped one
    row("s1", 1, run(1, findings=["winner_contradicts_scores"]), run(1, order=(2, 1))),
    # inconsistent; first position won in both runs
    row("s2", 2, run(1), run(2, order=(2, 1), findings=["a", "b"])),
    # consistent (a tie both times); no non-tie run
    row("s3", 1, run("tie", order=(2, 1)), run("tie")),
    # the swapped run truncated: no consistency; the primary's first candidate lost
    row("s4", 2, run(2), run(None, order=(2, 1), status="truncated")),
    # no swapped run; the first candidate lost
    row("s5", 2, run(2)),
    # the primary run failed: no consistency; the swapped run's first candidate (2) won
    row("s6", 2, run(None, status="error"), run(2, order=(2, 1))),
]


def test_position_consistency_and_first_position_win_rate() -> None:
    m = summarize(SWAP_ROWS).to_json()
    assert m["position_consistency"] == pytest.approx(2 / 3)  # s1, s3 of s1, s2, s3
    assert m["denominators"]["position_consistency"] == 3
    # Non-tie ok runs: s1 (won, lost), s2 (won, won), s4 (lost), s5 (lost), s6 swapped (won): 4 of 7.
    assert m["first_position_win_rate"] == pytest.approx(4 / 7)
    assert m["denominators"]["first_position_win_rate"] == 7


def test_findings_and_failure_rates_count_runs() -> None:
    m = summarize(SWAP_ROWS).to_json()
    # 11 runs (s5 has one); 9 of them ok, two of those with findings (s1 primary, s2 swapped).
    assert m["findings_rate"] == pytest.approx(2 / 9)
    assert m["truncation_rate"] == pytest.approx(1 / 11)
    assert m["error_rate"] == pytest.approx(1 / 11)
    assert m["parse_failure_rate"] == 0.0
    assert m["denominators"]["error_rate"] == 11


def test_without_swapped_runs_position_consistency_is_null() -> None:
    m = summarize(ACCURACY_ROWS).to_json()
    assert m["position_consistency"] is None and m["position_consistency_ci"] is None
    # first-position wins still count the primary runs: r1, r2, r3, r7 are non-tie; r1, r2, r3 won first
    assert m["first_position_win_rate"] == pytest.approx(3 / 4)


def test_per_dimension_agreement() -> None:
    rows = [
        row("d1", 1, run(1, dims={"alignment": 1, "quality": 2}), dims={"alignment": 1, "quality": "tie"}),
        row("d2", 1, run(1, dims={"alignment": 1, "quality": 1}), dims={"alignment": 2}),
        # quality labelled but not judged: dropped there
        row("d3", 1, run(1, dims={"alignment": "tie"}), dims={"alignment": "tie", "quality": "tie"}),
        # labelled, but the primary run failed
        row("d4", 1, run(None, status="parse_failure"), dims={"safety": 1}),
    ]
    per = summarize(rows).to_json()["per_dimension"]
    assert list(per) == ["alignment", "quality", "safety"]
    assert per["alignment"]["agreement"] == pytest.approx(2 / 3) and per["alignment"]["n"] == 3
    assert per["quality"]["agreement"] == 0.0 and per["quality"]["n"] == 1
    assert per["safety"] == {"agreement": None, "agreement_ci": None, "n": 0}


def test_calibration_is_the_confidence_parts_reliability_table() -> None:
    rows = [
        row("c1", 1, run(1, confidence=0.9)),
        row("c2", 2, run(1, confidence=0.8)),
        row("c3", 2, run(2, confidence=0.35)),
        row("c4", "tie", run(1, confidence=0.99)),  # tie label: dropped
        row("c5", 1, run("tie", confidence=0.5)),  # tie verdict: dropped
        row("c6", 1, run(1)),  # no confidence: dropped
    ]
    got = summarize(rows, resamples=0).to_json()["calibration"]
    assert summarize(ACCURACY_ROWS, resamples=0).calibration is None  # no confidences at all
    try:
        calibration = importlib.import_module("flexjudge.evaluation.calibration")
    except ModuleNotFoundError as exc:  # the confidence part not merged yet: no table, and no stand-in
        assert exc.name == "flexjudge.evaluation.calibration"
        assert got is None
        return
    confidences, correct = [0.9, 0.8, 0.35], [True, False, True]
    table = [b.to_json() for b in calibration.reliability(confidences, correct, bins=10)]
    ece = calibration.expected_calibration_error(confidences, correct, bins=10)
    assert got == {"ece": ece, "bins": table}
    # one judgment in each of bins 3, 8 and 9: ECE is the mean gap |right - confidence|
    assert got["ece"] == pytest.approx((0.65 + 0.8 + 0.1) / 3)
    assert [b["count"] for b in got["bins"]] == [0, 0, 0, 1, 0, 0, 0, 0, 1, 1]


def test_no_rows_gives_nulls_not_nan() -> None:
    m = summarize([]).to_json()
    assert m["n"] == 0 and m["per_dimension"] == {} and m["calibration"] is None
    for name in METRICS:
        assert m[name] is None and m[f"{name}_ci"] is None
    json.dumps(m, allow_nan=False)


def test_json_keys_and_table() -> None:
    s = summarize(SWAP_ROWS + ACCURACY_ROWS, resamples=50)
    m = s.to_json()
    for name in ("accuracy", "accuracy_with_ties", "position_consistency", "first_position_win_rate"):
        assert name in m and f"{name}_ci" in m
    assert {"parse_failure_rate", "kendall_tau_b", "findings_rate", "n", "calibration"} <= set(m)
    json.dumps(m, allow_nan=False)
    table = s.table()
    assert isinstance(table, Table)
    assert list(table.columns[0].cells) == list(METRICS)
    assert table.row_count == len(METRICS)


def test_importing_metrics_pulls_in_neither_numpy_nor_rich() -> None:
    code = "import sys, flexjudge.evaluation.metrics; print(sorted({'numpy', 'rich'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_duplicate_ids_and_negative_resamples_are_refused() -> None:
    with pytest.raises(UsageError):
        summarize([row("x", 1, run(1)), row("x", 1, run(2))])
    with pytest.raises(UsageError):
        summarize(ACCURACY_ROWS, resamples=-1)
    with pytest.raises(UsageError):
        compare(ACCURACY_ROWS, ACCURACY_ROWS, seed=-1)


def test_zero_resamples_gives_values_without_intervals() -> None:
    m = summarize(ACCURACY_ROWS, resamples=0).to_json()
    assert m["accuracy"] == pytest.approx(2 / 3) and m["accuracy_ci"] is None


# -- intervals -----------------------------------------------------------------------------------------


def noisy_rows(n: int, accuracy: float, seed: int = 1) -> list[ResultRow]:
    """n examples a judge gets right with probability `accuracy`, with swapped runs and some ties."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        label: Label = rng.choice([1, 2, 2, "tie"])
        wrong: Label = rng.choice([w for w in LABELS if w != label])
        winner = label if rng.random() < accuracy else wrong
        other: Label = winner if rng.random() < 0.8 else rng.choice(LABELS)
        out.append(row(f"{i:05d}", label, run(winner), run(other, order=(2, 1))))
    return out


def test_intervals_contain_the_estimate_and_shrink_with_n() -> None:
    small, large = summarize(noisy_rows(60, 0.7)).to_json(), summarize(noisy_rows(2400, 0.7)).to_json()
    for name in ("accuracy", "accuracy_with_ties", "kendall_tau_b", "position_consistency"):
        for m in (small, large):
            low, high = m[f"{name}_ci"]
            assert low <= m[name] <= high, name
        width = {k: m[f"{name}_ci"][1] - m[f"{name}_ci"][0] for k, m in (("small", small), ("large", large))}
        # sqrt(40) ~ 6.3 times narrower in theory; well under half is the claim
        assert width["large"] < width["small"] / 3, name


def test_the_seed_makes_intervals_reproducible() -> None:
    rows = noisy_rows(200, 0.6)
    same = summarize(rows, seed=3).to_json(), summarize(rows, seed=3).to_json()
    assert same[0] == same[1]
    other = summarize(rows, seed=4).to_json()
    assert other["accuracy"] == same[0]["accuracy"] and other["accuracy_ci"] != same[0]["accuracy_ci"]


def test_bootstrap_matches_a_direct_resampling() -> None:
    # The same draws the module makes (one chunk: rows in id order, numpy's default_rng(seed)),
    # scored by a plain loop over each resampled list of rows.
    rows = noisy_rows(30, 0.6)
    resamples, seed = 40, 7
    got = summarize(rows, resamples=resamples, seed=seed).to_json()
    draws = np.random.default_rng(seed).integers(0, len(rows), size=(resamples, len(rows)))
    acc, tau = [], []
    for draw in draws:
        sample = [rows[i] for i in draw]
        kept = [r for r in sample if r.label != "tie" and r.primary.winner != "tie"]
        if kept:
            acc.append(sum(r.primary.winner == r.label for r in kept) / len(kept))
        t = reference_tau_b([code(r.label) for r in sample], [code(r.primary.winner) for r in sample])
        if t is not None:
            tau.append(t)
    assert got["accuracy_ci"] == pytest.approx(list(np.percentile(acc, [2.5, 97.5])))
    assert got["kendall_tau_b_ci"] == pytest.approx(list(np.percentile(tau, [2.5, 97.5])))


# -- compare -------------------------------------------------------------------------------------------


def test_compare_identical_judges_differ_by_exactly_zero() -> None:
    rows = noisy_rows(300, 0.7)
    c = compare(rows, list(reversed(rows))).to_json()
    assert c["n"] == 300
    for name in ("accuracy", "accuracy_with_ties"):
        assert c[f"{name}_diff"] == 0.0 and c[f"{name}_diff_ci"] == [0.0, 0.0]
        assert c[f"{name}_a"] == c[f"{name}_b"] == summarize(rows).to_json()[name]
    json.dumps(c, allow_nan=False)


def test_compare_is_b_minus_a_and_paired() -> None:
    a = noisy_rows(400, 0.5)
    # b is a with the first 20 wrong non-tie answers made right: never worse on any example
    b, fixed = [], 0
    for r in a:
        if fixed < 20 and r.label != "tie" and r.primary.winner not in (r.label, "tie"):
            r = row(r.id, r.label, run(r.label), r.swapped)
            fixed += 1
        b.append(r)
    sa, sb = summarize(a).to_json(), summarize(b).to_json()
    c = compare(a, b).to_json()
    assert c["accuracy_diff"] == pytest.approx(sb["accuracy"] - sa["accuracy"]) and c["accuracy_diff"] > 0
    assert c["accuracy_with_ties_diff"] == pytest.approx(20 / 400)
    # Paired: b is never worse on an example, so no resample can favour a. Unpaired intervals (each
    # judge resampled on its own) would reach well below 0 at this n.
    low, high = c["accuracy_with_ties_diff_ci"]
    assert 0 < low <= 20 / 400 <= high
    assert compare(b, a).to_json()["accuracy_with_ties_diff"] == pytest.approx(-20 / 400)


def test_compare_pairs_only_shared_ids_and_refuses_mismatched_labels() -> None:
    a = [row("x", 1, run(1)), row("y", 2, run(1)), row("only-a", 1, run(1))]
    b = [row("y", 2, run(2)), row("x", 1, run(1)), row("only-b", 2, run(1))]
    c = compare(a, b, resamples=20).to_json()
    assert (c["n"], c["only_a"], c["only_b"]) == (2, 1, 1)
    assert (c["accuracy_a"], c["accuracy_b"], c["accuracy_diff"]) == (0.5, 1.0, 0.5)
    assert isinstance(compare(a, b, resamples=20).table(), Table)
    with pytest.raises(UsageError):
        compare(a, [row("x", 2, run(1))])
    nothing = compare(a, [row("z", 1, run(1))]).to_json()
    assert nothing["n"] == 0 and nothing["accuracy_diff"] is None and nothing["accuracy_diff_ci"] is None


# -- properties ----------------------------------------------------------------------------------------


def code(label: Label | None) -> int:
    return {1: 1, "tie": 0, 2: -1}[label]  # type: ignore[index]


def reference_tau_b(x: Sequence[int], y: Sequence[int]) -> float | None:
    """Kendall's tau-b straight from its definition, over all pairs."""
    n = len(x)
    concordant = discordant = tied_x = tied_y = 0
    for i in range(n):
        for j in range(i + 1, n):
            dx, dy = x[i] - x[j], y[i] - y[j]
            tied_x += dx == 0
            tied_y += dy == 0
            concordant += dx * dy > 0
            discordant += dx * dy < 0
    n0 = n * (n - 1) // 2
    denom = (n0 - tied_x) * (n0 - tied_y)
    return None if denom == 0 else (concordant - discordant) / math.sqrt(denom)


labels = st.sampled_from(LABELS)
dimension_maps = st.dictionaries(st.sampled_from(["alignment", "quality"]), labels, max_size=2)
# A run as plain data (status, winner, findings, dimension winners), built once: strategies made inside
# a composite on every draw cost more than the test itself.
run_specs = st.tuples(
    st.sampled_from(["ok", "ok", "ok", "parse_failure", "truncated", "error"]),
    labels,
    st.lists(st.sampled_from(["f1", "f2"]), max_size=2),
    dimension_maps,
)
row_specs = st.tuples(
    st.sampled_from([(1, 2), (2, 1)]), labels, run_specs, st.none() | run_specs, dimension_maps
)


def _run(spec: tuple[str, Label, list[str], dict[str, Label]], order: tuple[int, int]) -> Run:
    status, winner, findings, dims = spec
    return run(winner, order=order, status=status, findings=findings, dims=dims)


result_rows = st.lists(row_specs, max_size=20).map(
    lambda specs: [
        row(f"e{i}", label, _run(p, order), None if s is None else _run(s, order[::-1]), dims)
        for i, (order, label, p, s, dims) in enumerate(specs)
    ]
)


def _values(m: dict[str, Any]) -> list[tuple[str, float | None, list[float] | None]]:
    out = [(name, m[name], m[f"{name}_ci"]) for name in METRICS if name != "kendall_tau_b"]
    return out + [(d, v["agreement"], v["agreement_ci"]) for d, v in m["per_dimension"].items()]


@settings(max_examples=40, deadline=None)
@given(result_rows)
def test_rates_lie_in_the_unit_interval_and_json_has_no_nan(rows: list[ResultRow]) -> None:
    m = summarize(rows, resamples=30).to_json()
    json.dumps(m, allow_nan=False)
    for name, value, ci in _values(m):
        assert (value is None) == (ci is None), name
        if value is not None and ci is not None:
            assert 0.0 <= ci[0] <= ci[1] <= 1.0 and 0.0 <= value <= 1.0, name
    if m["kendall_tau_b"] is not None:
        assert -1.0 - 1e-12 <= m["kendall_tau_b"] <= 1.0 + 1e-12


@settings(max_examples=30, deadline=None)
@given(result_rows, st.randoms(use_true_random=False))
def test_row_order_does_not_change_the_summary(rows: list[ResultRow], rnd: random.Random) -> None:
    shuffled = list(rows)
    rnd.shuffle(shuffled)
    assert summarize(shuffled, resamples=30).to_json() == summarize(rows, resamples=30).to_json()


@settings(max_examples=80, deadline=None)
@given(st.lists(st.tuples(labels, labels), max_size=30))
def test_tau_b_equals_the_pairwise_definition(pairs: list[tuple[Label, Label]]) -> None:
    rows = [row(f"e{i}", label, run(winner)) for i, (label, winner) in enumerate(pairs)]
    got = summarize(rows, resamples=0).to_json()["kendall_tau_b"]
    want = reference_tau_b([code(label) for label, _ in pairs], [code(w) for _, w in pairs])
    assert (got is None) == (want is None)
    if want is not None:
        assert got == pytest.approx(want, abs=1e-12)


@settings(max_examples=80, deadline=None)
@given(st.lists(st.integers(0, 6), min_size=9, max_size=9))
def test_tau_b_of_a_table_with_repeats_equals_the_expanded_sample(counts: list[int]) -> None:
    # A bootstrap resample holds rows several times: the count formula must treat each copy as a unit.
    x = [a for cell, k in enumerate(counts) for a in [cell // 3 - 1] * k]
    y = [b for cell, k in enumerate(counts) for b in [cell % 3 - 1] * k]
    want = reference_tau_b(x, y)
    got = _tau_b(np.array([counts], float))[0]
    assert (want is None) == bool(np.isnan(got))
    if want is not None:
        assert got == pytest.approx(want, abs=1e-12)
