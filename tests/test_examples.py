"""The shipped examples behave as each line says it should."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

import flexjudge

TRACES = Path(__file__).parent.parent / "examples" / "traces"
MALFORMED = [
    json.loads(line)
    for line in (TRACES / "malformed.jsonl").read_text(encoding="utf-8").splitlines()
    if line.strip()
]


@pytest.mark.parametrize("record", MALFORMED, ids=[r["id"] for r in MALFORMED])
def test_malformed_example(record: dict) -> None:
    def read() -> flexjudge.Judgment:
        return flexjudge.parse(record["output"], modality=record.get("modality"), prompt=record["prompt"])

    expect = record["expect"]
    if expect == "truncated":
        with pytest.raises(flexjudge.TruncatedOutput):
            read()
    elif expect == "parse_error":
        with pytest.raises(flexjudge.ParseError) as info:
            read()
        assert not isinstance(info.value, flexjudge.TruncatedOutput)
    elif expect == "recovered":
        judgment = read()
        assert judgment.meta.recovered and judgment.meta.recovery_notes
        if record.get("label") in (1, 2):
            assert judgment.verdict.winner == record["label"]
    else:
        codes = {f.code for f in flexjudge.check(read(), prompt=record["prompt"])}
        assert record["expect_code"] in codes


def test_every_behaviour_is_covered_twice() -> None:
    kinds = [r["expect"] for r in MALFORMED]
    assert all(kinds.count(k) >= 2 for k in ("recovered", "truncated", "parse_error", "findings"))


# ------------------------------------------------------------------- the reward examples, run as shipped

ROOT = Path(__file__).parent.parent


def _run_example(args: list[str], tmp_path: Path) -> str:
    import os
    import subprocess
    import sys

    env = {**os.environ, "FLEXJUDGE_CACHE_DIR": str(tmp_path), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(
        [sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=600, env=env, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def _floats(line: str) -> list[float]:
    return [float(x) for x in line.split("[", 1)[1].split("]", 1)[0].split(",")]


@pytest.mark.slow  # the tiny model judges six pairs
def test_the_flow_grpo_reward_example_runs(tmp_path: Path) -> None:
    out = _run_example(["examples/rewards/flow_grpo_reward.py"], tmp_path).splitlines()
    rewards = [float(line.split()[0]) for line in out[:6]]
    for group in (rewards[:3], rewards[3:]):  # advantages are z-scores within each group
        assert sum(group) == pytest.approx(0.0, abs=1e-6)
    assert out[6] == "failed pairs per group: [0, 0]"


@pytest.mark.slow  # two ranks, each loading the tiny model
def test_the_distributed_example_runs_under_torchrun(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    out = _run_example(
        ["-m", "torch.distributed.run", "--nproc-per-node", "2", "examples/rewards/distributed_rewards.py"],
        tmp_path,
    )
    # Searched anywhere in the output: two processes share the pipe, so one's line may follow the other's
    # text without a line break between them.
    found = dict(re.findall(r"rank (\d): 4 rewards (\[[^\]]*\])", out))
    assert sorted(found) == ["0", "1"], out
    zero, one = (_floats(found[rank]) for rank in ("0", "1"))
    # Each rank holds two samples of each prompt: a group is rank 0's pair and rank 1's pair, judged whole.
    for k in (0, 2):
        assert sum(zero[k : k + 2] + one[k : k + 2]) == pytest.approx(0.0, abs=1e-3)
