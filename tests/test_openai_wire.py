"""The openai backend sends the body `chat.completions.create` would, through `client.post`.

`flexjudge.backends._retry` skips `create`'s parameter transform (a CPU cost per request that grows with
the response schema), and the backend splices each body from a constant part encoded once
(`openai_wire.encode`). These hold the body on the wire to what `create` sends for a real judge request
(schema response format, images, template options in `extra_body`), as the same JSON value with the same
auth header: `create` orders the keys its own way, so the bytes differ only in key order. The splice
itself is held byte for byte to what the client's own encoder makes of the same dict.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

import pytest
from openai import AsyncOpenAI
from openai._utils._json import openapi_dumps

from flexjudge.backends import openai_wire
from flexjudge.backends._probe import PROBE_TOKENS
from flexjudge.backends._retry import complete, json_fields
from flexjudge.backends.base import Constraint, ImagePart, Message, Request, TextPart, TokenLogprob, Usage
from flexjudge.backends.openai import OpenAIBackend
from flexjudge.backends.openai_wire import Encoded, Tail, encode, plain, read
from flexjudge.constraints import pair_constraint
from flexjudge.errors import BackendError, UsageError
from flexjudge.prompting import PromptSpec, render_prompt

_ANSWER = {
    "id": "x",
    "object": "chat.completion",
    "created": 0,
    "model": "m",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
}


_PROBE_OK = {"role": "assistant", "content": '{"ok": true}'}
_IMAGE = "data:image/png;base64,iVBORw0KGgo="
_TEXT = render_prompt(PromptSpec(), "a red fox by a café, 狐狸 🦊")  # non-ASCII travels as UTF-8


def _body() -> dict[str, Any]:
    """A judge request as `create` takes it."""
    return {
        "model": "judge",
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "image_url", "image_url": {"url": _IMAGE}},
                    {"type": "image_url", "image_url": {"url": _IMAGE}},
                    {"type": "text", "text": _TEXT},
                ],
            }
        ],
        "max_tokens": 4096,
        "temperature": 0.0,
        "top_p": 1.0,
        "seed": 3,
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "judgment", "schema": pair_constraint("image", "flex"), "strict": True},
        },
        "extra_body": {"chat_template_kwargs": {"enable_thinking": False}},
    }


@pytest.fixture
def recorder() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    seen: list[dict[str, Any]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["content-length"]))
            decoded = json.loads(body)
            if decoded.get("max_tokens") == PROBE_TOKENS:  # the backend's capability probe: pass it
                answer = {**_ANSWER, "choices": [{**_ANSWER["choices"][0], "message": _PROBE_OK}]}
            else:
                seen.append(
                    {
                        "path": self.path,
                        "auth": self.headers.get("authorization"),
                        "type": self.headers.get("content-type"),
                        "body": decoded,
                    }
                )
                answer = _ANSWER
            out = json.dumps(answer).encode()
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(out)))
            self.end_headers()
            self.wfile.write(out)

        def log_message(self, *args: Any) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/v1", seen
    server.shutdown()
    server.server_close()


def test_the_body_on_the_wire_is_what_create_sends(recorder: tuple[str, list[dict[str, Any]]]) -> None:
    url, seen = recorder
    body = _body()

    async def both() -> None:
        client = AsyncOpenAI(base_url=url, api_key="sk-test", max_retries=0)
        answer = await complete(client, body, url=url, attempts=1, backoff_s=0.0)
        assert answer.choices[0].message.content == "ok"
        await client.chat.completions.create(**body)
        await client.close()

    asyncio.run(both())
    ours, reference = seen
    assert ours == reference
    assert ours["auth"] == "Bearer sk-test" and ours["path"] == "/v1/chat/completions"
    assert ours["body"]["chat_template_kwargs"] == {"enable_thinking": False}


@pytest.mark.parametrize("transport", ["httpx", "aiohttp"])
def test_the_backends_spliced_body_is_what_create_sends(
    recorder: tuple[str, list[dict[str, Any]]], transport: str
) -> None:
    url, seen = recorder
    body = _body()
    schema = body["response_format"]["json_schema"]["schema"]
    request = Request(
        messages=(Message("user", (ImagePart(_png()), ImagePart(_png()), TextPart(_TEXT))),),
        constraint=Constraint(schema=schema, strict_schema=schema),
        seed=3,
        chat_template_kwargs={"enable_thinking": False},
    )
    backend = OpenAIBackend(url, model="judge", api_key="sk-test", transport=transport)  # type: ignore[arg-type]

    async def both() -> None:
        try:
            for _ in range(2):  # the second from the encoded constant part
                (generation,) = await backend.generate([request])
                assert generation.text == "ok" and generation.usage is None
        finally:
            await backend.aclose()
        client = AsyncOpenAI(base_url=url, api_key="sk-test", max_retries=0)
        for message in body["messages"]:  # the image as the backend encodes it
            message["content"][0]["image_url"]["url"] = message["content"][1]["image_url"]["url"] = _png_url()
        await client.chat.completions.create(**body)
        await client.close()

    asyncio.run(both())
    first, second, reference = seen
    assert first == second == reference
    assert first["auth"] == "Bearer sk-test" and first["type"] == "application/json"


def test_the_splice_is_the_clients_own_encoding_byte_for_byte() -> None:
    payload = json_fields(_body())
    constant = ("model", "response_format", "chat_template_kwargs")
    head = {k: v for k, v in payload.items() if k not in constant}
    tail = {k: payload[k] for k in constant}
    assert encode(head, Tail.of(tail)) == openapi_dumps({**head, **tail})
    assert encode({}, Tail.of(tail)) == openapi_dumps(tail)
    assert encode(head, Tail.of({})) == openapi_dumps(head)
    with pytest.raises(ValueError):  # as the client's encoder: no NaN on the wire
        encode({**head, "temperature": float("nan")}, Tail.of(tail))


def test_encoded_values_are_spliced_in_as_the_client_would_encode_them() -> None:
    """Image URLs encoded once (`Encoded`) go into the body as their bytes: the body is still the client's
    own encoding of the plain values, byte for byte, whatever the text around them holds."""
    payload = json_fields(_body())
    constant = ("model", "response_format", "chat_template_kwargs")
    head = {k: v for k, v in payload.items() if k not in constant}
    fields = {k: payload[k] for k in constant}
    tail = Tail.of(fields)
    urls = [_png_url(), "data:image/png;base64,QUJD", 'caf\u00e9 "quoted" \u2028 \u0000']
    for message in head["messages"]:
        message["content"] += [{"type": "image_url", "image_url": {"url": url}} for url in urls]
        message["content"].append({"type": "text", "text": "after the images \u00e9"})
    spliced = {
        **head,
        "messages": [
            {
                **m,
                "content": [
                    {**c, "image_url": {"url": Encoded.of(c["image_url"]["url"])}} if "image_url" in c else c
                    for c in m["content"]
                ],
            }
            for m in head["messages"]
        ],
    }
    assert plain(spliced) == head
    assert encode(spliced, tail) == openapi_dumps({**head, **fields})
    assert encode(spliced, Tail.of({})) == openapi_dumps(head)
    with pytest.raises(TypeError, match="not JSON serializable"):
        encode({"x": object()}, tail)


def test_a_text_holding_the_splice_mark_is_still_encoded_right() -> None:
    """The mark `encode` cuts at is random, so no caller writes it; one that did (here, reading it from the
    module) still gets the right body, encoded the slow way."""
    head = {"a": openai_wire._HOLE, "b": Encoded.of("data:image/png;base64,QUJD"), "c": [openai_wire._HOLE]}
    assert encode(head, Tail.of({})) == openapi_dumps(plain(head))


def _png() -> Any:
    from PIL import Image

    return Image.new("RGB", (4, 4), (200, 30, 30))


def _png_url() -> str:
    from flexjudge.media import to_data_url

    return to_data_url(_png())


def _completion(**choice: Any) -> dict[str, Any]:
    message = choice.pop("message", {"role": "assistant", "content": "ok"})
    return {**_ANSWER, "choices": [{"index": 0, "message": message, "finish_reason": "stop", **choice}]}


@pytest.mark.parametrize(
    "raw",
    [
        b"<html>not json",
        b"\xff\xfe",
        b"[1, 2]",
        json.dumps({**_ANSWER, "choices": []}).encode(),
        json.dumps({**_ANSWER, "choices": ["text"]}).encode(),
        json.dumps(_completion(message="ok")).encode(),
    ],
)
def test_a_body_that_is_not_a_chat_completion_is_worth_asking_again(raw: bytes) -> None:
    with pytest.raises(BackendError, match="http://x") as info:
        read(raw, "http://x")
    assert info.value.retryable


def test_a_choice_without_text_is_not_retried() -> None:
    raw = json.dumps(_completion(message={"role": "assistant", "content": None})).encode()
    with pytest.raises(BackendError) as info:
        read(raw, "http://x")
    assert not info.value.retryable


def test_what_is_read_of_an_answer() -> None:
    tokens = [{"token": "{", "logprob": -0.25}, {"token": "}", "logprob": 0}]
    answer = read(
        json.dumps(
            {
                **_completion(finish_reason="length", logprobs={"content": tokens}),
                "usage": {"prompt_tokens": 7, "completion_tokens": 2},
            }
        ).encode(),
        "http://x",
    )
    assert answer.text == "ok" and answer.finish_reason == "length" and answer.model == "m"
    assert answer.usage == Usage(7, 2)
    assert answer.token_logprobs == (TokenLogprob("{", -0.25), TokenLogprob("}", 0.0))
    plain = read(json.dumps({**_completion(), "model": None}).encode(), "http://x")
    assert plain.finish_reason == "stop" and plain.usage is None and plain.model == ""
    assert plain.token_logprobs is None


@pytest.mark.parametrize(
    "usage",
    [{"prompt_tokens": 7, "completion_tokens": None}, {"prompt_tokens": True, "completion_tokens": 2}, 5],
)
def test_counts_that_are_not_counts_are_no_usage(usage: Any) -> None:
    assert read(json.dumps({**_completion(), "usage": usage}).encode(), "http://x").usage is None


@pytest.mark.parametrize("bad", [0.5, "NaN", "-Infinity", True, None, "x"])
def test_one_unusable_log_probability_drops_the_list(bad: Any) -> None:
    value = float(bad) if bad in ("NaN", "-Infinity") else bad
    tokens = [{"token": "a", "logprob": -0.1}, {"token": "b", "logprob": value}]
    raw = json.dumps(
        _completion(logprobs={"content": tokens})
    ).encode()  # NaN and -Infinity as Python writes them
    assert read(raw, "http://x").token_logprobs is None


def test_behind_a_proxy_auto_keeps_httpx(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    assert OpenAIBackend("http://127.0.0.1:1/v1", model="m").transport == "aiohttp"
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.invalid:3128")
    assert OpenAIBackend("http://127.0.0.1:1/v1", model="m").transport == "httpx"


def test_the_transport_is_checked() -> None:
    with pytest.raises(UsageError):
        OpenAIBackend("http://127.0.0.1:1/v1", model="m", transport="curl")  # type: ignore[arg-type]
    assert OpenAIBackend("http://127.0.0.1:1/v1", model="m", transport="httpx").transport == "httpx"


def test_the_aiohttp_transport_goes_through_the_proxy_the_environment_names(
    recorder: tuple[str, list[dict[str, Any]]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Chosen explicitly behind a proxy, our own session sends through it: the recorder plays the proxy,
    so a request that reaches it names the judge's URL in full (a direct one could not resolve it)."""
    proxy, seen = recorder
    for name in ("NO_PROXY", "no_proxy", "HTTP_PROXY", "http_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTP_PROXY", proxy.removesuffix("/v1"))
    backend = OpenAIBackend("http://judge.invalid/v1", model="m", transport="aiohttp", max_attempts=1)
    request = Request(messages=(Message("user", (TextPart("hi"),)),))

    async def ask() -> None:
        try:
            (generation,) = await backend.generate([request])
            assert generation.text == "ok"
        finally:
            await backend.aclose()

    asyncio.run(ask())
    assert [s["path"] for s in seen] == ["http://judge.invalid/v1/chat/completions"]


def test_an_image_loaded_for_a_call_is_hashed_once_however_many_requests_show_it(
    recorder: tuple[str, list[dict[str, Any]]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A group's image is in G - 1 pairs: its digest (the key of its data URL) is computed once per
    loading call, and a new load (a new call) hashes it again."""
    from PIL import Image

    from flexjudge import media

    url, seen = recorder
    hashed: list[int] = []
    real = media.image_digest
    monkeypatch.setattr(media, "image_digest", lambda image: hashed.append(id(image)) or real(image))
    images = [Image.new("RGB", (8, 8), (40 * k, 0, 0)) for k in range(3)]
    for image in images:
        media.mark_loaded(image)
    pairs = [(0, 1), (0, 2), (1, 2)]
    requests = [
        Request(messages=(Message("user", (ImagePart(images[i]), ImagePart(images[j]), TextPart("hi"))),))
        for i, j in pairs
    ]
    backend = OpenAIBackend(url, model="m", transport="aiohttp")

    async def ask() -> None:
        try:
            for request in requests:  # one by one: the later ones find the URLs built
                await backend.generate([request])
        finally:
            await backend.aclose()

    asyncio.run(ask())
    assert sorted(hashed) == sorted(id(image) for image in images) and len(seen) == 3
    sent = [[part["image_url"]["url"] for part in s["body"]["messages"][0]["content"][:2]] for s in seen]
    assert sent[0][0] == sent[1][0] and sent[0][1] == sent[2][0] and len({*sent[0], *sent[2]}) == 3
    images[0].putpixel((0, 0), (1, 2, 3))  # changed in place, then loaded by a new call
    media.mark_loaded(images[0])
    assert media.call_digest(images[0]) == real(images[0]) != media.known_digest(images[1])
    assert len(hashed) == 4


def test_a_redirect_is_an_error_not_followed() -> None:
    """The client does not follow redirects; neither does the backend's own session (a POST re-sent to
    another host, or turned into a GET, is not what was configured)."""

    class Redirect(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["content-length"]))
            self.send_response(307)
            self.send_header("location", "http://elsewhere.invalid/v1/chat/completions")
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Redirect)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    backend = OpenAIBackend(
        f"http://127.0.0.1:{server.server_port}/v1", model="m", transport="aiohttp", max_attempts=3
    )
    request = Request(messages=(Message("user", (TextPart("hi"),)),))

    async def ask() -> None:
        try:
            await backend.generate([request])
        finally:
            await backend.aclose()

    try:
        with pytest.raises(BackendError) as info:
            asyncio.run(ask())
    finally:
        server.shutdown()
        server.server_close()
    assert (
        info.value.status_code == 307 and not info.value.retryable and "elsewhere.invalid" in str(info.value)
    )
