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


def test_constrained_benchmark_runs(tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    from flexjudge.backends.transformers import available_engines

    args = ["--models", "tiny", "--quick", "--batches", "1", "--engines", available_engines()[0]]
    stdout = _run_benchmark("constrained.py", args, env=dict(os.environ, FLEXJUDGE_CACHE_DIR=str(tmp_path)))
    assert "| engine |" in stdout and "error" not in stdout


def test_validity_benchmark_runs(tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    record = tmp_path / "RESULTS.md"
    args = ["--runs", "2", "--batch", "2", "--engines", "llguidance", "--record", str(record)]
    stdout = _run_benchmark("validity.py", args, env=dict(os.environ, FLEXJUDGE_CACHE_DIR=str(tmp_path)))
    for mode in ("pair", "point", "rank"):
        assert f"llguidance, {mode}" in stdout
    assert "ENFORCED" not in stdout  # an enforced rule broken is reported under that name
    assert "read in strict mode" in record.read_text(encoding="utf-8")
