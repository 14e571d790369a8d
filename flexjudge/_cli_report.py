"""`flexjudge report RESULTS --out report.html`: a results file of `flexjudge eval` as one HTML page."""

from __future__ import annotations

from pathlib import Path

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape

from flexjudge._cli_judge import FAILURE_EXIT, USAGE_EXIT
from flexjudge.errors import FlexjudgeError
from flexjudge.evaluation.results import ResultRow


class ResultsFileError(FlexjudgeError):
    """A results file that cannot be read: missing, unreadable, or with a line that is not a result row."""


def read_results(path: Path) -> tuple[list[ResultRow], list[str]]:
    """Every row of a results file, and notes about it. A last line cut short (a run still writing or
    killed mid-line, which `eval` repairs when it resumes) is skipped with a note; any other bad line is
    an error naming the line."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ResultsFileError(f"cannot read {path}: {exc.strerror or type(exc).__name__}") from exc
    lines = data.split(b"\n")
    torn = lines[-1] != b""  # a complete file ends with a newline
    rows, notes = [], []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rows.append(ResultRow.model_validate_json(line))
        except ValidationError as exc:
            if torn and number == len(lines):
                notes.append(f"line {number} is cut short (no newline, not a complete row): skipped")
                continue
            first = exc.errors()[0]
            where = ".".join(str(part) for part in first["loc"]) or "row"
            raise ResultsFileError(
                f"{path}, line {number}: not a result row ({where}: {first['msg']})"
            ) from exc
    return rows, notes


def run(results: Path, out: Path, title: str | None) -> None:
    """The `report` command."""
    from flexjudge.evaluation.metrics import summarize
    from flexjudge.evaluation.report import build_report

    err = Console(stderr=True, highlight=False, soft_wrap=True)
    try:
        rows, notes = read_results(results)
    except ResultsFileError as exc:
        err.print(f"[red]error:[/red] {escape(str(exc))}")
        raise typer.Exit(USAGE_EXIT) from exc
    for note in notes:
        err.print(f"note: {escape(note)}")
    if not rows:
        err.print(f"[red]error:[/red] no results in {escape(str(results))}")
        raise typer.Exit(FAILURE_EXIT)
    try:
        info = build_report(
            rows, summarize(rows).to_json(), out, title=title or f"flexjudge report: {results.name}"
        )
    except (FlexjudgeError, OSError) as exc:
        err.print(f"[red]error:[/red] could not write {escape(str(out))}: {escape(str(exc))}")
        raise typer.Exit(FAILURE_EXIT) from exc
    failed = f", {info.media_failures} candidates not found or unreadable" if info.media_failures else ""
    typer.echo(f"wrote {out}: {info.judgments} judgments, {info.bytes / 1e6:.1f} MB{failed}")
