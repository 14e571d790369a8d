"""Teacher traces -> an SFT dataset in TRL's conversational vision-language format (`flexjudge sft-data`).

One source of truth with inference: the user message of each row is built by `Judge`'s own steps (its
media loading, `render_prompt` with its `PromptSpec`, `Judge._request`: the images, candidate 1's first,
then the text), so a video becomes the frames the judge would sample; the completion is the trace's
judgment written by the format's own codec (`flexjudge.formats.render`), which parses back to the same
judgment. Rows (contract, /work/coord/TRAIN_CONTRACT.md)::

    prompt:     [{"role": "user", "content": [{"type": "image"}, ..., {"type": "text", "text": ...}]}]
    completion: [{"role": "assistant", "content": [{"type": "text", "text": <the trace, rendered>}]}]
    images:     the PIL images in prompt order;  id;  label ("1", "2" or "tie", numbered as the prompt
                shows the candidates, i.e. the trace's `order` applied)

What is skipped, and counted by reason: lines that fail `flexjudge validate` (parse errors, `check()`
errors), records missing the contract's fields, `think` traces (`judge()` has no Think prompt to pair
them with), candidates that do not load, and rows labelled "tie" where the format has no tie verdict.
The split is by id (a hash of seed and id), so both candidate orders of one pair land in the same split
and the split does not depend on the order of the file. The file is streamed; rows go to disk in batches.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from flexjudge._sync import run_sync
from flexjudge.anchors import Modality
from flexjudge.backends.base import Generation, Message, Request, chat_template_messages
from flexjudge.constraints import OutputFormat
from flexjudge.errors import FlexjudgeError, TraceFileError, UsageError
from flexjudge.formats import Format, parse, render
from flexjudge.judging import Judge
from flexjudge.prompting import render_prompt
from flexjudge.reading import pair_request_constraint, portable_schema
from flexjudge.traces import _BOM, BOM_NOTE, DEFAULT_MAX_LINE_BYTES, _lines, report_line

if TYPE_CHECKING:
    from datasets import Dataset, Features  # type: ignore[import-untyped]
    from PIL.Image import Image as PILImage

    from flexjudge.media import Limits

__all__ = [
    "SftStats",
    "build_sft_data",
    "conversation",
    "has_tie_verdict",
    "pair_request",
    "prompt_judge",
    "template_kwargs_feature",
    "template_kwargs_row",
]

Conversation = list[dict[str, Any]]
_LISTED = 1000  # skipped lines listed by number in stats.json; the counts stay exact beyond it
_WRITER_BATCH = 64  # rows held before a write: images make rows large


# -- the prompt, as judge() builds it ---------------------------------------------------------------


class _NoModel:
    """The backend of a Judge used only to build requests: nothing here ever asks a model."""

    name = "none"
    model = "none"

    async def generate(self, requests: list[Request]) -> list[Generation]:
        raise UsageError("a Judge made by prompt_judge() builds prompts; it has no model to generate with")

    async def aclose(self) -> None:
        return None


def prompt_judge(
    output_format: OutputFormat,
    *,
    frames_per_video: int = 8,
    template: str | Path | None = None,
    limits: Limits | None = None,
) -> Judge:
    """A `Judge` with no model, configured as the judge the data is for: it builds requests, never runs."""
    return Judge(
        "prompt-only",
        backend=_NoModel(),
        output_format=output_format,
        frames_per_video=frames_per_video,
        template=template,
        limits=limits,
    )


def pair_request(judge: Judge, prompt: str, candidates: Sequence[str], modality: Modality | None) -> Request:
    """The request `judge.judge(prompt, candidates)` sends (one order, no swap, no preferences), built by
    the judge's own steps: its media loading (a video sampled to its `frames_per_video` frames), its
    prompt spec and template, its message layout."""
    media, shown = run_sync(judge.load(list(candidates), modality))
    text = render_prompt(judge._spec("pair", shown), prompt, None)
    constraint = pair_request_constraint(shown, judge.output_format, (), judge.max_string_length)
    return judge._request(text, media[0] + media[1], constraint, None)


def conversation(messages: Sequence[Message]) -> tuple[Conversation, list[PILImage]]:
    """TRL's conversational form of `messages`, rendered as the local backend renders its prompts."""
    return chat_template_messages(messages)


def completion(text: str) -> Conversation:
    return [{"role": "assistant", "content": [{"type": "text", "text": text}]}]


def has_tie_verdict(output_format: Format, modality: Modality) -> bool:
    """Whether a judge emitting `output_format` can say "tie" overall: the wire schema its decoding is
    constrained by admits a null overall winner. None does today (`wire_schemas` fixes ties out of what a
    model may emit; Think's verdict is a bare winner, and judge() has no Think prompt)."""
    if output_format == "think":
        return False
    schema = portable_schema(modality, output_format)
    props = schema["properties"] if output_format == "flex" else schema["$defs"]["Verdict"]["properties"]
    winner = props["winner"]
    options = winner.get("anyOf", [winner])
    return any(o.get("type") == "null" or None in o.get("enum", ()) for o in options)


# -- the datasets ---------------------------------------------------------------------------------


def message_features() -> Any:
    from datasets import List, Value

    return List(
        {"role": Value("string"), "content": List({"type": Value("string"), "text": Value("string")})}
    )


def sft_features(template_kwargs: dict[str, Any]) -> Features:
    from datasets import Features, Image, List, Value

    turn = message_features()
    return Features(
        {
            "prompt": turn,
            "completion": turn,
            "images": List(Image()),
            "id": Value("string"),
            "label": Value("string"),
            **template_kwargs_feature(template_kwargs),
        }
    )


_SCALAR_TYPES = {bool: "bool", int: "int64", float: "float64", str: "string"}


def template_kwargs_feature(template_kwargs: dict[str, Any]) -> dict[str, Any]:
    """The `chat_template_kwargs` column (a struct of scalars) for rows rendered with these chat-template
    arguments, or no column when there are none. TRL passes a row's `chat_template_kwargs` to the chat
    template, so the trained prompt is the one the judge renders at inference (`enable_thinking: false`
    puts Qwen3.5's empty think block in both)."""
    from datasets import Value

    if not template_kwargs:
        return {}
    fields = {}
    for key, value in template_kwargs.items():
        kind = _SCALAR_TYPES.get(type(value))
        if kind is None:
            raise UsageError(
                f"chat_template_kwargs[{key!r}] is a {type(value).__name__}; training rows hold scalars only"
            )
        fields[key] = Value(kind)
    return {"chat_template_kwargs": fields}


def save_split(arrow: Path, target: Path) -> int:
    """Save the rows written to `arrow` as a dataset at `target` (replacing one there); the row count."""
    import datasets

    dataset: Dataset = datasets.Dataset.from_file(str(arrow))
    staged = target.with_name(f".{target.name}.partial")
    shutil.rmtree(staged, ignore_errors=True)
    bars = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        # An empty dataset saved with no shard cannot be loaded back; one empty shard can.
        dataset.save_to_disk(str(staged), num_shards=1 if len(dataset) == 0 else None)
    finally:
        if bars:
            datasets.enable_progress_bars()
    shutil.rmtree(target, ignore_errors=True)
    staged.rename(target)
    return len(dataset)


# -- sft-data -------------------------------------------------------------------------------------


@dataclass
class SftStats:
    """What `build_sft_data` read, wrote and skipped (also written to `stats.json`)."""

    lines: int = 0
    train: int = 0
    eval: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    formats: Counter[str] = field(default_factory=Counter)
    modalities: Counter[str] = field(default_factory=Counter)
    labels: Counter[str] = field(default_factory=Counter)
    """Labels of the rows written, numbered as their prompts show the candidates."""
    winners: Counter[str] = field(default_factory=Counter)
    """The traces' winners as shown: a lopsided count means a teacher with a position bias."""
    agrees: Counter[str] = field(default_factory=Counter)
    images: int = 0
    skipped_lines: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def skip(self, line: int, ident: str | None, reason: str, detail: str = "") -> None:
        self.skipped[reason] += 1
        if len(self.skipped_lines) < _LISTED:
            self.skipped_lines.append({"line": line, "id": ident, "reason": reason, "detail": detail})

    def as_dict(self) -> dict[str, Any]:
        return {
            "lines": self.lines,
            "rows": {"train": self.train, "eval": self.eval},
            "skipped_total": sum(self.skipped.values()),
            "skipped": dict(sorted(self.skipped.items())),
            "formats": dict(self.formats),
            "modalities": dict(self.modalities),
            "labels": dict(sorted(self.labels.items())),
            "winners_shown": dict(sorted(self.winners.items())),
            "agrees": dict(self.agrees),
            "images": self.images,
            "skipped_lines": self.skipped_lines,
            "notes": self.notes,
        }


def in_eval(ident: str, seed: int, fraction: float) -> bool:
    """The split of an id: a hash of (seed, id) below `fraction`; both orders of a pair share it."""
    digest = hashlib.sha256(f"{seed}\x00{ident}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


def build_sft_data(
    traces: str | Path,
    out: str | Path,
    *,
    eval_fraction: float = 0.05,
    seed: int = 0,
    frames_per_video: int = 8,
    template: str | Path | None = None,
    limits: Limits | None = None,
) -> SftStats:
    """Write `out/train` and `out/eval` (`datasets.load_from_disk`) and `out/stats.json` from a trace file
    (see the module docstring). Raises `TraceFileError` when the file cannot be read."""
    from datasets.arrow_writer import ArrowWriter  # type: ignore[import-untyped]

    if not 0 <= eval_fraction < 1:
        raise UsageError(f"eval_fraction must be in [0, 1), not {eval_fraction!r}")
    source, target = Path(traces), Path(out)
    judges = {
        fmt: prompt_judge(fmt, frames_per_video=frames_per_video, template=template, limits=limits)
        for fmt in ("flex", "native")
    }
    stats = SftStats()
    target.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".building-", dir=target))
    try:
        # Every judge here is built alike, so one set of chat-template arguments holds for every row.
        features = sft_features(judges["flex"].chat_template_kwargs)
        writers = {
            split: ArrowWriter(
                features=features, path=str(staging / f"{split}.arrow"), writer_batch_size=_WRITER_BATCH
            )
            for split in ("train", "eval")
        }
        try:
            for row in _rows(source, judges, stats):
                split = "eval" if in_eval(row["id"], seed, eval_fraction) else "train"
                writers[split].write(row)
            for writer in writers.values():
                writer.finalize()
        finally:
            for writer in writers.values():
                writer.close()
        stats.train = save_split(staging / "train.arrow", target / "train")
        stats.eval = save_split(staging / "eval.arrow", target / "eval")
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    report = {
        **stats.as_dict(),
        "eval_fraction": eval_fraction,
        "seed": seed,
        "frames_per_video": frames_per_video,
    }
    (target / "stats.json").write_text(
        json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
    )
    return stats


def _rows(source: Path, judges: dict[str, Judge], stats: SftStats) -> Iterator[dict[str, Any]]:
    try:
        handle = source.open("rb")
    except OSError as exc:
        raise TraceFileError(f"cannot read {source}: {exc.strerror or exc}") from None
    with handle:
        if handle.peek(len(_BOM))[: len(_BOM)] == _BOM:  # as `flexjudge validate` reads it
            handle.read(len(_BOM))
            stats.notes.append(BOM_NOTE)
        for number, raw in _lines(handle, DEFAULT_MAX_LINE_BYTES):
            if raw is not None and not raw.strip():
                continue
            stats.lines += 1
            row = _row(number, raw, source.parent, judges, stats)
            if row is not None:
                yield row


def _row(
    number: int, raw: bytes | None, folder: Path, judges: dict[str, Judge], stats: SftStats
) -> dict[str, Any] | None:
    if raw is None:
        stats.skip(number, None, "line_too_long")
        return None
    try:
        record = json.loads(raw)
    except ValueError:
        record = None
    fields = _fields(record) if isinstance(record, dict) else "not a JSON object"
    ident = str(record["id"]) if isinstance(record, dict) and "id" in record else None
    if isinstance(fields, str):
        stats.skip(number, ident, "bad_record", fields)
        return None
    ident, fmt, modality, candidates, order, label = fields
    if fmt == "think":
        stats.skip(number, ident, "think_format", "judge() has no Think prompt to pair the trace with")
        return None
    report = report_line(number, raw, format=fmt)
    if not report.valid("error") or report.judgment is None:
        errors = [p for p in report.problems if p.severity == "error"]
        stats.skip(number, ident, "invalid", "; ".join(f"{p.code}: {p.message}" for p in errors))
        return None
    judgment = report.judgment
    if label == "tie" and not has_tie_verdict(fmt, modality):
        stats.skip(number, ident, "tie_without_tie_verdict", f"the {fmt} format has no tie verdict")
        return None
    # Compact, as the constrained decoder writes it (no whitespace: flexjudge.grammar, the engines'
    # whitespace off): the codec's spaced JSON puts a token the decoder forbids after every ':' and ','.
    text = json.dumps(json.loads(render(judgment, fmt)), ensure_ascii=False, separators=(",", ":"))
    if parse(text, format=fmt, modality=modality, prompt=record["prompt"]).content() != judgment.content():
        # The codec must write what it reads: a row that would parse back differently teaches a lie.
        stats.skip(number, ident, "render_mismatch")
        return None
    paths = [str(p if Path(p).is_absolute() else folder / p) for p in candidates]
    try:
        request = pair_request(judges[fmt], record["prompt"], paths, modality)
    except FlexjudgeError as exc:
        stats.skip(number, ident, "media", str(exc))
        return None
    prompt, images = conversation(request.messages)
    shown_label = label if label == "tie" or order == [1, 2] else 3 - cast(int, label)
    stats.formats[fmt] += 1
    stats.modalities[modality] += 1
    stats.labels[str(shown_label)] += 1
    stats.winners[str(judgment.verdict.winner)] += 1
    stats.agrees[str(record.get("agrees")).lower()] += 1
    stats.images += len(images)
    return {
        "prompt": prompt,
        "completion": completion(text),
        "images": images,
        "id": ident,
        "label": str(shown_label),
        **template_kwargs_row(request),
    }


def template_kwargs_row(request: Request) -> dict[str, Any]:
    """The row's `chat_template_kwargs` (see `template_kwargs_feature`): what `request` was rendered with."""
    kwargs = request.chat_template_kwargs
    return {"chat_template_kwargs": dict(kwargs)} if kwargs else {}


def _fields(record: dict[str, Any]) -> tuple[str, Format, Modality, list[str], list[int], int | str] | str:
    """The contract's fields of a trace record, checked; a string says what is wrong."""
    ident = record.get("id")
    if not isinstance(ident, str | int) or isinstance(ident, bool):
        return "'id' must be a string"
    if not isinstance(record.get("prompt"), str) or not isinstance(record.get("output"), str):
        return "'prompt' and 'output' must be strings"
    fmt = record.get("format")
    if fmt not in ("flex", "native", "think"):
        return f"'format' must be 'flex', 'native' or 'think', got {fmt!r}"
    modality = record.get("modality", "image")
    if modality not in ("image", "video"):
        return f"'modality' must be 'image' or 'video', got {modality!r}"
    candidates = record.get("candidates")
    if not (
        isinstance(candidates, list) and len(candidates) == 2 and all(isinstance(c, str) for c in candidates)
    ):
        return "'candidates' must be a list of two paths"
    order = record.get("order", [1, 2])
    if order not in ([1, 2], [2, 1]):
        return f"'order' must be [1, 2] or [2, 1], got {order!r}"
    label = record.get("label")
    if label not in (1, 2, "tie") or isinstance(label, bool):
        return f"'label' must be 1, 2 or 'tie', got {label!r}"
    return str(ident), fmt, modality, candidates, order, label
