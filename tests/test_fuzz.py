"""A brief fuzz run of every reader (issue 8, point 6): no crash, no invented verdict, no hang.

The big run is `benchmarks/fuzz.py --inputs 1000000`; this one is sized for the default suite. The harness
and its oracle are in tests/fuzzing.py; the last tests here prove that oracle and watchdog can fail.
"""

from __future__ import annotations

import random
import subprocess
import sys
from pathlib import Path

import pytest
from fuzzing import (
    OPEN_RAW,
    Tally,
    case_at,
    every_mutation,
    fuzz_inline,
    fuzz_pool,
    load_seeds,
    read_always_one,
    read_naive,
    seed_from_text,
    splice,
)
from hypothesis import given, settings
from hypothesis import strategies as st
from strategies import split_judgments, think_judgments

import flexjudge

ROOT = Path(__file__).parent.parent
SEEDS = load_seeds()


def _clean(tally: Tally) -> None:
    """The goal: nothing found. Findings are printed in the assertion so a failure names its reproducer."""
    assert (tally.crashes, tally.invented, tally.hangs) == (0, 0, 0), tally.findings[:5]


def test_seeds_cover_every_format_and_example() -> None:
    examples = {p.name for p in (ROOT / "examples" / "outputs").iterdir()}
    assert examples <= {s.name for s in SEEDS}
    formats = {flexjudge.detect_format(s.text) for s in SEEDS}
    assert formats == {"flex", "native", "think"}
    assert any(s.kind == "point" for s in SEEDS) and any(s.text.startswith("I compared") for s in SEEDS)


def test_truncation_at_every_position() -> None:
    """Every cut of the short seeds, and every few characters of the long ones."""
    cases = []
    for seed in SEEDS:
        step = max(1, len(seed.text) // 400)
        cases += [
            (p, splice(seed, p, len(seed.text), "", f"truncate@{p}")) for p in range(0, len(seed.text), step)
        ]
    tally = fuzz_inline(cases)
    _clean(tally)
    assert tally.inputs == len(cases) > 4000


def test_brief_pool_run() -> None:
    """Every mutation kind on every seed, on the same watched pool the benchmark uses."""
    tally = fuzz_pool(3000, workers=2, open_bugs=True)
    _clean(tally)
    assert tally.inputs == 3000
    assert tally.read > 500  # not only refusals: mutations that keep the verdict readable are read


@settings(max_examples=40)
@given(split_judgments(), st.sampled_from(["flex", "native"]), st.randoms(use_true_random=False))
def test_rendered_judgments_survive_mutation(
    judgment: flexjudge.Judgment, fmt: str, rng: random.Random
) -> None:
    text = flexjudge.render(judgment, fmt)  # type: ignore[arg-type]
    assert judgment.verdict.winner is not None
    seed = seed_from_text(f"hypothesis {fmt}", text, judgment.verdict.winner)
    cases = [(0, splice(seed, 0, 0, "", "none")), *enumerate(every_mutation(seed, rng, open_bugs=True), 1)]
    _clean(fuzz_inline(cases))


@settings(max_examples=40)
@given(think_judgments(), st.randoms(use_true_random=False))
def test_rendered_think_survives_mutation(judgment: flexjudge.Judgment, rng: random.Random) -> None:
    assert judgment.verdict.winner is not None
    seed = seed_from_text(
        "hypothesis think", flexjudge.render(judgment, "think"), judgment.verdict.winner, think=True
    )
    cases = [(0, splice(seed, 0, 0, "", "none")), *enumerate(every_mutation(seed, rng, open_bugs=True), 1)]
    _clean(fuzz_inline(cases))


# ---------------------------------------------------------------- bugs the fuzzer found

# Found by the fuzzer, fixed in _recovery.py (a member counts only when what follows shows it ended):
# lenient flex read a raw winner value that starts with a candidate and goes on as that candidate, where
# the grammar refuses "Image 1 or 2"; the JSON repair kept `"winner": 1` read before the junk.
_RAW_WINNER = (
    '{"prompt": "p", "categories": [{"name": "A", "dims": [{"name": "d", "reason_1": "", "reason_2": "", '
    '"score_1": 1, "score_2": 2}], "cat_reason": "", "cat_winner": "Image 2"}], "reason": "r", '
    '"winner": "Image 1" or "Image 2"}'
)


@pytest.mark.parametrize("raw", OPEN_RAW)
def test_raw_winner_with_junk_is_refused(raw: str) -> None:
    text = _RAW_WINNER.replace('"Image 1" or "Image 2"', raw)
    with pytest.raises(flexjudge.ParseError):
        flexjudge.parse(text)


def test_raw_winners_with_junk_fuzzed_on_every_flex_seed() -> None:
    """The same inputs as the fuzzer meets them, on every flex seed."""
    flex = [s for s in SEEDS if s.kind == "pair" and s.text[s.span[0] - 1] == '"']
    cases = [
        (i, splice(s, s.span[0] - 1, s.span[1] + 1, raw, raw)) for i, s in enumerate(flex) for raw in OPEN_RAW
    ]
    _clean(fuzz_inline(cases))


# ---------------------------------------------------------------- the harness can fail


def test_oracle_reports_a_reader_that_always_answers_one() -> None:
    cases = [(i, case_at(SEEDS, i)) for i in range(200)]
    tally = fuzz_inline(cases, read_always_one)
    assert tally.invented > 0
    assert {f.seed for f in tally.findings} >= {s.name for s in SEEDS if s.winner == 2}


def test_oracle_reports_a_reader_blind_to_duplicates() -> None:
    """A first-match regex reader reads clean text right; the oracle catches it on duplicated winners."""
    flex = next(s for s in SEEDS if s.name == "flex(flex_image.json)")
    clean = fuzz_inline([(0, splice(flex, 0, 0, "", "none"))], read_naive)
    assert clean.invented == 0
    e = flex.span[1]
    # A duplicated winner with an escaped key, naming the other candidate: must fail, the naive reader reads.
    late = splice(flex, e + 1, e + 1, ', "winn\\u0065r": "Image 1"', "dup", adds_winner="Image 1")
    assert late.allowed == frozenset()
    early = splice(flex, 1, 1, '"winner": "Image 1", ', "dup-first", adds_winner="Image 1")
    tally = fuzz_inline([(1, late), (2, early)], read_naive)
    assert tally.invented >= 2  # both modes of the early one read 1
    assert any(f.mutation == "dup-first" for f in tally.findings)


def test_oracle_judges_the_changed_value_not_the_whole_text() -> None:
    flex = next(s for s in SEEDS if s.name == "flex_image.json")
    s, e = flex.span
    assert splice(flex, 0, 1, "", "far").allowed == {2}
    assert splice(flex, s, e, "Image 1", "swap").allowed == {1}
    assert splice(flex, s, e, "Image 1 or 2", "two").allowed == frozenset()
    assert splice(flex, s + 6, e, "\uff12", "fullwidth").allowed == {2}
    assert splice(flex, s, len(flex.text), "", "cut before").allowed == frozenset()


def test_watchdog_kills_a_hanging_reader_and_carries_on() -> None:
    """The sleeping reader hangs on inputs of odd length; each is killed, recorded, and the rest are read."""
    count = 8
    odd = {i for i in range(count) if len(case_at(SEEDS, i).text) % 2}
    assert 0 < len(odd) < count
    tally = fuzz_pool(count, workers=2, reader="sleeping", limit_s=1.0, limit_s_per_kb=0.0)
    assert tally.hangs == len(odd)
    assert {f.index for f in tally.findings if f.what == "hang"} == odd
    assert tally.inputs == count - len(odd)
    assert (tally.crashes, tally.invented) == (0, 0)


def test_benchmark_runs_and_records(tmp_path: Path) -> None:
    """The smoke run, in the shape of tests/test_benchmarks.py (no timing asserted)."""
    record = tmp_path / "RESULTS.md"
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "fuzz.py"), "--inputs", "300", "--workers", "2",
         "--skip-open", "--record", str(record)],
        capture_output=True, text=True, timeout=300, cwd=ROOT, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    text = record.read_text(encoding="utf-8")
    for needle in ("inputs tried | 300", "crashes | 0", "invented verdicts | 0", "slowest input per KB"):
        assert needle in text
    assert "--inputs" in subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "fuzz.py"), "--help"], capture_output=True, text=True,
        check=True,
    ).stdout  # fmt: skip


@pytest.mark.slow
def test_long_pool_run() -> None:
    _clean(fuzz_pool(100_000, workers=2, salt=7, open_bugs=True))
