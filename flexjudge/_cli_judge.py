"""`flexjudge judge | score | rank`: one command per result type, as in the Python API.

Why three commands rather than one with `--mode`: each returns a different result (a `Judgment`, a
`PointwiseJudgment`, a `Ranking`), takes a different number of candidates (2, 1, 2 or more) and different
options (`--swap` means nothing for one candidate, `--scale` nothing for a pair). Separate commands give
each `--help` only the options that apply, state the candidate count in the command's own terms, and map
one to one onto `flexjudge.judge` / `score` / `rank`.

Order of work, so that a mistake costs nothing: the command line is checked (prompt, candidate count,
flags), then the media are loaded and size-checked, and only then is the model loaded. Exit status: 0 a
result was printed; 1 the judge failed (model, server, unreadable output); 2 the command line was wrong
(a flag, a file, the candidate count), reported before any model loads.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, NoReturn

import typer

from flexjudge.errors import FlexjudgeError, MediaError, UsageError

if TYPE_CHECKING:
    from flexjudge.anchors import Modality
    from flexjudge.judging import Judge
    from flexjudge.schema import Preferences

Verb = Literal["judge", "score", "rank"]

USAGE_EXIT = 2
"""The command line was wrong: fix the flags or files (click uses 2 for its own usage errors too)."""
FAILURE_EXIT = 1
"""The judge could not produce a result: the model, the server or the model's output failed."""

# The options every judging command shares, defined once.
Files = Annotated[
    list[Path], typer.Argument(metavar="FILE", help="Candidate images or videos.", show_default=False)
]
Prompt = Annotated[str, typer.Option("--prompt", "-p", help="The generation prompt the candidates answer.")]
Model = Annotated[
    str | None,
    typer.Option(help="Model directory or hub id ('tiny-random': a test model).", show_default=False),
]
BackendName = Annotated[
    str, typer.Option(help="auto (a server if --base-url is set), transformers or openai.")
]
BaseUrl = Annotated[
    str | None,
    typer.Option(help="OpenAI-compatible server URL (or FLEXJUDGE_BASE_URL).", show_default=False),
]
Device = Annotated[
    str | None,
    typer.Option(help="cpu, cuda or cuda:N for local models [default: cuda if present].", show_default=False),
]
Dtype = Annotated[
    str | None,
    typer.Option(
        help="auto, bfloat16, float16 or float32 [default: bf16 on a GPU that has it].", show_default=False
    ),
]
OutputFormat = Annotated[str, typer.Option("--format", help="Wire format asked for: flex or native.")]
EngineName = Annotated[
    str | None, typer.Option(help="Constraint engine for local models.", show_default=False)
]
Seed = Annotated[int | None, typer.Option(help="Sampling seed, for reproducible runs.", show_default=False)]
Temperature = Annotated[float, typer.Option(min=0.0, help="Sampling temperature; 0 decodes greedily.")]
TopP = Annotated[float, typer.Option(max=1.0, help="Nucleus sampling mass, in (0, 1].")]
FramesPerVideo = Annotated[int, typer.Option(min=1, help="Frames sampled from each video.")]
MaxNewTokens = Annotated[int, typer.Option(min=1, help="Token budget of the judgment.")]
MaxStringLength = Annotated[
    int | None,
    typer.Option(min=1, help="Bound every string (random-weight test models).", show_default=False),
]
Profile = Annotated[
    str | None, typer.Option("--preferences", help="Your preferences, in words.", show_default=False)
]
CustomDimension = Annotated[
    list[str] | None,
    typer.Option(
        "--custom-dimension", help="A dimension that must be judged (at most 2).", show_default=False
    ),
]
Weight = Annotated[
    list[str] | None, typer.Option("--weight", help="NAME=WEIGHT of a dimension.", show_default=False)
]
WeightedVerdict = Annotated[
    bool, typer.Option("--weighted-verdict", help="Decide the verdict by weighted dimension wins.")
]
Swap = Annotated[bool, typer.Option("--swap", help="Judge both orders of every pair and merge them.")]
Scale = Annotated[str, typer.Option(help="The score scale, LOW..HIGH.")]
AsJson = Annotated[bool, typer.Option("--json", help="Print one JSON object instead of the tree.")]

_DTYPES = ("auto", "bfloat16", "float16", "float32")
_DEVICE = re.compile(r"cpu|cuda(:\d+)?")
_PREFERENCE_FLAGS = {
    "profile": "--preferences",
    "weights": "--weight",
    "custom_dimensions": "--custom-dimension",
    "weighted_verdict": "--weighted-verdict",
}


def run(
    verb: Verb,
    files: list[Path],
    prompt: str,
    settings: dict[str, Any],
    call: dict[str, Any],
    preferences: tuple[str | None, list[str] | None, list[str] | None, bool],
    as_json: bool,
) -> None:
    """Check the command line, load the media, then the model; judge and print."""
    _check_prompt(prompt)
    _check_count(verb, len(files))
    url = _check_settings(settings)
    prefs = _preferences(*preferences)
    modality, candidates = _load_media(files, settings["frames_per_video"])
    served = settings["backend"] == "openai" or (settings["backend"] == "auto" and url is not None)
    if not served:
        _quiet_loading()
    judge = _make_judge(settings, url)
    try:
        result = _call(judge, verb, prompt, candidates, modality=modality, preferences=prefs, **call)
    except (FlexjudgeError, ValueError) as exc:
        where = f" (server {url})" if served else ""
        _fail(exc, f"judging failed{where}")
    finally:
        judge.close()
    if as_json:
        print(json.dumps(result.model_dump(mode="json")))  # ASCII: safe on any terminal
    else:
        _print_tree(result, prompt)


def _check_prompt(prompt: str) -> None:
    if not prompt.strip():
        usage("--prompt is empty: give the generation prompt the candidates were made for")


def _check_count(verb: Verb, count: int) -> None:
    if verb == "judge" and count != 2:
        hint = "use `flexjudge rank` for more" if count > 2 else "use `flexjudge score` for one"
        usage(f"`flexjudge judge` compares exactly 2 candidates, got {count}: {hint}")
    if verb == "score" and count != 1:
        usage(f"`flexjudge score` scores exactly 1 candidate, got {count}: use `flexjudge judge` or `rank`")
    if verb == "rank" and count < 2:
        usage(f"`flexjudge rank` ranks 2 or more candidates, got {count}: use `flexjudge score` for one")


def _check_settings(settings: dict[str, Any]) -> str | None:
    """Check the flags the library would refuse only after a model loads, in the flags' own names;
    returns the server URL in use, if any."""
    from flexjudge.backends.auto import BASE_URL_ENV

    if settings["backend"] not in ("auto", "transformers", "openai"):
        usage(f"--backend must be auto, transformers or openai, not {settings['backend']!r}")
    if settings["output_format"] not in ("flex", "native"):
        usage(f"--format must be flex or native, not {settings['output_format']!r}")
    if not math.isfinite(settings["temperature"]):
        usage(f"--temperature must be a finite number, not {settings['temperature']}")
    if not 0 < settings["top_p"] <= 1:
        usage(f"--top-p must be above 0 and at most 1, not {settings['top_p']}")
    check_device(settings["device"], settings["dtype"])
    url: str | None = settings["base_url"]
    flag = "--base-url"
    if url is None and settings["backend"] != "transformers":
        url, flag = os.environ.get(BASE_URL_ENV) or None, BASE_URL_ENV
    if url is not None and not re.match(r"https?://[^/\s]", url):
        usage(f"{flag} must be an http:// or https:// URL, such as http://127.0.0.1:8000/v1, not {url!r}")
    if settings["backend"] == "openai" and url is None:
        usage(f"--backend openai needs --base-url (or {BASE_URL_ENV})")
    return url


def check_device(device: str | None, dtype: str | None) -> None:
    """`--device` and `--dtype`, checked before a model loads on them."""
    if device is not None and not _DEVICE.fullmatch(device):
        usage(f"--device must be cpu, cuda or cuda:N (N a GPU number), not {device!r}")
    if dtype is not None and dtype not in _DTYPES:
        usage(f"--dtype must be one of {', '.join(_DTYPES)}, not {dtype!r}")


def _preferences(
    profile: str | None, weights: list[str] | None, custom: list[str] | None, weighted: bool
) -> Preferences | None:
    from pydantic import ValidationError

    from flexjudge.schema import Preferences

    parsed: dict[str, float] = {}
    for item in weights or []:
        name, sep, value = item.partition("=")
        try:
            parsed[name.strip()] = float(value)
            if not sep or not name.strip():
                raise ValueError
        except ValueError:
            usage(
                f"--weight must be NAME=WEIGHT with a number for WEIGHT, such as 'Aesthetics=2', not {item!r}"
            )
    if not (profile or parsed or custom or weighted):
        return None
    try:
        return Preferences(
            profile=profile or "",
            weights=parsed,
            custom_dimensions=tuple(custom or ()),
            weighted_verdict=weighted,
        )
    except ValidationError as exc:
        # The first problem, in the flag's name and the validator's own words (never pydantic's report).
        error = exc.errors()[0]
        flag = _PREFERENCE_FLAGS.get(str(error["loc"][0]) if error["loc"] else "", "--preferences")
        reason = error.get("ctx", {}).get("error", error["msg"])
        usage(f"{flag}: {reason}")


def _load_media(files: list[Path], frames: int) -> tuple[Modality, list[Any]]:
    """Every candidate decoded and size-checked before the model loads, so a missing or broken file costs
    nothing; the decoded frames are what the judge gets, so nothing is read twice."""
    from flexjudge._preflight import load_candidates

    try:
        loaded, modality = asyncio.run(load_candidates([str(f) for f in files], None, frames, None))
    except MediaError as exc:
        usage(str(exc))
    # An image candidate is its one frame; a video candidate is its list of sampled frames.
    return modality, [one[0] for one in loaded] if modality == "image" else list(loaded)


def _make_judge(settings: dict[str, Any], url: str | None) -> Judge:
    import flexjudge

    try:
        return flexjudge.Judge(**settings)
    except (FlexjudgeError, ValueError) as exc:
        # Name the flags that set the judge up, so the user knows which one to change.
        flags = {"--model": settings["model"] or flexjudge.DEFAULT_MODEL, "--base-url": url}
        flags.update({f"--{k}": settings[k] for k in ("engine", "device", "dtype")})
        what = ", ".join(f"{flag} {value}" for flag, value in flags.items() if value is not None)
        _fail(exc, f"could not set up the judge ({what})")


def _call(judge: Judge, verb: Verb, prompt: str, candidates: list[Any], **options: Any) -> Any:
    if verb == "score":
        (candidate,) = candidates
        return judge.score(prompt, candidate, **options)
    return (
        judge.rank(prompt, candidates, **options)
        if verb == "rank"
        else judge.judge(prompt, candidates, **options)
    )


def _print_tree(result: Any, prompt: str) -> None:
    from rich.console import Console

    import flexjudge
    from flexjudge.render_tree import judgment_tree, pointwise_tree, ranking_tree

    out = Console(highlight=False)
    if isinstance(result, flexjudge.Ranking):
        out.print(ranking_tree(result, prompt=prompt))
        return
    if isinstance(result, flexjudge.PointwiseJudgment):
        out.print(pointwise_tree(result, result.findings, prompt=prompt))
    else:
        out.print(judgment_tree(result, result.findings, prompt=prompt))


def parse_scale(text: str) -> dict[str, Any]:
    """`--scale LOW..HIGH` as the `scale=` option of `score`."""
    from flexjudge.schema import PointScale

    match = re.fullmatch(r"\s*(-?\d+)\s*\.\.\s*(-?\d+)\s*", text)
    if match is None or int(match[1]) >= int(match[2]):
        usage(f"--scale must be LOW..HIGH with LOW below HIGH, such as 1..10, not {text!r}")
    return {"scale": PointScale(low=int(match[1]), high=int(match[2]))}


def _quiet_loading() -> None:
    """The command prints a judgment; transformers' weight-loading progress bar is noise around it."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:  # the served path needs no transformers
        return
    hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]


def usage(message: str) -> NoReturn:
    """A command-line mistake: said in the flags' terms, exit status 2."""
    _print_error(message)
    raise typer.Exit(USAGE_EXIT)


def _fail(exc: Exception, context: str) -> NoReturn:
    """A library error: a `UsageError` (or any `ValueError`, its base) is the caller's mistake, exit 2;
    any other `FlexjudgeError` is a failure of the judge, exit 1."""
    code = USAGE_EXIT if isinstance(exc, UsageError | ValueError) else FAILURE_EXIT
    _print_error(f"{context}: {exc}")
    raise typer.Exit(code)


def _print_error(message: str) -> None:
    from rich.console import Console
    from rich.markup import escape

    # soft_wrap: the terminal wraps the line, rich does not cut it at 80 columns mid-phrase.
    Console(stderr=True, highlight=False, soft_wrap=True).print(f"[red]error:[/red] {escape(message)}")
