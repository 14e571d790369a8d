"""`flexjudge serve`: an OpenAI-compatible chat-completions endpoint over a local backend.

For machines where vLLM does not run (CPU, Apple silicon) and for tests: it speaks the subset of the
OpenAI API the `openai` backend uses, with real constrained decoding through the local backend.
Requests that arrive together are decoded as one batch (a short collection window). Images are
accepted only as data URLs: a served judge never opens a path or URL named in a request.
The legacy `guided_json` field is refused loudly rather than ignored as vLLM does. Constraints arrive as
`response_format` json_schema, `structured_outputs.json`, or `structured_outputs.grammar` (an llguidance
Lark grammar, as vLLM's guidance backend takes it; the local backend's engine must be llguidance).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from flexjudge.backends.base import Backend, Constraint, Generation, ImagePart, Message, Request, TextPart
from flexjudge.errors import ConstraintError, FlexjudgeError

if TYPE_CHECKING:
    from fastapi import FastAPI

__all__ = ["create_app", "serve"]


class RequestError(FlexjudgeError):
    """A chat-completion request this server cannot honour (HTTP 400)."""


@dataclass
class _Pending:
    request: Request
    future: asyncio.Future[Generation] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


class _Batcher:
    """Collects requests for a few milliseconds and hands them to the backend as one batch."""

    def __init__(self, backend: Backend, *, max_batch: int, window_s: float) -> None:
        self.backend = backend
        self.max_batch = max_batch
        self.window_s = window_s
        self.queue: asyncio.Queue[_Pending] = asyncio.Queue()
        self.task: asyncio.Task[None] | None = None
        self.batches: list[int] = []  # sizes of the batches run, for tests and metrics

    async def submit(self, request: Request) -> Generation:
        if self.task is None:
            self.task = asyncio.create_task(self._run())
        pending = _Pending(request)
        await self.queue.put(pending)
        return await pending.future

    async def _run(self) -> None:
        while True:
            batch = [await self.queue.get()]
            deadline = time.monotonic() + self.window_s
            while len(batch) < self.max_batch:
                try:
                    batch.append(
                        await asyncio.wait_for(self.queue.get(), max(0.0, deadline - time.monotonic()))
                    )
                except TimeoutError:
                    break
            self.batches.append(len(batch))
            try:
                results = await self.backend.generate([p.request for p in batch])
            except Exception:
                # One bad request must not fail the others that happened to share its batch:
                # run each alone, and each waiter learns only of its own failure.
                for pending in batch:
                    await self._run_alone(pending)
                continue
            for pending, result in zip(batch, results, strict=True):
                if not pending.future.done():
                    pending.future.set_result(result)

    async def _run_alone(self, pending: _Pending) -> None:
        try:
            (result,) = await self.backend.generate([pending.request])
        except Exception as exc:
            if not pending.future.done():
                pending.future.set_exception(exc)
            return
        if not pending.future.done():
            pending.future.set_result(result)


def parse_chat_request(body: dict[str, Any], *, max_image_pixels: int) -> Request:
    """An OpenAI chat-completions body -> a backend `Request` (refusing what we cannot honour)."""
    from flexjudge.media import Limits, MediaError, load_image

    if "guided_json" in body:
        raise RequestError(
            "'guided_json' is not supported: send response_format json_schema or structured_outputs"
        )
    limits = Limits(max_pixels=max_image_pixels)
    messages = []
    raw_messages = body.get("messages")
    if not isinstance(raw_messages, list) or not raw_messages:
        raise RequestError("'messages' must be a non-empty list")
    for raw in raw_messages:
        if not isinstance(raw, dict):
            raise RequestError("each message must be an object with 'role' and 'content'")
        role, content = raw.get("role"), raw.get("content")
        if role not in ("system", "user", "assistant"):
            raise RequestError(f"unsupported role {role!r}")
        parts: list[TextPart | ImagePart] = []
        items = [{"type": "text", "text": content}] if isinstance(content, str) else content or []
        if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
            raise RequestError("message content must be a string or a list of parts")
        for item in items:
            if item.get("type") == "text":
                parts.append(TextPart(str(item.get("text", ""))))
            elif item.get("type") == "image_url":
                image_url = item.get("image_url")
                url = image_url.get("url", "") if isinstance(image_url, dict) else image_url
                if not isinstance(url, str) or not url.startswith("data:"):
                    raise RequestError("images must be sent as data URLs; this server opens no paths or URLs")
                try:
                    parts.append(ImagePart(load_image(url, limits=limits)))
                except MediaError as exc:
                    raise RequestError(str(exc)) from None
            else:
                raise RequestError(f"unsupported content part {item.get('type')!r}")
        messages.append(Message(role=role, parts=tuple(parts)))
    try:
        max_new_tokens = int(body.get("max_completion_tokens") or body.get("max_tokens") or 1024)
        temperature = float(1.0 if body.get("temperature") is None else body["temperature"])
        seed = None if body.get("seed") is None else int(body["seed"])
    except (TypeError, ValueError) as exc:
        raise RequestError(f"bad sampling parameter: {exc}") from None
    if max_new_tokens < 1 or temperature < 0:
        raise RequestError("max_tokens must be at least 1 and temperature at least 0")
    structured = body.get("structured_outputs")
    grammar = structured.get("grammar") if isinstance(structured, dict) else None
    if grammar is not None and (not isinstance(grammar, str) or "json" in (structured or {})):
        raise RequestError("structured_outputs takes one of 'json' or 'grammar' (an llguidance Lark string)")
    schema = _schema(body)
    names = structured.get("unique_names", []) if isinstance(structured, dict) else []
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise RequestError("structured_outputs.unique_names must be a list of array keys")
    constraint = None
    if schema is not None or grammar is not None:
        constraint = Constraint(schema=schema, grammar=grammar, unique_names=frozenset(names))
    return Request(
        messages=tuple(messages),
        constraint=constraint,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        seed=seed,
    )


def _schema(body: dict[str, Any]) -> dict[str, Any] | None:
    structured = body.get("structured_outputs")
    fmt = body.get("response_format")
    if structured is not None and fmt is not None:
        raise RequestError("send response_format or structured_outputs, not both")
    if isinstance(structured, dict) and isinstance(structured.get("json"), dict):
        json_schema: dict[str, Any] = structured["json"]
        return json_schema
    if isinstance(fmt, dict) and fmt.get("type") == "json_schema":
        schema = (fmt.get("json_schema") or {}).get("schema")
        if not isinstance(schema, dict):
            raise RequestError("response_format json_schema needs a 'schema' object")
        return dict(schema)
    if fmt is not None and (not isinstance(fmt, dict) or fmt.get("type") != "text"):
        raise RequestError(f"unsupported response_format {fmt!r}")
    return None


def create_app(
    backend: Backend,
    *,
    model_name: str,
    max_batch: int = 8,
    window_s: float = 0.01,
    max_image_pixels: int = 40_000_000,
) -> FastAPI:
    """The ASGI app; run it with uvicorn (see `serve`)."""
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse

    app = FastAPI(title="flexjudge judge server")
    batcher = _Batcher(backend, max_batch=max_batch, window_s=window_s)
    app.state.batcher = batcher

    def error(status: int, message: str, kind: str) -> JSONResponse:
        return JSONResponse({"error": {"message": message, "type": kind, "code": status}}, status_code=status)

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": model_name, "object": "model", "owned_by": "flexjudge"}]}

    @app.post("/v1/chat/completions", response_model=None)
    async def chat(body: dict[str, Any]) -> dict[str, Any] | JSONResponse:
        try:
            request = await asyncio.to_thread(parse_chat_request, body, max_image_pixels=max_image_pixels)
        except RequestError as exc:
            return error(400, str(exc), "invalid_request_error")
        try:
            generation = await batcher.submit(request)
        except ValueError as exc:  # the backend refused the request's settings
            return error(400, str(exc), "invalid_request_error")
        except ConstraintError as exc:  # a schema or grammar this backend cannot compile
            return error(400, str(exc), "invalid_request_error")
        except Exception as exc:  # a JSON error body, never a bare 500 page
            return error(500, f"{type(exc).__name__}: {exc}", "server_error")
        usage = generation.usage
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model_name,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": generation.text},
                    "finish_reason": generation.finish_reason,
                }
            ],
            "usage": {
                "prompt_tokens": usage.prompt_tokens if usage else 0,
                "completion_tokens": usage.completion_tokens if usage else 0,
                "total_tokens": (usage.prompt_tokens + usage.completion_tokens) if usage else 0,
            },
        }

    return app


def serve(backend: Backend, *, model_name: str, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Run the server until interrupted."""
    import uvicorn

    uvicorn.run(create_app(backend, model_name=model_name), host=host, port=port, log_level="info")
