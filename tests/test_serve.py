"""`flexjudge serve` over real HTTP on 127.0.0.1, the tiny model behind it: concurrent requests decode as
one model batch, every malformed body is a 400 with a JSON error, and a crash answers 500 and the server
goes on."""

from __future__ import annotations

import base64
import io
import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

pytest.importorskip("transformers")
pytest.importorskip("fastapi")

import uvicorn
from PIL import Image
from served import free_port, serving

from flexjudge.backends.base import Generation, Request
from flexjudge.backends.transformers import TransformersBackend
from flexjudge.batching import BatchingBackend
from flexjudge.serve import ChatRequest, create_app

HI = [{"role": "user", "content": "hi"}]
SCHEMA = {"type": "object", "properties": {"ok": {"enum": [1, 2]}}, "required": ["ok"]}


class Recorded(TransformersBackend):
    """The tiny model, recording the requests it gets and the batch of every prefill; it can be told to
    raise on its next call, or to return one generation too few (breaking the backend contract)."""

    def __init__(self) -> None:
        super().__init__("tiny-random", max_batch_size=8)
        self.requests: list[Request] = []
        self.prefills: list[int] = []
        self.fault: str | None = None
        self._model.register_forward_pre_hook(self._seen, with_kwargs=True)

    def _seen(self, module: Any, args: Any, kwargs: dict[str, Any]) -> None:
        if kwargs["input_ids"].shape[1] > 1:  # a prefill, not a one-token decode step
            self.prefills.append(int(kwargs["input_ids"].shape[0]))

    async def generate(self, requests: list[Request]) -> list[Generation]:
        self.requests.extend(requests)
        fault, self.fault = self.fault, None
        if fault == "raise":
            raise RuntimeError("the model fell over")
        results = await super().generate(requests)
        return results[:-1] if fault == "short" else results


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Recorded, BatchingBackend]]:
    """The app straight under uvicorn (tests/served.py's fault injector reads every body as JSON, and
    some bodies here are not)."""
    import os

    os.environ["FLEXJUDGE_CACHE_DIR"] = str(tmp_path_factory.mktemp("cache"))
    model = Recorded()
    # A long window, so that requests sent together from threads surely meet in one batch.
    batcher = BatchingBackend(model, max_batch=8, window_s=1.0)
    app = create_app(batcher, model_name="tiny-random")
    assert app.state.batcher is batcher
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    with serving(uvicorn.Server(config)):
        yield f"http://127.0.0.1:{port}/v1", model, batcher


@pytest.fixture
def server(served: tuple[str, Recorded, BatchingBackend]) -> tuple[str, Recorded, BatchingBackend]:
    _, model, batcher = served
    model.requests.clear()
    model.prefills.clear()
    model.fault = None
    batcher.batch_sizes.clear()
    return served


def _post(url: str, body: dict[str, Any] | bytes) -> tuple[int, dict[str, Any]]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(
        f"{url}/chat/completions", data=data, headers={"content-type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())  # every answer is JSON, errors included


def _data_url(color: tuple[int, int, int]) -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), color).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def test_concurrent_requests_decode_as_one_model_batch(server: tuple[str, Recorded, BatchingBackend]) -> None:
    url, model, batcher = server
    bodies = [
        {
            "messages": [{"role": "user", "content": "is this " + "very " * k + "good?"}],
            "max_tokens": 8,
            "structured_outputs": {"json": SCHEMA},
        }
        for k in range(8)
    ]
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda body: _post(url, body), bodies))
    assert [status for status, _ in answers] == [200] * 8
    assert list(batcher.batch_sizes) == [8] and model.prefills == [8]
    # Each answer is its own request's: the prompt lengths grow with the words sent.
    lengths = [answer["usage"]["prompt_tokens"] for _, answer in answers]
    assert lengths == sorted(lengths) and len(set(lengths)) == 8


def test_every_setting_reaches_the_backend(server: tuple[str, Recorded, BatchingBackend]) -> None:
    url, model, _ = server
    image = {"type": "image_url", "image_url": {"url": _data_url((200, 30, 30)), "detail": "low"}}
    body = {
        "model": "tiny-random",
        "messages": [
            {"role": "system", "content": "judge"},
            {"role": "user", "content": [image, {"type": "text", "text": "ok?"}]},
        ],
        "max_completion_tokens": 9,
        "temperature": 0.7,
        "top_p": 0.9,
        "seed": -5,
        "chat_template_kwargs": {"enable_thinking": False},
        "structured_outputs": {"json": SCHEMA, "unique_names": ["dims"]},
        "stream": False,
        "n": 1,
    }
    status, answer = _post(url, body)
    assert status == 200 and json.loads(answer["choices"][0]["message"]["content"])["ok"] in (1, 2)
    (request,) = model.requests
    assert (request.max_new_tokens, request.temperature, request.top_p, request.seed) == (9, 0.7, 0.9, -5)
    assert request.chat_template_kwargs == {"enable_thinking": False}
    assert request.constraint is not None and request.constraint.schema == SCHEMA
    assert request.constraint.unique_names == {"dims"}
    assert [len(m.parts) for m in request.messages] == [1, 2]
    # A temperature too small to divide by is greedy, as vLLM takes it.
    assert _post(url, {"messages": HI, "max_tokens": 2, "temperature": 1e-300})[0] == 200
    assert model.requests[-1].temperature == 0.0


@pytest.mark.parametrize(
    ("body", "where"),
    [
        (b"{not json", "body"),
        (b"[1, 2]", "body"),
        (b'{"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1e400}', "max_tokens"),
        (b'{"messages": [{"role": "user", "content": "hi"}], "temperature": Infinity}', "temperature"),
        (b'{"messages": [{"role": "user", "content": "hi"}], "temperature": NaN}', "temperature"),
        ({}, "messages"),
        ({"messages": []}, "messages"),
        ({"messages": ["hi"]}, "messages.0"),
        ({"messages": [{"role": "tool", "content": "hi"}]}, "messages.0.role"),
        (
            {"messages": [{"role": "user", "content": [{"type": "audio", "audio": "x"}]}]},
            "messages.0.content",
        ),
        ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": "x"}]}]}, "messages"),
        ({"messages": HI, "max_tokens": "8"}, "max_tokens"),
        ({"messages": HI, "max_tokens": 4.5}, "max_tokens"),
        ({"messages": HI, "max_tokens": True}, "max_tokens"),
        ({"messages": HI, "max_tokens": 0}, "max_tokens"),
        ({"messages": HI, "max_completion_tokens": 2**40}, "max_completion_tokens"),
        ({"messages": HI, "temperature": -1}, "temperature"),
        ({"messages": HI, "temperature": "hot"}, "temperature"),
        ({"messages": HI, "top_p": 0}, "top_p"),
        ({"messages": HI, "top_p": 1.5}, "top_p"),
        ({"messages": HI, "seed": 2**64}, "seed"),
        ({"messages": HI, "seed": "1"}, "seed"),
        ({"messages": HI, "response_format": {"type": "json_object"}}, "response_format"),
        ({"messages": HI, "response_format": {"type": "json_schema", "json_schema": {}}}, "response_format"),
        ({"messages": HI, "structured_outputs": {}}, "structured_outputs"),
        ({"messages": HI, "structured_outputs": {"json": SCHEMA, "grammar": "start: /a/"}}, "structured"),
        ({"messages": HI, "structured_outputs": {"regex": "a+"}}, "structured_outputs"),
        ({"messages": HI, "structured_outputs": {"json": SCHEMA, "unique_names": "dims"}}, "unique_names"),
        ({"messages": HI, "structured_outputs": {"json": True}}, "structured_outputs"),
        ({"messages": HI, "chat_template_kwargs": {"tokenize": True}}, "chat_template_kwargs"),
        ({"messages": HI, "chat_template_kwargs": {"x": [1]}}, "chat_template_kwargs"),
        ({"messages": HI, "chat_template_kwargs": []}, "chat_template_kwargs"),
        ({"messages": HI, "stream": True}, "stream"),
        ({"messages": HI, "n": 2}, "n"),
        ({"messages": HI, "logprobs": "yes"}, "logprobs"),
        ({"messages": HI, "guided_json": SCHEMA}, "guided_json"),
        (
            {
                "messages": HI,
                "structured_outputs": {"json": SCHEMA},
                "response_format": {"type": "json_schema", "json_schema": {"schema": SCHEMA}},
            },
            "not both",
        ),
    ],
)
def test_malformed_bodies_are_400_with_a_json_error_naming_the_field(
    server: tuple[str, Recorded, BatchingBackend], body: dict[str, Any] | bytes, where: str
) -> None:
    url, model, _ = server
    status, answer = _post(url, body)
    assert status == 400 and answer["error"]["type"] == "invalid_request_error"
    assert where in answer["error"]["message"] and model.requests == []


def test_refused_media_and_constraints_are_400(server: tuple[str, Recorded, BatchingBackend]) -> None:
    url, _, _ = server

    def content(url_: str) -> list[dict[str, Any]]:
        return [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url_}}]}]

    status, answer = _post(url, {"messages": content("/etc/passwd")})
    assert status == 400 and "data URLs" in answer["error"]["message"]
    status, answer = _post(url, {"messages": content("data:image/png;base64,bm90IGFuIGltYWdl")})
    assert status == 400 and answer["error"]["type"] == "invalid_request_error"
    status, answer = _post(url, {"messages": HI, "structured_outputs": {"grammar": "start: foo bar"}})
    assert status == 400 and answer["error"]["type"] == "invalid_request_error"


def test_one_bad_request_does_not_fail_its_batch_mates(server: tuple[str, Recorded, BatchingBackend]) -> None:
    url, _, batcher = server
    good = {"messages": HI, "max_tokens": 4}
    broken = {"type": "object", "properties": {"a": {"$ref": "#/$defs/missing"}}, "required": ["a"]}
    bad = {**good, "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": broken}}}
    with ThreadPoolExecutor(3) as pool:
        answers = list(pool.map(lambda body: _post(url, body), [good, bad, good]))
    assert [status for status, _ in answers] == [200, 400, 200] and list(batcher.batch_sizes) == [3]


@pytest.mark.parametrize("fault", ["raise", "short"])
def test_a_crash_fails_the_batch_in_hand_with_500_and_the_server_goes_on(
    server: tuple[str, Recorded, BatchingBackend], fault: str
) -> None:
    url, model, _ = server
    model.fault = fault
    status, answer = _post(url, {"messages": HI, "max_tokens": 4})
    assert status == 500 and answer["error"]["type"] == "server_error"
    assert _post(url, {"messages": HI, "max_tokens": 4})[0] == 200


def test_the_request_model_is_strict_about_types() -> None:
    """Pure: what the typed model itself accepts, without a server."""
    chat = ChatRequest.model_validate_json(
        b'{"messages": [{"role": "user", "content": "hi"}], "temperature": 1}'
    )
    assert chat.temperature == 1.0 and chat.max_tokens is None
    with pytest.raises(ValueError, match="finite"):
        ChatRequest.model_validate_json(b'{"messages": [{"role": "user", "content": "hi"}], "top_p": NaN}')
