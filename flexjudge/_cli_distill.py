"""`flexjudge distill`: reasoning traces from a teacher behind an OpenAI-compatible server.

    flexjudge distill --base-url URL --model NAME --data prefs.jsonl --out traces.jsonl
        [--api-key KEY] [--layout L] [--split S] [--format flex|native] [--concurrency N]
        [--max-reasks N] [--on-disagree keep|drop|reask] [--both-orders] [--price-in P --price-out P] [--json]

Order of work, so that a mistake costs nothing: the command line is checked, then every row of the data
is read and checked (streamed: a bad row is reported with its line before the teacher is asked anything),
then the rows are streamed again and distilled (`flexjudge.training.distill`), each trace appended to
--out as it finishes and each failure to `<out stem>.failures.jsonl`; a rerun resumes. Exit status: 0
every row has a trace or a recorded failure; 1 the teacher failed (a refused constraint, a bad key, or
server failures past the retries: rerun to finish); 2 the command line or the data was wrong.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, cast

import typer

from flexjudge import _cli_judge as cj
from flexjudge.errors import FlexjudgeError

if TYPE_CHECKING:
    from flexjudge.training.distill import DistillTotals, Price

Data = Annotated[
    Path,
    typer.Option(help="Labelled pairs: a JSONL file or a saved `datasets` folder.", show_default=False),
]
Out = Annotated[Path, typer.Option(help="Traces file (JSONL); rerun to resume.", show_default=False)]
Served = Annotated[str, typer.Option(help="The teacher's model name on the server.", show_default=False)]
Url = Annotated[str, typer.Option(help="The teacher's OpenAI-compatible server URL.", show_default=False)]
ApiKey = Annotated[str | None, typer.Option(help="The server's API key.", show_default=False)]
Layout = Annotated[str, typer.Option(help="The data's layout (as `flexjudge eval --layout`).")]
Split = Annotated[str | None, typer.Option(help="The split of a saved DatasetDict.", show_default=False)]
Concurrency = Annotated[int, typer.Option(min=1, help="Teacher calls in flight at once.")]
MaxReasks = Annotated[
    int, typer.Option(min=0, help="Re-asks of a trace that breaks the rules (and, with reask, disagrees).")
]
OnDisagree = Annotated[
    str, typer.Option(help="A trace whose winner is not the label: keep (marked), drop or reask.")
]
BothOrders = Annotated[bool, typer.Option("--both-orders", help="Judge every pair in both candidate orders.")]
Seed = Annotated[int, typer.Option(help="Seeds each pair's candidate order (and sampling).")]
ReaskTemperature = Annotated[
    float, typer.Option(min=0.0, help="Sampling temperature of the re-asks of disagreeing traces.")
]
PriceIn = Annotated[
    float | None,
    typer.Option(min=0.0, help="USD per 1M prompt tokens (prints the cost).", show_default=False),
]
PriceOut = Annotated[
    float | None, typer.Option(min=0.0, help="USD per 1M completion tokens.", show_default=False)
]
Timeout = Annotated[float, typer.Option(min=0.001, help="Seconds before a teacher request times out.")]
MaxAttempts = Annotated[int, typer.Option(min=1, help="Tries per request under the retry policy.")]
Progress = Annotated[bool, typer.Option("--progress/--no-progress", help="Show a progress bar on stderr.")]
AsJson = Annotated[bool, typer.Option("--json", help="Print the totals as one JSON object.")]


def distill_command(
    base_url: Url,
    model: Served,
    data: Data,
    out: Out,
    api_key: ApiKey = None,
    layout: Layout = "flexjudge",
    split: Split = None,
    output_format: cj.OutputFormat = "flex",
    concurrency: Concurrency = 8,
    max_reasks: MaxReasks = 2,
    on_disagree: OnDisagree = "keep",
    both_orders: BothOrders = False,
    reask_temperature: ReaskTemperature = 0.7,
    seed: Seed = 0,
    temperature: cj.Temperature = 0.0,
    max_new_tokens: cj.MaxNewTokens = 4096,
    frames_per_video: cj.FramesPerVideo = 8,
    timeout: Timeout = 300.0,
    max_attempts: MaxAttempts = 4,
    price_in: PriceIn = None,
    price_out: PriceOut = None,
    progress: Progress = True,
    as_json: AsJson = False,
) -> None:
    """Distil reasoning traces from a teacher model for labelled preference pairs.

    Each pair is judged by the teacher (through the openai backend: the same prompt, constraint and
    parser as inference); each trace is appended to --out as one line `flexjudge validate` accepts, and
    every pair that gave none to <out stem>.failures.jsonl with the reason. A rerun resumes. Prints the
    totals, tokens and (with --price-in/--price-out) the cost.

    Exit status: 0 done, 1 the teacher failed (rerun to finish what is left), 2 a wrong command line or
    data, found before the teacher is asked anything.
    """
    from flexjudge.training.distill import Price, Teacher, distill

    settings = {
        "model": model,
        "backend": "openai",
        "base_url": base_url,
        "device": None,
        "dtype": None,
        "output_format": output_format,
        "temperature": temperature,
        "top_p": 1.0,
    }
    cj._check_settings(settings)
    if on_disagree not in ("keep", "drop", "reask"):
        cj.usage(f"--on-disagree must be keep, drop or reask, not {on_disagree!r}")
    if (price_in is None) != (price_out is None):
        cj.usage("give both --price-in and --price-out, or neither")
    price = Price(price_in, price_out) if price_in is not None and price_out is not None else None
    total = _check_data(data, layout, split, out)
    teacher = Teacher(
        base_url=base_url,
        model=model,
        api_key=api_key,
        output_format=cast(Any, output_format),
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        frames_per_video=frames_per_video,
        backend_options={"timeout_s": timeout, "max_attempts": max_attempts},
    )
    from flexjudge._sync import run_sync

    try:
        totals = run_sync(
            distill(
                _examples(data, layout, split, out),
                teacher,
                out,
                both_orders=both_orders,
                on_disagree=cast(Any, on_disagree),
                max_reasks=max_reasks,
                reask_temperature=reask_temperature,
                concurrency=concurrency,
                seed=seed,
                total=total,
                progress=progress,
            )
        )
    except FlexjudgeError as exc:
        cj._fail(exc, "distillation stopped")
    _report(totals, out, price, as_json)
    if totals.unfinished:
        raise typer.Exit(cj.FAILURE_EXIT)


def _examples(data: Path, layout: str, split: str | None, out: Path) -> Any:
    from flexjudge.evaluation.data import load_examples

    # In-memory images of a dataset are written once beside the output, so traces name files that exist.
    return load_examples(data, layout=layout, split=split, media_dir=out.parent / f"{out.name}.media")


def _check_data(data: Path, layout: str, split: str | None, out: Path) -> int:
    """Read every row once (streamed, nothing kept): a bad row stops the run before it costs anything;
    the count sizes the progress bar."""
    from flexjudge.evaluation.data import LAYOUTS

    if layout not in LAYOUTS:
        cj.usage(f"--layout must be one of {', '.join(LAYOUTS)}, not {layout!r}")
    count = 0
    try:
        for _ in _examples(data, layout, split, out):
            count += 1
    except FlexjudgeError as exc:
        cj.usage(str(exc))
    if count == 0:
        cj.usage(f"{data}: no rows to distill")
    return count


def _report(totals: DistillTotals, out: Path, price: Price | None, as_json: bool) -> None:
    from flexjudge.training.distill import failures_path

    summary = {"out": str(out), "failures_file": str(failures_path(out)), **totals.as_dict(price)}
    if as_json:
        print(json.dumps(summary))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"distilled into {out}", show_header=False)
    for name in ("written", "failed", "skipped", "unfinished", "agree", "disagree", "unlabelled", "requests"):
        table.add_row(name, str(summary[name]))
    for kind, count in summary["failures"].items():
        table.add_row(f"  failed: {kind}", str(count))
    table.add_row("prompt tokens", str(totals.prompt_tokens))
    table.add_row("completion tokens", str(totals.completion_tokens))
    if totals.unmetered:
        table.add_row("generations without usage", str(totals.unmetered))
    if price is not None:
        table.add_row("cost (USD)", f"{totals.cost(price):.4f}")
    table.add_row("elapsed (s)", f"{totals.elapsed_s:.1f}")
    Console().print(table)
    for path, repair in totals.repaired:
        _note(f"cut a torn last line from {path} (line {repair.line}, {len(repair.dropped)} bytes)")
    if totals.unfinished:
        _note(f"{totals.unfinished} pair(s) met server failures past the retries: rerun to finish them")


def _note(message: str) -> None:
    from rich.console import Console
    from rich.markup import escape

    Console(stderr=True, highlight=False, soft_wrap=True).print(f"[dim]{escape(message)}[/dim]")
