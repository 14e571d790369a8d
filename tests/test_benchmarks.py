"""The benchmark scripts keep running (a smoke run on a few traces; no timing is asserted)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent


def _run_benchmark(script: str, args: list[str], env: dict[str, str] | None = None) -> str:
    """Run `benchmarks/<script>` with `args`; returns its stdout, after checking it exited cleanly."""
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / script), *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
        env=env,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_parse_validate_benchmark_runs(tmp_path: Path) -> None:
    record = tmp_path / "RESULTS.md"
    args = ["--n", "40", "--repeat", "1", "--format", "all", "--messy", "0.2", "--record", str(record)]
    stdout = _run_benchmark("parse_validate.py", args)
    for row in ("json.loads", "parse+check", "parse (messy)"):
        assert row in stdout
    assert "parse+check" in record.read_text(encoding="utf-8")


@pytest.mark.slow  # about 45 s: the default run keeps its margin under 10 minutes
def test_constrained_benchmark_runs(tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    from flexjudge.backends.transformers import available_engines

    args = ["--models", "tiny", "--quick", "--batches", "1", "--engines", available_engines()[0]]
    stdout = _run_benchmark("constrained.py", args, env=dict(os.environ, FLEXJUDGE_CACHE_DIR=str(tmp_path)))
    assert "| engine |" in stdout and "error" not in stdout


@pytest.mark.slow  # about 20 s of tiny-model decoding
def test_validity_benchmark_runs(tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    record = tmp_path / "RESULTS.md"
    args = ["--runs", "2", "--batch", "2", "--engines", "llguidance", "--record", str(record)]
    stdout = _run_benchmark("validity.py", args, env=dict(os.environ, FLEXJUDGE_CACHE_DIR=str(tmp_path)))
    for mode in ("pair", "point", "rank"):
        assert f"llguidance, {mode}" in stdout
    assert "ENFORCED" not in stdout  # an enforced rule broken is reported under that name
    assert "read in strict mode" in record.read_text(encoding="utf-8")


def test_schedules_benchmark_runs(tmp_path: Path) -> None:
    """A few groups of 16: the adaptive schedule already ranks better than the random graph at a like
    budget (a gap of about 0.1 in Kendall tau at 1,000 groups; a few groups show it too)."""
    record = tmp_path / "RESULTS.md"
    only = "Active(fraction=0.5),RandomGraph,swap,pointwise"  # the posterior-driven ones run below, smaller
    args = ["--groups", "8", "--sizes", "16", "--jobs", "1", "--only", only, "--record", str(record)]
    stdout = _run_benchmark("schedules.py", args)
    rows = [line.split("|")[1:-1] for line in stdout.splitlines() if line.startswith("| 16 |")]
    tau = {(r[1].strip(), r[2].strip()): float(r[5]) for r in rows}  # after calls and rounds
    for judge in ("err 10%", "err 25%", "err 10% + first bias"):
        assert tau[judge, "Active(fraction=0.5)"] > tau[judge, "RandomGraph(k=7)"]
        assert {s for j, s in tau if j == judge} >= {"round robin", "round robin + swap", "pointwise"}
        assert not any("Bayesian" in s for j, s in tau)  # --only left them out
    assert "| 16 | err 25% | round robin | 120.0 |" in record.read_text(encoding="utf-8")
    small = ["--groups", "2", "--sizes", "9", "--jobs", "1", "--only", "Posterior,Bayesian,ScoreFirst"]
    lines = _run_benchmark("schedules.py", small).splitlines()
    names = {line.split("|")[3].strip() for line in lines if line.startswith("| 9 |")}
    assert {"Posterior(fraction=0.5)", "Bayesian(fraction=0.5)", "ScoreFirst(fraction=0.5)"} <= names


@pytest.mark.slow  # two processes judging small groups against a spawned server: ~15 s
def test_group_photos_benchmark_runs() -> None:
    stdout = _run_benchmark(
        "group_photos.py", ["--checkout", ".", "--repeat", "1", "--rounds", "1", "--size", "64"]
    )
    assert "| . |" in stdout and "| 1.00 |" in stdout
