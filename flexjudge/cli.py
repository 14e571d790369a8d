"""The `flexjudge` command: `validate` teacher traces, export `schemas`."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated, Literal, NoReturn, cast

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


@app.command(name="judge")
def judge_command(
    files: Annotated[list[Path], typer.Argument(help="Candidates: 2 for pair, 1 for point, N for rank")],
    prompt: Annotated[str, typer.Option("--prompt", help="The generation prompt")],
    model: Annotated[
        str | None, typer.Option(help="Model path or name; 'tiny-random' for a smoke test")
    ] = None,
    backend: Annotated[str, typer.Option(help="auto, transformers or openai")] = "auto",
    base_url: Annotated[
        str | None, typer.Option(help="OpenAI-compatible server (or FLEXJUDGE_BASE_URL)")
    ] = None,
    mode: Annotated[str, typer.Option(help="pair, point or rank")] = "pair",
    swap: Annotated[bool, typer.Option("--swap", help="Judge both orders and merge them")] = False,
    seed: Annotated[int | None, typer.Option(help="Sampling seed (reproducible runs)")] = None,
    output_format: Annotated[
        str, typer.Option("--format", help="Wire format asked for: flex or native")
    ] = "flex",
    engine: Annotated[str | None, typer.Option(help="Constraint engine for local models")] = None,
    preferences: Annotated[str | None, typer.Option(help="Your preferences, in words")] = None,
    custom_dimension: Annotated[
        list[str] | None, typer.Option("--custom-dimension", help="Required extra dimension")
    ] = None,
    weight: Annotated[list[str] | None, typer.Option("--weight", help="NAME=WEIGHT for a dimension")] = None,
    weighted_verdict: Annotated[
        bool, typer.Option(help="Decide the verdict by weighted dimension votes")
    ] = False,
    frames: Annotated[int, typer.Option(help="Frames sampled per video")] = 8,
    max_new_tokens: Annotated[int, typer.Option(help="Token budget of the judgment")] = 4096,
    max_string_length: Annotated[
        int | None, typer.Option(help="Bound every string (random test models)")
    ] = None,
    temperature: Annotated[float, typer.Option(min=0.0, help="0 for greedy decoding")] = 0.0,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print one JSON object (native format plus metadata)")
    ] = False,
) -> None:
    """Judge candidate images or videos for a prompt and print the hierarchy."""
    import flexjudge
    from flexjudge.render_tree import judgment_tree, pointwise_tree, ranking_tree

    if mode not in ("pair", "point", "rank"):
        _fail(f"--mode must be pair, point or rank, not {mode!r}")
    if output_format not in ("flex", "native"):
        _fail(f"--format must be flex or native, not {output_format!r}")
    try:
        weights = {name: float(value) for name, _, value in (w.partition("=") for w in weight or [])}
        prefs = flexjudge.Preferences(
            profile=preferences or "",
            weights=weights,
            custom_dimensions=tuple(custom_dimension or ()),
            weighted_verdict=weighted_verdict,
        )
    except ValueError as exc:
        _fail(f"bad preferences: {exc}")
    options = {"max_new_tokens": max_new_tokens, "temperature": temperature, "frames_per_video": frames}
    if backend == "transformers" or (
        backend == "auto" and not (base_url or os.environ.get("FLEXJUDGE_BASE_URL"))
    ):
        _quiet_loading()
    try:
        with flexjudge.Judge(
            model,
            backend=backend,
            base_url=base_url,
            output_format=output_format,  # type: ignore[arg-type]
            engine=engine,
            max_string_length=max_string_length,
            **options,  # type: ignore[arg-type]
        ) as judge:
            paths = [str(f) for f in files]
            result: flexjudge.Judgment | flexjudge.PointwiseJudgment | flexjudge.Ranking
            if mode == "point":
                (path,) = paths
                result = judge.score(prompt, path, preferences=prefs, seed=seed)
            elif mode == "rank":
                result = judge.rank(prompt, paths, preferences=prefs, swap=swap, seed=seed)
            else:
                result = judge.judge(prompt, paths, preferences=prefs, swap=swap, seed=seed)
    except (flexjudge.FlexjudgeError, ValueError) as exc:
        _fail(str(exc))
    if as_json:
        print(json.dumps(result.model_dump(mode="json")))
        return
    out = Console(highlight=False)
    if isinstance(result, flexjudge.Ranking):
        out.print(ranking_tree(result))
    elif isinstance(result, flexjudge.PointwiseJudgment):
        out.print(pointwise_tree(result, flexjudge.check(result, prompt=prompt)))
    else:
        out.print(judgment_tree(result, flexjudge.check(result, prompt=prompt)))


@app.command(name="serve")
def serve_command(
    model: Annotated[str, typer.Option(help="Model path or name; 'tiny-random' for a smoke test")],
    host: Annotated[str, typer.Option(help="Interface to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on")] = 8000,
    engine: Annotated[str | None, typer.Option(help="Constraint engine")] = None,
) -> None:
    """Serve a local model behind an OpenAI-compatible /v1/chat/completions endpoint."""
    from flexjudge.errors import FlexjudgeError
    from flexjudge.serve import serve

    try:
        from flexjudge.backends.transformers import TransformersBackend

        backend = TransformersBackend(model, engine=engine)  # type: ignore[arg-type]
    except FlexjudgeError as exc:
        _fail(str(exc))
    serve(backend, model_name=model, host=host, port=port)


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


def _quiet_loading() -> None:
    """The command prints a judgment; transformers' weight-loading progress bar is noise around it."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:  # the served path needs no transformers
        return
    hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]


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


def _fail(message: str) -> NoReturn:
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
