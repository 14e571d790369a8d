"""`flexjudge serve` under abuse, over real HTTP on 127.0.0.1 with the tiny model behind it: the key is
required (but not by /health), every limit answers its 4xx with a JSON reason, a full queue answers 503
with Retry-After, a client that leaves frees its place, and half-open connections are dropped without
blocking anyone."""

from __future__ import annotations

import base64
import io
import json
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

import pytest

pytest.importorskip("transformers")
pytest.importorskip("fastapi")

import uvicorn
from PIL import Image
from served import free_port, serving
from typer.testing import CliRunner

from flexjudge.backends.base import Generation, Request
from flexjudge.backends.transformers import TransformersBackend
from flexjudge.batching import BatchingBackend
from flexjudge.cli import app as cli_app
from flexjudge.errors import UsageError
from flexjudge.serve import ServeLimits, create_app, parse_chat_request, serve, server_config

HI = [{"role": "user", "content": "hi"}]
KEY = "s3cret-key"


class Gated:
    """The tiny model behind a gate: `generate` waits until the test opens it (a threading.Event, set
    from the test thread), so requests pile up in the server deterministically."""

    def __init__(self, model: TransformersBackend) -> None:
        self.inner = model
        self.name = model.name
        self.model = model.model
        self.gate = threading.Event()
        self.entered = 0

    async def generate(self, requests: list[Request]) -> list[Generation]:
        import asyncio

        self.entered += len(requests)
        while not self.gate.is_set():  # polled: a thread blocked on the Event could not be cancelled
            await asyncio.sleep(0.01)
        return await self.inner.generate(requests)

    async def aclose(self) -> None:
        await self.inner.aclose()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> TransformersBackend:
    import os

    os.environ["FLEXJUDGE_CACHE_DIR"] = str(tmp_path_factory.mktemp("cache"))
    return TransformersBackend("tiny-random", max_batch_size=8)


@contextmanager
def running(app: Any, limits: ServeLimits) -> Iterator[tuple[str, int]]:
    """Serve `app` on 127.0.0.1 with the configuration `flexjudge serve` uses; yields (base url, port)."""
    port = free_port()
    config = server_config(app, host="127.0.0.1", port=port, limits=limits, log_level="warning")
    with serving(uvicorn.Server(config)):
        yield f"http://127.0.0.1:{port}", port


def call(
    url: str, path: str, body: dict[str, Any] | bytes | None = None, key: str | None = None
) -> tuple[int, dict[str, Any], dict[str, str]]:
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    headers = {"content-type": "application/json"}
    if key is not None:
        headers["authorization"] = f"Bearer {key}"
    request = urllib.request.Request(url + path, data=data, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read()), dict(response.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read()), dict(exc.headers)  # every answer is JSON, errors included


def wait_until(condition: Callable[[], bool], what: str, seconds: float = 20) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def data_url(size: int) -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), (10, 200, 30)).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def images(count: int, size: int = 32) -> list[dict[str, Any]]:
    parts: list[dict[str, Any]] = [{"type": "image_url", "image_url": {"url": data_url(size)}}] * count
    return [{"role": "user", "content": [*parts, {"type": "text", "text": "ok?"}]}]


# ---------------------------------------------------------------- the key


def test_the_key_is_required_everywhere_but_health(tiny: TransformersBackend) -> None:
    limits = ServeLimits()
    with running(create_app(tiny, model_name="tiny-random", api_key=KEY), limits) as (url, _):
        chat = {"messages": HI, "max_tokens": 2}
        for key in (None, "wrong", KEY + "x", KEY[:-1], ""):
            status, answer, headers = call(url, "/v1/chat/completions", chat, key=key)
            assert status == 401 and answer["error"]["type"] == "authentication_error", key
            assert headers["www-authenticate"] == "Bearer"
            assert call(url, "/v1/models", key=key)[0] == 401
        assert call(url, "/v1/chat/completions", chat, key=KEY)[0] == 200
        assert call(url, "/v1/models", key=KEY)[0] == 200
        status, answer, _ = call(url, "/health")
        assert (status, answer) == (200, {"status": "ok"})
        # FastAPI's own pages are not served at all (nothing for the key check to miss).
        assert call(url, "/openapi.json", key=KEY)[0] == 404


def test_without_a_key_the_server_is_open(tiny: TransformersBackend) -> None:
    with running(create_app(tiny, model_name="tiny-random"), ServeLimits()) as (url, _):
        assert call(url, "/v1/chat/completions", {"messages": HI, "max_tokens": 2})[0] == 200


def test_serving_beyond_loopback_without_a_key_is_refused(tiny: TransformersBackend) -> None:
    for host in ("0.0.0.0", "::", "192.168.1.10", "judge.example.com"):
        with pytest.raises(UsageError, match="--api-key"):
            serve(tiny, model_name="tiny-random", host=host)
    runner = CliRunner()
    refused = runner.invoke(cli_app, ["serve", "--model", "tiny-random", "--host", "0.0.0.0"], env={})
    assert refused.exit_code == 2 and "--api-key" in refused.output
    empty = runner.invoke(cli_app, ["serve", "--model", "tiny-random", "--host", "0.0.0.0"],
                          env={"FLEXJUDGE_API_KEY": ""})  # fmt: skip
    assert empty.exit_code == 2


# ---------------------------------------------------------------- the limits

LIMITS = ServeLimits(
    max_body_bytes=20_000, max_images=2, max_image_pixels=64 * 64, max_total_pixels=32 * 32 + 100,
    max_tokens=16, max_prompt_chars=100, body_timeout_s=1.0, header_timeout_s=1.0,
)  # fmt: skip


@pytest.fixture(scope="module")
def limited(tiny: TransformersBackend) -> Iterator[str]:
    with running(create_app(tiny, model_name="tiny-random", limits=LIMITS), LIMITS) as (url, _):
        yield url


@pytest.mark.parametrize(
    ("body", "status", "flag"),
    [
        ({"messages": HI, "max_tokens": 17}, 400, "--max-tokens"),
        ({"messages": HI, "max_completion_tokens": 2**31 - 1}, 400, "--max-tokens"),
        ({"messages": [{"role": "user", "content": "x" * 101}]}, 400, "--max-prompt-chars"),
        ({"messages": [{"role": "system", "content": "x" * 60}, {"role": "user", "content": "y" * 41}]}, 400,
         "--max-prompt-chars"),
        ({"messages": images(3)}, 400, "--max-images"),
        ({"messages": images(2)}, 400, "--max-total-pixels"),
        ({"messages": images(1, size=65)}, 400, "pixels"),
        ({"messages": [{"role": "user", "content": "x" * 30_000}]}, 413, "--max-body-bytes"),
    ],
)  # fmt: skip
def test_each_limit_is_a_4xx_with_a_json_reason(
    limited: str, body: dict[str, Any], status: int, flag: str
) -> None:
    got, answer, _ = call(limited, "/v1/chat/completions", body)
    assert got == status and flag in answer["error"]["message"]


def test_requests_at_each_limit_are_answered(limited: str) -> None:
    for body in (
        {"messages": HI, "max_tokens": 16},
        {"messages": [{"role": "user", "content": "x" * 100}], "max_tokens": 2},
        {"messages": images(1), "max_tokens": 2},
    ):
        assert call(limited, "/v1/chat/completions", body)[0] == 200


@pytest.mark.parametrize("messages", [HI, images(1)], ids=["text", "image"])
def test_the_prompt_token_limit_counts_what_the_model_sees(
    tiny: TransformersBackend, messages: list[dict[str, Any]]
) -> None:
    """The prompt is counted as the model is fed it (chat template, image tokens): a request of exactly
    `max_prompt_tokens` is answered, and reports that many prompt tokens; one more token is a 400."""
    body = {"messages": messages, "max_tokens": 2, "temperature": 0}
    tokens = tiny.prompt_tokens(parse_chat_request(json.dumps(body)))
    at_limit = ServeLimits(max_prompt_tokens=tokens)
    with running(create_app(tiny, model_name="tiny-random", limits=at_limit), at_limit) as (url, _):
        status, answer, _ = call(url, "/v1/chat/completions", body)
        assert status == 200 and answer["usage"]["prompt_tokens"] == tokens
    below = ServeLimits(max_prompt_tokens=tokens - 1)
    with running(create_app(tiny, model_name="tiny-random", limits=below), below) as (url, _):
        status, answer, _ = call(url, "/v1/chat/completions", body)
        assert status == 400 and answer["error"]["type"] == "invalid_request_error"
        assert "--max-prompt-tokens" in answer["error"]["message"]


def _raw(port: int, head: bytes) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=20)
    sock.sendall(head)
    return sock


def _status_of(sock: socket.socket) -> tuple[int, dict[str, Any]]:
    data = b""
    while b"\r\n\r\n" not in data or not data.rstrip().endswith(b"}"):
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


def test_an_oversize_body_is_refused_while_it_streams_not_after(tiny: TransformersBackend) -> None:
    """A chunked body (no Content-Length) larger than the limit is refused at the chunk that crosses it:
    the 413 arrives while the client has not finished sending."""
    with running(create_app(tiny, model_name="tiny-random", limits=LIMITS), LIMITS) as (_, port):
        head = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        sock = _raw(port, head)
        with sock:
            chunk = b"x" * 8_000
            for _ in range(3):  # 24,000 bytes sent, over the 20,000 limit; the body never ends
                sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            status, answer = _status_of(sock)
        assert status == 413 and "--max-body-bytes" in answer["error"]["message"]


def test_a_declared_oversize_body_is_refused_before_it_is_read(tiny: TransformersBackend) -> None:
    """Content-Length above the limit: 413 at once, though not one byte of the body was sent (reading it
    would end in the 408 of the read deadline instead)."""
    with running(create_app(tiny, model_name="tiny-random", limits=LIMITS), LIMITS) as (_, port):
        sock = _raw(
            port, b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000000\r\n\r\n"
        )
        with sock:
            status, answer = _status_of(sock)
        assert status == 413 and "--max-body-bytes" in answer["error"]["message"]


def test_a_body_that_never_completes_times_out_with_408(tiny: TransformersBackend) -> None:
    with running(create_app(tiny, model_name="tiny-random", limits=LIMITS), LIMITS) as (_, port):
        sock = _raw(port, b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{")
        with sock:
            status, answer = _status_of(sock)
        assert status == 408 and answer["error"]["type"] == "invalid_request_error"


def test_half_open_connections_are_dropped_and_block_nobody(tiny: TransformersBackend) -> None:
    with running(create_app(tiny, model_name="tiny-random", limits=LIMITS), LIMITS) as (url, port):
        partial = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-"
        half_open = [_raw(port, partial) for _ in range(200)]
        trickler = _raw(port, b"GET /health HTTP/1.1\r\n")
        try:
            assert call(url, "/v1/chat/completions", {"messages": HI, "max_tokens": 2})[0] == 200
            # Sending a byte now and then does not keep a connection whose headers never end.
            for _ in range(5):
                trickler.sendall(b"X")
                time.sleep(0.3)
            for sock in [*half_open, trickler]:
                sock.settimeout(20)
                try:
                    closed = sock.recv(1) == b""
                except ConnectionResetError:
                    closed = True
                assert closed, "the server kept a connection whose headers never completed"
        finally:
            for sock in [*half_open, trickler]:
                sock.close()
        assert call(url, "/health")[0] == 200


# ---------------------------------------------------------------- the queue and disconnects


@pytest.fixture
def gated(tiny: TransformersBackend) -> Iterator[tuple[str, int, Gated, Any]]:
    limits = ServeLimits(max_queue=2, header_timeout_s=5.0)
    model = Gated(tiny)
    app = create_app(
        BatchingBackend(model, max_batch=8, window_s=0.0), model_name="tiny-random", limits=limits
    )
    with running(app, limits) as (url, port):
        try:
            yield url, port, model, app
        finally:
            model.gate.set()


def test_a_full_queue_answers_503_with_retry_after(gated: tuple[str, int, Gated, Any]) -> None:
    url, _, model, app = gated
    chat = {"messages": HI, "max_tokens": 2}
    with ThreadPoolExecutor(2) as pool:
        held = [pool.submit(call, url, "/v1/chat/completions", chat) for _ in range(2)]
        wait_until(lambda: app.state.admitted == 2, "two requests admitted")
        status, answer, headers = call(url, "/v1/chat/completions", chat)
        assert status == 503 and answer["error"]["type"] == "server_overloaded"
        assert int(headers["retry-after"]) >= 1
        assert call(url, "/health")[0] == 200  # the server still answers what needs no model
        model.gate.set()
        assert [f.result()[0] for f in held] == [200, 200]
    assert call(url, "/v1/chat/completions", chat)[0] == 200


def test_a_client_that_disconnects_frees_its_place(gated: tuple[str, int, Gated, Any]) -> None:
    url, port, model, app = gated
    body = json.dumps({"messages": HI, "max_tokens": 2}).encode()
    head = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    leavers = [_raw(port, head + b"Content-Length: %d\r\n\r\n%s" % (len(body), body)) for _ in range(2)]
    wait_until(lambda: app.state.admitted == 2, "two requests admitted")
    for sock in leavers:
        sock.close()
    # Both places free while the model is still held: the server noticed the clients leave.
    wait_until(lambda: app.state.admitted == 0, "the disconnected requests to be dropped")
    assert not model.gate.is_set()
    model.gate.set()
    assert call(url, "/v1/chat/completions", {"messages": HI, "max_tokens": 2})[0] == 200


# ---------------------------------------------------------------- mixed load


@pytest.mark.slow
def test_500_mixed_requests_every_valid_one_answered(tiny: TransformersBackend) -> None:
    """450 valid requests from 16 threads, mixed with 50 hostile ones (oversize bodies, absurd numbers,
    budgets over the cap, half-open connections, clients that leave after sending): every valid request
    is answered 200, every hostile one that gets an answer a 4xx, and the server stays up. The peak
    resident memory of the process (model included) is recorded as a test property."""
    import random
    import resource

    limits = ServeLimits(max_body_bytes=100_000, max_tokens=64, header_timeout_s=2.0, body_timeout_s=2.0)
    batcher = BatchingBackend(tiny, max_batch=8, window_s=0.005)
    app = create_app(batcher, model_name="tiny-random", limits=limits)
    before_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with running(app, limits) as (url, port):
        valid = {"messages": HI, "max_tokens": 2}
        bad_bodies: list[dict[str, Any] | bytes] = [
            b'{"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1e400}',
            b'{"messages": [{"role": "user", "content": "hi"}], "temperature": Infinity}',
            {"messages": HI, "max_tokens": 10**6},
            {"messages": [{"role": "user", "content": "x" * 200_000}]},
        ]
        open_sockets: list[socket.socket] = []

        def one(kind: str, k: int) -> tuple[str, int]:
            if kind == "valid":
                return kind, call(url, "/v1/chat/completions", valid)[0]
            if kind == "bad":
                return kind, call(url, "/v1/chat/completions", bad_bodies[k % len(bad_bodies)])[0]
            body = json.dumps(valid).encode()
            head = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body)
            if kind == "half-open":
                open_sockets.append(_raw(port, head[: 20 + k % 20]))
            else:  # the whole request, then the client is gone
                _raw(port, head + body).close()
            return kind, 0

        kinds = ["valid"] * 450 + ["bad"] * 20 + ["half-open"] * 15 + ["leaver"] * 15
        random.Random(8).shuffle(kinds)
        with ThreadPoolExecutor(16) as pool:
            results = list(pool.map(one, kinds, range(len(kinds))))
        try:
            assert [s for kind, s in results if kind == "valid"] == [200] * 450
            assert all(400 <= s < 500 for kind, s in results if kind == "bad")
            assert call(url, "/health")[0] == 200
            wait_until(lambda: app.state.admitted == 0, "every request to leave the queue")
        finally:
            for sock in open_sockets:
                sock.close()
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(f"peak RSS {peak_kib / 1024:.0f} MiB (before the load {before_kib / 1024:.0f} MiB)")
