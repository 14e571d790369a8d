"""A real OpenAI-compatible server on 127.0.0.1 for tests, with scripted faults in front of it."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import uvicorn

from flexjudge.backends._probe import PROBE_PROMPT, PROBE_TOKENS
from flexjudge.backends.base import Backend
from flexjudge.serve import create_app


class FaultInjector:
    """ASGI middleware: plays scripted faults on chat requests, and records every request body.

    The openai backend's capability probe (`flexjudge.backends._probe`) is told apart: its bodies go to
    `probes` and it gets `probe_faults`; every other body goes to `bodies` and gets `faults`, one each
    in order. Faults: an HTTP status such as "429", "500" or "401" (with Retry-After: `retry_after`),
    "400" (a refusal that is about the request, not its constraint), "hang" (answers after `hang_s`),
    "garbage" (a 200 whose body is not JSON), "empty" (a 200 without choices), "truncate" (forwards
    the request with max_tokens cut to 24, so the real model runs out of budget), "refuse_structured"
    (a 400 naming response_format, as a server without structured outputs says).

    Standing behaviours, for every request: `refuse_structured_always` (no structured outputs at all),
    `refuse_constraints_over` (a 400 for a constraint whose JSON is longer than that many characters:
    the probe's passes, a judgment's does not), `ignore_constraint` (the constraint is dropped and the
    model answers free, as vLLM does with `guided_json`).
    """

    def __init__(self, app: Any) -> None:
        self.app = app
        self.faults: list[str] = []
        self.probe_faults: list[str] = []
        self.bodies: list[dict[str, Any]] = []
        self.probes: list[dict[str, Any]] = []
        self.hang_s = 3.0
        self.retry_after = "0"
        self.refuse_structured_always = False
        self.refuse_constraints_over: int | None = None
        self.ignore_constraint = False
        self.in_flight = 0  # chat requests being served; changed only on the server's event loop

    def reset(self, settle_s: float = 30.0) -> None:
        """Clear the script and the records, once every chat request still being served has finished: a
        request the client gave up on ("hang") still reaches the model, and its answer must not land in
        the next test's records (a module's tests share one server)."""
        deadline = time.monotonic() + settle_s
        while self.in_flight:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.in_flight} request(s) still served after {settle_s} s")
            time.sleep(0.01)
        self.faults.clear()
        self.probe_faults.clear()
        self.bodies.clear()
        self.probes.clear()
        self.hang_s, self.retry_after = 3.0, "0"
        self.refuse_structured_always = self.ignore_constraint = False
        self.refuse_constraints_over = None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or not scope["path"].endswith("/chat/completions"):
            await self.app(scope, receive, send)
            return
        self.in_flight += 1
        try:
            await self._chat(scope, receive, send)
        finally:
            self.in_flight -= 1

    async def _chat(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        raw = b""
        while True:
            message = await receive()
            raw += message.get("body", b"")
            if not message.get("more_body"):
                break
        body = json.loads(raw)
        probing = (
            body.get("messages") == [{"role": "user", "content": PROBE_PROMPT}]
            and body.get("max_tokens") == PROBE_TOKENS
        )
        (self.probes if probing else self.bodies).append(body)
        scripted = self.probe_faults if probing else self.faults
        fault = scripted.pop(0) if scripted else None
        constraint = {k: body[k] for k in ("response_format", "structured_outputs") if k in body}
        if self.refuse_structured_always and constraint:
            fault = "refuse_structured"
        over = self.refuse_constraints_over
        if over is not None and len(json.dumps(constraint)) > over:
            message = "the grammar compiler gave up: schema too complex"
            await _respond(send, 400, {"error": {"message": message}})
            return
        if self.ignore_constraint and constraint:
            body = {k: v for k, v in body.items() if k not in constraint}
            raw = json.dumps(body).encode()
        if fault == "400":
            await _respond(send, 400, {"error": {"message": "injected 400: the prompt is too long"}})
            return
        if fault is not None and fault.isdigit():
            headers = {"retry-after": self.retry_after}
            await _respond(send, int(fault), {"error": {"message": f"injected {fault}"}}, headers)
            return
        if fault == "refuse_structured":
            await _respond(send, 400, {"error": {"message": "response_format json_schema is not supported"}})
            return
        if fault == "garbage":
            await _respond(send, 200, None, raw_body=b"<html>definitely not json")
            return
        if fault == "empty":
            await _respond(
                send, 200, {"id": "x", "object": "chat.completion", "created": 0, "model": "m", "choices": []}
            )
            return
        if fault == "hang":
            await asyncio.sleep(self.hang_s)
        if fault == "truncate":
            body["max_tokens"] = 24
            raw = json.dumps(body).encode()
        sent = False

        async def replay() -> dict[str, Any]:
            nonlocal sent
            if sent:  # the body is replayed; what follows (a disconnect) comes from the real client
                message: dict[str, Any] = await receive()
                return message
            sent = True
            return {"type": "http.request", "body": raw, "more_body": False}

        await self.app(scope, replay, send)


async def _respond(
    send: Any, status: int, payload: Any, headers: dict[str, str] | None = None, raw_body: bytes | None = None
) -> None:
    body = raw_body if raw_body is not None else json.dumps(payload).encode()
    head = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    head += [(k.encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": head})
    await send({"type": "http.response.body", "body": body})


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def running_server(
    backend: Backend, *, model_name: str = "tiny-random"
) -> Iterator[tuple[str, FaultInjector]]:
    """Serve `backend` on 127.0.0.1; yields (base_url, fault injector). Stops the server on exit."""
    app = create_app(backend, model_name=model_name)
    injector = FaultInjector(app)
    port = free_port()
    config = uvicorn.Config(injector, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    with serving(uvicorn.Server(config)):
        yield f"http://127.0.0.1:{port}/v1", injector


@contextmanager
def serving(server: uvicorn.Server) -> Iterator[None]:
    """Run a uvicorn server in a thread until the block ends; fails if it does not start in 30 s."""
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the test server did not start")
        time.sleep(0.02)
    try:
        yield
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@contextmanager
def tiny_server(cache_dir: Path) -> Iterator[tuple[str, FaultInjector]]:
    """The tiny random model (llguidance) behind a real server, its built artefacts under `cache_dir`;
    the environment is restored on exit."""
    import pytest

    from flexjudge.backends.transformers import TransformersBackend

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("FLEXJUDGE_CACHE_DIR", str(cache_dir))
        with running_server(TransformersBackend("tiny-random", engine="llguidance")) as served:
            yield served
