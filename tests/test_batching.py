"""`BatchingBackend` in front of the tiny transformers model: concurrent calls become model batches.

The batch sizes are read from the model itself (a forward hook records the batch dimension of every
prefill), not only from the wrapper's own count: with batching off each call would prefill alone.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from typing import Any

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from PIL import Image

from flexjudge.backends.base import Constraint, Generation, Message, Request, TextPart
from flexjudge.backends.transformers import TransformersBackend
from flexjudge.batching import BatchingBackend
from flexjudge.errors import BackendError, ConstraintError
from flexjudge.judging import Judge

SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"verdict": {"enum": ["yes", "no"]}, "note": {"type": "string", "maxLength": 6}},
    "required": ["verdict", "note"],
    "additionalProperties": False,
}
CONSTRAINT = Constraint(schema=SCHEMA)


class Recorded(TransformersBackend):
    """The tiny model, counting the `generate` calls it gets and the batch of every prefill it runs."""

    def __init__(self, **options: Any) -> None:
        super().__init__("tiny-random", max_batch_size=8, **options)
        self.calls: list[int] = []
        self.prefills: list[int] = []
        self.break_next = False  # return one generation too few, once: a backend breaking its contract
        self._model.register_forward_pre_hook(self._seen, with_kwargs=True)

    def _seen(self, module: Any, args: Any, kwargs: dict[str, Any]) -> None:
        ids = kwargs["input_ids"]
        if ids.shape[1] > 1:  # decode steps feed one token per row
            self.prefills.append(int(ids.shape[0]))

    async def generate(self, requests: list[Request]) -> list[Generation]:
        self.calls.append(len(requests))
        results = await super().generate(requests)
        if self.break_next:
            self.break_next = False
            return results[:-1]
        return results


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Recorded]:
    import os

    os.environ["FLEXJUDGE_CACHE_DIR"] = str(tmp_path_factory.mktemp("cache"))
    yield Recorded()


@pytest.fixture
def backend(model: Recorded) -> Recorded:
    model.calls.clear()
    model.prefills.clear()
    model.break_next = False
    return model


def _request(words: int, constraint: Constraint | None = CONSTRAINT) -> Request:
    text = " ".join(["judge"] * words)
    return Request(messages=(Message("user", (TextPart(text),)),), constraint=constraint, max_new_tokens=12)


async def _concurrently(batcher: BatchingBackend, requests: list[Request]) -> list[Any]:
    calls = (batcher.generate([r]) for r in requests)
    return list(await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), 120))


def test_eight_concurrent_calls_with_different_prompts_are_one_model_batch(backend: Recorded) -> None:
    batcher = BatchingBackend(backend, max_batch=8)
    requests = [_request(words) for words in range(1, 9)]  # eight prompts, eight lengths
    results = asyncio.run(_concurrently(batcher, requests))
    assert list(batcher.batch_sizes) == [8] and backend.calls == [8] and backend.prefills == [8]
    # Each caller got its own row back: the prompt lengths grow with the words asked for.
    lengths = [generations[0].usage.prompt_tokens for generations in results]
    assert lengths == sorted(lengths) and len(set(lengths)) == 8
    assert all(generations[0].constrained for generations in results)


def test_sixteen_calls_are_two_batches_of_eight(backend: Recorded) -> None:
    batcher = BatchingBackend(backend, max_batch=8)
    results = asyncio.run(_concurrently(batcher, [_request(2 + k % 3) for k in range(16)]))
    assert all(isinstance(r, list) for r in results)
    assert list(batcher.batch_sizes) == [8, 8] and backend.prefills == [8, 8]
    assert batcher.batch_counts == {8: 2}


def test_one_call_with_several_requests_batches_with_other_callers(backend: Recorded) -> None:
    batcher = BatchingBackend(backend, max_batch=8)

    async def both() -> tuple[list[Generation], list[Generation]]:
        return await asyncio.gather(
            batcher.generate([_request(1), _request(2), _request(3)]), batcher.generate([_request(4)])
        )

    three, one = asyncio.run(both())
    assert len(three) == 3 and len(one) == 1 and backend.prefills == [4]


def test_a_failing_request_does_not_fail_its_batch_mates(backend: Recorded) -> None:
    batcher = BatchingBackend(backend, max_batch=8)
    broken = Constraint(schema={"type": "object", "properties": {"a": {"$ref": "#/$defs/missing"}}})
    requests = [_request(2), _request(3), _request(4, broken), _request(5)]
    results = asyncio.run(_concurrently(batcher, requests))
    assert isinstance(results[2], ConstraintError)
    assert all(isinstance(results[k], list) and results[k][0].constrained for k in (0, 1, 3))
    # The batch of four failed as a whole, then each request ran alone.
    assert list(batcher.batch_sizes) == [4] and backend.calls == [4, 1, 1, 1, 1]


def test_a_broken_backend_fails_the_batch_in_hand_and_the_next_call_is_served(backend: Recorded) -> None:
    batcher = BatchingBackend(backend, max_batch=8)
    backend.break_next = True

    async def run() -> tuple[list[Any], list[Generation]]:
        first = await _concurrently(batcher, [_request(2), _request(3), _request(4)])
        return first, await asyncio.wait_for(batcher.generate([_request(2)]), 120)

    first, after = asyncio.run(run())
    assert all(isinstance(r, BackendError) for r in first) and len(after) == 1
    assert list(batcher.batch_sizes) == [3, 1]


class CrashingOnce(BatchingBackend):
    """A batcher whose collector hits a bug once, while taking a batch."""

    crashes = 1

    async def _take(self, state: Any) -> Any:
        if self.crashes:
            self.crashes -= 1
            raise RuntimeError("a bug in the collector")
        return await super()._take(state)


def test_a_crashed_collector_fails_what_it_holds_and_a_new_one_serves(backend: Recorded) -> None:
    batcher = CrashingOnce(backend, max_batch=8)

    async def run() -> tuple[list[Any], list[Any]]:
        crashed = await _concurrently(batcher, [_request(2), _request(3)])
        return crashed, await _concurrently(batcher, [_request(2), _request(3)])

    crashed, served = asyncio.run(run())
    assert all(isinstance(r, BackendError) and "a bug in the collector" in str(r) for r in crashed)
    assert all(isinstance(r, list) for r in served) and backend.prefills == [2]


def test_each_event_loop_batches_its_own_callers(backend: Recorded) -> None:
    """Two threads, each with its own loop (as Judge's sync facade runs one), share one batcher."""
    batcher = BatchingBackend(backend, max_batch=8)
    results: dict[int, list[Any]] = {}

    def in_thread(k: int) -> None:
        results[k] = asyncio.run(_concurrently(batcher, [_request(2 + k), _request(3 + k)]))

    threads = [threading.Thread(target=in_thread, args=(k,)) for k in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=180)
    assert all(isinstance(r, list) for k in (0, 1) for r in results[k])
    assert sorted(batcher.batch_sizes) == [2, 2] and sorted(backend.prefills) == [2, 2]


def test_judge_batch_runs_its_pairs_as_one_model_batch(backend: Recorded) -> None:
    images = [Image.new("RGB", (32, 32), (200, 30, 30)), Image.new("RGB", (32, 32), (30, 30, 200))]
    items = [(f"picture number {k}", images) for k in range(4)]
    batcher = BatchingBackend(backend, max_batch=8)
    with Judge(backend=batcher, max_string_length=6, max_new_tokens=700) as judge:
        judgments = judge.batch(items)
    assert len(judgments) == 4 and list(batcher.batch_sizes) == [4] and backend.prefills == [4]


def test_a_cancelled_caller_leaves_the_batch_before_it_runs(backend: Recorded) -> None:
    batcher = BatchingBackend(backend, max_batch=8, window_s=0.5)

    async def run() -> list[Any]:
        calls = [asyncio.ensure_future(batcher.generate([_request(k)])) for k in (2, 3, 4)]
        await asyncio.sleep(0.1)  # all three wait in the queue for the window to close
        calls[1].cancel()
        return await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), 120)

    first, cancelled, third = asyncio.run(run())
    assert isinstance(cancelled, asyncio.CancelledError)
    assert isinstance(first, list) and isinstance(third, list)
    assert list(batcher.batch_sizes) == [2] and backend.prefills == [2]


def test_settings_are_checked(backend: Recorded) -> None:
    with pytest.raises(ValueError, match="max_batch"):
        BatchingBackend(backend, max_batch=0)
    with pytest.raises(ValueError, match="window_s"):
        BatchingBackend(backend, window_s=float("nan"))


def test_aclose_closes_the_wrapped_backend() -> None:
    inner = Recorded()
    batcher = BatchingBackend(inner)

    async def run() -> None:
        await batcher.generate([_request(2)])
        await batcher.aclose()
        with pytest.raises(BackendError, match="closed"):
            await batcher.generate([_request(2)])

    asyncio.run(run())


@pytest.mark.slow
def test_the_batching_benchmark_runs(tmp_path: Any) -> None:
    """A smoke run of benchmarks/batching.py on 2 pairs (no time is asserted: only that it batched)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).parent.parent
    record = tmp_path / "RESULTS.md"
    done = subprocess.run(
        [sys.executable, str(root / "benchmarks" / "batching.py"), "--pairs", "2", "--record", str(record)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=root,
        env=dict(os.environ, FLEXJUDGE_CACHE_DIR=str(tmp_path)),
        check=False,
    )
    assert done.returncode == 0, done.stderr
    import re

    # The row of 2 pairs: the model ran them as one batch of 2.
    row = re.compile(r"\| tiny \| 2 \|(?: [^|]+ \|){3} 2 \|")
    assert row.search(done.stdout) and row.search(record.read_text(encoding="utf-8"))


def test_a_local_judge_batches_by_default() -> None:
    """`Judge("tiny-random")` wraps its model in the batcher: a batch of pairs, and concurrent calls from
    several threads, reach the model as model batches, not one by one."""
    import threading

    images = [Image.new("RGB", (32, 32), (200, 30, 30)), Image.new("RGB", (32, 32), (30, 30, 200))]
    with Judge("tiny-random", backend="transformers", max_string_length=6, max_new_tokens=700) as judge:
        assert isinstance(judge.backend, BatchingBackend)
        local = judge.backend.backend
        assert isinstance(local, TransformersBackend) and local._model is not None
        prefills: list[int] = []

        def seen(module: Any, args: Any, kwargs: dict[str, Any]) -> None:
            if kwargs["input_ids"].shape[1] > 1:  # decode steps feed one token per row
                prefills.append(int(kwargs["input_ids"].shape[0]))

        hook = local._model.register_forward_pre_hook(seen, with_kwargs=True)
        judgments = judge.batch([(f"picture number {k}", images) for k in range(6)])
        assert len(judgments) == 6 and prefills == [6]
        prefills.clear()
        threads = [
            threading.Thread(target=judge.judge, args=(f"thread {k}", images), kwargs={"seed": k})
            for k in range(3)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=300)
        hook.remove()
        assert sum(prefills) == 3 and len(prefills) < 3  # at least two of the three decoded together
