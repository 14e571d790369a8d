"""The benchmark scripts keep running (a smoke run on a few traces; no timing is asserted)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parent.parent


def test_parse_validate_benchmark_runs(tmp_path: Path) -> None:
    record = tmp_path / "RESULTS.md"
    args = ["--n", "40", "--repeat", "1", "--format", "all", "--messy", "0.2", "--record", str(record)]
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "parse_validate.py"), *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    for row in ("json.loads", "parse+check", "parse (messy)"):
        assert row in result.stdout
    assert "parse+check" in record.read_text(encoding="utf-8")
