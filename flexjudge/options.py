"""The options of the judging verbs, defined once and checked against the signatures that take them.

`Judge(...)` takes the settings (how a judge runs: model, backend, sampling, limits); its `judge`,
`score` and `rank` methods take the call options (what one judgment asks: preferences, swap, seed). The
one-off verbs `flexjudge.judge` / `score` / `rank` take both, typed here as TypedDicts so type checkers
see every keyword (`**options: Unpack[PairCall]`), and `split_options` checks them at run time: an unknown
keyword is a `UsageError` that names the closest valid one. A test holds these TypedDicts to the
signatures of `Judge.__init__` and its methods, so the two cannot drift apart.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypedDict

from flexjudge.errors import UsageError

if TYPE_CHECKING:
    from flexjudge.anchors import Modality
    from flexjudge.backends.base import Backend
    from flexjudge.constraints import OutputFormat
    from flexjudge.evaluation.calibration import CalibrationMap
    from flexjudge.media import Limits
    from flexjudge.schema import PointScale, Preferences

OnFindings = Literal["attach", "raise"]
"""`attach`: every result carries `check()`'s findings in `.findings`; `raise`: a judgment with an error
finding raises `ValidationFailed` instead of being returned."""

__all__ = [
    "Call",
    "JudgeSettings",
    "OnFindings",
    "PairCall",
    "PairOptions",
    "PointCall",
    "PointOptions",
    "RankCall",
    "RankOptions",
    "call_options",
    "split_options",
]


class JudgeSettings(TypedDict, total=False):
    """The keywords of `Judge(...)`: see its docstring."""

    model: str | None
    backend: str | Backend
    base_url: str | None
    api_key: str | None
    output_format: OutputFormat
    engine: str | None
    device: str | None
    dtype: str | None
    frames_per_video: int
    limits: Limits | None
    template: str | Path | None
    max_new_tokens: int
    temperature: float
    top_p: float
    max_concurrency: int
    max_string_length: int | None
    chat_template_kwargs: dict[str, Any] | None
    backend_options: dict[str, Any] | None
    calibration: str | Path | CalibrationMap | None


class _CallOptions(TypedDict, total=False):
    preferences: Preferences | str | None
    seed: int | None
    modality: Modality | None
    on_findings: OnFindings


class PairOptions(_CallOptions, total=False):
    """The keywords of `Judge.judge` / `ajudge` / `batch`."""

    swap: bool


class RankOptions(_CallOptions, total=False):
    """The keywords of `Judge.rank` / `arank`."""

    swap: bool


class PointOptions(_CallOptions, total=False):
    """The keywords of `Judge.score` / `ascore`."""

    scale: PointScale | None


class PairCall(JudgeSettings, PairOptions, total=False):
    """The keywords of the one-off `flexjudge.judge` / `ajudge`."""


class RankCall(JudgeSettings, RankOptions, total=False):
    """The keywords of the one-off `flexjudge.rank` / `arank`."""


class PointCall(JudgeSettings, PointOptions, total=False):
    """The keywords of the one-off `flexjudge.score` / `ascore`."""


@dataclass(frozen=True)
class Call:
    """The options of one call, complete (defaults filled in): what the judging steps read."""

    preferences: Preferences | None = None
    swap: bool = False
    seed: int | None = None
    modality: Modality | None = None
    scale: PointScale | None = None
    on_findings: OnFindings = "attach"


_CALL_DEFAULTS = {f.name: f.default for f in fields(Call)}


def call_options(verb: str, options: Mapping[str, Any], allowed: Any) -> Call:
    """Check a verb's call options against the TypedDict `allowed` and fill in the defaults; an unknown
    keyword or a bad value is a `UsageError` naming the fix."""
    from flexjudge.schema import Preferences

    _refuse_unknown(verb, options, set(allowed.__annotations__))
    if options.get("on_findings", "attach") not in ("attach", "raise"):
        raise UsageError(f"on_findings must be 'attach' or 'raise', not {options['on_findings']!r}")
    if options.get("modality") not in (None, "image", "video"):
        raise UsageError(f"modality must be 'image', 'video' or None, not {options['modality']!r}")
    if options.get("seed") is not None and (
        isinstance(options["seed"], bool) or not isinstance(options["seed"], int)
    ):
        raise UsageError(f"seed must be a whole number or None, not {options['seed']!r}")
    values = {**options, "preferences": Preferences.coerce(options.get("preferences"))}
    return Call(**values)


def split_options(
    verb: str, options: Mapping[str, Any], settings: Callable[..., Any], allowed: Any
) -> tuple[dict[str, Any], Call]:
    """Split a one-off verb's keywords into `Judge(...)` settings and the call's options."""
    setting_names = set(keywords(settings))
    call_names = set(allowed.__annotations__) - setting_names
    _refuse_unknown(verb, options, setting_names | call_names)
    given = {k: v for k, v in options.items() if k in call_names}
    return {k: v for k, v in options.items() if k in setting_names}, call_options(verb, given, allowed)


def _refuse_unknown(verb: str, options: Mapping[str, Any], known: set[str]) -> None:
    unknown = [name for name in options if name not in known]
    if unknown:
        name = unknown[0]
        close = difflib.get_close_matches(name, sorted(known), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else f"; valid options: {', '.join(sorted(known))}"
        raise UsageError(f"{verb}() got an unknown option {name!r}{hint}")


def keywords(function: Callable[..., Any]) -> dict[str, inspect.Parameter]:
    """The keyword parameters of `function` (positional-or-keyword ones included), by name."""
    return {
        name: p
        for name, p in inspect.signature(function).parameters.items()
        if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD) and name != "self"
    }


def with_keywords(verb: Callable[..., Any], allowed: Any, settings: Callable[..., Any] | None = None) -> None:
    """Give a verb (`def judge(prompt, candidates, **options)`) the signature `help()` and IDEs show: its
    positional parameters, then each keyword of `allowed` with its default (from `settings`'s signature
    for `Judge(...)` settings, from `Call` for the call options)."""
    signature = inspect.signature(verb)
    own = [p for p in signature.parameters.values() if p.kind is not p.VAR_KEYWORD]
    setting_defaults = {name: p.default for name, p in (keywords(settings) if settings else {}).items()}
    extra = [
        inspect.Parameter(
            name,
            inspect.Parameter.KEYWORD_ONLY,
            default=setting_defaults.get(name, _CALL_DEFAULTS.get(name)),
            annotation=getattr(annotation, "__forward_arg__", annotation),  # as written: 'int | None'
        )
        for name, annotation in allowed.__annotations__.items()
    ]
    verb.__signature__ = signature.replace(parameters=[*own, *extra])  # type: ignore[attr-defined]
