"""`flexjudge report RESULTS --out report.html`: a results file of `flexjudge eval` as one HTML page."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape

from flexjudge._cli_eval import read_results
from flexjudge._cli_judge import FAILURE_EXIT
from flexjudge.errors import FlexjudgeError


def run(results: Path, out: Path, title: str | None) -> None:
    """The `report` command: the rows as `eval` reads them (a torn last line left out), summarised by
    `flexjudge.evaluation.metrics.summarize`, written by `build_report`."""
    from flexjudge.evaluation.metrics import summarize
    from flexjudge.evaluation.report import build_report

    err = Console(stderr=True, highlight=False, soft_wrap=True)
    rows = read_results(results)
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
