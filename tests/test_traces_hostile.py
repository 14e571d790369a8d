"""`flexjudge validate` on input an adversary writes: terminal escapes, exact line limits, a byte order mark,
and endlessly new long criterion names. Run through the real command line."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tracemalloc
from pathlib import Path

from typer.testing import CliRunner

from flexjudge.cli import app
from flexjudge.traces import BOM_NOTE, Summary, iter_reports

ROOT = Path(__file__).parent.parent
TEACHER = ROOT / "examples" / "traces" / "teacher.jsonl"
# What a terminal would act on: C0 controls but the newline ending each printed line, DEL, C1 controls,
# bidi and line-separator marks.
_UNSAFE = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069]")
_ENV = {k: v for k, v in os.environ.items() if k not in ("FORCE_COLOR", "TTY_COMPATIBLE")} | {"NO_COLOR": "1"}


def _run(*args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "flexjudge.cli", "validate", *args],
        capture_output=True,
        timeout=120,
        env=_ENV,
    )


def _unsafe(data: bytes) -> list[str]:
    return _UNSAFE.findall(data.decode("utf-8"))


def _teacher_line() -> bytes:
    return TEACHER.read_bytes().splitlines()[0]


HOSTILE_IDS = {
    "a\x1b[31mred\x1b[0m": "a\\x1b[31mred\\x1b[0m",
    "t\x1b]0;pwned\x07": "t\\x1b]0;pwned\\x07",
    "c1\x9b2J": "c1\\x9b2J",
    "del\x7f\x08x": "del\\x7f\\x08x",
    "cr\rover": "cr\\rover",
    "bidi\u202egpj.exe": "bidi\\u202egpj.exe",
    "lone\ud800": "lone\\ud800",
}


def test_ids_paths_and_reasons_are_echoed_escaped(tmp_path: Path) -> None:
    lines = [
        json.dumps({"id": ident, "prompt": "p", "output": "no judgment here"}).encode()
        for ident in HOSTILE_IDS
    ]
    lines.append(b'{"id": "m", "prompt": "p", "output": "x", "modality": "\\u001b[2J"}')
    lines.append(b'{"id": "k", "prompt": "p", "output": "x", "label": "\\u009b1m"}')
    name = tmp_path / "tr\x1b[2Jaces\u202e.jsonl"
    name.write_bytes(b"\n".join(lines) + b"\n")
    result = _run(str(name))
    assert result.returncode == 1
    assert _unsafe(result.stdout) == [] and _unsafe(result.stderr) == []
    out = result.stdout.decode("utf-8")
    for number, shown in enumerate(HOSTILE_IDS.values(), start=1):
        assert f"line {number} id={shown}  output  error parse_error" in out, shown
    assert "'modality' must be 'image' or 'video', got '\\x1b[2J'" in out
    assert "'label' must be 1, 2 or 'tie', got '\\x9b1m'" in out
    assert "tr\\x1b[2Jaces\\u202e.jsonl" in out  # the report's title: the file's path
    # A file that cannot be opened is named in the error, escaped too.
    missing = _run(str(tmp_path / "no\x1b[31mpe.jsonl"))
    assert missing.returncode == 2 and _unsafe(missing.stderr) == [] and _unsafe(missing.stdout) == []
    assert "no\\x1b[31mpe.jsonl" in missing.stderr.decode("utf-8")
    # The JSON report is ASCII with every control escaped by the encoder, and reads back exactly.
    as_json = _run(str(name), "--json")
    assert as_json.stdout.isascii() and _unsafe(as_json.stdout) == []
    report = json.loads(as_json.stdout)
    assert [r["id"] for r in report["lines"][: len(HOSTILE_IDS)]] == list(HOSTILE_IDS)
    assert report["file"] == str(name)


def _codes(path: Path, limit: int) -> dict[str, int]:
    # In-process (typer's runner): the same command, without a fresh interpreter per boundary case.
    result = CliRunner().invoke(app, ["validate", str(path), "--json", "--max-line-bytes", str(limit)])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return dict(json.loads(result.stdout)["codes"])


def test_line_limit_counts_the_line_without_its_newline(tmp_path: Path) -> None:
    line = _teacher_line()
    size = len(line)
    for ending in (b"\n", b"\r\n", b""):  # LF, CRLF, and a last line with no newline at all
        path = tmp_path / "one.jsonl"
        path.write_bytes(line + ending)
        assert _codes(path, size) == {}, ending
        assert _codes(path, size - 1) == {"line_too_long": 1}, ending
    # A refused line is skipped whole: the next line is read, and numbered, as line 2.
    path = tmp_path / "two.jsonl"
    longer = line[:-1] + b', "x": 1}'
    path.write_bytes(longer + b"\n" + line + b"\n")
    result = CliRunner().invoke(app, ["validate", str(path), "--json", "--max-line-bytes", str(size)])
    report = json.loads(result.stdout)
    assert (report["total"], report["valid"], report["codes"]) == (2, 1, {"line_too_long": 1})
    assert report["lines"][0]["line"] == 1


def test_a_leading_byte_order_mark_is_accepted_and_noted(tmp_path: Path) -> None:
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + TEACHER.read_bytes())
    result = _run(str(path), "--json")
    assert result.returncode == 0, result.stdout
    report = json.loads(result.stdout)
    plain = json.loads(_run(str(TEACHER), "--json").stdout)
    assert report["total"] == report["valid"] == plain["total"] and report["codes"] == {}
    assert report["notes"] == [BOM_NOTE] and plain["notes"] == []
    human = _run(str(path))
    assert human.returncode == 0 and f"note: {BOM_NOTE}" in human.stdout.decode("utf-8")
    # Only the opening mark is the file's: one inside a line is still reported on that line.
    inner = tmp_path / "inner.jsonl"
    inner.write_bytes(_teacher_line() + b"\n\xef\xbb\xbf" + _teacher_line() + b"\n")
    report = json.loads(_run(str(inner), "--json").stdout)
    assert report["notes"] == [] and report["codes"] == {"not_json": 1}


def _long_named(count: int, name_chars: int) -> bytes:
    """`count` valid flex traces whose criteria carry names never seen before, `name_chars` long."""
    record = json.loads(_teacher_line())
    output = json.loads(record["output"])
    lines = []
    for n in range(count):
        for c, category in enumerate(output["categories"]):
            for d, dim in enumerate(category["dims"]):
                dim["name"] = f"Criterion {n}-{c}-{d} " + "x" * name_chars
        lines.append(json.dumps({**record, "id": f"t{n}", "output": json.dumps(output)}))
    return ("\n".join(lines) + "\n").encode()


def _peak(path: Path) -> tuple[int, Summary]:
    summary = Summary()
    tracemalloc.start()
    for report in iter_reports(path, summary=summary):
        summary.add(report, "error")
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak, summary


def test_memory_stays_flat_with_long_criterion_names(tmp_path: Path) -> None:
    for name_chars in (100, 2000):  # under and over the length the name memo keeps
        small, large = tmp_path / "small.jsonl", tmp_path / "large.jsonl"
        small.write_bytes(_long_named(40, name_chars))
        large.write_bytes(_long_named(400, name_chars))
        small_peak, small_summary = _peak(small)
        large_peak, large_summary = _peak(large)
        assert small_summary.valid == 40 and large_summary.valid == 400  # the traces were really read
        # 10x the lines, every name new: the memo is bounded, so the peak must not follow the file.
        assert large_peak < 2 * small_peak + 2 * 1024 * 1024, (name_chars, small_peak, large_peak)
