"""The `flexjudge` command: `judge`, `score` and `rank` candidates (`_cli_judge`), `eval` a judge on
labelled pairs (`_cli_eval`), `report` its results as a page (`_cli_report`), `distill` teacher traces
(`_cli_distill`), build training data (`sft-data`, `dpo-pairs`: `_cli_training`), `validate` teacher
traces, `serve` a local model, export `schemas`."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any, Literal, NoReturn, cast

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from flexjudge import _cli_distill, _cli_eval, _cli_training
from flexjudge import _cli_judge as cj
from flexjudge._serve_limits import ServeLimits as _SL
from flexjudge.errors import TraceFileError
from flexjudge.formats import Format
from flexjudge.traces import DEFAULT_MAX_LINE_BYTES, LineReport, Summary, iter_reports

app = typer.Typer(
    name="flexjudge",
    help="Personalized, interpretable judging of generated images and videos.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # Click's plain help wraps at the terminal's width and never cuts an option name; rich's panels cut
    # long flags at 80 columns ("--weighted-ver…" beside its --no- twin) and read "[...]" in help as markup.
    rich_markup_mode=None,
)


def _version(value: bool) -> None:
    if value:
        from flexjudge import __version__

        typer.echo(f"flexjudge {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit."),
    ] = False,
) -> None:
    """Personalized, interpretable judging of generated images and videos."""


_FORMATS = ("auto", "flex", "think", "native")


def _settings(
    model: str | None,
    backend: str,
    base_url: str | None,
    device: str | None,
    dtype: str | None,
    output_format: str,
    engine: str | None,
    frames_per_video: int,
    max_new_tokens: int,
    max_string_length: int | None,
    temperature: float,
    top_p: float,
) -> dict[str, Any]:
    """The `Judge(...)` settings of a judging command, by the library's own names."""
    return {
        "model": model,
        "backend": backend,
        "base_url": base_url,
        "device": device,
        "dtype": dtype,
        "output_format": output_format,
        "engine": engine,
        "frames_per_video": frames_per_video,
        "max_new_tokens": max_new_tokens,
        "max_string_length": max_string_length,
        "temperature": temperature,
        "top_p": top_p,
    }


@app.command(name="judge")
def judge_command(
    files: cj.Files,
    prompt: cj.Prompt,
    model: cj.Model = None,
    base_url: cj.BaseUrl = None,
    backend: cj.BackendName = "auto",
    device: cj.Device = None,
    dtype: cj.Dtype = None,
    output_format: cj.OutputFormat = "flex",
    engine: cj.EngineName = None,
    swap: cj.Swap = False,
    seed: cj.Seed = None,
    temperature: cj.Temperature = 0.0,
    top_p: cj.TopP = 1.0,
    frames_per_video: cj.FramesPerVideo = 8,
    max_new_tokens: cj.MaxNewTokens = 4096,
    max_string_length: cj.MaxStringLength = None,
    preferences: cj.Profile = None,
    custom_dimension: cj.CustomDimension = None,
    weight: cj.Weight = None,
    weighted_verdict: cj.WeightedVerdict = False,
    as_json: cj.AsJson = False,
) -> None:
    """Compare two candidates for a prompt.

    Prints the judgment: dimensions, criteria with their scores, winners, the verdict. Candidates are
    image or video files.

    Exit status: 0 judged, 1 the judge failed (model, server, output), 2 a wrong command line (flag,
    file, candidate count), found before any model loads.
    """
    settings = _settings(
        model, backend, base_url, device, dtype, output_format, engine,
        frames_per_video, max_new_tokens, max_string_length, temperature, top_p,
    )  # fmt: skip
    prefs = (preferences, weight, custom_dimension, weighted_verdict)
    cj.run("judge", files, prompt, settings, {"swap": swap, "seed": seed}, prefs, as_json)


@app.command(name="score")
def score_command(
    files: cj.Files,
    prompt: cj.Prompt,
    model: cj.Model = None,
    base_url: cj.BaseUrl = None,
    backend: cj.BackendName = "auto",
    device: cj.Device = None,
    dtype: cj.Dtype = None,
    engine: cj.EngineName = None,
    scale: cj.Scale = "1..10",
    seed: cj.Seed = None,
    temperature: cj.Temperature = 0.0,
    top_p: cj.TopP = 1.0,
    frames_per_video: cj.FramesPerVideo = 8,
    max_new_tokens: cj.MaxNewTokens = 4096,
    max_string_length: cj.MaxStringLength = None,
    preferences: cj.Profile = None,
    custom_dimension: cj.CustomDimension = None,
    weight: cj.Weight = None,
    as_json: cj.AsJson = False,
) -> None:
    """Score one candidate for a prompt.

    Prints its scores on an absolute scale (--scale), per criterion, dimension and overall.

    Exit status: 0 scored, 1 the judge failed (model, server, output), 2 a wrong command line (flag,
    file, candidate count), found before any model loads.
    """
    settings = _settings(
        model, backend, base_url, device, dtype, "flex", engine,
        frames_per_video, max_new_tokens, max_string_length, temperature, top_p,
    )  # fmt: skip
    prefs = (preferences, weight, custom_dimension, False)
    cj.run("score", files, prompt, settings, {"seed": seed, **cj.parse_scale(scale)}, prefs, as_json)


@app.command(name="rank")
def rank_command(
    files: cj.Files,
    prompt: cj.Prompt,
    model: cj.Model = None,
    base_url: cj.BaseUrl = None,
    backend: cj.BackendName = "auto",
    device: cj.Device = None,
    dtype: cj.Dtype = None,
    output_format: cj.OutputFormat = "flex",
    engine: cj.EngineName = None,
    swap: cj.Swap = False,
    seed: cj.Seed = None,
    temperature: cj.Temperature = 0.0,
    top_p: cj.TopP = 1.0,
    frames_per_video: cj.FramesPerVideo = 8,
    max_new_tokens: cj.MaxNewTokens = 4096,
    max_string_length: cj.MaxStringLength = None,
    preferences: cj.Profile = None,
    custom_dimension: cj.CustomDimension = None,
    weight: cj.Weight = None,
    weighted_verdict: cj.WeightedVerdict = False,
    as_json: cj.AsJson = False,
) -> None:
    """Rank two or more candidates for a prompt.

    Every pair is judged; candidates are ranked by their pairwise win rate.

    Exit status: 0 ranked, 1 the judge failed (model, server, output), 2 a wrong command line (flag,
    file, candidate count), found before any model loads.
    """
    settings = _settings(
        model, backend, base_url, device, dtype, output_format, engine,
        frames_per_video, max_new_tokens, max_string_length, temperature, top_p,
    )  # fmt: skip
    prefs = (preferences, weight, custom_dimension, weighted_verdict)
    cj.run("rank", files, prompt, settings, {"swap": swap, "seed": seed}, prefs, as_json)


app.command(name="eval")(_cli_eval.eval_command)
app.command(name="distill")(_cli_distill.distill_command)
app.command(name="sft-data")(_cli_training.sft_data_command)
app.command(name="dpo-pairs")(_cli_training.dpo_pairs_command)


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
        int, typer.Option(min=1, help="Longer lines (the newline not counted) are reported and skipped")
    ] = DEFAULT_MAX_LINE_BYTES,
) -> None:
    """Check a file of teacher traces.

    Every trace in FILE is read and checked; exit 0 only when every line is valid."""
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
        _fail(_printable(str(exc)))
    if as_json:
        print(json.dumps({"file": str(file), **summary.as_dict()}))  # ASCII: safe on any terminal
    else:
        _print_summary(out, file, summary)
    if summary.total == 0:
        if not as_json:
            out.print(f"[red]no traces in {escape(_printable(str(file)))}: the file is empty[/red]")
        raise typer.Exit(1)
    raise typer.Exit(0 if summary.invalid == 0 else 1)


_LIMITS_HELP = "Limits per request (each refused with a 4xx and a JSON reason)"


@app.command(name="serve")
def serve_command(
    model: Annotated[str, typer.Option(help="Model directory or hub id ('tiny-random': a test model).")],
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port to listen on.")] = 8000,
    engine: cj.EngineName = None,
    device: cj.Device = None,
    dtype: cj.Dtype = None,
    api_key: Annotated[
        str | None,
        typer.Option(
            envvar="FLEXJUDGE_API_KEY",
            help="Require 'Authorization: Bearer KEY' on every path but /health.",
            show_default=False,
        ),
    ] = None,
    insecure_no_auth: Annotated[
        bool, typer.Option(help="Serve beyond loopback without --api-key (anyone reaching it may use it).")
    ] = False,
    max_body_bytes: Annotated[
        int, typer.Option(min=1, help="Largest request body (413).")
    ] = _SL.max_body_bytes,
    max_images: Annotated[int, typer.Option(min=1, help="Most images per request.")] = _SL.max_images,
    max_image_pixels: Annotated[
        int, typer.Option(min=1, help="Most pixels of one image.")
    ] = _SL.max_image_pixels,
    max_total_pixels: Annotated[
        int, typer.Option(min=1, help="Most pixels, all images.")
    ] = _SL.max_total_pixels,
    max_tokens: Annotated[int, typer.Option(min=1, help="Largest max_tokens allowed.")] = _SL.max_tokens,
    max_prompt_chars: Annotated[
        int, typer.Option(min=1, help="Most text characters.")
    ] = _SL.max_prompt_chars,
    max_prompt_tokens: Annotated[
        int, typer.Option(min=1, help="Most prompt tokens (template and images included).")
    ] = _SL.max_prompt_tokens,
    max_queue: Annotated[
        int, typer.Option(min=1, help="Most requests waiting or generating; beyond, 503 with Retry-After.")
    ] = _SL.max_queue,
    max_groups: Annotated[int, typer.Option(min=1, help="Most groups per rewards request.")] = _SL.max_groups,
    max_group_candidates: Annotated[
        int, typer.Option(min=2, help="Most candidates per group.")
    ] = _SL.max_group_candidates,
    max_reward_images: Annotated[
        int, typer.Option(min=1, help="Most images per rewards request (frames counted).")
    ] = _SL.max_reward_images,
    max_reward_pixels: Annotated[
        int, typer.Option(min=1, help="Most pixels per rewards request.")
    ] = _SL.max_reward_pixels,
    base_url: Annotated[
        str | None,
        typer.Option(
            help="Front an OpenAI-compatible judge server (vLLM) at this URL instead of loading --model;"
            " --model is then the name it serves.",
            show_default=False,
        ),
    ] = None,
    judge_api_key: Annotated[
        str | None,
        typer.Option(
            envvar="FLEXJUDGE_JUDGE_API_KEY", help="The --base-url server's key.", show_default=False
        ),
    ] = None,
    body_timeout: Annotated[
        float, typer.Option(min=0.001, help="Seconds to receive a body.")
    ] = _SL.body_timeout_s,
    header_timeout: Annotated[
        float, typer.Option(min=0.001, help="Seconds for a connection's request headers to arrive.")
    ] = _SL.header_timeout_s,
) -> None:
    """Serve a local model to OpenAI-compatible clients, and GRPO group rewards.

    The endpoints are /v1/chat/completions (concurrent requests are batched) and /v1/rewards (a batch of
    groups in, each group's rewards out). With --base-url, both go to that server instead of a local
    model. Listening beyond loopback needs --api-key (or FLEXJUDGE_API_KEY), or --insecure-no-auth.
    SIGTERM / Ctrl-C answer the requests already accepted, then exit."""
    from flexjudge._serve_limits import ServeLimits, is_loopback
    from flexjudge.backends.base import Backend
    from flexjudge.errors import FlexjudgeError
    from flexjudge.serve import serve

    if api_key is not None and not api_key:
        _fail("--api-key must not be empty")
    if api_key is None and not is_loopback(host) and not insecure_no_auth:
        # Before the model loads: a wrong command line costs nothing.
        _fail(
            f"refusing to serve on {host} without --api-key (or FLEXJUDGE_API_KEY); --insecure-no-auth"
            " forces it"
        )
    limits = ServeLimits(
        max_body_bytes=max_body_bytes, max_images=max_images, max_image_pixels=max_image_pixels,
        max_total_pixels=max_total_pixels, max_tokens=max_tokens, max_prompt_chars=max_prompt_chars,
        max_prompt_tokens=max_prompt_tokens, max_queue=max_queue, body_timeout_s=body_timeout,
        header_timeout_s=header_timeout, max_groups=max_groups, max_group_candidates=max_group_candidates,
        max_reward_images=max_reward_images, max_reward_pixels=max_reward_pixels,
    )  # fmt: skip
    backend: Backend
    judge = None
    if base_url is not None:
        local = [f for f, v in (("--engine", engine), ("--device", device), ("--dtype", dtype)) if v]
        if local:
            _fail(f"{', '.join(local)} set a local model; with --base-url none is loaded")
        from flexjudge.backends.openai import OpenAIBackend
        from flexjudge.judging import Judge

        backend = OpenAIBackend(
            base_url, model=model, api_key=judge_api_key, max_concurrency=limits.max_queue
        )
        # Rewards go to the server directly (it batches and bounds itself), not through the chat batcher.
        judge = Judge(model, backend=backend, max_new_tokens=limits.max_tokens)
    else:
        cj.check_device(device, dtype)
        placement = {k: v for k, v in (("device", device), ("dtype", dtype)) if v is not None}
        try:
            from flexjudge.backends.transformers import TransformersBackend

            backend = TransformersBackend(model, engine=engine, **placement)  # type: ignore[arg-type]
        except (FlexjudgeError, ValueError) as exc:
            _fail(f"could not load --model {model}: {exc}", code=cj.FAILURE_EXIT)
    serve(
        backend, model_name=model, host=host, port=port, limits=limits,
        api_key=api_key, insecure_no_auth=insecure_no_auth, judge=judge,
    )  # fmt: skip


@app.command()
def schemas(
    out: Annotated[Path, typer.Option("--out", help="Directory to write the JSON Schema files into")] = Path(
        "schemas"
    ),
) -> None:
    """Write the wire JSON Schemas.

    Pairwise, pointwise and the released flex format; image and video."""
    from flexjudge.wire_schemas import all_schemas

    out.mkdir(parents=True, exist_ok=True)
    for name, schema in all_schemas().items():
        target = out / name
        tmp = target.with_suffix(".tmp")
        tmp.write_text(json.dumps(schema, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        tmp.replace(target)  # atomic: a reader never sees half a schema
        typer.echo(f"wrote {target}")


@app.command(name="report")
def report_command(
    results: Annotated[Path, typer.Argument(help="Results file of `flexjudge eval` (JSONL)")],
    out: Annotated[Path, typer.Option("--out", help="The HTML file to write")] = Path("report.html"),
    title: Annotated[str | None, typer.Option(help="Page title (default: the results file's name)")] = None,
) -> None:
    """Write an evaluation's results as one self-contained HTML page.

    A summary with plots (accuracy, position bias, per-dimension agreement, calibration) and every
    judgment with its candidates as thumbnails, filterable by correctness and by finding. The page opens
    offline. Exit status: 0 written, 1 no results or the page could not be written, 2 an unreadable file."""
    from flexjudge import _cli_report

    _cli_report.run(results, out, title)


def _print_line(out: Console, report: LineReport, fail_on: str) -> None:
    if not report.problems:
        return
    ident = f" id={escape(_printable(report.id))}" if report.id is not None else ""
    for p in report.problems:
        colour = {"error": "red", "warning": "yellow"}.get(p.severity, "dim")
        where = f"  {escape(_printable(p.path))}" if p.path else ""
        severity = f"[{colour}]{p.severity}[/{colour}]"
        out.print(f"line {report.line}{ident}{where}  {severity} {p.code}: {escape(_printable(p.message))}")


# What a terminal acts on instead of showing: C0 controls (ESC opens colour, cursor and title sequences),
# DEL, C1 controls (U+009B is a one-character CSI), and the bidi and line-separator marks that reorder or
# break what is shown. Each is written as its escape, so an id or a path shows as the text it holds.
_NAMED = {"\t": "\\t", "\n": "\\n", "\r": "\\r"}
_CONTROLS = [*range(0x20), 0x7F, *range(0x80, 0xA0)]
_MARKS = [0x061C, 0x200E, 0x200F, 0x2028, 0x2029, *range(0x202A, 0x202F), *range(0x2066, 0x206A)]
_ESCAPES = {c: _NAMED.get(chr(c), f"\\x{c:02x}") for c in _CONTROLS} | {c: f"\\u{c:04x}" for c in _MARKS}


def _printable(text: str) -> str:
    """`text` safe to echo on a terminal: controls escaped, lone surrogates escaped instead of crashing."""
    return text.translate(_ESCAPES).encode("utf-8", "backslashreplace").decode("utf-8")


def _print_summary(out: Console, file: Path, summary: Summary) -> None:
    data = summary.as_dict()
    table = Table(title=escape(_printable(str(file))), show_header=False, box=None)
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
    for note in data["notes"]:  # about the file, not a line: neither valid nor invalid
        out.print(f"note: {escape(note)}")


def _fail(message: str, code: int = cj.USAGE_EXIT) -> NoReturn:
    Console(stderr=True, highlight=False, soft_wrap=True).print(f"[red]error:[/red] {escape(message)}")
    raise typer.Exit(code)


def main() -> None:
    """Console-script entry point."""
    try:
        app(prog_name="flexjudge")
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
