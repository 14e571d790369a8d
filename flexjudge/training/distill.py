"""Distillation: ask a teacher behind an OpenAI-compatible server for a reasoning trace per labelled pair.

- The teacher is a `Judge` on the `openai` backend: the same prompt templates, decoding constraint and
  parser as inference, so a trace that trains the student is what the student must later emit. Server
  failures retry under the backend's one policy (`flexjudge.backends._retry`).
- Re-asking: a trace that is unreadable or breaks the method's rules is re-asked up to `max_reasks`
  times with the rule violations, through the backend's instructor path (`instructor_retries`: the
  findings fed back as instructor does; it asks once more first); one that still breaks them is a
  failure. First asks go plain: instructor costs CPU on every call it makes.
- The label: a trace whose winner disagrees with the label is kept (`agrees: false`), dropped (a
  failure) or, with "reask", sampled again at `reask_temperature` with another seed, up to `max_reasks`
  times (rejection sampling; the label is never shown to the teacher, which would teach rationalising
  an answer given in advance). "tie" labels, which no wire format can answer, give `agrees: null`.
- Output: each finished trace is one flushed line of `out` in the format `flexjudge validate` reads
  (each line is checked by the validator's own reader before it is written); everything that did not
  give a trace goes to `<out stem>.failures.jsonl` with its reason. Both logs are keyed by id and
  candidate order (`flexjudge._jsonl`): a rerun skips what either holds, and a torn last line is cut.
- Server failures that outlast the retries are not failures of the item: nothing is written for them
  and a rerun asks again (`unfinished`). A refused constraint or a 401/403/404 stops the whole run: every
  item would meet it.
- Order: without `both_orders` each pair is shown in the order `flexjudge eval` draws from the seed
  (`order_of`), so a label skewed to one position does not teach a position bias; with it, both.
- Memory: examples are streamed and at most `concurrency` are open; what grows with the rows is only
  the resume keys (the logs' and the repeated-id check's), and those are 16-byte digests that move to a
  temporary on-disk index past 4,096 (`_jsonl.KeySet`): peak RSS 90 MiB at 10,000 rows, 93 MiB at
  100,000, flat over the last 60,000.
- Speed: an image file the teacher can read as it is goes as its own bytes (`media.open_original`),
  and finished lines are committed in batches (one fsync per batch); see
  `benchmarks/distill_throughput.py`.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from flexjudge._jsonl import JsonlLog, Repair
from flexjudge.backends.base import Backend, Generation, Request
from flexjudge.constraints import OutputFormat
from flexjudge.errors import (
    BackendError,
    ConstraintError,
    FlexjudgeError,
    MediaError,
    ParseError,
    TruncatedOutput,
    UsageError,
)
from flexjudge.evaluation.data import Example
from flexjudge.evaluation.runner import order_of
from flexjudge.options import Call

if TYPE_CHECKING:
    from flexjudge._preflight import Frames
    from flexjudge.checks import Finding
    from flexjudge.judging import Judge
    from flexjudge.media import Limits
    from flexjudge.schema import Judgment

__all__ = ["DistillTotals", "OnDisagree", "Price", "Teacher", "distill", "failures_path", "trace_key"]

OnDisagree = Literal["keep", "drop", "reask"]
Failure = Literal["check", "unreadable", "truncated", "disagrees", "media", "refused", "invalid"]
_FATAL_STATUS = frozenset({401, 403, 404})  # a key, a permission, a model name or URL: the run's fault


@dataclass(frozen=True)
class Teacher:
    """The teacher model and how it is asked (the `Judge` settings of the distillation)."""

    base_url: str
    model: str
    api_key: str | None = None
    output_format: OutputFormat = "flex"
    max_new_tokens: int = 4096
    temperature: float = 0.0
    frames_per_video: int = 8
    backend_options: dict[str, Any] = field(default_factory=dict)
    """Further `OpenAIBackend` keywords (`timeout_s`, `max_attempts`, `backoff_s`, ...)."""


@dataclass(frozen=True)
class Price:
    """USD per million tokens."""

    input_per_m: float
    output_per_m: float


@dataclass
class DistillTotals:
    """What one `distill` call did (traces and failures are counted per id and order)."""

    written: int = 0
    failed: int = 0
    failures: Counter[str] = field(default_factory=Counter)
    """Failures by kind: check, unreadable, truncated, disagrees, media, refused, invalid."""
    skipped: int = 0
    """Already in the output or the failures file (a resumed run): not asked again."""
    unfinished: int = 0
    """Server failures that outlasted the retries: nothing written, a rerun asks again."""
    agree: int = 0
    disagree: int = 0
    unlabelled: int = 0
    """Traces of "tie" labels, which no wire format can answer (`agrees: null`)."""
    requests: int = 0
    """Generations the teacher returned (re-asks included)."""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    unmetered: int = 0
    """Generations whose server reported no usage (then the token totals are a lower bound)."""
    repaired: list[tuple[Path, Repair]] = field(default_factory=list)
    elapsed_s: float = 0.0

    def cost(self, price: Price | None) -> float | None:
        if price is None:
            return None
        return (self.prompt_tokens * price.input_per_m + self.completion_tokens * price.output_per_m) / 1e6

    def as_dict(self, price: Price | None = None) -> dict[str, Any]:
        return {
            "written": self.written,
            "failed": self.failed,
            "failures": dict(sorted(self.failures.items())),
            "skipped": self.skipped,
            "unfinished": self.unfinished,
            "agree": self.agree,
            "disagree": self.disagree,
            "unlabelled": self.unlabelled,
            "requests": self.requests,
            "usage": {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens},
            "unmetered": self.unmetered,
            "cost_usd": self.cost(price),
            "repaired": [{"file": str(p), "line": r.line, "bytes": len(r.dropped)} for p, r in self.repaired],
            "elapsed_s": round(self.elapsed_s, 3),
        }


def failures_path(out: Path) -> Path:
    """`<out stem>.failures.jsonl` beside `out`."""
    return out.with_name(f"{out.stem}.failures.jsonl")


def trace_key(ident: str, order: list[int] | tuple[int, int]) -> str:
    """The key of a trace or failure: the id and the order shown (a fixed-length suffix: unambiguous)."""
    return f"{ident}#{order[0]}{order[1]}"


def _record_key(record: Any) -> str:
    return trace_key(str(record["id"]), record["order"])


async def distill(
    examples: Iterable[Example],
    teacher: Teacher,
    out: Path,
    *,
    both_orders: bool = False,
    on_disagree: OnDisagree = "keep",
    max_reasks: int = 2,
    reask_temperature: float = 0.7,
    concurrency: int = 8,
    seed: int = 0,
    total: int | None = None,
    progress: bool = True,
) -> DistillTotals:
    """Distil a trace for every example (and order) not yet in `out` or its failures file; see the module
    docstring. `total` (examples) sizes the progress bar."""
    if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
        raise UsageError(f"concurrency must be a positive integer, not {concurrency!r}")
    if isinstance(max_reasks, bool) or not isinstance(max_reasks, int) or max_reasks < 0:
        raise UsageError(f"max_reasks must be a non-negative integer, not {max_reasks!r}")
    if on_disagree not in ("keep", "drop", "reask"):
        raise UsageError(f"on_disagree must be keep, drop or reask, not {on_disagree!r}")
    started = time.perf_counter()
    from flexjudge.backends.openai import OpenAIBackend
    from flexjudge.judging import Judge

    totals = DistillTotals()
    # Two backends: the first ask goes plain, and only an answer that breaks the rules goes through
    # instructor, which re-asks with the rule violations. Instructor on every ask would cost ~30 ms of CPU
    # a request (a response-model schema and validation per call): on a few cores, the bound of the run.
    backends = [
        _Metered(
            OpenAIBackend(
                teacher.base_url,
                model=teacher.model,
                api_key=teacher.api_key,
                max_concurrency=concurrency,
                instructor_retries=reasks,
                **teacher.backend_options,
            ),
            totals,
        )
        for reasks in (0, max_reasks)
    ]

    def judge_at(backend: _Metered, temperature: float) -> Judge:
        return Judge(
            teacher.model,
            backend=backend,
            output_format=teacher.output_format,
            max_new_tokens=teacher.max_new_tokens,
            temperature=temperature,
            frames_per_video=teacher.frames_per_video,
            max_concurrency=concurrency,
        )

    judges = {
        t: (judge_at(backends[0], t), judge_at(backends[1], t))
        for t in (teacher.temperature, reask_temperature)
    }
    run = _Run(judges[teacher.temperature], judges[reask_temperature], teacher, totals)
    run.settings(both_orders, on_disagree, max_reasks, seed)
    try:
        with JsonlLog(out, _record_key) as traces, JsonlLog(failures_path(out), _record_key) as failed:
            totals.repaired += [(log.path, log.repaired) for log in (traces, failed) if log.repaired]
            jobs = None if total is None else total * (2 if both_orders else 1)
            with _progress_bar(progress, jobs, totals) as advance:
                await run.drive(iter(examples), traces, failed, concurrency, advance)
    finally:
        for backend in backends:
            await backend.inner.aclose()
        totals.elapsed_s = time.perf_counter() - started
    return totals


class _Metered:
    """The teacher's backend, with every generation's usage added to the totals as it comes back (so
    answers later found unreadable, and re-asks, are paid for in the totals too)."""

    name = "openai"

    def __init__(self, inner: Backend, totals: DistillTotals) -> None:
        self.inner = inner
        self.model = inner.model
        self.totals = totals

    async def generate(self, requests: list[Request]) -> list[Generation]:
        generations = await self.inner.generate(requests)
        tally = _TALLY.get()  # the (example, order) being asked, in this task
        for generation in generations:
            self.totals.requests += generation.attempts
            if generation.usage is None:
                self.totals.unmetered += generation.attempts
                if tally is not None:
                    tally.known = False
            else:
                # instructor reports the usage of all its asks on the last answer: this is the sum
                self.totals.prompt_tokens += generation.usage.prompt_tokens
                self.totals.completion_tokens += generation.usage.completion_tokens
                if tally is not None:
                    tally.prompt_tokens += generation.usage.prompt_tokens
                    tally.completion_tokens += generation.usage.completion_tokens
        return generations

    async def aclose(self) -> None:
        await self.inner.aclose()


@dataclass
class _Tally:
    """The usage of every generation asked for one (example, order): plain asks, re-asks, re-samples."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    known: bool = True
    """False once a generation came back without usage: then no total is claimed."""

    def as_dict(self) -> dict[str, int] | None:
        if not self.known:
            return None
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens}


_TALLY: ContextVar[_Tally | None] = ContextVar("flexjudge_distill_tally", default=None)


@dataclass
class _Outcome:
    """How one (example, order) ended: a trace record or a failure record; None: ask again next run."""

    trace: dict[str, Any] | None = None
    failure: dict[str, Any] | None = None
    kind: Failure | None = None
    line: str | None = None
    """The trace as the line the validator read (written as it is)."""


class _Committer:
    """Group commit of finished outcomes: those that finish while a batch is being written go in the
    next one. Each line is still written whole and flushed to the OS at once (a killed run loses
    nothing); one thread hop and one fsync serve a batch instead of each line (at many requests in
    flight, answers come in bursts), and a slow disk no longer queues the writes one by one."""

    def __init__(self, write_batch: Callable[[list[tuple[str, _Outcome]]], None]) -> None:
        self._write_batch = write_batch
        self._pending: list[tuple[str, _Outcome, asyncio.Future[None]]] = []
        self._task: asyncio.Task[None] | None = None

    async def put(self, key: str, outcome: _Outcome) -> None:
        """Queue one outcome; returns once its line is written (raises what writing it raised)."""
        written = asyncio.get_running_loop().create_future()
        self._pending.append((key, outcome, written))
        if self._task is None:
            self._task = asyncio.create_task(self._drain())
        await written

    async def _drain(self) -> None:
        try:
            while self._pending:
                batch, self._pending = self._pending, []
                try:  # off the loop: fsync waits on the disk, the teacher calls go on
                    await asyncio.to_thread(self._write_batch, [(key, outcome) for key, outcome, _ in batch])
                except Exception as exc:  # a LogFileError: each waiter of the batch raises it
                    for *_, written in batch:
                        if not written.done():
                            written.set_exception(exc)
                else:
                    for *_, written in batch:
                        if not written.done():  # a waiter cancelled meanwhile has its line all the same
                            written.set_result(None)
        finally:
            self._task = None

    async def close(self) -> None:
        if self._task is not None:
            await asyncio.wait([self._task])


class _Asked(Exception):
    """An ask that ended in `error` after `attempts` generations."""

    def __init__(self, error: FlexjudgeError, attempts: int) -> None:
        self.error = error
        self.attempts = attempts


class _Run:
    def __init__(
        self,
        judges: tuple[Judge, Judge],
        resamplers: tuple[Judge, Judge],
        teacher: Teacher,
        totals: DistillTotals,
    ) -> None:
        self.judges = judges
        """(plain, re-asking with the findings) at the teacher's temperature."""
        self.resamplers = resamplers
        """The same at the temperature of the re-asks of disagreeing traces."""
        self.teacher = teacher
        self.totals = totals

    def settings(self, both_orders: bool, on_disagree: OnDisagree, max_reasks: int, seed: int) -> None:
        self.both_orders = both_orders
        self.on_disagree = on_disagree
        self.max_reasks = max_reasks
        self.seed = seed

    def orders(self, example: Example) -> list[tuple[int, int]]:
        return [(1, 2), (2, 1)] if self.both_orders else [order_of(example.id, self.seed)]

    async def drive(
        self,
        examples: Iterator[Example],
        traces: JsonlLog,
        failed: JsonlLog,
        concurrency: int,
        advance: Callable[[int], None],
    ) -> None:
        gate = asyncio.Semaphore(concurrency)  # teacher calls in flight
        committer = _Committer(lambda batch: self.write_batch(batch, traces, failed))

        async def worker() -> None:
            # Workers share one iterator: at most `concurrency` examples are open however long the data.
            for example in examples:
                keys = {order: trace_key(example.id, order) for order in self.orders(example)}
                todo = [o for o, k in keys.items() if k not in traces and k not in failed]
                self.totals.skipped += len(keys) - len(todo)
                advance(len(keys) - len(todo))
                if not todo:
                    continue
                outcomes = await self.example(example, todo, gate)
                for order, outcome in zip(todo, outcomes, strict=True):
                    await committer.put(keys[order], outcome)  # returns once its line is written
                    advance(1)

        try:
            async with asyncio.TaskGroup() as group:  # a failing worker cancels the others
                for _ in range(concurrency):
                    group.create_task(worker())
        except BaseExceptionGroup as failure:
            raise failure.exceptions[0] from None  # the error itself, not a group around it
        finally:
            await committer.close()  # the logs close after this: no batch may still be writing

    def write_batch(self, batch: list[tuple[str, _Outcome]], traces: JsonlLog, failed: JsonlLog) -> None:
        """Append each outcome as one whole line, flushed to the OS as it is written (a killed run loses
        none), then one fsync per log for the batch."""
        for key, outcome in batch:
            self.write(key, outcome, traces, failed)
        traces.sync()
        failed.sync()

    def write(self, key: str, outcome: _Outcome, traces: JsonlLog, failed: JsonlLog) -> None:
        if outcome.trace is not None:
            line = outcome.line or json.dumps(outcome.trace, ensure_ascii=False, separators=(",", ":"))
            if traces.append_line(key, line, sync=False):
                self.totals.written += 1
                agrees = outcome.trace["agrees"]
                self.totals.agree += agrees is True
                self.totals.disagree += agrees is False
                self.totals.unlabelled += agrees is None
        elif outcome.failure is not None and failed.append(outcome.failure, sync=False):
            self.totals.failed += 1
            self.totals.failures[outcome.kind or "refused"] += 1
        else:
            self.totals.unfinished += 1

    async def example(
        self, example: Example, orders: list[tuple[int, int]], gate: asyncio.Semaphore
    ) -> list[_Outcome]:
        try:
            media = await self.load(example)
        except MediaError as exc:  # a missing or broken candidate fails every order of this example
            return [_failure(example, order, "media", str(exc), 0) for order in orders]
        return list(await asyncio.gather(*(self.one(example, media, order, gate) for order in orders)))

    async def load(self, example: Example) -> list[Frames]:
        """The candidates as the teacher is sent them: an image file the server reads as it is goes as
        its own bytes (`media.open_original`: the media checks from the header, no decode, no PNG
        re-encode: ~3 ms of CPU per image saved, the bound of a run on few cores); any other candidate
        is decoded as `Judge.load` does."""
        judge = self.judges[0]
        if example.modality != "image":
            media, _ = await judge.load(list(example.candidates), example.modality)
            return media
        return await asyncio.to_thread(_load_images, example.candidates, judge.limits)

    async def one(
        self, example: Example, media: list[Frames], order: tuple[int, int], gate: asyncio.Semaphore
    ) -> _Outcome:
        shown = [media[order[0] - 1], media[order[1] - 1]]
        tally = _Tally()
        _TALLY.set(tally)  # this task's own context (gather runs each order as a task): no reset needed
        attempts = 0
        tries = 1 + (self.max_reasks if self.on_disagree == "reask" else 0)
        for k in range(tries):
            call = Call(seed=self.seed + k, modality=example.modality)
            try:
                async with gate:
                    judgment, asked = await self.ask(
                        self.judges if k == 0 else self.resamplers, example, shown, call
                    )
            except _Asked as failed:
                exc, asked = failed.error, attempts + failed.attempts
                if isinstance(exc, ConstraintError):
                    raise exc from None  # the server refuses the constraint itself: every item would meet it
                if isinstance(exc, BackendError):
                    if exc.status_code in _FATAL_STATUS:
                        raise exc from None
                    if exc.retryable:
                        return _Outcome()  # the server's failure, past its retries: a rerun asks again
                    return _failure(example, order, "refused", str(exc), asked)
                if isinstance(exc, TruncatedOutput):
                    return _failure(example, order, "truncated", str(exc), asked)
                if isinstance(exc, ParseError):
                    return _failure(example, order, "unreadable", str(exc), asked)
                return _failure(example, order, "refused", f"{type(exc).__name__}: {exc}", asked)
            attempts += asked
            errors = _errors(judgment)
            if errors:
                found = "; ".join(f"{f.code} at {f.path}: {f.message}" for f in errors)
                reason = f"breaks the rules after {self.max_reasks} re-asks: {found}"
                return _failure(example, order, "check", reason, attempts)
            trace = self.trace(example, order, judgment, tally)
            from flexjudge.traces import report_line

            line = json.dumps(trace, ensure_ascii=False, separators=(",", ":"))
            report = report_line(0, line.encode("utf-8"))  # what `flexjudge validate` will read
            if not report.valid():
                found = "; ".join(f"{p.code}: {p.message}" for p in report.problems)
                reason = f"flexjudge validate refuses it: {found}"
                return _failure(example, order, "invalid", reason, attempts)
            if trace["agrees"] is not False or self.on_disagree == "keep":
                return _Outcome(trace=trace, line=line)
        reason = (
            f"the teacher chose {_shown_winner(judgment, order)}, the label is {example.label}"
            f" (after {tries} tries)"
        )
        return _failure(example, order, "disagrees", reason, attempts)

    async def ask(
        self, judges: tuple[Judge, Judge], example: Example, shown: list[Frames], call: Call
    ) -> tuple[Judgment, int]:
        """One trace and the generations it took: asked plainly, then, if the answer is unreadable or
        breaks the rules, through instructor, which asks once more and re-asks with each answer's rule
        violations up to `max_reasks` times. Failures come as `_Asked`."""
        plain, reasking = judges
        try:
            judgment = await plain.judge_loaded(example.prompt, shown, example.modality, call)
            if not self.max_reasks or not _errors(judgment):
                return judgment, judgment.meta.attempts
        except TruncatedOutput as exc:  # a budget too small for the answer: re-asking cannot help
            raise _Asked(exc, 1) from None
        except ParseError as exc:
            if not self.max_reasks:
                raise _Asked(exc, 1) from None
        except FlexjudgeError as exc:
            raise _Asked(exc, 1) from None
        try:
            judgment = await reasking.judge_loaded(example.prompt, shown, example.modality, call)
        except ParseError as exc:  # unreadable after every re-ask
            raise _Asked(exc, 2 + self.max_reasks) from None
        except FlexjudgeError as exc:
            raise _Asked(exc, 2) from None
        return judgment, 1 + judgment.meta.attempts

    def trace(
        self, example: Example, order: tuple[int, int], judgment: Judgment, tally: _Tally
    ) -> dict[str, Any]:
        winner = _shown_winner(judgment, order)
        return {
            "id": example.id,
            "prompt": example.prompt,
            "output": judgment.meta.raw_text or "",
            "label": example.label,
            "modality": example.modality,
            "candidates": [example.candidates[order[0] - 1], example.candidates[order[1] - 1]],
            "order": list(order),
            "format": self.teacher.output_format,
            "agrees": None if example.label == "tie" else winner == example.label,
            "usage": tally.as_dict(),
        }


def _load_images(candidates: Iterable[str], limits: Limits | None) -> list[Frames]:
    from flexjudge import media

    bounds = limits or media.DEFAULT_LIMITS
    return [[media.open_original(c, bounds) or media.load_image(c, limits=bounds)] for c in candidates]


def _errors(judgment: Judgment) -> list[Finding]:
    return [f for f in judgment.findings if f.severity == "error"]


def _shown_winner(judgment: Judgment, order: tuple[int, int]) -> int | str:
    """The teacher's overall winner in the dataset's numbering."""
    winner = judgment.verdict.winner
    return "tie" if winner is None else order[winner - 1]


def _failure(example: Example, order: tuple[int, int], kind: Failure, reason: str, attempts: int) -> _Outcome:
    record = {"id": example.id, "order": list(order), "reason": f"{kind}: {reason}", "attempts": attempts}
    return _Outcome(failure=record, kind=kind)


@contextmanager
def _progress_bar(enabled: bool, total: int | None, totals: DistillTotals) -> Iterator[Callable[[int], None]]:
    """A rich progress bar on stderr: traces done of all, failures, tokens, time left."""
    if not enabled:
        yield lambda n: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    bar = Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[state]}"),
        TimeRemainingColumn(),
        console=Console(stderr=True),
    )
    task = bar.add_task("distilling", total=total, state="")

    def advance(n: int) -> None:
        state = (
            f"{totals.written} traces, {totals.failed} failed, {totals.unfinished} left, "
            f"{totals.prompt_tokens + totals.completion_tokens} tokens"
        )
        bar.update(task, advance=n, state=state)

    with bar:
        yield advance
