"""benchmarks/generator_learns.py: its colour-distance rule judge writes judgments flexjudge reads and checks
clean, and the benchmark runs end to end at its smoke scale (training, the reward server, the evaluator,
the report and the image strip). Whether the generator learns is the benchmark's to measure, not asserted
here."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

import flexjudge

ROOT = Path(__file__).parent.parent


@pytest.fixture
def colour_judge(monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))  # the benchmark's modules import each other
    import _colour_distance

    return _colour_distance


# For "red" (220, 40, 40): a clear pair (30 against 159 levels) and a close one (30 against 41).
PAIRS = {"clear": ((200, 60, 50), (120, 120, 160)), "close": ((200, 60, 50), (190, 60, 60))}


@pytest.mark.parametrize("pair", sorted(PAIRS))
@pytest.mark.parametrize("near_first", [True, False])
def test_the_nearer_colour_wins_in_a_judgment_that_checks_clean(
    colour_judge: Any, pair: str, near_first: bool
) -> None:
    near, far = (Image.new("RGB", (16, 16), shade) for shade in PAIRS[pair])
    images = [near, far] if near_first else [far, near]
    backend = colour_judge.ColourDistanceJudge()
    with flexjudge.Judge(backend=backend) as judge:
        judgment = judge.judge("a red flower", images)
    assert judgment.verdict.winner == (1 if near_first else 2)
    assert all(d.winner == judgment.verdict.winner for d in judgment.dimensions)
    assert flexjudge.check(judgment, prompt="a red flower") == []
    assert len(backend.answers) == 1
    prompt, text = backend.answers[0]
    strict = flexjudge.parse(text, "flex", "image", strict=True, prompt=prompt)  # the exact format
    assert prompt == "a red flower"
    assert flexjudge.check(strict, prompt=prompt) == []


def test_a_request_naming_no_colour_gets_no_verdict(colour_judge: Any) -> None:
    images = [Image.new("RGB", (16, 16), (200, 60, 50)), Image.new("RGB", (16, 16), (0, 0, 0))]
    backend = colour_judge.ColourDistanceJudge()
    with flexjudge.Judge(backend=backend) as judge, pytest.raises(flexjudge.FlexjudgeError):
        judge.judge("a flower", images)  # the rule cannot judge it: an unreadable answer, not a guess
    assert backend.answers == []


@pytest.mark.slow  # about 30 s of CPU: torch, a tiny pipeline, a reward server, 2 GRPO steps
def test_generator_benchmark_runs_end_to_end(tmp_path: Path) -> None:
    report_path, figure = tmp_path / "report.json", tmp_path / "strip.png"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "benchmarks/generator_learns.py", "--smoke", "--json", str(report_path),
         "--figure", str(figure)],
        capture_output=True, text=True, timeout=600, cwd=ROOT, env=env, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-4000:]
    report = json.loads(report_path.read_text())
    assert report["machine"] and report["command"].endswith("--figure " + str(figure))
    (seed,) = report["seeds"]
    assert seed["failed_pairs"] == 0  # every judgment the server got from the rule judge was read
    assert [p["step"] for p in seed["curve"]] == [0, 1, 2]
    assert seed["pairs"] == 4 and 0 <= seed["wins"] <= 4  # 2 held-out templates x 2 colours x 1 noise
    assert seed["ci95"][0] <= seed["win_rate"] <= seed["ci95"][1]
    assert 0 <= seed["named_is_nearest_before"] <= 1 and 0 <= seed["named_is_nearest_after"] <= 1
    assert 0 <= seed["train_prompts_win_rate"] <= 1 and len(seed["train_prompts_named_is_nearest"]) == 2
    assert len(seed["train_log"]) == 2 and all(e["advantage_abs"] > 0 for e in seed["train_log"])
    assert seed["train_cpu_s"] > 0 and seed["wall_s"] >= seed["train_wall_s"] > 0
    # The strip: per seed a row of 8 px target swatches, then before and after; 24 px cells, 2 px gaps.
    with Image.open(figure) as strip:
        assert strip.format == "PNG" and strip.size == (4 * 26, 8 + 2 + 2 * 26)
        colours = strip.convert("RGB").getcolors(maxcolors=100_000) or []
        assert len(colours) > 3  # samples were drawn into it, not left blank
    assert figure.stat().st_size == report["figure_bytes"] < 200_000
