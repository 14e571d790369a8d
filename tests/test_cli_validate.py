"""`flexjudge validate` on real files, good and hostile, through the installed command line."""

from __future__ import annotations

import json
import subprocess
import sys
import tracemalloc
from pathlib import Path

import pytest

from flexjudge.traces import Summary, iter_reports

ROOT = Path(__file__).parent.parent
TRACES = ROOT / "examples" / "traces"


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "flexjudge.cli", "validate", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_teacher_traces_are_valid() -> None:
    result = _run(str(TRACES / "teacher.jsonl"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    report = json.loads(_run(str(TRACES / "teacher.jsonl"), "--json").stdout)
    lines = sum(
        1 for line in (TRACES / "teacher.jsonl").read_text(encoding="utf-8").splitlines() if line.strip()
    )
    assert report["total"] == report["valid"] == lines and report["invalid"] == 0
    labels = report["labels"]
    assert labels["labeled"] + labels["tie_labels"] == lines and labels["accuracy"] == 1.0


def test_malformed_traces_are_reported_per_line() -> None:
    path = TRACES / "malformed.jsonl"
    records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    result = _run(str(path), "--json")
    assert result.returncode == 1
    report = json.loads(result.stdout)
    assert report["total"] == len(records)
    expected_invalid = sum(r["expect"] in ("truncated", "parse_error") for r in records) + sum(
        r["expect"] == "findings"
        and r["expect_code"] in ("split_sum", "dimension_winner_contradicts_scores", "anchor_missing")
        for r in records
    )
    assert report["invalid"] == expected_invalid
    assert report["recovered"] >= sum(r["expect"] == "recovered" for r in records)
    for code in ("truncated", "parse_error", "split_sum", "prompt_mismatch"):
        assert report["codes"].get(code, 0) >= 1, code
    human = _run(str(path))
    first_bad = next(r for r in report["lines"] if not r["valid"])
    assert f"line {first_bad['line']} id={first_bad['id']}" in human.stdout
    assert "invalid" in human.stdout and "Traceback" not in human.stderr


def _write(tmp_path: Path, data: bytes) -> Path:
    path = tmp_path / "traces.jsonl"
    path.write_bytes(data)
    return path


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (b"\x00\x01\x02\xff\xfe binary junk\n", "binary_data"),
        (b'{"id": "a", "prompt": "caf\xe9"}\n', "invalid_utf8"),
        (b"this is not json\n", "not_json"),
        (b"[1, 2, 3]\n", "bad_field"),
        (b'{"id": 1, "prompt": "p"}\n', "bad_field"),
        (b'{"id": 1, "prompt": "p", "output": "x", "judgment": {}}\n', "bad_field"),
        (b'{"id": 1, "prompt": "p", "output": "x", "label": 3}\n', "bad_field"),
        (b'{"id": 1, "prompt": "p", "output": "no judgment here"}\n', "parse_error"),
    ],
)
def test_hostile_lines_get_a_clear_message(tmp_path: Path, data: bytes, code: str) -> None:
    result = _run(str(_write(tmp_path, data)), "--json")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    report = json.loads(result.stdout)
    assert report["codes"] == {code: 1}
    assert report["lines"][0]["problems"][0]["message"]


def test_ten_megabyte_line_is_skipped_with_a_message(tmp_path: Path) -> None:
    good = (TRACES / "teacher.jsonl").read_bytes().splitlines()[0]
    huge = b'{"id": "big", "prompt": "' + b"x" * (10 * 1024 * 1024) + b'"}'
    path = _write(tmp_path, huge + b"\n" + good + b"\n")
    report = json.loads(_run(str(path), "--json").stdout)
    assert report["codes"] == {"line_too_long": 1}
    assert (report["total"], report["valid"]) == (2, 1)
    assert report["lines"][0]["line"] == 1


def test_empty_file_missing_file_and_directory(tmp_path: Path) -> None:
    empty = _run(str(_write(tmp_path, b"")))
    assert empty.returncode == 1 and "empty" in empty.stdout
    missing = _run(str(tmp_path / "nope.jsonl"))
    assert missing.returncode == 2 and "cannot read" in missing.stderr and "Traceback" not in missing.stderr
    directory = _run(str(tmp_path))
    assert directory.returncode == 2 and "Traceback" not in directory.stderr
    bad_option = _run(str(TRACES / "teacher.jsonl"), "--format", "yaml")
    assert bad_option.returncode == 2 and "--format" in bad_option.stderr


def test_fail_on_warning_and_strict(tmp_path: Path) -> None:
    records = [
        json.loads(line) for line in (TRACES / "malformed.jsonl").read_text(encoding="utf-8").splitlines()
    ]
    warning_only = next(r for r in records if r.get("expect_code") == "prompt_mismatch")
    recovered = next(r for r in records if r["expect"] == "recovered")
    path = _write(tmp_path, (json.dumps(warning_only) + "\n").encode())
    assert _run(str(path)).returncode == 0
    assert _run(str(path), "--fail-on", "warning").returncode == 1
    path = _write(tmp_path, (json.dumps(recovered) + "\n").encode())
    assert _run(str(path)).returncode == 0
    assert _run(str(path), "--strict").returncode == 1


def _peak_memory(path: Path) -> int:
    summary = Summary()
    tracemalloc.start()
    for report in iter_reports(path, summary=summary):
        summary.add(report, "error")
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak


def test_memory_stays_flat_as_the_file_grows(tmp_path: Path) -> None:
    lines = (TRACES / "teacher.jsonl").read_bytes()
    small, large = tmp_path / "small.jsonl", tmp_path / "large.jsonl"
    small.write_bytes(lines * 5)
    large.write_bytes(lines * 100)
    # 20x the data must not cost anywhere near 20x the memory: nothing per line is kept.
    assert _peak_memory(large) < 2 * _peak_memory(small) + 256 * 1024


def test_odd_characters_and_numbers_never_crash_the_report(tmp_path: Path) -> None:
    lines = (
        b'{"id": "\\ud800", "prompt": "p", "output": "x"}\n'
        + b'{"id": 1, "prompt": "p", "output": "x", "label": '
        + b"9" * 5000
        + b"}\n"
    )
    path = _write(tmp_path, lines)
    for extra in ((), ("--json",)):
        result = _run(str(path), *extra)
        assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    report = json.loads(_run(str(path), "--json").stdout)
    assert report["codes"] == {"parse_error": 1, "not_json": 1}
    bad_limit = _run(str(path), "--max-line-bytes", "0")
    assert bad_limit.returncode == 2 and "Traceback" not in bad_limit.stderr


def test_a_label_is_compared_in_the_order_the_judge_saw(tmp_path: Path) -> None:
    # `flexjudge distill` writes the data's label and the order shown: with the data's candidate 2 shown
    # first, the data's label 2 is the judge's "Image 1".
    output = (ROOT / "examples" / "outputs" / "flex_image.json").read_text(encoding="utf-8")
    winner = int(json.loads(output)["winner"][-1])
    prompt = json.loads(output)["prompt"]
    rows = [
        {"id": "same", "prompt": prompt, "output": output, "label": winner, "order": [1, 2]},
        {"id": "swapped", "prompt": prompt, "output": output, "label": 3 - winner, "order": [2, 1]},
        {"id": "wrong", "prompt": prompt, "output": output, "label": winner, "order": [2, 1]},
    ]
    path = tmp_path / "traces.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    summary = Summary()
    for report in iter_reports(path):
        summary.add(report, "error")
    assert (summary.labeled, summary.agree) == (3, 2)
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({**rows[0], "order": [1, 1]}) + "\n", encoding="utf-8")
    assert "'order' must be [1, 2] or [2, 1]" in _run(str(bad)).stdout
