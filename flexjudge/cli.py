"""The `flexjudge` command: `validate` teacher traces, export `schemas`."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Literal, cast

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from flexjudge.errors import TraceFileError
from flexjudge.formats import Format
from flexjudge.traces import DEFAULT_MAX_LINE_BYTES, LineReport, Summary, iter_reports

app = typer.Typer(
    name="flexjudge",
    help="Personalized, interpretable judging of generated images and videos.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
_FORMATS = ("auto", "flex", "think", "native")


@app.command()
def validate(
    file: Annotated[
        Path, typer.Argument(help="JSONL of traces: id, prompt, output or judgment, label?, modality?")
    ],
    format: Annotated[str, typer.Option("--format", help="auto, flex, think or native")] = "auto",
    strict: Annotated[
        bool, typer.Option("--strict", help="Accept only exact formats, no lenient recovery")
    ] = False,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print one JSON object instead of a report")
    ] = False,
    fail_on: Annotated[
        str, typer.Option("--fail-on", help="error, or warning to fail on warnings too")
    ] = "error",
    max_line_bytes: Annotated[
        int, typer.Option(min=1, help="Longer lines are reported and skipped")
    ] = DEFAULT_MAX_LINE_BYTES,
) -> None:
    """Check every trace in FILE; exit 0 only when every line is valid."""
    if format not in _FORMATS:
        _fail(f"--format must be one of {', '.join(_FORMATS)}, not {format!r}")
    if fail_on not in ("error", "warning"):
        _fail(f"--fail-on must be 'error' or 'warning', not {fail_on!r}")
    severity: Literal["error", "warning"] = "warning" if fail_on == "warning" else "error"
    summary = Summary()
    out = Console(highlight=False, soft_wrap=True)
    try:
        reports = iter_reports(
            file, format=cast(Format, format), strict=strict, max_line_bytes=max_line_bytes, summary=summary
        )
        for report in reports:
            summary.add(report, severity)
            if not as_json:
                _print_line(out, report, severity)
    except TraceFileError as exc:
        _fail(str(exc))
    if as_json:
        print(json.dumps({"file": str(file), **summary.as_dict()}))  # ASCII: safe on any terminal
    else:
        _print_summary(out, file, summary)
    if summary.total == 0:
        if not as_json:
            out.print(f"[red]no traces in {escape(str(file))}: the file is empty[/red]")
        raise typer.Exit(1)
    raise typer.Exit(0 if summary.invalid == 0 else 1)


@app.command()
def schemas(
    out: Annotated[Path, typer.Option("--out", help="Directory to write the JSON Schema files into")] = Path(
        "schemas"
    ),
) -> None:
    """Write the wire JSON Schemas (pairwise, pointwise, released flex; image and video)."""
    from flexjudge.wire_schemas import all_schemas

    out.mkdir(parents=True, exist_ok=True)
    for name, schema in all_schemas().items():
        target = out / name
        tmp = target.with_suffix(".tmp")
        tmp.write_text(json.dumps(schema, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        tmp.replace(target)  # atomic: a reader never sees half a schema
        typer.echo(f"wrote {target}")


def _print_line(out: Console, report: LineReport, fail_on: str) -> None:
    if not report.problems:
        return
    ident = f" id={escape(_printable(report.id))}" if report.id is not None else ""
    for p in report.problems:
        colour = {"error": "red", "warning": "yellow"}.get(p.severity, "dim")
        where = f"  {escape(p.path)}" if p.path else ""
        severity = f"[{colour}]{p.severity}[/{colour}]"
        out.print(f"line {report.line}{ident}{where}  {severity} {p.code}: {escape(_printable(p.message))}")


def _printable(text: str) -> str:
    """Lone surrogates and other unencodable characters, escaped instead of crashing the terminal."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _print_summary(out: Console, file: Path, summary: Summary) -> None:
    data = summary.as_dict()
    table = Table(title=f"{file}", show_header=False, box=None)
    for key in ("total", "valid", "invalid", "recovered"):
        table.add_row(key, str(data[key]))
    labels = data["labels"]
    if labels["labeled"]:
        table.add_row("agree with label", f"{labels['agree']}/{labels['labeled']} ({labels['accuracy']:.1%})")
    if labels["tie_labels"]:
        table.add_row("tie labels (not scored)", str(labels["tie_labels"]))
    for code, count in data["codes"].items():
        table.add_row(f"  {code}", str(count))
    out.print(table)


def _fail(message: str) -> None:
    Console(stderr=True, highlight=False).print(f"[red]error:[/red] {escape(message)}")
    raise typer.Exit(2)


def main() -> None:
    """Console-script entry point."""
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
