"""`run_eval`: judge every labelled example, as the paper does, and write one `ResultRow` per example.

- Order: each example's candidate order is drawn from `random.Random(f"{seed}:{id}")`, so it is the same
  under resume, at any concurrency and in any iteration order; the paper randomises it to cancel the
  judge's position bias out of its accuracy. With `consistency`, the example is also judged in the
  reversed order (`swapped`), which measures that bias.
- Concurrency: at most `concurrency` judge calls are in flight, over at most `concurrency` examples (each
  example's media is decoded once, for both orders), so memory stays flat over any number of examples.
- Results: each finished example is appended to `out` as one flushed JSON line (`flexjudge._jsonl`); a
  rerun skips the ids already written, and a torn last line (a killed run) is cut away and reported.
- Failures: a `TruncatedOutput` is "truncated", any other `ParseError` "parse_failure", any other
  `FlexjudgeError` (backend, media, validation) "error", each with its message; an exception that is not
  a `FlexjudgeError` is a bug and propagates.
- Retrying: with `retry_failed`, rows with a failed run (any status but "ok") are removed from `out`
  when it is opened and their examples judged again (say, after a server outage).
- Numbering: stored winners and judgments are in the dataset's numbering (`flexjudge.swap.unswap`).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flexjudge._jsonl import JsonlLog, Repair
from flexjudge.anchors import anchor_position, canonical_name
from flexjudge.errors import FlexjudgeError, ParseError, TruncatedOutput, UsageError
from flexjudge.evaluation.data import Example
from flexjudge.evaluation.results import Label, ResultRow, Run, RunStatus
from flexjudge.options import Call
from flexjudge.swap import unswap

if TYPE_CHECKING:
    from flexjudge._preflight import Frames
    from flexjudge.judging import Judge
    from flexjudge.schema import Judgment

__all__ = ["RunTotals", "order_of", "run_eval", "run_eval_sync"]

_Advance = Callable[[], None]
"""Count one example as done (on the progress bar)."""


@dataclass
class RunTotals:
    """What one `run_eval` call did."""

    written: int = 0
    """Examples judged and written by this call."""
    skipped: int = 0
    """Examples already in the results file (a resumed run), not judged again."""
    statuses: Counter[RunStatus] = field(default_factory=Counter)
    """How the runs written by this call ended (primary and swapped together)."""
    repaired: Repair | None = None
    """The torn last line cut from the results file on opening, if any."""
    retried: int = 0
    """Rows with a failed run removed from the results file to be judged again (`retry_failed`)."""
    elapsed_s: float = 0.0


def order_of(example_id: str, seed: int) -> tuple[int, int]:
    """The candidate order the primary run shows, in dataset numbering: (1, 2) or (2, 1)."""
    return (2, 1) if random.Random(f"{seed}:{example_id}").random() < 0.5 else (1, 2)


async def run_eval(
    examples: Iterable[Example],
    judge: Judge,
    out: Path,
    *,
    seed: int = 0,
    concurrency: int = 8,
    consistency: bool = True,
    progress: bool = True,
    retry_failed: bool = False,
) -> RunTotals:
    """Judge `examples` with `judge`, appending one `ResultRow` per example to `out` (see the module
    docstring); returns the totals of this call. `seed` also seeds the judge's sampling."""
    if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
        raise UsageError(f"concurrency must be a positive integer, not {concurrency!r}")
    started = time.perf_counter()
    drop = _has_failed_run if retry_failed else None
    with JsonlLog(out, key=lambda record: str(record["id"]), drop=drop) as log:
        totals = RunTotals(repaired=log.repaired, retried=log.dropped)
        total = len(examples) if isinstance(examples, list | tuple) else None
        with _progress_bar(progress, total) as advance:
            await _drive(iter(examples), judge, log, seed, concurrency, consistency, totals, advance)
    totals.elapsed_s = time.perf_counter() - started
    return totals


def run_eval_sync(
    examples: Iterable[Example],
    judge: Judge,
    out: Path,
    *,
    seed: int = 0,
    concurrency: int = 8,
    consistency: bool = True,
    progress: bool = True,
    retry_failed: bool = False,
) -> RunTotals:
    """Synchronous `run_eval`, on the judge's own event loop (safe inside a running loop)."""
    return judge._run(
        run_eval(
            examples,
            judge,
            out,
            seed=seed,
            concurrency=concurrency,
            consistency=consistency,
            progress=progress,
            retry_failed=retry_failed,
        )
    )


def _has_failed_run(record: dict[str, Any]) -> bool:
    """A results row (as parsed JSON) with a run that did not end "ok"."""
    runs = [record["primary"], record.get("swapped")]
    return any(run is not None and run["status"] != "ok" for run in runs)


async def _drive(
    examples: Iterator[Example],
    judge: Judge,
    log: JsonlLog,
    seed: int,
    concurrency: int,
    consistency: bool,
    totals: RunTotals,
    advance: _Advance,
) -> None:
    gate = asyncio.Semaphore(concurrency)  # judge calls in flight
    writing = asyncio.Lock()  # one append at a time: lines never interleave
    seen: set[str] = set()

    async def worker() -> None:
        # Workers share one iterator: each takes the next example when it is free, so at most
        # `concurrency` examples are open at once however long the data is.
        for example in examples:
            if example.id in seen:
                raise UsageError(f"example id {example.id!r} appears twice: ids must be unique")
            seen.add(example.id)
            if example.id in log:
                totals.skipped += 1
                advance()
                continue
            row = await _judge_example(example, judge, seed, consistency, gate)
            async with writing:
                # Off the loop: fsync waits on the disk, and the other examples' calls keep going.
                await asyncio.to_thread(log.append_line, row.id, row.model_dump_json())
            totals.written += 1
            totals.statuses.update(r.status for r in (row.primary, row.swapped) if r is not None)
            advance()

    try:
        async with asyncio.TaskGroup() as group:  # a failing worker cancels the others
            for _ in range(concurrency):
                group.create_task(worker())
    except BaseExceptionGroup as failed:
        # The caller sees the error itself (a `FlexjudgeError` stays one), not a group around it.
        raise failed.exceptions[0] from None


async def _judge_example(
    example: Example, judge: Judge, seed: int, consistency: bool, gate: asyncio.Semaphore
) -> ResultRow:
    primary = order_of(example.id, seed)
    orders = [primary, (primary[1], primary[0])] if consistency else [primary]
    call = Call(seed=seed, modality=example.modality)
    try:
        media, _ = await judge.load(list(example.candidates), example.modality)
    except FlexjudgeError as exc:  # a missing or broken candidate fails every run of this example
        runs = [_failed(order, exc, None) for order in orders]
    else:
        runs = list(
            await asyncio.gather(*(_one_run(example, judge, media, order, call, gate) for order in orders))
        )
    return ResultRow(
        id=example.id,
        prompt=example.prompt,
        candidates=example.candidates,
        modality=example.modality,
        label=example.label,
        dimension_labels=example.dimension_labels,
        primary=runs[0],
        swapped=runs[1] if consistency else None,
    )


async def _one_run(
    example: Example,
    judge: Judge,
    media: list[Frames],
    order: tuple[int, int],
    call: Call,
    gate: asyncio.Semaphore,
) -> Run:
    shown = [media[order[0] - 1], media[order[1] - 1]]
    async with gate:
        started = time.perf_counter()
        try:
            judgment = await judge.judge_loaded(example.prompt, shown, example.modality, call)
        except FlexjudgeError as exc:
            return _failed(order, exc, time.perf_counter() - started)
        elapsed = time.perf_counter() - started
    return _completed(judgment, order, elapsed)


def _completed(judgment: Judgment, order: tuple[int, int], elapsed: float) -> Run:
    judgment.meta = judgment.meta.model_copy(update={"candidate_order": list(order)})
    if order == (2, 1):
        judgment = unswap(judgment)  # findings are kept; their codes do not depend on the numbering
    anchors = {
        canonical_name(d.name): _label(d.winner)
        for d in judgment.dimensions
        if anchor_position(d.name, judgment.modality, judgment.scoring) is not None
    }
    return Run(
        order=order,
        status="ok",
        winner=_label(judgment.verdict.winner),
        dimension_winners=anchors,
        confidence=judgment.meta.confidence,  # about the winner: unchanged by renumbering
        findings=[f.code for f in judgment.findings if f.severity in ("error", "warning")],
        judgment=judgment.model_dump(mode="json"),
        elapsed_s=elapsed,
    )


def _failed(order: tuple[int, int], exc: FlexjudgeError, elapsed: float | None) -> Run:
    status: RunStatus = (
        "truncated"
        if isinstance(exc, TruncatedOutput)
        else "parse_failure"
        if isinstance(exc, ParseError)
        else "error"
    )
    return Run(order=order, status=status, error=f"{type(exc).__name__}: {exc}", elapsed_s=elapsed)


def _label(winner: int | None) -> Label:
    return "tie" if winner is None else 1 if winner == 1 else 2


# -- progress -----------------------------------------------------------------------------------------


@contextmanager
def _progress_bar(enabled: bool, total: int | None) -> Iterator[_Advance]:
    """A rich progress bar on stderr (examples done, time left); a no-op when turned off."""
    if not enabled:
        yield lambda: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    bar = Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
    )
    task = bar.add_task("judging", total=total)
    with bar:
        yield lambda: bar.advance(task)
