"""The `openai` backend against a real OpenAI-compatible server on 127.0.0.1 serving the tiny model.

Faults are injected in front of the real server (tests/served.py); the model behind it decodes under
the real constraint. The tiny model has random weights: strings are bounded (max_string_length) so it
terminates, as DESIGN.md explains.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import pytest
from PIL import Image
from served import FaultInjector, tiny_server

import flexjudge
from flexjudge.backends.base import Constraint, Message, Request, TextPart
from flexjudge.backends.openai import OpenAIBackend
from flexjudge.constraints import ENFORCED_FINDINGS, pair_constraint
from flexjudge.judging import Judge

pytest.importorskip("transformers")

BOUND = 6


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, FaultInjector]]:
    with tiny_server(tmp_path_factory.mktemp("cache")) as served:
        yield served


@pytest.fixture
def injector(server: tuple[str, FaultInjector]) -> FaultInjector:
    _, inj = server
    inj.reset()
    return inj


def _images() -> list[Image.Image]:
    return [Image.new("RGB", (32, 32), (200, 30, 30)), Image.new("RGB", (32, 32), (30, 30, 200))]


def _judge(url: str, *, temperature: float = 0.0, **backend_options: Any) -> Judge:
    options = {"backoff_s": 0.01, "timeout_s": 60, **backend_options}
    return Judge(
        "tiny-random",
        backend="openai",
        base_url=url,
        max_string_length=BOUND,
        max_new_tokens=700,
        temperature=temperature,
        backend_options=options,
    )


async def _generate_and_close(backend: OpenAIBackend, request: Request) -> list[Any]:
    try:
        return await backend.generate([request])
    finally:
        await backend.aclose()


def test_served_judgment_is_valid_and_the_request_carries_schema_and_images(server, injector) -> None:  # type: ignore[no-untyped-def]
    url, _ = server
    with _judge(url) as judge:
        judgment = judge.judge("a red square", _images(), seed=1)
    broken = [f for f in flexjudge.check(judgment) if f.code in ENFORCED_FINDINGS]
    assert broken == [], broken
    assert judgment.meta.backend == "openai" and judgment.meta.constrained is True
    assert judgment.meta.usage is not None and judgment.meta.usage.prompt_tokens > 0
    (body,) = injector.bodies
    assert len(injector.probes) == 1  # the capability probe went first, once
    sent = body["response_format"]["json_schema"]
    assert sent["strict"] is True
    assert sent["schema"] == pair_constraint("image", "flex", max_string_length=BOUND)
    images = [p for p in body["messages"][0]["content"] if p["type"] == "image_url"]
    assert len(images) == 2 and all(
        p["image_url"]["url"].startswith("data:image/png;base64,") for p in images
    )
    assert "guided_json" not in body


def test_transient_faults_are_retried(server, injector) -> None:  # type: ignore[no-untyped-def]
    url, _ = server
    injector.faults = ["429", "500", "garbage", "empty"]
    with _judge(url, max_attempts=5) as judge:
        judgment = judge.judge("a red square", _images(), seed=2)
    assert judgment.verdict.winner in (1, 2)
    assert len(injector.bodies) == 5


def test_timeouts_are_retried(server, injector) -> None:  # type: ignore[no-untyped-def]
    url, _ = server
    injector.faults = ["hang"]
    injector.hang_s = 3.0
    backend = OpenAIBackend(url, model="tiny-random", backoff_s=0.01, timeout_s=1.0, max_attempts=3)
    request = Request(messages=(Message("user", (TextPart("hi"),)),), max_new_tokens=4)
    (generation,) = asyncio.run(_generate_and_close(backend, request))
    assert len(injector.bodies) >= 2 and isinstance(generation.text, str)


def test_persistent_failure_is_a_typed_error(server, injector) -> None:  # type: ignore[no-untyped-def]
    url, _ = server
    injector.faults = ["500", "500", "500"]
    with pytest.raises(flexjudge.BackendError) as info, _judge(url, max_attempts=3) as judge:
        judge.judge("a red square", _images())
    assert info.value.retryable and info.value.status_code == 500
    assert len(injector.bodies) == 3


def test_truncated_output_raises_with_the_partial_text(server, injector) -> None:  # type: ignore[no-untyped-def]
    url, _ = server
    injector.faults = ["truncate"]
    with pytest.raises(flexjudge.TruncatedOutput) as info, _judge(url) as judge:
        judge.judge("a red square", _images(), seed=3)
    assert info.value.partial_text.startswith("{")


def test_vllm_structured_outputs_field(server, injector) -> None:  # type: ignore[no-untyped-def]
    url, _ = server
    with _judge(url, structured="structured_outputs") as judge:
        judgment = judge.judge("a red square", _images(), seed=4)
    assert judgment.meta.constrained is True
    (body,) = injector.bodies
    assert "response_format" not in body and body["structured_outputs"]["json"]["type"] == "object"


def test_concurrent_judgments_are_batched(server, injector) -> None:  # type: ignore[no-untyped-def]
    url, _ = server
    items = [("a red square", _images())] * 4
    with _judge(url) as judge:
        results = judge.batch(items, seed=5)
    assert len(results) == 4 and all(isinstance(r, flexjudge.Judgment) for r in results)
    assert len(injector.bodies) == 4


def test_openai_itself_gets_the_strict_subset(server, injector) -> None:  # type: ignore[no-untyped-def]
    from flexjudge.wire_schemas import flex_schema, strict_problems

    url, _ = server
    with _judge(url, schema_variant="strict") as judge:
        judgment = judge.judge("a red square", _images(), seed=8)
    sent = injector.bodies[0]["response_format"]["json_schema"]["schema"]
    assert sent == flex_schema("image") and strict_problems(sent) == []
    assert judgment.meta.constrained is True


def _post(url: str, body: dict[str, Any]) -> tuple[int, str]:
    import urllib.error
    import urllib.request

    request = urllib.request.Request(
        f"{url}/chat/completions",
        data=json.dumps(body).encode(),
        headers={"content-type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


@pytest.mark.parametrize(
    "body",
    [
        {"messages": ["hi"]},
        {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": "/etc/passwd"}]}]},
        {"messages": [{"role": "user", "content": "hi"}], "max_tokens": "abc"},
        {"messages": [{"role": "user", "content": "hi"}], "max_tokens": -3},
        {"messages": [{"role": "user", "content": "hi"}], "temperature": -1},
    ],
)
def test_malformed_requests_are_400_with_a_json_error(server, injector, body) -> None:  # type: ignore[no-untyped-def]
    url, _ = server
    status, text = _post(url, {"model": "m", **body})
    assert status == 400 and json.loads(text)["error"]["type"] == "invalid_request_error"


def test_concurrency_must_be_positive() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        OpenAIBackend("http://127.0.0.1:9/v1", model="m", max_concurrency=0)


def test_one_judge_serves_sync_and_async_callers(server: tuple[str, FaultInjector]) -> None:
    """The sync facade's loop and a caller's own loop each get their own client; closing is clean."""
    url, _ = server
    judge = _judge(url)
    first = judge.judge("a red square", _images(), seed=1)

    async def in_a_loop_of_its_own() -> flexjudge.Judgment:
        async with judge:  # releases what this loop holds; the sync facade's client stays open
            return await judge.ajudge("a red square", _images(), seed=1)

    second = asyncio.run(in_a_loop_of_its_own())
    third = judge.judge("a red square", _images(), seed=1)
    judge.close()
    assert first.content() == second.content() == third.content()


def test_structured_outputs_grammar_makes_winners_follow_scores(
    server: tuple[str, FaultInjector], injector: FaultInjector
) -> None:
    """vLLM's guidance backend takes `structured_outputs.grammar`; so does `flexjudge serve`. The
    grammar sent is the judgment grammar, properties in the schema's order, and the server enforces it."""
    from flexjudge.grammar import lark_grammar

    url, _ = server
    with _judge(url, temperature=1.0, structured="structured_outputs", grammar=True) as judge:
        judgments = [judge.judge("a red square", _images(), seed=seed) for seed in range(4)]
    expected = lark_grammar(pair_constraint("image", "flex", max_string_length=BOUND))
    assert [body["structured_outputs"] for body in injector.bodies] == [{"grammar": expected}] * 4
    for judgment in judgments:
        assert judgment.meta.constrained
        assert not [f for f in flexjudge.check(judgment) if f.severity == "error"]


def test_grammar_needs_structured_outputs() -> None:
    with pytest.raises(ValueError, match="structured_outputs"):
        OpenAIBackend("http://127.0.0.1:1/v1", model="m", grammar=True)


def test_a_request_grammar_travels_as_structured_outputs(
    server: tuple[str, FaultInjector], injector: FaultInjector
) -> None:
    url, _ = server
    grammar = 'start: "{\\"ok\\":" ("1" | "2") "}"'
    request = Request(
        messages=(Message("user", (TextPart("ok?"),)),),
        constraint=Constraint(schema=None, grammar=grammar),
        max_new_tokens=20,
    )
    backend = OpenAIBackend(url, model="tiny-random", structured="structured_outputs", backoff_s=0.01)
    (generation,) = asyncio.run(_generate_and_close(backend, request))
    assert injector.bodies[0]["structured_outputs"] == {"grammar": grammar}
    assert generation.constrained and generation.text in ('{"ok":1}', '{"ok":2}')
    other = OpenAIBackend(url, model="tiny-random")  # response_format cannot carry a grammar
    with pytest.raises(flexjudge.ConstraintError, match="structured_outputs"):
        asyncio.run(_generate_and_close(other, request))


def test_group_rewards_through_the_server_count_a_failed_pair_and_encode_each_image_once(
    server: tuple[str, FaultInjector], injector: FaultInjector
) -> None:
    """Three candidates, three pairs at once; the server fails one of them for good (max_attempts=1): the
    rewards rest on the two judged pairs, the failure is returned with its typed error, and each image was
    PNG-encoded once although every one of them travels in two requests."""
    from flexjudge.backends.openai import _DATA_URLS
    from flexjudge.rewards import group_rewards

    url, _ = server
    images = [Image.new("RGB", (32, 32), (40 * k, 30, 200 - 40 * k)) for k in range(3)]
    injector.faults = ["500"]
    encodings = _DATA_URLS.encodings
    with _judge(url, max_attempts=1) as judge:
        result = group_rewards("a red square", images, judge)
    assert _DATA_URLS.encodings - encodings == 3 and len(injector.bodies) == 3
    assert len(result.failures) == 1 and len(result.judgments) == 2
    failure = result.failures[0]
    assert isinstance(failure.error, flexjudge.BackendError) and failure.error.status_code == 500
    assert result.rewards.comparisons.count(2) == 1  # the candidate in both judged pairs
    assert all(j.judgment.meta.backend == "openai" for j in result.judgments)
