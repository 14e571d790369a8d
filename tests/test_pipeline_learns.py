"""benchmarks/pipeline_learns.py at its smallest scale: every stage of the training pipeline runs, as a user
runs it, and writes what the next stage reads. Accuracy is the benchmark's to measure, not asserted here."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from datasets import load_from_disk

from flexjudge.traces import iter_reports

ROOT = Path(__file__).parent.parent


@pytest.mark.slow  # about 100 s of CPU: nine commands, each starting torch
def test_pipeline_benchmark_runs_every_stage(tmp_path: Path) -> None:
    work, record = tmp_path / "work", tmp_path / "RESULTS.md"
    env = {k: v for k, v in os.environ.items() if k != "FLEXJUDGE_BASE_URL"}
    env.update(PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1")
    script = [sys.executable, "benchmarks/pipeline_learns.py"]
    result = subprocess.run(
        [*script, "--smoke", "--work", str(work), "--record", str(record)],
        capture_output=True,
        text=True,
        timeout=1800,
        cwd=ROOT,
        env=env,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-4000:]

    pairs = [json.loads(line) for line in (work / "train.jsonl").read_text().splitlines()]
    traces = [json.loads(line) for line in (work / "traces.jsonl").read_text().splitlines()]
    assert len(traces) == 2 * len(pairs)  # both candidate orders of every pair
    assert all(trace["agrees"] for trace in traces)  # the rule teacher reads the colours right
    assert not (work / "traces.failures.jsonl").exists() or not (work / "traces.failures.jsonl").read_text()
    reports = list(iter_reports(work / "traces.jsonl"))
    assert len(reports) == len(traces) and all(r.valid() and not r.problems for r in reports)
    assert all(r.judgment is not None and r.judgment.verdict.winner == r.label for r in reports)

    stats = json.loads((work / "sft-data" / "stats.json").read_text())
    assert stats["rows"]["train"] + stats["rows"]["eval"] == len(traces)
    assert len(load_from_disk(str(work / "sft-data" / "train"))) == stats["rows"]["train"] > 0

    tests = (work / "test.jsonl").read_text().splitlines()
    for stage in ("step-0", "after-SFT", "after-DPO"):
        rows = (work / f"eval-{stage}.jsonl").read_text().splitlines()
        assert sorted(json.loads(r)["id"] for r in rows) == sorted(json.loads(t)["id"] for t in tests)

    dpo = load_from_disk(str(work / "dpo-pairs" / "train"))
    assert len(dpo) > 0 and {"prompt", "chosen", "rejected", "images"} <= set(dpo.column_names)
    for model in ("sft-stage-1", "sft", "dpo"):
        assert (work / "runs" / model / "model.safetensors").is_file()
        assert json.loads((work / "runs" / model / "train_summary.json").read_text())["global_step"] == 2

    recorded = record.read_text()
    assert "## pipeline_learns" in recorded
    stages = ("| distill |", "| sft stage 1 |", "| sft stage 2 |", "| probe |", "| dpo |")
    for row in ("| step 0 |", "| after SFT |", "| after DPO |", *stages):
        assert row in recorded and row in result.stdout


def test_teacher_trace_is_checked_and_decided_by_colours(monkeypatch: pytest.MonkeyPatch) -> None:
    """The rule teacher's trace passes `check()`, writes the named colour beside each image's colour and
    whether they are the same before any score, both colours as the prompt's own tokens, fits the eval's
    18-character string bound, and its winner is the image showing the named colour, in either order."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    from _colour_task import colour_judgment
    from _colour_tokenizer import colour_tokenizer

    from flexjudge import check, parse

    tokenizer = colour_tokenizer()

    for shown, winner in ((("red", "blue"), 1), (("blue", "red"), 2)):
        raw = colour_judgment("A red picture", shown, "red")
        judgment = parse(raw, format="flex", modality="image", prompt="A red picture")
        assert check(judgment, prompt="A red picture") == []
        assert judgment.verdict.winner == winner
        marks = ("ok", "no") if winner == 1 else ("no", "ok")
        first = raw.index('"score_1"')
        assert raw.index(f'"reason_1":"A red {shown[0]} {marks[0]}"') < first
        assert raw.index(f'"reason_2":"A red {shown[1]} {marks[1]}"') < first
        # Every colour is the prompt's own token (` red`, as in "A red picture"), so the mark compares two
        # adjacent tokens of one kind.
        pieces = [tokenizer.decode([i]) for i in tokenizer(raw)["input_ids"]]
        assert pieces[3:6] == ['"A', " red", " picture"]
        for colour, mark in zip(shown, marks, strict=True):
            evidence = ['"A', " red", f" {colour}", f" {mark}"]
            assert any(pieces[k : k + 4] == evidence for k in range(len(pieces)))
        strings = [c.name for d in judgment.dimensions for c in d.criteria]
        strings += [e for d in judgment.dimensions for c in d.criteria for e in (c.evidence_1, c.evidence_2)]
        assert max(map(len, strings)) <= 18


def test_probe_finds_every_decision_of_every_trace_style(monkeypatch: pytest.MonkeyPatch) -> None:
    """`decision_probe` scores the right characters in each evidence style: the image's colour, never the
    named one beside it, and a mark only where the style writes one."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    from _colour_task import TRACE_STYLES, colour_judgment
    from decision_probe import decision_spans

    for style in TRACE_STYLES:
        raw = colour_judgment("A red picture", ("blue", "red"), "red", style)
        found = {name: raw[lo:hi] for name, (lo, hi) in decision_spans(raw).items()}
        expected = {"prompt colour": "red", "image 1 colour": "blue", "image 2 colour": "red"}
        expected |= {"first score": "2", "winner": "2"}
        if style in ("match", "pairs"):
            expected |= {"named colour in evidence": "red", "image 1 mark": "no", "image 2 mark": "ok"}
        if style == "marks":
            expected |= {"image 1 mark": "no", "image 2 mark": "yes"}
        assert found == expected, style


def test_a_run_whose_student_left_no_dpo_pair_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    """A student right in every sample gives dpo-pairs nothing to pair: the table reports the counts and
    that DPO did not run, instead of the benchmark dying at DPO without a table."""
    import argparse

    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    from pipeline_learns import Run, table

    run = Run(argparse.Namespace(dpo=50), ROOT, dpo_pairs={"both_correct_tied": 50, "pairs": 0})
    assert (
        "`flexjudge dpo-pairs` on the 50 DPO examples: both_correct_tied 50, pairs 0: no pair, so DPO did "
        "not run." in table(run)
    )
    run.dpo_pairs = {"one_correct": 8, "pairs": 9}
    assert "`flexjudge dpo-pairs` on the 50 DPO examples: one_correct 8, pairs 9." in table(run)
