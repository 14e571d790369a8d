"""`flexjudge eval`: measure a judge against labelled preference data, or compare two results files.

    flexjudge eval DATA (--model DIR | --base-url URL [--api-key KEY] [--served-model NAME])
        --out results.jsonl [--layout L] [--split S] [--seed N] [--concurrency N] [--no-consistency] [--json]
        [--fit-calibration platt|isotonic] [--calibration MAP.json]
    flexjudge eval --compare a.jsonl b.jsonl [--json]

Order of work, as the judging commands: the command line is checked, then every example is read and
checked (a bad row is reported with its line before any model loads), then the judge is set up, and the
examples are judged (`flexjudge.evaluation.runner.run_eval`), each result appended to `--out` as it
finishes; a rerun with the same `--out` resumes. The summary covers every row in `--out`. Exit status:
0 a summary was printed; 1 the judge could not be set up, or judged nothing (every run of this call
failed); 2 the command line or the data was wrong.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from flexjudge import _cli_judge as cj
from flexjudge.errors import FlexjudgeError

if TYPE_CHECKING:
    from flexjudge.evaluation.data import Example
    from flexjudge.evaluation.results import ResultRow

Data = Annotated[
    Path | None,
    typer.Argument(
        metavar="DATA",
        help="Labelled pairs: a JSONL file, a saved dataset folder, or a benchmark's files.",
        show_default=False,
    ),
]
Out = Annotated[
    Path | None, typer.Option("--out", help="Results file (JSONL); rerun to resume.", show_default=False)
]
Layout = Annotated[
    str,
    typer.Option(
        help="flexjudge, genai-bench-image, genai-bench-video, mmrb2, videogen-rewardbench or mj-bench."
    ),
]
Split = Annotated[str | None, typer.Option(help="The split of a saved DatasetDict.", show_default=False)]
EvalSeed = Annotated[int, typer.Option(help="Seeds each example's candidate order (and sampling).")]
Concurrency = Annotated[int, typer.Option(min=1, help="Judge calls in flight at once.")]
Consistency = Annotated[
    bool, typer.Option("--consistency/--no-consistency", help="Also judge every pair in the reversed order.")
]
RetryFailed = Annotated[
    bool, typer.Option("--retry-failed", help="Judge again the examples of --out with a failed run.")
]
Progress = Annotated[bool, typer.Option("--progress/--no-progress", help="Show a progress bar on stderr.")]
ApiKey = Annotated[str | None, typer.Option(help="The --base-url server's API key.", show_default=False)]
ServedModel = Annotated[
    str | None, typer.Option(help="The model name the --base-url server serves.", show_default=False)
]
AsJson = Annotated[bool, typer.Option("--json", help="Print the summary as one JSON object on stdout.")]
FitCalibration = Annotated[
    str | None,
    typer.Option(
        help="Fit a calibration map (platt or isotonic) on the results' confidences and labels and save it"
        " beside --out as <out>.calibration.json (load it with --calibration or Judge(calibration=...)).",
        show_default=False,
    ),
]
Calibration = Annotated[
    Path | None,
    typer.Option(help="Judge with this calibration map applied to every confidence.", show_default=False),
]
Compare = Annotated[
    tuple[Path, Path] | None,
    typer.Option(metavar="A B", help="Compare two results files on their shared ids.", show_default=False),
]


def eval_command(
    data: Data = None,
    model: cj.Model = None,
    base_url: cj.BaseUrl = None,
    api_key: ApiKey = None,
    served_model: ServedModel = None,
    out: Out = None,
    layout: Layout = "flexjudge",
    split: Split = None,
    seed: EvalSeed = 0,
    concurrency: Concurrency = 8,
    consistency: Consistency = True,
    progress: Progress = True,
    retry_failed: RetryFailed = False,
    fit_calibration: FitCalibration = None,
    calibration: Calibration = None,
    compare: Compare = None,
    device: cj.Device = None,
    dtype: cj.Dtype = None,
    engine: cj.EngineName = None,
    output_format: cj.OutputFormat = "flex",
    frames_per_video: cj.FramesPerVideo = 8,
    max_new_tokens: cj.MaxNewTokens = 4096,
    max_string_length: cj.MaxStringLength = None,
    as_json: AsJson = False,
) -> None:
    """Measure a judge's agreement with labelled preference pairs.

    Every pair is judged with its candidate order drawn from --seed, and (unless --no-consistency) again
    in the reversed order; results go to --out as they finish, and a rerun resumes. Prints accuracy
    (ties dropped), three-way accuracy, position consistency, first-position win rate and failure rates,
    each with its bootstrap 95% interval. With --compare A B: a paired comparison of two results files.

    Exit status: 0 summarised, 1 the judge failed (set-up, or every run of this call), 2 a wrong command
    line or data, found before any model loads.
    """
    if compare is not None:
        if data is not None or model is not None or base_url is not None or out is not None:
            cj.usage(
                "--compare reads two results files and judges nothing: drop DATA, --model, --base-url, --out"
            )
        _compare(*compare, as_json)
        return
    if data is None or out is None:
        cj.usage("give DATA and --out (or --compare A B)")
    if fit_calibration not in (None, "platt", "isotonic"):
        cj.usage(f"--fit-calibration is platt or isotonic, not {fit_calibration!r}")
    if model is None and base_url is None:
        from flexjudge.backends.auto import BASE_URL_ENV

        base_url = os.environ.get(BASE_URL_ENV) or None  # as the judging commands read it
    if model is None and base_url is None:
        cj.usage("give --model (a local model) or --base-url (a server) to judge with")
    if model is not None and base_url is not None:
        cj.usage(
            "--model loads a local model, --base-url uses a server: give one (--served-model names its model)"
        )
    if base_url is None and (api_key is not None or served_model is not None):
        cj.usage("--api-key and --served-model go with --base-url")
    examples = _load(data, layout, split, out)
    settings = {
        "model": served_model if base_url is not None else model,
        "backend": "openai" if base_url is not None else "transformers",
        "base_url": base_url,
        "api_key": api_key,
        "device": device,
        "dtype": dtype,
        "output_format": output_format,
        "engine": engine,
        "frames_per_video": frames_per_video,
        "max_new_tokens": max_new_tokens,
        "max_string_length": max_string_length,
        "temperature": 0.0,
        "top_p": 1.0,
        "max_concurrency": concurrency,
        "calibration": calibration,
    }
    url = cj._check_settings(settings)
    if base_url is None:
        cj._quiet_loading()
    judge = cj._make_judge(settings, url)
    from flexjudge.evaluation.runner import run_eval_sync

    try:
        totals = run_eval_sync(
            examples,
            judge,
            out,
            seed=seed,
            concurrency=concurrency,
            consistency=consistency,
            progress=progress,
            retry_failed=retry_failed,
        )
    except FlexjudgeError as exc:  # the results file itself: unreadable, or a line that is no result
        cj.usage(f"cannot resume --out: {exc}")
    finally:
        judge.close()
    if totals.repaired is not None:
        _note(
            f"cut a torn last line from {out} (line {totals.repaired.line},"
            f" {len(totals.repaired.dropped)} bytes): that example was judged again"
        )
    if totals.retried:
        _note(f"removed {totals.retried} rows with a failed run from {out}, to judge them again")
    _note(
        f"judged {totals.written}, resumed past {totals.skipped} already in {out}, {totals.elapsed_s:.1f} s"
    )
    _summarise(out, as_json)
    if fit_calibration is not None:
        _fit(out, fit_calibration)
    if totals.written and totals.statuses["ok"] == 0:
        _note(
            "every run of this call failed: see each row's `error` in --out; --retry-failed judges them again"
        )
        raise typer.Exit(cj.FAILURE_EXIT)


def _load(data: Path, layout: str, split: str | None, out: Path) -> list[Example]:
    """Every example read and checked before a model loads; in-memory images go beside the results."""
    from flexjudge.evaluation.data import LAYOUTS, load_examples

    if layout not in LAYOUTS:
        cj.usage(f"--layout must be one of {', '.join(LAYOUTS)}, not {layout!r}")
    try:
        return list(
            load_examples(data, layout=layout, split=split, media_dir=out.parent / f"{out.name}.media")
        )
    except FlexjudgeError as exc:
        cj.usage(str(exc))


def read_results(path: Path) -> list[ResultRow]:
    """`flexjudge.evaluation.results.read_results`, its refusal a usage error of the command."""
    from flexjudge.evaluation.results import read_results as read

    try:
        return read(path)
    except FlexjudgeError as exc:
        cj.usage(str(exc))


def _summarise(out: Path, as_json: bool) -> None:
    from flexjudge.evaluation.metrics import summarize

    summary = summarize(read_results(out))
    if as_json:
        print(json.dumps(summary.to_json()))
    else:
        from rich.console import Console

        Console().print(summary.table())


def calibration_path(out: Path) -> Path:
    """Where `--fit-calibration` saves the map fitted on the results file `out`."""
    return out.with_name(f"{out.name}.calibration.json")


def _fit(out: Path, method: str) -> None:
    from flexjudge.evaluation.calibration import fit_calibration
    from flexjudge.evaluation.metrics import calibration_data

    confidences, correct = calibration_data(read_results(out))
    if not confidences:
        cj.usage(f"--fit-calibration: no judgment in {out} carries a confidence and a non-tie label")
    fitted = fit_calibration(confidences, correct, method="isotonic" if method == "isotonic" else "platt")
    target = calibration_path(out)
    fitted.save(target)
    _note(f"fitted the {method} calibration map on {len(confidences)} judgments: {target}")


def _compare(a: Path, b: Path, as_json: bool) -> None:
    from flexjudge.evaluation.metrics import compare

    try:
        comparison = compare(read_results(a), read_results(b))
    except FlexjudgeError as exc:  # e.g. no shared ids: the files given cannot be compared
        cj.usage(str(exc))
    if as_json:
        print(json.dumps(comparison.to_json()))
    else:
        from rich.console import Console

        Console().print(comparison.table())


def _note(message: str) -> None:
    from rich.console import Console
    from rich.markup import escape

    Console(stderr=True, highlight=False, soft_wrap=True).print(f"[dim]{escape(message)}[/dim]")
