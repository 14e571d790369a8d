"""A generation nobody waits for stops decoding: a cancelled local caller, a batch mate that leaves, a
served client that disconnects. Decoding is measured in model forward passes (one per decoding step),
counted by a hook on the tiny model itself, never by the clock. Without the stop (checked by disabling
it) the abandoned requests below decode hundreds of steps (free text to 317 of its 1024, a judgment
its 304); with it, one step after the caller left."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest

pytest.importorskip("transformers")
pytest.importorskip("fastapi")

import uvicorn
from served import free_port, serving
from test_serve_hostile import HI, call, wait_until

from flexjudge import Judge
from flexjudge.backends.base import Backend, Message, Request, Stopped, TextPart
from flexjudge.backends.transformers import TransformersBackend
from flexjudge.batching import BatchingBackend
from flexjudge.serve import ServeLimits, create_app, server_config

LONG = 1024  # the budget of the request that is abandoned; stopping it costs a few steps
STARTED = 8  # steps decoded before the caller leaves
SLACK = 8  # steps a stop may take to be seen (the step in flight, the next check)


class Steps:
    """Counts the model's forward passes (one per decoding step) from any thread."""

    def __init__(self, backend: TransformersBackend) -> None:
        self.count = 0
        self._lock = threading.Lock()
        self._hook = backend._model.register_forward_hook(self._seen)

    def _seen(self, *_: Any) -> None:
        with self._lock:
            self.count += 1

    def remove(self) -> None:
        self._hook.remove()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> TransformersBackend:
    import os

    os.environ["FLEXJUDGE_CACHE_DIR"] = str(tmp_path_factory.mktemp("cache"))
    return TransformersBackend("tiny-random", max_batch_size=8)


@pytest.fixture
def steps(tiny: TransformersBackend) -> Iterator[Steps]:
    counter = Steps(tiny)
    yield counter
    counter.remove()


def request(budget: int, text: str = "hi", stop: threading.Event | None = None) -> Request:
    return Request(messages=(Message("user", (TextPart(text),)),), max_new_tokens=budget, stop=stop)


async def _until(steps: Steps, count: int) -> None:
    while steps.count < count:
        await asyncio.sleep(0.005)


def test_free_text_runs_to_its_budget(tiny: TransformersBackend, steps: Steps) -> None:
    """The baseline the other tests stand on: the same kind of request, left alone, decodes every step."""
    (generation,) = asyncio.run(tiny.generate([request(64)]))
    assert generation.finish_reason == "length" and generation.usage is not None
    assert generation.usage.completion_tokens == 64 and steps.count == 64


def test_a_cancelled_local_caller_stops_the_decode(tiny: TransformersBackend, steps: Steps) -> None:
    async def main() -> tuple[int, int]:
        task = asyncio.create_task(tiny.generate([request(LONG)]))
        await _until(steps, STARTED)
        left_at = steps.count
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task  # returns once the worker thread has stopped decoding
        return left_at, steps.count

    left_at, ended_at = asyncio.run(main())
    assert ended_at - left_at <= SLACK, (left_at, ended_at)
    # The model is free and decodes the next request in full.
    (after,) = asyncio.run(tiny.generate([request(4)]))
    assert after.finish_reason == "length" and steps.count == ended_at + 4


@pytest.mark.parametrize("batched", [True, False], ids=["batcher", "backend"])
def test_a_cancelled_ajudge_stops_the_decode(tiny: TransformersBackend, steps: Steps, batched: bool) -> None:
    """`Judge.ajudge` on the local model, through the batcher (as `Judge("tiny-random")` builds it) or on
    the backend itself: a whole judgment takes `full` steps; cancelled after a few, it stops within a few
    more and nothing is returned."""
    from PIL import Image

    images = [Image.new("RGB", (32, 32), (200, 30, 30)), Image.new("RGB", (32, 32), (30, 30, 200))]
    backend: Backend = BatchingBackend(tiny) if batched else tiny

    async def main() -> tuple[int, int, int]:
        async with Judge(backend=backend, max_string_length=6, max_new_tokens=700) as judge:
            await judge.ajudge("a red square", images)
            full = steps.count
            task = asyncio.create_task(judge.ajudge("a red square", images))
            await _until(steps, full + STARTED)
            left_at = steps.count
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            # The next request decodes only once the model is free: the steps before it are the judgment's.
            await backend.generate([request(4)])
            return full, left_at - full, steps.count - 4 - full

    full, left_at, ended_at = asyncio.run(main())
    print(f"a whole judgment: {full} steps; cancelled at step {left_at}, stopped at {ended_at}")
    assert full > STARTED + 2 * SLACK, full  # a stop within SLACK would otherwise prove nothing
    assert ended_at - left_at <= SLACK, (left_at, ended_at)


def test_a_batch_mate_that_leaves_stops_and_the_others_are_answered(
    tiny: TransformersBackend, steps: Steps
) -> None:
    """Two callers in one batch: the one with the long budget leaves; its row stops, and the other
    caller gets its whole generation (never the stopped one's text)."""
    batcher = BatchingBackend(tiny, max_batch=2, window_s=5.0)  # waits for both: one batch

    async def main() -> tuple[int, Any]:
        leaver = asyncio.create_task(batcher.generate([request(LONG)]))
        stayer = asyncio.create_task(batcher.generate([request(16, text="hello")]))
        await _until(steps, STARTED)
        leaver.cancel()
        (kept,) = await stayer
        with pytest.raises(asyncio.CancelledError):
            await leaver
        return steps.count, kept

    total, kept = asyncio.run(main())
    assert list(batcher.batch_sizes) == [2]
    assert kept.finish_reason == "length" and kept.usage is not None and kept.usage.completion_tokens == 16
    # The budgets differ, so the rows decode one after the other: the leaver's few steps, then 16.
    assert total <= STARTED + SLACK + 16, total


def test_a_request_stopped_by_its_own_event_is_not_returned(tiny: TransformersBackend, steps: Steps) -> None:
    stopped = threading.Event()
    stopped.set()
    with pytest.raises(Stopped) as caught:
        asyncio.run(tiny.generate([request(LONG, stop=stopped), request(4)]))
    first, second = caught.value.generations
    assert first is None and second is not None and second.usage is not None
    assert second.usage.completion_tokens == 4 and steps.count == 4  # the stopped one was never decoded


def test_a_client_that_disconnects_mid_generation_stops_its_decode(
    tiny: TransformersBackend, steps: Steps
) -> None:
    limits = ServeLimits(max_tokens=LONG, header_timeout_s=5.0)
    app = create_app(tiny, model_name="tiny-random", limits=limits)
    port = free_port()
    config = server_config(app, host="127.0.0.1", port=port, limits=limits, log_level="warning")
    with serving(uvicorn.Server(config)):
        url = f"http://127.0.0.1:{port}"
        body = json.dumps({"messages": HI, "max_tokens": LONG, "temperature": 0}).encode()
        head = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        sock = socket.create_connection(("127.0.0.1", port), timeout=20)
        sock.sendall(head + b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        wait_until(lambda: steps.count >= STARTED, "the generation to start")
        left_at = steps.count
        sock.close()
        wait_until(lambda: app.state.admitted == 0, "the disconnected request to be dropped")
        # The next request decodes only once the model is free: every step counted before it is the
        # leaver's.
        status, answer, _ = call(url, "/v1/chat/completions", {"messages": HI, "max_tokens": 2})
        assert status == 200 and answer["usage"]["completion_tokens"] == 2
    leaver_steps = steps.count - 2
    print(f"disconnected at step {left_at}; decoding stopped at step {leaver_steps} of {LONG}")
    assert leaver_steps - left_at <= SLACK, (left_at, leaver_steps)
