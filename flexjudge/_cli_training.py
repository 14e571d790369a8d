"""`flexjudge sft-data` and `flexjudge dpo-pairs`: the training data commands (`flexjudge.training`).

Exit status: 0 the dataset was written; 1 the run failed (the model, the server); 2 the command line or
its files were wrong (an unreadable trace, data or samples file, a bad row)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from flexjudge import _cli_judge as cj
from flexjudge.errors import DataError, FlexjudgeError, LogFileError, TraceFileError, UsageError

__all__ = ["dpo_pairs_command", "sft_data_command"]


def _fail(exc: FlexjudgeError) -> typer.Exit:
    Console(stderr=True, highlight=False, soft_wrap=True).print(f"[red]error:[/red] {escape(str(exc))}")
    return typer.Exit(
        cj.USAGE_EXIT
        if isinstance(exc, UsageError | TraceFileError | DataError | LogFileError)
        else cj.FAILURE_EXIT
    )


def _table(title: str, rows: list[tuple[str, Any]]) -> None:
    table = Table(title=escape(title), show_header=False, box=None)
    for key, value in rows:
        table.add_row(escape(key), escape(str(value)))
    Console(highlight=False, soft_wrap=True).print(table)


def sft_data_command(
    traces: Annotated[Path, typer.Argument(help="Trace file written by `flexjudge distill` (JSONL).")],
    out: Annotated[Path, typer.Option("--out", help="Folder for the dataset: train/, eval/, stats.json.")],
    eval_fraction: Annotated[
        float, typer.Option(min=0.0, max=0.999, help="Share of pair ids held out for eval/.")
    ] = 0.05,
    seed: Annotated[int, typer.Option(help="Seed of the train/eval split (by id).")] = 0,
    frames_per_video: cj.FramesPerVideo = 8,
    template: Annotated[
        Path | None, typer.Option(help="The prompt template the judge will use, if not the bundled one.")
    ] = None,
) -> None:
    """Turn teacher traces into an SFT dataset in TRL's vision-language format.

    Each row's prompt is the message `flexjudge judge` sends for its candidates; its completion is the
    trace written in the format it was distilled in. Lines that fail validation, "tie" labels where the
    format has no tie verdict, and candidates that do not load are skipped and counted."""
    from flexjudge.training.sft_data import build_sft_data

    try:
        stats = build_sft_data(
            traces,
            out,
            eval_fraction=eval_fraction,
            seed=seed,
            frames_per_video=frames_per_video,
            template=template,
        )
    except FlexjudgeError as exc:
        raise _fail(exc) from None
    rows: list[tuple[str, Any]] = [
        ("lines", stats.lines),
        ("train", stats.train),
        ("eval", stats.eval),
        ("images", stats.images),
    ]
    rows += [(f"skipped: {reason}", count) for reason, count in sorted(stats.skipped.items())]
    rows += [(f"label {label}", count) for label, count in sorted(stats.labels.items())]
    rows += [(f"winner shown {w}", count) for w, count in sorted(stats.winners.items())]
    _table(str(out), rows)
    for note in stats.notes:
        typer.echo(f"note: {note}")


def dpo_pairs_command(
    data: Annotated[
        Path, typer.Option("--data", help="Labelled pairs (JSONL: id, prompt, candidates, label).")
    ],
    out: Annotated[Path, typer.Option("--out", help="Folder for the dataset (train/) and its samples log.")],
    model: cj.Model = None,
    base_url: Annotated[str | None, typer.Option(help="An OpenAI-compatible server to sample from.")] = None,
    served_model: Annotated[
        str | None, typer.Option("--served-model", help="The model name the server knows.")
    ] = None,
    samples: Annotated[int, typer.Option(min=2, help="Judgments sampled per example.")] = 2,
    temperature: Annotated[float, typer.Option(min=0.0, help="Sampling temperature.")] = 0.7,
    seed: Annotated[int, typer.Option(help="Base seed; each sample's seed derives from it and the id.")] = 0,
    tie_breaker: Annotated[
        str, typer.Option("--tie-breaker", help="Who picks between two correct samples: rule or judge.")
    ] = "rule",
    judge_url: Annotated[str | None, typer.Option(help="Server of the tie-breaking judge.")] = None,
    judge_model: Annotated[str | None, typer.Option(help="Model name of the tie-breaking judge.")] = None,
    output_format: cj.OutputFormat = "flex",
    frames_per_video: cj.FramesPerVideo = 8,
    max_new_tokens: cj.MaxNewTokens = 4096,
    max_string_length: cj.MaxStringLength = None,
    concurrency: Annotated[int, typer.Option(min=1, help="Examples sampled at once.")] = 8,
) -> None:
    """Mine DPO preference pairs from a judge's own samples.

    K judgments per example; exactly one correct: (correct, incorrect); both correct: the tie-breaker
    picks; both wrong: dropped. A killed run, rerun with the same command, resumes."""
    from flexjudge.judging import Judge
    from flexjudge.training.dpo_pairs import TieBreaker, build_dpo_pairs, judge_tie_breaker, rule_tie_breaker

    try:
        if (model is None) == (base_url is None):
            raise UsageError("give --model DIR (a local model) or --base-url URL with --served-model NAME")
        if base_url is not None and served_model is None:
            raise UsageError("--base-url needs --served-model: the model name the server knows")
        breaker: TieBreaker
        if tie_breaker == "rule":
            breaker = rule_tie_breaker
        elif tie_breaker == "judge":
            if judge_url is None or judge_model is None:
                raise UsageError("--tie-breaker judge needs --judge-url and --judge-model")
            breaker = judge_tie_breaker(judge_url, judge_model)
        else:
            raise UsageError(f"--tie-breaker must be 'rule' or 'judge', not {tie_breaker!r}")
        fmt: Literal["flex", "native"] = "native" if output_format == "native" else "flex"
        judge = Judge(
            served_model if base_url is not None else model,
            backend="openai" if base_url is not None else "auto",
            base_url=base_url,
            output_format=fmt,
            frames_per_video=frames_per_video,
            max_new_tokens=max_new_tokens,
            max_string_length=max_string_length,
            temperature=temperature,
            max_concurrency=concurrency,
        )
        with judge:
            counts = build_dpo_pairs(data, judge, out, samples=samples, seed=seed, tie_breaker=breaker)
    except FlexjudgeError as exc:
        raise _fail(exc) from None
    _table(str(out), sorted(counts.items()))
