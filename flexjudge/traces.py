"""Validate teacher traces: a JSONL file streamed line by line, each line reported, totals at the end.

A line is ``{"id", "prompt", "output": raw text | "judgment": object or text, "label"?: 1|2|"tie",
"modality"?: "image"|"video", "order"?: [1, 2]|[2, 1]}``. `order` says which of the data's candidates
the judge saw first (`flexjudge distill` writes it); the label is in the data's numbering and is compared
with the judgment's winner as the judge saw the candidates. Memory stays flat whatever the file size:
lines are read with a size cap (counted without the line's newline), and a line over the cap is skipped
in chunks and reported, never loaded whole. A UTF-8 byte order mark opening the file is skipped and
noted, not an error.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Literal

from flexjudge.checks import Finding, Severity, check
from flexjudge.errors import ParseError, TraceFileError, TruncatedOutput
from flexjudge.formats import Format, parse
from flexjudge.schema import Judgment

DEFAULT_MAX_LINE_BYTES = 4 * 1024 * 1024
_CHUNK = 1024 * 1024
_MAX_LISTED = 1000  # per-line problems kept for the JSON report; counts stay exact beyond it
_BOM = b"\xef\xbb\xbf"
BOM_NOTE = "the file opens with a UTF-8 byte order mark; it was skipped"

Label = Literal[1, 2, "tie"]


@dataclass
class LineReport:
    """What one line of a trace file holds: its problems, and its verdict when it could be read."""

    line: int
    id: str | None
    problems: list[Finding]
    judgment: Judgment | None = None
    label: Label | None = None

    def valid(self, fail_on: Severity = "error") -> bool:
        failing = {"error"} if fail_on == "error" else {"error", "warning"}
        return self.judgment is not None and not any(p.severity in failing for p in self.problems)


@dataclass
class Summary:
    """Totals over a whole file."""

    total: int = 0
    valid: int = 0
    invalid: int = 0
    recovered: int = 0
    blank_lines: int = 0
    codes: Counter[str] = field(default_factory=Counter)
    labeled: int = 0
    agree: int = 0
    tie_labels: int = 0
    unreadable_labeled: int = 0
    listed: list[dict[str, Any]] = field(default_factory=list)
    listed_all: bool = True
    notes: list[str] = field(default_factory=list)
    """About the file as a whole (a byte order mark), never counted against any line."""

    def add(self, report: LineReport, fail_on: Severity) -> None:
        self.total += 1
        ok = report.valid(fail_on)
        self.valid += ok
        self.invalid += not ok
        self.codes.update(p.code for p in report.problems)
        if report.judgment is not None and report.judgment.meta.recovered:
            self.recovered += 1
        if report.label == "tie":
            self.tie_labels += 1
        elif report.label is not None:
            if report.judgment is None:
                self.unreadable_labeled += 1
            else:
                self.labeled += 1
                self.agree += report.judgment.verdict.winner == report.label
        if report.problems:
            if len(self.listed) < _MAX_LISTED:
                self.listed.append(
                    {
                        "line": report.line,
                        "id": report.id,
                        "valid": ok,
                        "problems": [p.model_dump() for p in report.problems],
                    }
                )
            else:
                self.listed_all = False

    def as_dict(self) -> dict[str, Any]:
        accuracy = self.agree / self.labeled if self.labeled else None
        return {
            "total": self.total,
            "valid": self.valid,
            "invalid": self.invalid,
            "recovered": self.recovered,
            "blank_lines": self.blank_lines,
            "codes": dict(sorted(self.codes.items())),
            "labels": {
                "labeled": self.labeled,
                "agree": self.agree,
                "disagree": self.labeled - self.agree,
                "accuracy": accuracy,
                "tie_labels": self.tie_labels,
                "unreadable": self.unreadable_labeled,
            },
            "lines": self.listed,
            "lines_complete": self.listed_all,
            "notes": self.notes,
        }


def iter_reports(
    path: Path | str,
    *,
    format: Format | Literal["auto"] = "auto",
    strict: bool = False,
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
    summary: Summary | None = None,
) -> Iterator[LineReport]:
    """One report per non-blank line of `path`; raises `TraceFileError` when the file cannot be opened.

    `max_line_bytes` counts a line without its line ending: a line of exactly that many bytes is read.
    File-wide notes (a byte order mark) go to `summary.notes`."""
    try:
        handle = Path(path).open("rb")  # noqa: SIM115 - closed by the `with` below; opening is what may fail
    except OSError as exc:
        raise TraceFileError(f"cannot read {path}: {exc.strerror or exc}") from None
    with handle:
        # Excel and Windows editors write a BOM; it is no JSON, so left in place it spoils line 1.
        # peek, not seek: a named pipe cannot rewind.
        if handle.peek(len(_BOM))[: len(_BOM)] == _BOM:
            handle.read(len(_BOM))
            if summary is not None:
                summary.notes.append(BOM_NOTE)
        for number, raw in _lines(handle, max_line_bytes):
            if raw is None:
                yield _problem(
                    number, None, "line_too_long", f"line is longer than {max_line_bytes} bytes; skipped"
                )
                continue
            if not raw.strip():
                if summary is not None:
                    summary.blank_lines += 1
                continue
            yield report_line(number, raw, format=format, strict=strict)


def _lines(handle: BinaryIO, limit: int) -> Iterator[tuple[int, bytes | None]]:
    number = 0
    while True:
        raw = handle.readline(limit + 2)  # room for the line's own "\r\n", which the limit leaves out
        if not raw:
            return
        number += 1
        if len(raw) - _ending(raw) > limit:
            while raw and not raw.endswith(b"\n"):  # skip the rest of the long line without holding it
                raw = handle.readline(_CHUNK)
            yield number, None
        else:
            yield number, raw


def _ending(raw: bytes) -> int:
    """Length of the line ending `raw` closes with: 2 for CRLF, 1 for LF, 0 at the end of the file."""
    if raw.endswith(b"\r\n"):
        return 2
    return 1 if raw.endswith(b"\n") else 0


def report_line(
    number: int, raw: bytes, *, format: Format | Literal["auto"] = "auto", strict: bool = False
) -> LineReport:
    """Read one JSONL line and judge it."""
    nul = raw.find(b"\x00")
    if nul >= 0:
        return _problem(number, None, "binary_data", f"binary data (NUL byte at byte {nul})")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return _problem(number, None, "invalid_utf8", f"invalid UTF-8 at byte {exc.start}")
    try:
        record = json.loads(text)
    except json.JSONDecodeError as exc:
        return _problem(number, None, "not_json", f"not JSON: {exc.msg} at column {exc.colno}")
    except RecursionError:
        return _problem(number, None, "not_json", "not JSON: nested too deeply")
    except ValueError as exc:  # a number Python will not convert
        return _problem(number, None, "not_json", f"not JSON: {exc}")
    if not isinstance(record, dict):
        return _problem(number, None, "bad_field", f"expected a JSON object, got {type(record).__name__}")
    ident = record.get("id")
    ident = None if ident is None else str(ident)
    fields = _fields(record)
    if isinstance(fields, str):
        return _problem(number, ident, "bad_field", fields)
    prompt, modality, label, text_in = fields
    try:
        judgment = parse(text_in, format=format, modality=modality, strict=strict, prompt=prompt)
    except TruncatedOutput as exc:
        return _problem(number, ident, "truncated", f"{exc.reason} (offset {exc.offset})", label=label)
    except ParseError as exc:
        path = "output" + (f".{exc.path}" if exc.path else "")
        return _problem(
            number, ident, "parse_error", f"{exc.reason} (offset {exc.offset})", path=path, label=label
        )
    problems = check(judgment, prompt=prompt)
    return LineReport(number, ident, problems, judgment, label)


def _fields(record: dict[str, Any]) -> tuple[str, Any, Label | None, str] | str:
    prompt = record.get("prompt")
    if not isinstance(prompt, str):
        return "'prompt' must be a string"
    modality = record.get("modality")
    if modality not in (None, "image", "video"):
        return f"'modality' must be 'image' or 'video', got {modality!r}"
    label = record.get("label")
    if label not in (None, 1, 2, "tie") or isinstance(label, bool):
        return f"'label' must be 1, 2 or 'tie', got {label!r}"
    order = record.get("order", [1, 2])
    if order not in ([1, 2], [2, 1]):
        return f"'order' must be [1, 2] or [2, 1], got {order!r}"
    if order == [2, 1] and label in (1, 2):  # the data's candidate 2 was the judge's "Image 1"
        label = 3 - label
    has_output, has_judgment = "output" in record, "judgment" in record
    if has_output == has_judgment:
        return "exactly one of 'output' (raw text) or 'judgment' (structured) is required"
    if has_output:
        if not isinstance(record["output"], str):
            return "'output' must be a string of raw model text"
        return prompt, modality, label, record["output"]
    judgment = record["judgment"]
    if isinstance(judgment, dict):
        return prompt, modality, label, json.dumps(judgment, ensure_ascii=False)
    if isinstance(judgment, str):
        return prompt, modality, label, judgment
    return "'judgment' must be an object or a string"


def _problem(
    number: int, ident: str | None, code: str, message: str, *, path: str = "", label: Label | None = None
) -> LineReport:
    return LineReport(
        number, ident, [Finding(code=code, severity="error", path=path, message=message)], label=label
    )
