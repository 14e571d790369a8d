"""The openai backend never passes a failure off as success (issue 7, point 4), against a real server.

The server is `flexjudge serve` with the tiny random model on 127.0.0.1; `FaultInjector` (tests/served.py)
stands in front of it to play servers that lack structured outputs, refuse large schemas, ignore the
constraint, or fail in transit. Bodies are counted to show what was sent and how often.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import pytest
from PIL import Image
from pydantic import BaseModel, model_validator
from served import FaultInjector, tiny_server

import flexjudge
from flexjudge.backends.base import Constraint, Generation, Message, Request, TextPart
from flexjudge.backends.openai import OpenAIBackend, schema_variant_for
from flexjudge.constraints import pair_constraint
from flexjudge.judging import Judge

pytest.importorskip("transformers")

BOUND = 6
# A small constraint the tiny model answers in a few tokens: a full and a strict form that differ.
FULL = {
    "type": "object",
    "properties": {"n": {"type": "integer", "enum": [3, 4]}},
    "required": ["n"],
    "additionalProperties": False,
}
STRICT = {**FULL, "properties": {"n": {"type": "integer"}}}
SMALL = Constraint(schema=FULL, strict_schema=STRICT)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, FaultInjector]]:
    with tiny_server(tmp_path_factory.mktemp("cache")) as served:
        yield served


@pytest.fixture
def url(server: tuple[str, FaultInjector]) -> str:
    return server[0]


@pytest.fixture
def injector(server: tuple[str, FaultInjector]) -> FaultInjector:
    server[1].reset()
    return server[1]


def _backend(url: str, **options: Any) -> OpenAIBackend:
    return OpenAIBackend(url, model="tiny-random", **{"backoff_s": 0.01, **options})


def _request(constraint: Constraint | None = SMALL, response_model: Any = None, tokens: int = 12) -> Request:
    return Request(
        messages=(Message("user", (TextPart("a number?"),)),),
        constraint=constraint,
        response_model=response_model,
        max_new_tokens=tokens,
        seed=1,
    )


def _run(backend: OpenAIBackend, *requests: Request) -> list[Generation]:
    async def go() -> list[Generation]:
        try:
            return await backend.generate(list(requests))
        finally:
            await backend.aclose()

    return asyncio.run(go())


def _judge(url: str, **backend_options: Any) -> Judge:
    return Judge(
        "tiny-random",
        backend="openai",
        base_url=url,
        max_string_length=BOUND,
        max_new_tokens=700,
        backend_options={"backoff_s": 0.01, **backend_options},
    )


def _images() -> list[Image.Image]:
    return [Image.new("RGB", (32, 32), (200, 30, 30)), Image.new("RGB", (32, 32), (30, 30, 200))]


def _sent_schema(body: dict[str, Any]) -> Any:
    return body["response_format"]["json_schema"]["schema"]


# -- the capability probe ------------------------------------------------------------------------


def test_a_server_without_structured_outputs_is_a_constraint_error_and_nothing_goes_unconstrained(
    url: str, injector: FaultInjector
) -> None:
    injector.refuse_structured_always = True
    backend = _backend(url)
    for _ in range(2):  # the verdict is remembered: one probe, the second request refused at once
        with pytest.raises(flexjudge.ConstraintError, match="allow_unconstrained"):
            _run(backend, _request())
    assert len(injector.probes) == 1 and injector.bodies == []


def test_going_unconstrained_is_an_opt_in_and_the_generation_says_so(
    url: str, injector: FaultInjector
) -> None:
    injector.refuse_structured_always = True
    (generation,) = _run(_backend(url, allow_unconstrained=True), _request())
    assert (generation.constrained, generation.enforced, generation.engine) == (False, None, None)
    (body,) = injector.bodies
    assert "response_format" not in body and "structured_outputs" not in body
    with _judge(url, allow_unconstrained=True) as judge:  # reachable through Judge(backend_options=...)
        assert isinstance(judge.backend, OpenAIBackend) and judge.backend.allow_unconstrained


def test_a_server_that_ignores_the_constraint_is_detected(url: str, injector: FaultInjector) -> None:
    injector.ignore_constraint = True  # HTTP 200, free text: vLLM's answer to `guided_json`
    with pytest.raises(flexjudge.ConstraintError, match="ignored"):
        _run(_backend(url), _request())
    assert len(injector.probes) == 1 and injector.bodies == []


def test_concurrent_first_requests_probe_once(url: str, injector: FaultInjector) -> None:
    backend = _backend(url)

    async def go() -> list[list[Generation]]:
        try:
            first = await asyncio.gather(*(backend.generate([_request()]) for _ in range(6)))
            return [*first, await backend.generate([_request()])]
        finally:
            await backend.aclose()

    results = asyncio.run(go())
    assert len(injector.probes) == 1 and len(injector.bodies) == 7
    assert all(g.constrained and g.enforced == "schema" and g.engine == "server" for (g,) in results)
    assert all(json.loads(g.text)["n"] in (3, 4) for (g,) in results)


def test_the_probe_travels_as_the_requests_do(url: str, injector: FaultInjector) -> None:
    _run(_backend(url, structured="structured_outputs"), _request())
    (probe,) = injector.probes
    assert "response_format" not in probe and probe["structured_outputs"]["json"]["required"] == ["ok"]


def test_a_probe_the_server_could_not_answer_is_not_a_verdict(url: str, injector: FaultInjector) -> None:
    injector.probe_faults = ["500", "500", "429"]
    backend = _backend(url, max_attempts=2)
    with pytest.raises(flexjudge.BackendError) as info:
        _run(backend, _request())
    assert not isinstance(info.value, flexjudge.ConstraintError) and info.value.status_code == 500
    (generation,) = _run(backend, _request())  # asked again: a 429, retried, then the probe passes
    assert generation.constrained and len(injector.probes) == 4


@pytest.mark.parametrize("status", ["401", "403", "404", "413", "499"])
def test_a_probe_refused_for_access_is_a_backend_error(
    url: str, injector: FaultInjector, status: str
) -> None:
    injector.probe_faults = [status]
    backend = _backend(url)
    with pytest.raises(flexjudge.BackendError) as info:
        _run(backend, _request())
    # Access, a missing model, a size limit, a client that left: not a verdict on structured outputs.
    assert not isinstance(info.value, flexjudge.ConstraintError) and info.value.status_code == int(status)
    assert not info.value.retryable and len(injector.probes) == 1
    (generation,) = _run(backend, _request())  # not a verdict on structured outputs: probed again
    assert generation.constrained and len(injector.probes) == 2


# -- a server that takes the probe but refuses the judgment's schema -----------------------------


def test_refusing_the_judgment_schema_is_a_constraint_error_with_the_servers_message(
    url: str, injector: FaultInjector
) -> None:
    injector.refuse_constraints_over = 400  # the probe's schema passes; a judgment's does not
    with _judge(url) as judge:
        with pytest.raises(flexjudge.ConstraintError, match="schema too complex"):
            judge.judge("a red square", _images(), seed=1)
        sent = len(injector.bodies)
        with pytest.raises(flexjudge.ConstraintError, match="schema too complex"):
            judge.judge("a blue square", _images(), seed=1)
    assert len(injector.bodies) == sent == 2  # the request and a one-token check; then nothing
    assert all("response_format" in body for body in injector.bodies)  # no fallback, ever


@pytest.mark.parametrize("transport", ["aiohttp", "httpx"])  # our own session, and the client's route
def test_a_refusal_about_the_prompt_stays_a_backend_error(
    url: str, injector: FaultInjector, transport: str
) -> None:
    injector.faults = ["400"]
    backend = _backend(url, transport=transport)
    with pytest.raises(flexjudge.BackendError) as info:
        _run(backend, _request())
    assert not isinstance(info.value, flexjudge.ConstraintError) and info.value.status_code == 400
    assert "the prompt is too long" in str(info.value) and not info.value.retryable
    assert len(injector.bodies) == 2  # the request, and the check that the constraint is fine
    (generation,) = _run(backend, _request())  # the constraint is not marked refused
    assert generation.constrained


# -- which schema a server gets ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("base_url", "variant"),
    [
        ("https://api.openai.com/v1", "strict"),
        ("https://API.OpenAI.com:443/v1/", "strict"),
        ("https://my-resource.openai.azure.com/openai/deployments/judge", "strict"),
        ("http://localhost:8000/v1", "full"),
        ("http://127.0.0.1:8000/v1", "full"),
        ("https://proxy.example/api.openai.com/v1", "full"),  # the host decides, not a substring
        ("https://api.openai.com.example.net/v1", "full"),
        ("https://openai.azure.com.example.net/v1", "full"),
    ],
)
def test_the_automatic_schema_variant_follows_the_host(base_url: str, variant: str) -> None:
    assert schema_variant_for(base_url) == variant
    assert OpenAIBackend(base_url, model="m").schema_variant == variant


def test_the_schema_variant_is_an_explicit_option(url: str, injector: FaultInjector) -> None:
    chosen = OpenAIBackend("https://api.openai.com/v1", model="m", schema_variant="full")
    assert chosen.schema_variant == "full"
    with pytest.raises(ValueError, match="schema_variant"):
        OpenAIBackend(url, model="m", schema_variant="portable")  # type: ignore[arg-type]
    (strict,) = _run(_backend(url, schema_variant="strict"), _request())
    (full,) = _run(_backend(url), _request())
    assert [_sent_schema(b) for b in injector.bodies] == [STRICT, FULL]
    assert (strict.enforced, full.enforced) == ("strict_schema", "schema")


# -- re-asking with the rule violations (instructor) ---------------------------------------------


def _answer_model(fails: int) -> type[BaseModel]:
    """A response model whose check fails its first `fails` answers (a stand-in for `check()`)."""
    seen: list[int] = []

    class Answer(BaseModel):
        n: int

        @model_validator(mode="after")
        def _rule(self) -> Answer:
            seen.append(self.n)
            if len(seen) <= fails:
                raise ValueError(f"rule broken on answer {len(seen)}")
            return self

    return Answer


def test_re_asks_carry_the_full_constraint_and_report_attempts(url: str, injector: FaultInjector) -> None:
    backend = _backend(url, instructor_retries=3)
    (generation,) = _run(backend, _request(response_model=_answer_model(fails=1)))
    assert generation.attempts == 2 and generation.extra["validated"] is True
    assert generation.constrained and generation.enforced == "schema"
    assert [_sent_schema(b) for b in injector.bodies] == [FULL, FULL]  # not the model's {"n": int}
    feedback = injector.bodies[1]["messages"]
    assert feedback[-2]["role"] == "assistant" and "rule broken on answer 1" in json.dumps(feedback[-1])


def test_a_judgment_re_ask_sends_the_decoding_constraint(url: str, injector: FaultInjector) -> None:
    with _judge(url, instructor_retries=1) as judge:
        judge.judge("a red square", _images(), seed=10)
    expected = pair_constraint("image", "flex", max_string_length=BOUND)
    assert all(_sent_schema(body) == expected for body in injector.bodies)


def test_exhausted_re_asks_return_the_last_answer_marked_not_validated(
    url: str, injector: FaultInjector
) -> None:
    backend = _backend(url, instructor_retries=2)
    (generation,) = _run(backend, _request(response_model=_answer_model(fails=99)))
    assert generation.attempts == 3 and generation.extra["validated"] is False
    assert generation.constrained and len(injector.bodies) == 3


def test_re_asks_without_structured_outputs_say_unconstrained(url: str, injector: FaultInjector) -> None:
    injector.refuse_structured_always = True
    backend = _backend(url, instructor_retries=1, allow_unconstrained=True)
    (generation,) = _run(backend, _request(response_model=_answer_model(fails=99)))
    assert generation.constrained is False and generation.extra["validated"] is False


def test_http_faults_while_re_asking_go_through_the_retry_policy(url: str, injector: FaultInjector) -> None:
    injector.faults = ["500", "429", "garbage"]
    backend = _backend(url, instructor_retries=2, max_attempts=4)
    (generation,) = _run(backend, _request(response_model=_answer_model(fails=0)))
    assert generation.attempts == 1 and generation.extra["validated"] is True
    assert len(injector.bodies) == 4


def test_a_truncated_answer_while_re_asking_is_truncated_output(url: str, injector: FaultInjector) -> None:
    injector.faults = ["truncate"]
    with pytest.raises(flexjudge.TruncatedOutput) as info, _judge(url, instructor_retries=2) as judge:
        judge.judge("a red square", _images(), seed=3)
    assert info.value.partial_text.startswith("{") and len(injector.bodies) == 1


def test_a_server_failure_while_re_asking_is_the_backend_error(url: str, injector: FaultInjector) -> None:
    injector.faults = ["500", "500"]
    backend = _backend(url, instructor_retries=2, max_attempts=2)
    with pytest.raises(flexjudge.BackendError) as info:
        _run(backend, _request(response_model=_answer_model(fails=0)))
    assert info.value.status_code == 500 and len(injector.bodies) == 2


# -- the retry policy ----------------------------------------------------------------------------


def test_retry_after_is_honoured(url: str, injector: FaultInjector) -> None:
    injector.faults, injector.retry_after = ["429"], "0.05"
    backend = _backend(url, backoff_s=120.0)  # the backoff alone would wait two minutes

    async def go() -> list[Generation]:
        try:
            return await asyncio.wait_for(backend.generate([_request()]), timeout=30)
        finally:
            await backend.aclose()

    (generation,) = asyncio.run(go())
    assert generation.constrained and len(injector.bodies) == 2


def test_a_bug_of_ours_is_not_retried(url: str, injector: FaultInjector) -> None:
    from openai import AsyncOpenAI

    class Buggy(AsyncOpenAI):
        async def _process_response(self, *args: Any, **kwargs: Any) -> Any:
            raise TypeError("a bug while reading a good answer")

    client = Buggy(base_url=url, api_key="k", max_retries=0)
    backend = _backend(url, client=client, max_attempts=4)
    with pytest.raises(TypeError, match="a bug"):
        _run(backend, _request(constraint=None))
    assert len(injector.bodies) == 1


def test_connection_errors_name_the_url() -> None:
    from served import free_port

    dead = f"http://127.0.0.1:{free_port()}/v1"
    with pytest.raises(flexjudge.BackendError, match=f"cannot reach {dead}") as info:
        _run(_backend(dead, max_attempts=2), _request(constraint=None))
    assert info.value.retryable


def test_chat_template_options_go_to_servers_that_take_them_but_not_to_openai() -> None:
    from flexjudge.backends.base import Message, Request, TextPart

    request = Request(
        messages=(Message("user", (TextPart("hi"),)),), chat_template_kwargs={"enable_thinking": False}
    )
    vllm = OpenAIBackend("http://127.0.0.1:8000/v1", model="m")
    assert vllm._template_fields(request) == {
        "extra_body": {"chat_template_kwargs": {"enable_thinking": False}}
    }
    for url in ("https://api.openai.com/v1", "https://me.openai.azure.com/openai"):
        assert OpenAIBackend(url, model="m", api_key="k")._template_fields(request) == {}


def test_each_images_data_url_is_built_where_it_loads() -> None:
    """The backend's `prepare_image` runs in the loader's worker threads: once a call's candidates have
    loaded, every image's data URL is ready, so no request waits on a thread to encode one. No server is
    reached: loading is all this call does."""
    from flexjudge.backends.openai import _DATA_URLS

    images = [Image.new("RGB", (16, 16), (k, 90, 17)) for k in (3, 5, 3)]  # the first and last alike
    encodings = _DATA_URLS.encodings
    with Judge("m", backend="openai", base_url="http://127.0.0.1:9/v1") as judge:
        loaded, modality = asyncio.run(judge.load(images, None))
    assert modality == "image" and _DATA_URLS.encodings - encodings == 2  # by content: once each
    assert all(_DATA_URLS.ready(frames[0]) is not None for frames in loaded)
