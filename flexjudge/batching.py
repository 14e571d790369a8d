"""Coalescing concurrent `generate` calls into batches of the wrapped backend.

A local model decodes 8 rows in little more time than 1, but callers arrive one request at a time: each
item of `Judge.batch`, each concurrent `judge` call, each HTTP request to `flexjudge serve` calls
`generate` on its own. `BatchingBackend` holds those requests for a short window (or until `max_batch`
are waiting), hands them to the wrapped backend as one `generate` call, and routes each result back to
its caller. The transformers backend groups a list by constraint and sampling settings and runs model
batches of up to its `max_batch_size`, so requests with different prompts and the same constraint
(every pair a judge sends) decode together.

Batches run one at a time per event loop: a local model runs one batch at a time anyway, and what
arrives while a batch decodes forms the next one. A server backend (`openai`) needs no wrapper: it
already sends a batch's requests concurrently.

Supervision: when the wrapped `generate` raises, each request of the batch is run again alone, so one bad
request (a schema the engine refuses) fails only its own caller. A crash of the batcher itself (a bug,
or a backend returning the wrong number of generations) fails every request it holds with a
`BackendError`, and the next call starts a fresh collector: nothing waits forever.

Cancellation: a cancelled caller's requests are skipped while queued, and once in a batch their
`Request.stop` is set, so a backend that can stop a row mid-way (transformers) ends it at the next
decoding step; the batch mates it leaves behind are answered as usual.
"""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import weakref
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field

from flexjudge.backends.base import Backend, Generation, Request, Stopped
from flexjudge.errors import BackendError, UsageError

__all__ = ["BatchingBackend"]

_RECENT = 1024  # batch sizes kept in `batch_sizes`: enough for tests and metrics, bounded for a server


@dataclass(eq=False)
class _Pending:
    request: Request
    future: asyncio.Future[Generation]
    arrived: float


@dataclass(eq=False)
class _LoopState:
    """One event loop's queue and collector. Nothing here refers to the loop while it is idle (no task,
    no wake-up future), so the WeakKeyDictionary entry dies with its loop."""

    queue: deque[_Pending] = field(default_factory=deque)
    task: asyncio.Task[None] | None = None
    wakeup: asyncio.Future[None] | None = None


class BatchingBackend:
    """A `Backend` that coalesces the requests of concurrent `generate` calls into batches.

    `max_batch` caps the requests handed over at once (match the wrapped backend's model batch,
    `TransformersBackend(max_batch_size=...)`); `window_s` is how long the oldest waiting request waits
    for batch mates once the backend is free. Works from any number of event loops (the sync facade of
    `Judge` runs its own in a thread): each loop gets its own queue and collector, and batches never mix
    loops. `batch_sizes` holds the sizes of the most recent batches handed to the wrapped backend (1024
    at most) and `batch_counts` counts every batch by size.
    """

    def __init__(self, backend: Backend, *, max_batch: int = 8, window_s: float = 0.01) -> None:
        if max_batch < 1:
            raise UsageError(f"max_batch must be at least 1, got {max_batch}")
        if not window_s >= 0:  # also refuses NaN
            raise UsageError(f"window_s must be a non-negative number of seconds, got {window_s}")
        self.backend = backend
        self.name = backend.name
        self.model = backend.model
        self.max_batch = max_batch
        self.window_s = window_s
        self.batch_sizes: deque[int] = deque(maxlen=_RECENT)
        self.batch_counts: Counter[int] = Counter()
        self._loops: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopState] = (
            weakref.WeakKeyDictionary()
        )
        self._lock = threading.Lock()  # loops in several threads share the state table and the counts

    async def generate(self, requests: list[Request]) -> list[Generation]:
        """One `Generation` per request, in order; the requests may be decoded with other callers'."""
        if not requests:
            return []
        loop = asyncio.get_running_loop()
        state = self._state(loop)
        now = loop.time()
        pending = [_Pending(_stoppable(r), loop.create_future(), now) for r in requests]
        for p in pending:
            p.future.add_done_callback(_stop_if_cancelled(p.request))
        state.queue.extend(pending)
        if state.wakeup is not None and not state.wakeup.done():
            state.wakeup.set_result(None)
        if state.task is None:
            state.task = loop.create_task(self._collect(state), name="flexjudge-batcher")
        # A cancelled caller cancels its futures through gather; the collector then skips them.
        results = await asyncio.gather(*(p.future for p in pending), return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result
        return [r for r in results if isinstance(r, Generation)]

    async def aclose(self) -> None:
        """Let the running loop's collector finish what it holds, stop the other loops' collectors, and
        close the wrapped backend."""
        current = asyncio.get_running_loop()
        with self._lock:
            states = list(self._loops.items())
        for loop, state in states:
            task = state.task
            if task is None:
                continue
            if loop is current:
                await asyncio.wait({task})
            elif not loop.is_closed():
                loop.call_soon_threadsafe(task.cancel)
        await self.backend.aclose()

    # ---------------------------------------------------------------- internals

    def _state(self, loop: asyncio.AbstractEventLoop) -> _LoopState:
        with self._lock:
            for gone in [other for other in self._loops if other.is_closed()]:
                del self._loops[gone]
            state = self._loops.get(loop)
            if state is None:
                state = self._loops[loop] = _LoopState()
            return state

    async def _collect(self, state: _LoopState) -> None:
        """Run batches until the queue is empty, then end (the next call starts a new collector)."""
        batch: list[_Pending] = []
        crashed = False
        try:
            while state.queue:
                batch = await self._take(state)
                if batch:
                    with self._lock:  # loops in other threads count too
                        self.batch_sizes.append(len(batch))
                        self.batch_counts[len(batch)] += 1
                    await self._run(batch)
                batch = []
        except BaseException as exc:
            # A bug here, not a request's fault: fail the batch in hand rather than leave it waiting. The
            # queue is failed too when the crash came before any batch was taken (no progress: a fresh
            # collector could crash the same way forever) or the loop is going away.
            crashed = isinstance(exc, Exception)
            stranded = batch
            if not batch or not crashed:
                stranded = batch + list(state.queue)
                state.queue.clear()
            for pending in stranded:
                _settle(pending, _crash(exc))
            if not crashed:
                raise  # cancellation and interpreter exit go on
        finally:
            # No await between the empty-queue check and here: a caller that queues after this line
            # sees no task and starts one.
            state.task = None
            state.wakeup = None
            if crashed and state.queue:
                state.task = asyncio.get_running_loop().create_task(self._collect(state))

    async def _take(self, state: _LoopState) -> list[_Pending]:
        """Wait until `max_batch` requests are queued or the oldest has waited `window_s`; take a batch."""
        loop = asyncio.get_running_loop()
        while len(state.queue) < self.max_batch:
            remaining = state.queue[0].arrived + self.window_s - loop.time()
            if remaining <= 0:
                break
            state.wakeup = loop.create_future()
            try:
                await asyncio.wait({state.wakeup}, timeout=remaining)
            finally:
                state.wakeup = None
        batch: list[_Pending] = []
        while state.queue and len(batch) < self.max_batch:
            pending = state.queue.popleft()
            if not pending.future.done():  # its caller was cancelled
                batch.append(pending)
        return batch

    async def _run(self, batch: list[_Pending]) -> None:
        try:
            results: list[Generation | None] = list(await self.backend.generate([p.request for p in batch]))
        except Stopped as exc:
            # Rows whose callers left were stopped (their futures are cancelled); the others are whole.
            results = exc.generations
        except Exception as exc:
            if len(batch) == 1:
                _settle(batch[0], exc)
                return
            # One bad request must not fail the others that happened to share its batch: run each
            # alone, and each caller learns only of its own failure.
            for pending in batch:
                if not pending.future.done():
                    await self._run([pending])
            return
        if len(results) != len(batch):  # a broken backend: no way to tell whose result is whose
            raise BackendError(
                f"{self.name} returned {len(results)} generations for {len(batch)} requests", retryable=False
            )
        for pending, result in zip(batch, results, strict=True):
            # None: stopped through a `stop` its caller had set on the request itself.
            _settle(pending, result if result is not None else Stopped([None]))


def _stoppable(request: Request) -> Request:
    """The request with a `stop` event the batcher can set (its own, when the caller gave one)."""
    return request if request.stop is not None else dataclasses.replace(request, stop=threading.Event())


def _stop_if_cancelled(request: Request) -> Callable[[asyncio.Future[Generation]], None]:
    stop = request.stop

    def callback(future: asyncio.Future[Generation]) -> None:
        if future.cancelled() and stop is not None:
            stop.set()

    return callback


def _crash(exc: BaseException) -> BackendError:
    """A fresh error per caller (one exception object raised in many tasks would pile up tracebacks)."""
    return BackendError(
        f"the request batcher failed: {type(exc).__name__}: {exc}",
        retryable=False,
        original=exc,
    )


def _settle(pending: _Pending, outcome: Generation | Exception) -> None:
    if pending.future.done():
        return
    if isinstance(outcome, Exception):
        pending.future.set_exception(outcome)
    else:
        pending.future.set_result(outcome)
